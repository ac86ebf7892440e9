"""The lab's network: how its boards get an address and a boot file, and how
they reach Corral.

Two modes (docs/lab.md, "The lab's network"):

- ``netns`` (root, or CAP_NET_ADMIN): a network namespace of the lab's own
  (:class:`Namespace`) holding a bridge, one persistent tap device per VM and
  **dnsmasq** on the bridge, serving DHCP and TFTP with the configuration
  docs/lab.md gives a physical lab (:func:`dnsmasq_config`, which a unit test
  compares with the page). A veth pair joins the bridge to the host, and the
  host's end carries Corral's address. The VMs, their BMCs and dnsmasq run
  inside the namespace (``ip netns exec``); Corral, and the power and ping
  commands it runs, stay outside and reach boards and BMCs by address, as in
  a physical lab. Removing the namespace removes the bridge, the taps and the
  veth pair with it.
- ``user``: each VM has QEMU's user-mode network, whose built-in DHCP and
  TFTP server offers the boot root and whose 10.0.2.2 is the host's
  loopback. No privileges are needed; it is the fallback where ``ip netns
  add`` is refused.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from corral.errors import CorralError

NETNS = "netns"
USER = "user"
MODES = ("auto", NETNS, USER)
# Inside the namespace names are the lab's own: the bridge is docs/lab.md's
# interface, and the veth's end on it is the uplink to the host.
BRIDGE = "lab0"
UPLINK = "uplink0"
# Boards' addresses, by MAC, from the subnet's 10th on; the DHCP range holds them.
FIRST_BOARD = 10
MAX_BOARDS = 240
# dnsmasq answers within a second of starting; under two busy cores allow more.
DNSMASQ_START_SECONDS = 15


def dnsmasq_config(*, interface: str, first: str, last: str, tftp_root: str,
                   corral_url: str) -> str:
    """The dnsmasq configuration a lab's boot server needs, as docs/lab.md
    shows it: DHCP on ``interface`` from ``first`` to ``last``, TFTP from the
    boot root, a boot file by client architecture, and Corral's iPXE script
    (at ``corral_url``) for iPXE."""
    return f"""interface={interface}
