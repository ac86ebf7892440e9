"""Where a board's console output comes from, behind one small protocol.

A :class:`ConsoleSource` is opened, read in pieces of bytes with a timeout,
and closed; :func:`open_source` picks the class from the board's
``console.type`` (:data:`SOURCES` is the one list of them). A source that
cannot be reached raises :class:`SourceUnavailable`; one that ends (the
server hung up, ipmitool exited) raises :class:`SourceClosed`. The capture
reopens either after a pause.

- ``tcp``: a TCP console server (ser2net in raw mode, conserver, a QEMU
  ``-serial tcp:...,server``).
- ``unix``: QEMU's ``-serial unix:PATH,server=on,wait=off``.
- ``file``: QEMU's ``-serial file:PATH`` (or any log a console server
  writes), followed like ``tail -F`` from its end when opened.
- ``ipmi``: Serial-over-LAN, ``ipmitool -I lanplus ... sol activate``; the
  password reaches ipmitool in its environment (``-E``), never its command
  line, where ``ps`` would show it.
- ``simulated``: the simulated lab's boards print a boot log at every boot.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

READ_SIZE = 4096
# What ipmitool itself prints around a session (its standard input is no
# terminal): not the board's.
_IPMITOOL_SAYS = (b"tcgetattr: Inappropriate ioctl for device\n",
                  b"[SOL Session operational.  Use ~? for help]\n",
                  b"~. [terminated ipmitool]\n", b"[terminated ipmitool]\n")


class SourceUnavailable(Exception):
    """The console cannot be reached now (the message says where and why)."""


class SourceClosed(Exception):
    """The console's other end went away."""


class ConsoleSource(Protocol):
    def open(self) -> None:
        """Raises: SourceUnavailable."""

    def read(self, timeout: float) -> bytes:
        """What arrived within ``timeout`` seconds (b"": nothing).

        Raises: SourceClosed.
        """

    def close(self) -> None: ...


