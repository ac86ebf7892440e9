"""Waiting in the main thread for SIGTERM or SIGINT.

A ``threading.Event`` set from a Python signal handler is not enough in a
process with other threads: Python runs signal handlers only in the main
thread, between bytecodes, and the kernel may deliver the signal to any
thread. Delivered to a sweep or operation thread, it leaves a main thread
blocked in ``Event.wait()`` asleep for good, and the process ignores SIGTERM.
Here the C-level handler writes the signal number to a pipe
(``signal.set_wakeup_fd``) whichever thread received it, and the main thread
blocks reading that pipe.
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def wait_for_stop_signal() -> signal.Signals:
    """Block until SIGTERM or SIGINT arrives; returns which.

    Must be called from the main thread. The previous handlers are restored
    before returning.
    """
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    # A Python-level handler installs the C handler that writes to the pipe.
    previous = {signum: signal.signal(signum, _note) for signum in STOP_SIGNALS}
    try:
        while True:
            # Other signals with handlers (SIGCHLD, say) write to the pipe too.
            received = os.read(read, 1)[0]
            if received in STOP_SIGNALS:
                return signal.Signals(received)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(read)
        os.close(write)


def _note(signum: int, frame: object) -> None:
    """Nothing to do here: the wake-up pipe carries the signal."""
