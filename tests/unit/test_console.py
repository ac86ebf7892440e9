"""Console capture's pure parts: redaction, the inventory's console: key,
and the file and UNIX socket sources a QEMU board's serial chardev gives."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from corral.console.redact import Redactor
from corral.console.sources import FileSource, SourceClosed, SourceUnavailable, UnixSource
from corral.inventory import InventoryError, load_inventory
from corral.power.settings import hide_secrets


def test_redaction_hides_tokens_known_secrets_and_keyed_words():
    redact = Redactor(["Bmc-s3cret", None, "ab"])
    line = ("Kernel command line: corral.token=corral_12_AbCdEfGhIjKlMnOp quiet "
            "ipmi_password=hunter22 auth Bmc-s3cret ok; tab ab stays\n")
    shown = redact(line)
    assert shown == ("Kernel command line: corral.token=(hidden) quiet "
                     "ipmi_password=(hidden) auth (hidden) ok; tab ab stays\n")
    assert redact("bearer corral_7_zzzzzzzzzzzzzzzzzzzz done") == "bearer (hidden) done"
    assert redact("plain boot text\n") == "plain boot text\n"


def _inventory(tmp_path: Path, console: str) -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text(f"boards:\n  - name: b1\n    console: {console}\n")
    return path


@pytest.mark.parametrize(("written", "stored"), [
    ('"tcp://ser2net.lab:7001"', {"type": "tcp", "address": "ser2net.lab:7001"}),
    ("{type: file, path: /var/lab/b1/serial.log}",
     {"type": "file", "path": "/var/lab/b1/serial.log"}),
    ('"unix:///var/lab/b1/serial.sock"', {"type": "unix", "path": "/var/lab/b1/serial.sock"}),
    ("simulated", {"type": "simulated"}),
    ('"ipmi://admin:pa%40ss@bmc-7:624"',
     {"type": "ipmi", "address": "bmc-7", "port": 624, "username": "admin",
      "password": "pa@ss"}),
    ("{type: ipmi, max_bytes: 4096}", {"type": "ipmi", "max_bytes": 4096}),
])
def test_a_console_is_stored_as_the_mapping_it_stands_for(tmp_path, written, stored):
    attrs = load_inventory(_inventory(tmp_path, written))["b1"]
    assert attrs["console"] == stored


def test_a_console_password_is_hidden_when_shown(tmp_path):
    attrs = load_inventory(_inventory(tmp_path, '"ipmi://admin:Sup3r@bmc:623"'))["b1"]
    assert hide_secrets(attrs)["console"]["password"] == "(hidden)"
    assert "Sup3r" not in repr(hide_secrets(attrs))


@pytest.mark.parametrize(("written", "says"), [
    ('{type: tcp, address: "nope"}', "yaml:3: boards[0].console.address: must be HOST:PORT"),
    ('{type: tcp, address: "h:99999"}', "must be HOST:PORT"),
    ("{type: serial, path: /dev/ttyS0}",
     "boards[0].console: type must be one of tcp, file, unix, ipmi, simulated"),
    ("{type: file, path: /x, speed: 9600}", "unknown key 'speed'"),
    ("{type: file}", "path"),
    ("{type: tcp, address: 'h:1', max_bytes: 0}", "max_bytes"),
    ("{type: ipmi, password: a, password_env: B}", "give one of password, password_env"),
])
def test_a_bad_console_is_refused_with_its_line(tmp_path, written, says):
    with pytest.raises(InventoryError) as refused:
        load_inventory(_inventory(tmp_path, written))
    assert says in str(refused.value)
    assert str(tmp_path / "boards.yaml") in str(refused.value)


def test_a_bad_console_url_never_shows_its_password(tmp_path):
    with pytest.raises(InventoryError) as refused:
        load_inventory(_inventory(tmp_path, '"http://admin:Sup3r-secret@bmc/"'))
    assert "a console URL is tcp://HOST:PORT" in str(refused.value)
    assert "Sup3r-secret" not in str(refused.value)
    assert "admin:(hidden)@bmc" in str(refused.value)


def test_the_file_source_follows_a_growing_file_from_its_end(tmp_path):
    log = tmp_path / "serial.log"
    log.write_bytes(b"before capture\n")
    source = FileSource({"path": str(log)}, "b1", lambda _: None)
    source.open()
    try:
        assert source.read(0.05) == b""
        with log.open("ab") as out:
            out.write(b"SeaBIOS\n")
        assert source.read(1.0) == b"SeaBIOS\n"
        log.write_bytes(b"new\n")  # started again, shorter
        assert source.read(1.0) == b"new\n"
        log.unlink()
        with pytest.raises(SourceClosed):
            source.read(0.05)
    finally:
        source.close()
    with pytest.raises(SourceUnavailable, match=r"console file .*missing\.log"):
        FileSource({"path": str(tmp_path / "missing.log")}, "b1", lambda _: None).open()


def test_the_unix_source_reads_a_qemu_style_socket(tmp_path):
    path = str(tmp_path / "serial.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        client, _ = server.accept()
        client.sendall(b"iPXE 1.21\n")
        client.close()

    threading.Thread(target=serve, daemon=True).start()
    source = UnixSource({"path": path}, "b1", lambda _: None)
    source.open()
    try:
        assert source.read(2.0) == b"iPXE 1.21\n"
        with pytest.raises(SourceClosed):
            source.read(2.0)
    finally:
        source.close()
        server.close()
    with pytest.raises(SourceUnavailable, match="console socket"):
        UnixSource({"path": str(tmp_path / "none.sock")}, "b1", lambda _: None).open()
