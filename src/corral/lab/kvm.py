"""Whether QEMU's iPXE ROM runs under KVM here, or the lab must use TCG.

On some hosts (nested VMs among them) iPXE resets the machine under KVM. The
probe starts a VM with no disk and no boot server under KVM and reads its
console: a second SeaBIOS start means iPXE reset it (docs/lab.md, "TCG
unless KVM is shown to work").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
# What SeaBIOS prints once per (re)start, and what iPXE prints when it has
# tried every network device and found nothing to boot.
_BANNER = "SeaBIOS (version"
_IPXE_DONE = ("Nothing to boot", "No more network devices")


def probe_verdict(console: str) -> bool | None:
    """Read a probe VM's console: False once SeaBIOS has started twice (iPXE
    reset the machine), True once iPXE finished with SeaBIOS started once,
    None while neither."""
    if console.count(_BANNER) >= 2:
        return False
    if console.count(_BANNER) == 1 and any(done in console for done in _IPXE_DONE):
        return True
    return None


def kvm_works(seconds: float = 30.0) -> bool:
    """Whether QEMU's iPXE ROM runs under KVM on this host: a VM with no disk
    and no boot server must reach iPXE's "nothing to boot" without a reset."""
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK) or shutil.which("qemu-system-x86_64") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="corral-kvm-probe-") as scratch:
        console = Path(scratch) / "console.log"
        vm = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-nographic",
             "-monitor", "none", "-serial", f"file:{console}", "-netdev", "user,id=n0",
             "-device", "e1000,netdev=n0", "-boot", "n"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and vm.poll() is None:
                time.sleep(0.5)
                text = console.read_bytes().decode("latin-1") if console.exists() else ""
                verdict = probe_verdict(text)
                if verdict is not None:
                    return verdict
            return False
        finally:
            vm.kill()
            vm.wait()
