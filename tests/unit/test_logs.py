"""What a log line looks like in each format (corral.logs)."""

from __future__ import annotations

import io
import json
import re

import pytest
import structlog

from corral.logs import configure_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr(monkeypatch):
    def use(stream: io.StringIO) -> io.StringIO:
        monkeypatch.setattr("sys.stderr", stream)
        return stream

    yield use
    structlog.reset_defaults()


def _connect() -> None:
    password = "hunter2"  # a local a pretty traceback would print
    raise ConnectionRefusedError(f"refused ({len(password)} characters sent)")


@pytest.mark.parametrize(("stream", "fmt"), [(_Terminal, "auto"), (io.StringIO, "console"),
                                             (io.StringIO, "auto"), (_Terminal, "json")])
def test_each_format_puts_the_message_first_and_no_local_variables(stderr, stream, fmt):
    out = stderr(stream())
    configure_logging("info", fmt)
    log = structlog.get_logger("test")
    log.info("transition", board="b1", _event="timeout", to_state="check_queued")
    try:
        _connect()
    except ConnectionRefusedError:
        log.error("request_failed", exc_info=True)
    first, *rest = out.getvalue().splitlines()
    if fmt == "json" or (fmt == "auto" and stream is io.StringIO):
        assert json.loads(first)["msg"] == "transition"
        assert json.loads(first)["event"] == "timeout"
    else:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", first)
        assert re.match(r"\S+Z \[info\s*\] transition\s+board=b1 event=timeout ", plain), plain
    text = "\n".join(rest)
    assert "request_failed" in text
    assert "ConnectionRefusedError: refused (7 characters sent)" in text
    assert "hunter2" not in out.getvalue()