dhcp-range={first},{last},12h
enable-tftp
tftp-root={tftp_root}
tftp-secure
# By client architecture (DHCP option 93).
dhcp-match=set:efi-x64,option:client-arch,7
dhcp-match=set:efi-x64,option:client-arch,9
dhcp-match=set:efi-arm64,option:client-arch,11
# iPXE identifies itself: hand it Corral's script instead of a loader.
dhcp-userclass=set:ipxe,iPXE
dhcp-boot=tag:ipxe,{corral_url}/boot/ipxe/${{net0/mac}}
dhcp-boot=tag:!ipxe,tag:efi-x64,grub/grubx64.efi
dhcp-boot=tag:!ipxe,tag:efi-arm64,grub/grubaa64.efi
dhcp-boot=tag:!ipxe,tag:!efi-x64,tag:!efi-arm64,pxelinux.0
"""


def netns_works() -> bool:
    """Whether this process may create network namespaces (``ip netns add``
    works) and has what the netns lab runs (``ip``, ``dnsmasq``)."""
    if shutil.which("ip") is None or shutil.which("dnsmasq") is None:
        return False
    probe = f"corral-probe-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True,
                      check=False).returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return True


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.64.0.0/10 that no route or address of this host overlaps
    (random, so that labs running side by side pick different ones)."""
    used = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"],
                 ["ip", "-j", "-4", "addr", "show"]):
        listing = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        for entry in json.loads(listing or "[]"):
            prefixes = [entry.get("dst")] + [f"{a['local']}/{a['prefixlen']}"
                                             for a in entry.get("addr_info", [])]
            for prefix in prefixes:
                if prefix and prefix != "default":
                    used.append(ipaddress.ip_network(prefix, strict=False))
    chooser = random.SystemRandom()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(
            f"10.{chooser.randrange(64, 128)}.{chooser.randrange(256)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise CorralError("no free /24 in 10.64.0.0/10 for the lab's network")


class Namespace:
    """The lab's network namespace: a bridge with dnsmasq on it, a tap per
    VM, and a veth pair to the host, whose end is Corral's address.

    Addresses in the lab's subnet: ``.1`` Corral (the host's end),
    ``.2`` the bridge (dnsmasq, the boards' BMCs), ``.10`` on the boards."""

    def __init__(self, directory: Path) -> None:
        run = secrets.token_hex(3)
        self.directory = directory
        self.name = f"corral-lab-{run}"
        self.host_link = f"corral{run}"  # an interface name: at most 15 characters
        self.subnet = free_subnet()
        self.host_address = str(self.subnet[1])
        self.lab_address = str(self.subnet[2])
        self._dnsmasq: subprocess.Popen[bytes] | None = None
        self._created = False

    def board_address(self, index: int) -> str:
        if index >= MAX_BOARDS:
            raise CorralError(f"a netns lab has at most {MAX_BOARDS} boards")
        return str(self.subnet[FIRST_BOARD + index])

    @staticmethod
    def tap(index: int) -> str:
        return f"tap{index}"

    def exec(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def up(self, taps: int) -> None:
        """Create the namespace, its bridge, ``taps`` tap devices on it and
        the veth pair to the host.

        Raises:
            CorralError: a step was refused (the namespace is removed again).
        """
        _ip("netns", "add", self.name)
        self._created = True
        try:
            inside = ("-n", self.name)
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "link", "add", "name", BRIDGE, "type", "bridge")
            _ip(*inside, "addr", "add", f"{self.lab_address}/{self.subnet.prefixlen}",
                "dev", BRIDGE)
            _ip(*inside, "link", "set", BRIDGE, "up")
            for index in range(taps):
                _ip(*inside, "tuntap", "add", "dev", self.tap(index), "mode", "tap")
                _ip(*inside, "link", "set", self.tap(index), "master", BRIDGE, "up")
            _ip("link", "add", "name", self.host_link, "type", "veth", "peer", "name", UPLINK,
                "netns", self.name)
            _ip(*inside, "link", "set", UPLINK, "master", BRIDGE, "up")
            _ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}",
                "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
        except CorralError:
            self.down()
            raise

    def start_dnsmasq(self, *, tftp_root: Path, corral_url: str,
                      hosts: Sequence[tuple[str, str, bool]]) -> None:
        """Run dnsmasq on the bridge with docs/lab.md's configuration and the
        lab's own lines after it. ``hosts``: each board's MAC, address and
        whether it boots pxelinux although its firmware is iPXE.

        Raises:
            CorralError: dnsmasq exited, or did not start serving.
        """
        config = self.directory / "dnsmasq.conf"
        log = self.directory / "dnsmasq.log"
        config.write_text(self.config(tftp_root=tftp_root, corral_url=corral_url, hosts=hosts))
        with open(log, "wb") as output:
            self._dnsmasq = subprocess.Popen(
                self.exec(["dnsmasq", "--no-daemon", f"--conf-file={config}"]),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + DNSMASQ_START_SECONDS
        while "DHCP, IP range" not in log.read_text(errors="replace"):
            if self._dnsmasq.poll() is not None:
                raise CorralError(f"dnsmasq exited ({self._dnsmasq.returncode}): "
                                  + log.read_text(errors="replace")[-500:])
            if time.monotonic() > deadline:
                raise CorralError("dnsmasq did not start serving DHCP: "
                                  + log.read_text(errors="replace")[-500:])
            time.sleep(0.1)

    def config(self, *, tftp_root: Path, corral_url: str,
               hosts: Sequence[tuple[str, str, bool]]) -> str:
        """docs/lab.md's configuration for the bridge, then the lab's own lines."""
        first, last = self.board_address(0), str(self.subnet[FIRST_BOARD + MAX_BOARDS - 1])
        lines = [dnsmasq_config(interface=BRIDGE, first=first, last=last,
                                tftp_root=str(tftp_root), corral_url=corral_url),
                 "# The lab's own: no DNS, this bridge only, files of its own.",
                 "port=0", "bind-interfaces",
                 # The lab's directory may be private to its owner (pytest's are
                 # 0700): dnsmasq stays root, and serves world-readable files only.
                 "user=root",
                 f"dhcp-leasefile={self.directory / 'dnsmasq.leases'}",
                 f"pid-file={self.directory / 'dnsmasq.pid'}",
                 "log-facility=-", "log-dhcp",
                 "# Each board's address by MAC, which its ping and inventory name."]
        for mac, address, pxelinux in hosts:
            lines.append(f"dhcp-host={mac},{address}" + (",set:pxelinux" if pxelinux else ""))
        lines += ["# The lab's BIOS boards run QEMU's iPXE ROM, which says it is iPXE, but",
                  "# are there to boot pxelinux: of the dhcp-boot lines that match, the",
                  "# last one wins.",
                  "dhcp-boot=tag:pxelinux,pxelinux.0"]
        return "\n".join(lines) + "\n"

    def down(self) -> None:
        """Stop dnsmasq and remove the namespace with everything in it (its
        bridge, taps and veth pair). Safe to call twice, or after a partial
        :meth:`up`; processes the lab started inside must be gone first."""
        if self._dnsmasq is not None:
            if self._dnsmasq.poll() is None:
                os.killpg(self._dnsmasq.pid, signal.SIGTERM)
                try:
                    self._dnsmasq.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self._dnsmasq.pid, signal.SIGKILL)
                    self._dnsmasq.wait()
            self._dnsmasq = None
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
            self._created = False
        # Gone with its peer; removed here in case the namespace was not.
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, check=False)

    def exists(self) -> bool:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                 check=False).stdout
        return any(line.split()[:1] == [self.name] for line in listing.splitlines())


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CorralError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
