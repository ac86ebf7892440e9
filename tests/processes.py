"""Stopping the engine processes a test started."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest


def stop(process: subprocess.Popen, *, timeout: float = 30.0, log: Path | None = None,
         what: str = "corral", signalled: bool = False) -> int:
    """SIGTERM ``process`` (unless the caller already has: ``signalled``) and
    wait for it; returns its exit code.

    A process that does not stop in time is killed (so that it cannot load
    the machine under the tests that follow) and the test fails, with the
    tail of ``log`` when there is one.
    """
    if not signalled and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
        pytest.fail(f"{what} (pid {process.pid}) did not stop within {timeout:g} s of "
                    f"SIGTERM; killed it\n{tail}")