class _SocketSource:
    def __init__(self, family: int, address: Any, where: str) -> None:
        self.family, self.address, self.where = family, address, where
        self.sock: socket.socket | None = None

    def open(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise SourceUnavailable(f"console {self.where}: "
                                    f"{exc.strerror or exc}") from None
        self.sock = sock

    def read(self, timeout: float) -> bytes:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            return b""
        except OSError as exc:
            raise SourceClosed(f"console {self.where}: {exc.strerror or exc}") from None
        if not data:
            raise SourceClosed(f"console {self.where} closed the connection")
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TcpSource(_SocketSource):
    def __init__(self, settings: Mapping[str, Any], board: str, secret: Callable) -> None:
        host, _, port = str(settings["address"]).rpartition(":")
        super().__init__(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         (host.strip("[]"), int(port)), f"tcp {settings['address']}")


class UnixSource(_SocketSource):
    def __init__(self, settings: Mapping[str, Any], board: str, secret: Callable) -> None:
        super().__init__(socket.AF_UNIX, str(settings["path"]), f"socket {settings['path']}")


class FileSource:
    """A growing file, read from its end when opened (a file that shrinks
    was started again: it is read from its start)."""

    def __init__(self, settings: Mapping[str, Any], board: str, secret: Callable) -> None:
        self.path = Path(str(settings["path"]))
        self.position = 0
        self.handle: Any = None

    def open(self) -> None:
        try:
            self.handle = self.path.open("rb")
        except OSError as exc:
            raise SourceUnavailable(f"console file {self.path}: {exc.strerror}") from None
        self.position = self.handle.seek(0, os.SEEK_END)

    def read(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            try:
                size = os.fstat(self.handle.fileno()).st_size
                if self.path.stat().st_ino != os.fstat(self.handle.fileno()).st_ino:
                    raise SourceClosed(f"console file {self.path} was replaced")
            except FileNotFoundError:
                raise SourceClosed(f"console file {self.path} was removed") from None
            if size < self.position:
                self.position = 0
            if size > self.position:
                self.handle.seek(self.position)
                data: bytes = self.handle.read(READ_SIZE)
                self.position += len(data)
                return data
            if time.monotonic() >= deadline:
                return b""
            time.sleep(min(0.1, timeout))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class IpmiSolSource:
    """``ipmitool sol activate`` as a child process; its output is the console."""

    def __init__(self, settings: Mapping[str, Any], board: str, secret: Callable) -> None:
        self.settings, self.board, self.secret = settings, board, secret
        self.process: subprocess.Popen[bytes] | None = None

    def _argv(self, binary: str, *command: str) -> list[str]:
        s = self.settings
        return [binary, "-I", "lanplus", "-H", str(s["address"]), "-p", str(s.get("port", 623)),
                "-U", str(s.get("username") or ""), "-C", str(s.get("cipher_suite", 3)),
                "-E", *command]

    def open(self) -> None:
        binary = shutil.which("ipmitool")
        if binary is None:
            raise SourceUnavailable("ipmitool is not installed on this engine's host (Debian: "
                                    "apt-get install ipmitool)")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "IPMI_PASSWORD": self.secret("password") or ""}
        where = f"IPMI BMC {self.settings['address']}:{self.settings.get('port', 623)}"
        try:
            # A session left open by a process that died would refuse this one.
            subprocess.run(self._argv(binary, "sol", "deactivate"), env=env, timeout=15,
                           capture_output=True, check=False)
            self.process = subprocess.Popen(self._argv(binary, "sol", "activate"), env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            raise SourceUnavailable(f"{where} did not answer sol deactivate") from None
        except OSError as exc:
            raise SourceUnavailable(f"ipmitool for {where}: {exc.strerror}") from None

    def read(self, timeout: float) -> bytes:
        assert self.process is not None
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return b""
        data = os.read(self.process.stdout.fileno(), READ_SIZE)
        if not data:
            code = self.process.wait()
            raise SourceClosed(f"ipmitool sol activate on {self.settings['address']} exited "
                               f"with {code}")
        for noise in _IPMITOOL_SAYS:
            data = data.replace(noise, b"")
        return data

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.stdin is not None and process.poll() is None:
                process.stdin.write(b"~.")  # ipmitool's escape: end the session
                process.stdin.close()
            process.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# What a simulated board prints at each boot: firmware, boot loader, kernel
# (its command line carries a reimage token, which redaction hides), login.
SIM_BOOT = (
    "\r\nU-Boot SPL 2024.01 (Jan 01 2026)\r\n",
    "Trying to boot from MMC1\r\n",
    "PXE: DHCP offer from 10.0.0.1, loading pxelinux.cfg for {board}\r\n",
    "Kernel command line: console=ttyS0,115200 corral.board={board} "
    "corral.token=corral_{token_id}_{secret}\r\n",
    "[    0.000000] Linux version 6.1.0-corral (sim) #1 SMP\r\n",
    "[    2.314159] EXT4-fs (mmcblk0p2): mounted filesystem\r\n",
    "\r\n{board} login: ",
)


class SimulatedSource:
    """A simulated board's serial console: quiet until it boots, then its
    boot log a line at a time."""

    def __init__(self, settings: Mapping[str, Any], board: str, secret: Callable,
                 *, line_seconds: float = 0.3) -> None:
        self.board, self.line_seconds = board, line_seconds
        self.dead = bool(settings.get("dead"))
        self.pending: deque[tuple[float, str]] = deque()
        self.dice = random.Random(board)

    def open(self) -> None:
        pass

    def boot_started(self, attempt: int) -> None:
        """The capture saw the board start a boot (a new attempt)."""
        if self.dead:
            return  # its relay never cuts the power: nothing boots
        at = time.monotonic()
        values = {"board": self.board,
                  "token_id": self.dice.randrange(1, 10**6),
                  "secret": "".join(self.dice.choices("abcdefghijkmnpqrstuvwxyz0123456789",
                                                      k=43))}
        for n, line in enumerate(SIM_BOOT):
            self.pending.append((at + n * self.line_seconds, line.format(**values)))

    def read(self, timeout: float) -> bytes:
        if self.pending and self.pending[0][0] <= time.monotonic():
            return self.pending.popleft()[1].encode()
        time.sleep(timeout if not self.pending
                   else max(0.0, min(timeout, self.pending[0][0] - time.monotonic())))
        return b""

    def close(self) -> None:
        pass


SOURCES: dict[str, Callable[..., ConsoleSource]] = {
    "tcp": TcpSource, "unix": UnixSource, "file": FileSource, "ipmi": IpmiSolSource,
    "simulated": SimulatedSource,
}


def open_source(board: str, settings: Mapping[str, Any], secret: Callable[[str], str | None]
                ) -> ConsoleSource:
    """The (not yet opened) source of a board's console settings."""
    return SOURCES[str(settings["type"])](settings, board, secret)
