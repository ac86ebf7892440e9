"""A lab of real (virtual) boards: QEMU VMs that netboot what Corral writes.

``corral lab up`` builds, in one directory:

- ``tftp/``: the boot root (``pxe_root``), with Debian's ``pxelinux.0`` and
  ``ldlinux.c32`` for BIOS boards and a GRUB netboot image
  (``grub/grubx64.efi``, built with ``grub-mkimage``) for UEFI boards;
- ``assets/``: the host's kernel, the reference second stage built into an
  initramfs (``examples/second-stage``), and two disk images of the lab's
  "installed OS" (the same kernel and initramfs behind syslinux, for BIOS and
  UEFI): the one each board starts with and the one a reimage installs;
- ``mirror/`` and ``import.yaml``: a simplestreams mirror offering that
  kernel, initramfs and image as amd64/generic/``lab``;
- ``lab.yaml``: the inventory, each board's power driven over IPMI or QMP
  and its ping an HTTP check of the installed system;

then starts one VM per board on the lab's network (:mod:`corral.lab.network`):
as root, a network namespace with a bridge, a tap per VM and dnsmasq serving
DHCP and TFTP with docs/lab.md's configuration, Corral reaching it over a
veth pair; without the privilege, QEMU's user-mode network, whose built-in
DHCP and TFTP server offers the boot root and whose 10.0.2.2 is the host's
loopback.

The QMP-powered boards sit behind the lab's power controllers, two boards
each (``lab-pdu-N``): a controller is the directory of its boards' QMP
sockets, so taking it away (:meth:`Lab.controller_down`) leaves every board
behind it unswitchable, as a PDU that stops answering does.

QEMU runs with TCG (software emulation) unless a probe shows KVM works here
(:func:`corral.lab.kvm.kvm_works`): iPXE resets under KVM on some hosts,
nested VMs among them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError
from corral.lab.kvm import kvm_works
from corral.lab.kvm import probe_verdict as probe_verdict
from corral.lab.network import MODES, NETNS, USER, Namespace, netns_works
from corral.paths import SECOND_STAGE_DIR

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
LDLINUX_BIOS = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
SYSLINUX_EFI = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")
LDLINUX_EFI = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
GRUB_MODULES = Path("/usr/lib/grub/x86_64-efi")
BUSYBOX = Path("/bin/busybox")
# What grubx64.efi needs: TFTP over the firmware's network, the shipped
# grub.cfg (regexp, test, configfile), Linux, and chainloading the disk.
# The lab boards' health check (docs/health.md), all of them at once. A QMP
# reset answers at once and ipmi_sim's cycle within its 10 s of waits
# (poweroff_wait + kill_wait): a controller silent for 20 s is down. A board
# boots from its disk to answering HTTP in 30-40 s under TCG on two busy
# cores: one not up in 120 s does not boot.
LAB_HEALTH = """name: lab
steps: [{step: power_cycle, timeout: 20}, {step: ping, timeout: 120}, {step: poll}]
rules: {max_checking: 1.0}
"""
# The lab's QMP-powered boards share power controllers, this many each.
BOARDS_PER_CONTROLLER = 2
GRUB_IMAGE_MODULES = ("normal", "configfile", "linux", "echo", "test", "regexp", "tftp",
                      "efinet", "boot", "gzio", "minicmd", "search", "search_fs_file",
                      "chain", "part_msdos", "fat", "efi_gop")
DISK_MB = 64
MEMORY_MB = 768
# bios: SeaBIOS, iPXE ROM chaining pxelinux.0; uefi: OVMF's PXE, GRUB;
# ipxe: SeaBIOS, its iPXE ROM fetching Corral's script over HTTP.
FIRMWARES = ("bios", "uefi", "ipxe")
IPMI_USER = "corral"
# The Debian packages that provide what the lab runs.
PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86", str(OVMF_CODE): "ovmf", str(PXELINUX): "pxelinux",
    str(LDLINUX_BIOS): "syslinux-common", str(SYSLINUX_EFI): "syslinux-efi",
    "syslinux": "syslinux", "mformat": "mtools", "grub-mkimage": "grub-common",
    str(GRUB_MODULES): "grub-efi-amd64-bin", str(BUSYBOX): "busybox-static",
    "cpio": "cpio", "/boot/vmlinuz-*": "linux-image-amd64",
    # The IPMI-powered boards' BMC, and the client Corral's ipmi driver runs.
    "ipmi_sim": "openipmi", "ipmitool": "ipmitool",
}
# What the netns network adds: its DHCP/TFTP daemon and the namespace tools.
NETNS_PACKAGES = {"dnsmasq": "dnsmasq", "ip": "iproute2"}


def missing(network: str = USER) -> list[str]:
    """What this host lacks to run the lab on ``network`` (``netns`` needs
    dnsmasq and ip besides), as ``thing (Debian package)``; empty: nothing."""
    absent = []
    wanted = {**PACKAGES, **(NETNS_PACKAGES if network == NETNS else {})}
    for thing, package in wanted.items():
        if thing.startswith("/boot/"):
            found = bool(_kernels())
        elif thing.startswith("/"):
            found = Path(thing).exists()
        else:
            found = shutil.which(thing) is not None
        if not found:
            absent.append(f"{thing} ({package})")
    if BUSYBOX.exists() and not _static(BUSYBOX):
        absent.append(f"a static {BUSYBOX} (busybox-static)")
    return absent


def _kernels() -> list[Path]:
    found = [p for p in Path("/boot").glob("vmlinuz-*") if os.access(p, os.R_OK)]
    return sorted(found, key=lambda p: [int(x) if x.isdigit() else x
                                        for x in re.split(r"(\d+)", p.name)])


def _static(path: Path) -> bool:
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    return result.returncode != 0 or "not a dynamic executable" in result.stdout + result.stderr


def _run(*argv: str, **env: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False,
                            env={**os.environ, **env} if env else None)
    if result.returncode != 0:
        raise CorralError(f"{argv[0]} failed ({result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[-500:]}")


@dataclass(frozen=True)
class LabBoard:
    name: str
    firmware: str
    mac: str
    port: int
    directory: Path
    # Its VM's QMP socket: in the directory of its power controller (QMP
    # boards) or its own (the BMC's VM).
    qmp: Path
    # Where its installed system answers HTTP, as host:port (its address on
    # the lab's bridge, or QEMU's port forward on the host's loopback).
    http: str
    # The UDP port of the board's BMC (OpenIPMI's ipmi_sim, which runs the
    # VM and is its only way to switch it), or 0: power goes over QMP.
    ipmi_port: int = 0
    # The power controller a QMP board is behind (lab-pdu-N).
    controller: str = ""
    index: int = 0

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"


class Lab:
    """The lab in ``directory``: ``bios``, ``uefi`` and ``ipxe`` boards, in turn."""

    def __init__(self, directory: Path, *, boards: int = 3, accel: str = "auto",
                 first_port: int = 0, ipmi_boards: int = 1, network: str = "auto") -> None:
        """``accel``: ``tcg``, ``kvm``, or ``auto`` (KVM where :func:`kvm_works`).
        The first ``ipmi_boards`` boards are powered over IPMI through a BMC of
        their own (``ipmi_sim``); the others over QMP. ``network``: ``netns``,
        ``user``, or ``auto`` (netns where :func:`netns_works`).

        Raises:
            CorralError: a bad argument, or ``netns`` where namespaces are refused.
        """
        if boards < 1 or boards > 240:
            raise CorralError("a lab has 1 to 240 boards")
        if accel not in ("auto", "tcg", "kvm"):
            raise CorralError(f"accel must be auto, tcg or kvm, not {accel!r}")
        if network not in MODES:
            raise CorralError(f"network must be {', '.join(MODES)}, not {network!r}")
        if network == NETNS and not netns_works():
            raise CorralError("the netns network needs ip, dnsmasq and the right to create "
                              "network namespaces (root or CAP_NET_ADMIN)")
        if network == "auto":
            network = NETNS if netns_works() else USER
        self.network = network
        self.directory = directory.resolve()
        self.namespace = Namespace(self.directory) if network == NETNS else None
        self.accel = accel
        self.tftp = self.directory / "tftp"
        self.assets = self.directory / "assets"
        kinds = len(FIRMWARES)
        self.boards = []
        for i in range(boards):
            name = f"lab-{FIRMWARES[i % kinds]}-{i // kinds + 1}"
            port = first_port + i if first_port else _free_port()
            qmp_board = i - ipmi_boards  # its place among the QMP boards
            controller = (f"lab-pdu-{qmp_board // BOARDS_PER_CONTROLLER + 1}"
                          if qmp_board >= 0 else "")
            self.boards.append(LabBoard(
                name=name, firmware=FIRMWARES[i % kinds], index=i,
                mac=f"52:54:00:c0:{i // 256:02x}:{i % 256:02x}", port=port,
                directory=self.directory / "vm" / name,
                qmp=(self.directory / "power" / controller / f"{name}.qmp" if controller
                     else self.directory / "vm" / name / "qmp.sock"),
                http=(f"{self.namespace.board_address(i)}:80" if self.namespace
                      else f"127.0.0.1:{port}"),
                ipmi_port=0 if controller else _free_udp_port(), controller=controller))
        self._vms: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ building

    def build(self) -> None:
        """Everything but the VMs (idempotent: existing assets are kept)."""
        absent = missing()
        if absent:
            raise CorralError("the lab needs " + ", ".join(absent))
        for path in (self.tftp / "grub", self.assets, self.directory / "vm",
                     self.directory / "health",
                     *{board.qmp.parent for board in self.boards}):
            path.mkdir(parents=True, exist_ok=True)
        (self.directory / "health" / "lab.yaml").write_text(LAB_HEALTH)
        kernel = _kernels()[-1]
        version = kernel.name.removeprefix("vmlinuz-")
        vmlinuz = self.assets / "vmlinuz"
        if not vmlinuz.exists():
            shutil.copyfile(kernel, vmlinuz)
        initrd = self.assets / "second-stage.cpio.gz"
        if not initrd.exists():
            _run(str(SECOND_STAGE_DIR / "build-initramfs.sh"), str(initrd),
                 KERNEL_VERSION=version)
        for name in ("preinstalled", "lab"):
            image = self.assets / f"{name}.img"
            if not image.exists():
                build_disk(image, vmlinuz, initrd, os_name=name)
        shutil.copyfile(PXELINUX, self.tftp / "pxelinux.0")
        shutil.copyfile(LDLINUX_BIOS, self.tftp / "ldlinux.c32")
        grub = self.tftp / "grub" / "grubx64.efi"
        if not grub.exists():
            _run("grub-mkimage", "-O", "x86_64-efi", "-d", str(GRUB_MODULES), "-o", str(grub),
                 "-p", "(tftp)/grub", *GRUB_IMAGE_MODULES)
        self._write_mirror(vmlinuz, initrd, self.assets / "lab.img")
        (self.directory / "import.yaml").write_text(json.dumps({
            "sources": [{"url": str(self.directory / "mirror")}],
            "sorting": ["sources_order"],
            "storage": str(self.directory / "boot-resources")}, indent=2) + "\n")
        self._write_inventory()

    def _write_mirror(self, vmlinuz: Path, initrd: Path, image: Path) -> None:
        import hashlib

        mirror = self.directory / "mirror"
        items = {}
        for ftype, source, name in (("boot-kernel", vmlinuz, "vmlinuz"),
                                    ("boot-initrd", initrd, "initrd.gz"),
                                    ("root-image", image, "disk.img")):
            target = mirror / "lab" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copyfile(source, target)
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            items[ftype] = {"ftype": ftype, "path": f"lab/{name}", "sha256": digest,
                            "size": target.stat().st_size}
        cmdline = mirror / "lab" / "cmdline"
        cmdline.write_bytes(b"console=ttyS0\n")
        items["boot-cmdline"] = {"ftype": "boot-cmdline", "path": "lab/cmdline",
                                 "sha256": hashlib.sha256(b"console=ttyS0\n").hexdigest(),
                                 "size": cmdline.stat().st_size}
        products = {"format": "products:1.0", "content_id": "org.corral:lab",
                    "products": {"org.corral:lab:amd64": {
                        "arch": "amd64", "release": "lab", "subarches": "generic",
                        "versions": {"1": {"items": items}}}}}
        streams = mirror / "streams" / "v1"
        streams.mkdir(parents=True, exist_ok=True)
        (streams / "org.corral:lab.json").write_text(json.dumps(products, indent=1))
        (streams / "index.json").write_text(json.dumps({"format": "index:1.0", "index": {
            "org.corral:lab": {"path": "streams/v1/org.corral:lab.json",
                               "format": "products:1.0",
                               "products": ["org.corral:lab:amd64"]}}}, indent=1))

    def _write_inventory(self) -> None:
        probe = f"{sys.executable} -m corral.lab.probe"
        lines = ["# The lab's boards (written by `corral lab up`).", "boards:"]
        for board in self.boards:
            check = f"{probe} http://{board.http}/ corral-installed"
            if board.ipmi_port:
                # A VM boots the network first and the netboot configuration
                # decides what it runs, so its boot device is left alone
                # (ipmi_sim's VM interface refuses boot flags anyway).
                power = (f"{{driver: ipmi, address: {self.bmc_address}, "
                         f"port: {board.ipmi_port}, username: {IPMI_USER}, "
                         f"password_file: \"{self.ipmi_password}\", set_boot_device: false}}")
            else:
                power = (f"{{driver: qemu, qmp: \"{board.qmp}\", "
                         f"controller: {board.controller}}}")
            lines += [f"  - name: {board.name}", "    arch: amd64", "    subarch: generic",
                      "    release: lab", f"    mac: \"{board.mac}\"",
                      f"    hostname: {board.http.rpartition(':')[0]}",
                      f"    power: {power}",
                      # The VM's serial port, as QEMU writes it (-serial file:).
                      f"    console: {{type: file, path: \"{board.console}\"}}",
                      f"    commands: {{ping: \"{check}\", poll: \"{check}\"}}",
                      f"    labels: {{firmware: {board.firmware}, "
                      f"http: \"{board.http}\"}}"]
        (self.directory / "lab.yaml").write_text("\n".join(lines) + "\n")

    @property
    def inventory(self) -> Path:
        return self.directory / "lab.yaml"

    @property
    def ipmi_password(self) -> Path:
        """The lab BMCs' password, in a file only its owner reads."""
        return self.directory / "ipmi.pass"

    @property
    def bmc_address(self) -> str:
        """Where the lab's BMCs listen: the bridge, or the host's loopback."""
        return self.namespace.lab_address if self.namespace else "127.0.0.1"

    @property
    def corral_host(self) -> str:
        """Where Corral listens for this lab: the host's end of the veth pair
        (netns), or the loopback, which QEMU's user network reaches as 10.0.2.2."""
        return self.namespace.host_address if self.namespace else "127.0.0.1"

    def settings(self, http_port: int) -> dict[str, str]:
        """The environment ``corral serve`` (listening on :attr:`corral_host`)
        needs to drive this lab."""
        ns = self.namespace
        return {"CORRAL_PXE_ROOT": str(self.tftp),
                "CORRAL_BOOTRES_STORAGE": str(self.directory / "boot-resources"),
                "CORRAL_BOOT_CALLBACK_URL":
                    f"http://{ns.host_address if ns else '10.0.2.2'}:{http_port}",
                # The lab's subnet, or QEMU's user network, which reaches the
                # host from its loopback.
                "CORRAL_BOOT_NETWORKS": str(ns.subnet) if ns else "127.0.0.0/8",
                "CORRAL_HEALTH_DIR": str(self.directory / "health"),
                # A lab controller has two boards: both failing there is the
                # controller's fault. Probed again after 10 s at first, then 20,
                # 40...: a lab's outage is short.
                "CORRAL_HEALTH_EQUIPMENT_THRESHOLD": str(BOARDS_PER_CONTROLLER),
                "CORRAL_HEALTH_BACKOFF": "10"}

    def controller_down(self, controller: str) -> None:
        """Take the power controller away: no board behind it can be switched
        (its QMP sockets are gone); its VMs keep running."""
        (self.directory / "power" / controller).rename(
            self.directory / "power" / f"{controller}.away")

    def controller_up(self, controller: str) -> None:
        """Bring the power controller back."""
        (self.directory / "power" / f"{controller}.away").rename(
            self.directory / "power" / controller)

    # ------------------------------------------------------------ running

    def start(self, http_port: int) -> None:
        """Bring up the lab's network and start every board's VM with the disk
        it was installed with; Corral serves HTTP on :attr:`corral_host`'s
        ``http_port`` (where ``ipxe`` boards fetch their scripts).

        Raises:
            CorralError: a VM or the network did not start (what had started
                is stopped again).
        """
        if self.accel == "auto":
            self.accel = "kvm" if kvm_works() else "tcg"
        try:
            self._start(http_port)
        except BaseException:
            self.stop()
            raise

    def _start(self, http_port: int) -> None:
        if self.namespace:
            self.namespace.up(taps=len(self.boards))
            self.namespace.start_dnsmasq(
                tftp_root=self.tftp, corral_url=f"http://{self.corral_host}:{http_port}",
                hosts=[(b.mac, b.http.rpartition(":")[0], b.firmware == "bios")
                       for b in self.boards])
        for board in self.boards:
            board.directory.mkdir(parents=True, exist_ok=True)
            if not board.disk.exists():
                shutil.copyfile(self.assets / "preinstalled.img", board.disk)
            board.qmp.unlink(missing_ok=True)
            argv = self.command(board, http_port)
            if board.ipmi_port:
                argv = self._bmc(board, argv)
            if self.namespace:
                # The VM (or its BMC, and the VMs it starts) in the lab's namespace.
                argv = self.namespace.exec(argv)
            with open(board.directory / "qemu.log", "wb") as errors:
                self._vms[board.name] = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                    start_new_session=True)
        deadline = time.monotonic() + 30
        for board in self.boards:
            while not board.qmp.exists():
                vm = self._vms[board.name]
                if vm.poll() is not None:
                    raise CorralError(f"QEMU for {board.name} exited ({vm.returncode}): "
                                      + (board.directory / "qemu.log").read_text()[-500:])
                if time.monotonic() > deadline:
                    raise CorralError(f"QEMU for {board.name} did not open its QMP socket")
                time.sleep(0.1)

    def _bmc(self, board: LabBoard, qemu: list[str]) -> list[str]:
        """The ipmi_sim command that runs ``qemu`` as board's chassis: power on
        starts the VM, power off stops it (a graceful request over the VM's
        IPMI interface, then SIGTERM), a cycle does both. The VM talks to its
        BMC through QEMU's ipmi-bmc-extern device."""
        if not self.ipmi_password.exists():
            self.ipmi_password.write_text(secrets.token_urlsafe(12) + "\n")
            self.ipmi_password.chmod(0o600)
        password = self.ipmi_password.read_text().strip()
        vm_port = _free_port()
        qemu = [*qemu, "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={vm_port},reconnect=1",
                "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
                "-device", "isa-ipmi-kcs,bmc=bmc0"]
        config = board.directory / "bmc.conf"
        config.write_text(f"""name "{board.name}-bmc"
set_working_mc 0x20
  startlan 1
    addr {self.bmc_address} {board.ipmi_port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {uuid.uuid5(uuid.NAMESPACE_OID, board.name).hex}
  endlan
  serial 15 127.0.0.1 {vm_port} codec VM
  startcmd "{shlex.join(qemu)}"
  startnow true
  poweroff_wait 5
  kill_wait 5
  user 2 true "{IPMI_USER}" "{password}" admin 10 none md2 md5 straight
""")
        config.chmod(0o600)
        (board.directory / "bmc.emu").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            "mc_enable 0x20\n")
        return ["ipmi_sim", "-c", str(config), "-f", str(board.directory / "bmc.emu"), "-n",
                "-s", str(board.directory / "bmc-state")]

    def command(self, board: LabBoard, http_port: int) -> list[str]:
        if self.namespace:
            # The board's tap on the lab's bridge, where dnsmasq answers.
            netdev = (f"tap,id=net0,ifname={self.namespace.tap(board.index)},"
                      "script=no,downscript=no")
        else:
            bootfile = {"bios": "pxelinux.0", "uefi": "grub/grubx64.efi",
                        "ipxe": f"http://10.0.2.2:{http_port}/boot/ipxe/{board.mac}"
                        }[board.firmware]
            netdev = (f"user,id=net0,tftp={self.tftp},bootfile={bootfile},"
                      f"hostfwd=tcp:127.0.0.1:{board.port}-:80")
        # A BMC-run VM is a new process after each power cycle: its console
        # is appended to, so that every boot's output stays.
        console = (["-chardev", f"file,id=console0,path={board.console},append=on",
                    "-serial", "chardev:console0"] if board.ipmi_port
                   else ["-serial", f"file:{board.console}"])
        argv = ["qemu-system-x86_64", "-accel", self.accel, "-m", str(MEMORY_MB),
                "-display", "none", "-monitor", "none", *console,
                "-qmp", f"unix:{board.qmp},server=on,wait=off",
                "-drive", f"file={board.disk},format=raw,if=none,id=disk0",
                "-device", "virtio-blk-pci,drive=disk0,bootindex=2",
                "-netdev", netdev]
        if board.firmware in ("bios", "ipxe"):
            # SeaBIOS, and QEMU's iPXE ROM on the NIC, which chains pxelinux.0
            # (bios) or runs the script Corral serves (ipxe).
            return [*argv, "-device", f"e1000,netdev=net0,mac={board.mac},bootindex=1"]
        vars_file = board.directory / "OVMF_VARS.fd"
        if not vars_file.exists():
            shutil.copyfile(OVMF_VARS, vars_file)
        # OVMF's own PXE (no iPXE ROM), IPv4 only: no minutes lost to IPv6.
        return [*argv, "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
                "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={vars_file}",
                "-device", f"virtio-net-pci,netdev=net0,mac={board.mac},bootindex=1,romfile="]

    def stop(self) -> None:
        """Stop the VMs and BMCs, then take the lab's network down (dnsmasq,
        the namespace and everything in it). Safe after a partial start."""
        for board in self.boards:
            if board.ipmi_port and board.qmp.exists():
                _quit(board.qmp)  # the BMC's VM, which is not in its process group
        for vm in self._vms.values():
            if vm.poll() is None:
                os.killpg(vm.pid, signal.SIGTERM)
        for vm in self._vms.values():
            try:
                vm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(vm.pid, signal.SIGKILL)
                vm.wait()
        self._vms.clear()
        if self.namespace:
            self.namespace.down()


