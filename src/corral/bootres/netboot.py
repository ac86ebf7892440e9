"""What a netbooting board fetches: its boot configuration in every flavour
firmware looks for, under one boot root.

``pxe_root`` is the directory the lab's TFTP server exports (and Corral's
HTTP server serves under ``/boot/``). Corral writes there, for a board with
MAC ``52:54:00:12:34:56``::

    pxelinux.cfg/01-52-54-00-12-34-56    pxelinux (BIOS) and syslinux.efi (UEFI)
    grub/grub.cfg-01-52-54-00-12-34-56   GRUB (found by grub/grub.cfg, shipped)
    ipxe/01-52-54-00-12-34-56.ipxe       iPXE (also GET /boot/ipxe/52:54:00:12:34:56)
    objects/<sha256>                     the kernels and initrds those name

Every path written into a configuration is relative to the boot root, so a
TFTP server that exports only that directory (tftpd-hpa ``--secure``,
dnsmasq ``tftp-root``) serves it. Each file is replaced atomically (written
beside, then renamed), so firmware reads the old configuration or the new
one, never half of either.

During a reimage the configurations boot the winner's kernel and initrd with
a command line that tells the second stage who it is
(:func:`kernel_cmdline`). Otherwise they boot the local disk (pxelinux
``LOCALBOOT 0``, GRUB ``exit``, iPXE ``exit``), so a reboot starts the
installed system.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError
from corral.machines.needs import Needs
from corral.names import SHA256_HEX

# The board states between writing the PXE configuration and the installed
# system's reboot: the reimage token is good only while a board is in one.
REIMAGE_PATH = frozenset({"pxe_configuring", "pxe_power_cycling", "pxe_booting",
                          "installing"})
# The events a second stage reports (by: board in the board machine).
SECOND_STAGE_EVENTS = ("second_stage_started", "install_ok", "install_failed",
                       "maintenance_requested")
NEEDS = Needs(service="netboot", kind="board", states=tuple(sorted(REIMAGE_PATH)),
              events=SECOND_STAGE_EVENTS)

# Temporary files older than this are a killed writer's leftovers.
STALE_SECONDS = 3600
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
SHA256_RE = SHA256_HEX.regex

# GRUB's local boot: chainload the disk's own UEFI loader (the removable-media
# path installers write, for this CPU); failing that, hand back to the
# firmware, which tries its next boot option.
_CHAINLOAD_DISK = """\
if [ "$grub_cpu" = arm64 ]; then set corral_loader=/EFI/BOOT/BOOTAA64.EFI
else set corral_loader=/EFI/BOOT/BOOTX64.EFI; fi
if search --no-floppy --file --set=root "$corral_loader"; then
    chainloader "$corral_loader"
    boot
fi
exit
"""

# The shipped top-level GRUB configuration: GRUB reads it from its prefix
# (grub/ under the boot root) and loads the board's own by its MAC.
GRUB_TOP = """\
# Written by Corral: load this board's configuration, found by its MAC.
# (GRUB names the MAC with colons; the per-board file uses dashes, like pxelinux.)
set timeout=0
regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 \\
    '^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$' \\
    "$net_default_mac"
if [ -s "$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6" ]; then
    configfile "$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6"
fi
echo "Corral has no configuration for $net_default_mac; booting the local disk"
""" + _CHAINLOAD_DISK


def normal_mac(mac: object) -> str | None:
    """``mac`` lowercase with colons, or None when it is not a MAC address."""
    if not isinstance(mac, str):
        return None
    value = mac.strip().lower().replace("-", ":")
    return value if MAC_RE.fullmatch(value) else None


def mac_file(mac: str) -> str:
    """The name pxelinux (and GRUB, iPXE here) look for: ``01-`` (Ethernet)
    and the MAC, lowercase, dash-separated."""
    return "01-" + mac.replace(":", "-")


@dataclass(frozen=True, kw_only=True)
class BootFiles:
    """A reimage's boot: paths relative to the boot root, and the command line."""

    kernel: str
    initrd: str
    dtb: str | None = None
    cmdline: str = ""
    title: str = ""


