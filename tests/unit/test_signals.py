"""The main thread's wait for SIGTERM/SIGINT, whichever thread the kernel picks.

Each case runs in a fresh interpreter, whose main thread is free to wait (and
which a broken wait would leave hanging, not the test run).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import signal, sys, threading, time
    from corral.cli.signals import wait_for_stop_signal

    target = sys.argv[1]
    signum = getattr(signal, sys.argv[2])
    before = signal.getsignal(signum)
    ready = threading.Event()

    def send():
        ready.wait()
        time.sleep(0.2)  # let the main thread block first
        # To this thread ("worker"), or to the main one.
        thread = threading.get_ident() if target == "worker" else threading.main_thread().ident
        signal.pthread_kill(thread, signum)
        time.sleep(60)  # stay alive: a process-wide signal may land here too

    threading.Thread(target=send, daemon=True).start()
    ready.set()
    received = wait_for_stop_signal()
    assert signal.getsignal(signum) is before, "previous handler not restored"
    print(received.name)
""")


@pytest.mark.parametrize("target", ["worker", "main"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_wakes_the_main_thread(target, signame):
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, target, signame],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{signame} delivered to the {target} thread did not wake the main thread")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == signame


def test_other_signals_do_not_stop_the_wait():
    script = textwrap.dedent("""
        import os, signal, threading, time
        from corral.cli.signals import wait_for_stop_signal

        signal.signal(signal.SIGUSR1, lambda *_: None)

        def send():
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=send, daemon=True).start()
        print(wait_for_stop_signal().name)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SIGTERM"