def build_disk(path: Path, kernel: Path, initrd: Path, *, os_name: str) -> None:
    """A disk image that boots ``kernel`` and ``initrd`` under BIOS (syslinux
    in the MBR and the partition) and UEFI (syslinux.efi as the removable-
    media loader): one FAT partition, marked active and as the EFI system
    partition. Built with mtools and syslinux, no loop device or root."""
    size = DISK_MB * 1024 * 1024
    start = 2048
    count = size // 512 - start
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as handle:
        handle.truncate(size)
    mbr = bytearray(SYSLINUX_MBR.read_bytes()[:440].ljust(512, b"\0"))
    mbr[446:462] = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0xEF, b"\xfe\xff\xff",
                               start, count)
    mbr[510:512] = b"\x55\xaa"
    with open(partial, "r+b") as handle:
        handle.write(mbr)
    volume = f"{partial}@@{start * 512}"
    config = partial.with_name("syslinux.cfg")
    config.write_text(f"DEFAULT os\nLABEL os\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n"
                      f"  APPEND console=ttyS0 corral.os={os_name}\n")
    try:
        _run("mformat", "-i", volume, "-v", "CORRAL", "-T", str(count), "-h", "64", "-s", "32",
             "-H", str(start), "::")
        _run("syslinux", "--install", "--offset", str(start * 512), str(partial))
        _run("mcopy", "-i", volume, str(config), "::/syslinux.cfg")
        _run("mcopy", "-i", volume, str(kernel), "::/vmlinuz")
        _run("mcopy", "-i", volume, str(initrd), "::/initrd.gz")
        _run("mmd", "-i", volume, "::/EFI", "::/EFI/BOOT")
        _run("mcopy", "-i", volume, str(SYSLINUX_EFI), "::/EFI/BOOT/BOOTX64.EFI")
        _run("mcopy", "-i", volume, str(LDLINUX_EFI), "::/EFI/BOOT/ldlinux.e64")
        _run("mcopy", "-i", volume, str(config), "::/EFI/BOOT/syslinux.cfg")
    finally:
        config.unlink(missing_ok=True)
    partial.replace(path)


def _quit(qmp: Path) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(qmp))
            sock.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n')
            sock.recv(4096)
    except OSError:
        pass  # already gone


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