# What GRUB and iPXE read as syntax in a command line (a statement separator,
# a variable, a quote, a comment): a mirror's boot-cmdline holding one could
# add commands to their configurations.
CMDLINE_SYNTAX = frozenset(";&|$`\"'\\#{}<>")


def cmdline_problem(cmdline: str) -> str | None:
    """Why a boot-cmdline cannot go into every configuration flavour, or None."""
    bad = sorted(set(cmdline) & CMDLINE_SYNTAX)
    if bad:
        return (f"holds {' '.join(bad)}, which GRUB or iPXE would read as syntax")
    if any(word.startswith("corral.") for word in cmdline.split()):
        return "sets corral.* parameters, which are Corral's to give"
    return None


def kernel_cmdline(base: str, *, url: str, board: str, boot: str, token: str,
                   image: str | None = None) -> str:
    """What the second stage needs to report (where Corral is, which board it
    is, this netboot's id, the prefix of its callbacks' Idempotency-Keys, and
    the reimage token), then the winner's ``boot-cmdline``. Corral's come
    first: a parameter given twice is read from its first place."""
    extra = [f"corral.url={url}", f"corral.board={board}", f"corral.boot={boot}",
             f"corral.token={token}"]
    if image:
        extra.append(f"corral.image={image}")
    return " ".join(extra + [p for p in (base.strip(),) if p])


def pxelinux_config(files: BootFiles | None) -> str:
    if files is None:
        return ("# Written by Corral: no reimage in progress; boot the local disk.\n"
                "DEFAULT local\nLABEL local\n  LOCALBOOT 0\n")
    lines = [f"# Written by Corral: {files.title}", "DEFAULT corral", "LABEL corral",
             f"  KERNEL {files.kernel}", f"  INITRD {files.initrd}"]
    if files.dtb:
        lines.append(f"  FDT {files.dtb}")
    if files.cmdline:
        lines.append(f"  APPEND {files.cmdline}")
    # BOOTIF=01-<mac>: the second stage knows which interface booted.
    lines.append("  IPAPPEND 2")
    return "\n".join(lines) + "\n"


GRUB_LOCAL = ("# Written by Corral: no reimage in progress; boot the local disk.\n"
              + _CHAINLOAD_DISK)


def grub_config(files: BootFiles | None) -> str:
    if files is None:
        return GRUB_LOCAL
    lines = [f"# Written by Corral: {files.title}", "set timeout=0",
             f"linux /{files.kernel} {files.cmdline}".rstrip(),
             f"initrd /{files.initrd}"]
    if files.dtb:
        lines.append(f"devicetree /{files.dtb}")
    lines.append("boot")
    return "\n".join(lines) + "\n"


def ipxe_script(files: BootFiles | None) -> str:
    """The iPXE script; paths are relative to the script's own location
    (``ipxe/`` over TFTP, ``/boot/ipxe/`` over HTTP), so both reach
    ``objects/``."""
    if files is None:
        return ("#!ipxe\n# Written by Corral: no reimage in progress; boot the local disk.\n"
                "exit\n")
    lines = ["#!ipxe", f"# Written by Corral: {files.title}",
             f"kernel ../{files.kernel} initrd={Path(files.initrd).name} {files.cmdline}"
             .rstrip(),
             f"initrd ../{files.initrd}"]
    if files.dtb:
        lines.append(f"# FDT {files.dtb} is not passed by iPXE")
    lines.append("boot")
    return "\n".join(lines) + "\n"


def config_paths(root: Path, mac: str) -> dict[str, Path]:
    """A board's configuration files under ``root``, by flavour."""
    name = mac_file(mac)
    return {"pxelinux": root / "pxelinux.cfg" / name,
            "grub": root / "grub" / f"grub.cfg-{name}",
            "ipxe": root / "ipxe" / f"{name}.ipxe"}


def contained_file(root: Path, path: Path) -> Path | None:
    """``path`` resolved (every symlink followed, its directories' too), if it
    is a regular file inside ``root`` (itself resolved, so a boot root that is
    a symlink still works); None for anything else: missing, not a regular
    file, unreadable, or resolving outside the root (a symlink pointing out,
    ``..``). What the file routes serve goes through this, so a symlink
    placed in the root can never hand out a file from elsewhere."""
    try:
        base = root.resolve(strict=True)
        found = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
        return None
    if not found.is_relative_to(base) or found == base:
        return None
    try:
        return found if stat.S_ISREG(found.stat().st_mode) else None
    except OSError:
        return None


def served_object(root: Path, sha256: str) -> Path | None:
    """A published object (``GET /boot/objects/{sha256}``), resolved, or None
    (also where it resolves outside the root: :func:`contained_file`)."""
    if not SHA256_RE.fullmatch(sha256):
        return None
    return contained_file(root, root / "objects" / sha256)


def served_ipxe(root: Path, mac: str) -> str | None:
    """A board's iPXE script (``GET /boot/ipxe/{mac}``), or None (also where
    it resolves outside the root: :func:`contained_file`)."""
    found = normal_mac(mac)
    if found is None:
        return None
    path = contained_file(root, config_paths(root, found)["ipxe"])
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


class BootRoot:
    """The boot root (``pxe_root``) and what Corral writes under it.

    Raises:
        ConfigError: the directory cannot be created or written (checked when
            built, so that ``corral serve`` stops at start-up instead of
            failing every reimage).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            for sub in ("pxelinux.cfg", "grub", "ipxe", "objects"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            probe = root / "objects" / ".corral-write-check"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"pxe_root {str(root)!r} is not a directory Corral can write: "
                              f"{exc.strerror or exc}") from None
        # What a writer killed mid-write left (an hour is far longer than any
        # write, so another process's file in flight is never taken).
        stale = time.time() - STALE_SECONDS
        for sub in ("pxelinux.cfg", "grub", "ipxe", "objects"):
            for leftover in (*(root / sub).glob(".*.tmp"), *(root / sub).glob(".*.part")):
                with contextlib.suppress(FileNotFoundError):
                    if leftover.stat().st_mtime < stale:
                        leftover.unlink()
        # A lab's own grub/grub.cfg (it must load the per-MAC one) and
        # pxelinux.cfg/default are left alone. Corral's boot the local disk
        # for a board it has written nothing for yet.
        for shipped, text in ((root / "grub" / "grub.cfg", GRUB_TOP),
                              (root / "pxelinux.cfg" / "default", pxelinux_config(None))):
            current = shipped.read_text(errors="replace") if shipped.exists() else None
            if current is None or (current != text and current.startswith("# Written by Corral")):
                _replace(shipped, text)

    def paths(self, mac: str) -> dict[str, Path]:
        """The board's configuration files, by flavour."""
        return config_paths(self.root, mac)

    def publish_object(self, source: Path, sha256: str) -> str:
        """Make ``source`` (a content-addressed object) reachable under the
        root; returns its path relative to the root. A hard link where the
        storage is on the same filesystem, else a copy (renamed into place)."""
        if not SHA256_RE.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        target = self.root / "objects" / sha256
        size = source.stat().st_size
        if not (target.is_file() and target.stat().st_size == size):
            # A name of its own: two boards may publish the same object at once.
            fd, name = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".part",
                                        dir=target.parent)
            os.close(fd)
            partial = Path(name)
            try:
                partial.unlink()
                try:
                    os.link(source, partial)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copyfile(source, partial)
                    with open(partial, "rb") as handle:
                        os.fsync(handle.fileno())
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        return f"objects/{sha256}"

    @contextmanager
    def locked(self, mac: str) -> Iterator[None]:
        """Hold the board's lock (one writer of its configurations at a time on
        this host: a reimage's write and the switch back to local boot)."""
        locks = self.root / ".corral-locks"
        locks.mkdir(exist_ok=True)
        with open(locks / mac_file(mac), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, mac: str, files: BootFiles | None) -> dict[str, str]:
        """Write every flavour for ``mac``: the reimage's boot, or (None) the
        local disk. iPXE's is written last: once it says ``exit``, so do the
        others (the reference second stage waits for that before it reboots).
        Returns the paths written, relative to the root."""
        written = {}
        paths = self.paths(mac)
        for flavour, text in (("pxelinux", pxelinux_config(files)),
                              ("grub", grub_config(files)), ("ipxe", ipxe_script(files))):
            _replace(paths[flavour], text)
            written[flavour] = str(paths[flavour].relative_to(self.root))
        return written


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers see the old or the new
    file), through a temporary file of its own."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
