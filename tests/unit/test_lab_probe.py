"""The KVM probe's verdict from a probe VM's console. The lines below are
SeaBIOS's and iPXE's own, taken from consoles captured on a host where iPXE
resets under KVM, and from the same host under TCG."""

from __future__ import annotations

import pytest

from corral import lab
from corral.errors import CorralError
from corral.lab import kvm

START = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)\n"
         "iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+0EFCF130+0EF0F130 CA00\n"
         "Booting from ROM...\niPXE (PCI 00:03.0) starting execution...ok\n")
UNDER_KVM = START + "iPXE initialising devices...ok\n" + START
UNDER_TCG = (START + "Configuring (net0 52:54:00:12:34:56)...... ok\n"
             "Nothing to boot: No such file or directory (http://ipxe.org/2d03e18e)\n"
             "No more network devices\nBooting from Hard Disk...\n")


@pytest.mark.parametrize(("console", "verdict"), [
    (UNDER_KVM, False), (UNDER_TCG, True), (START, None), ("", None)],
    ids=["reset", "works", "still-booting", "nothing-yet"])
def test_the_probe_reads_the_console(console, verdict):
    assert lab.probe_verdict(console) is verdict


def test_no_kvm_device_means_tcg(monkeypatch, tmp_path):
    monkeypatch.setattr(kvm, "KVM_DEVICE", tmp_path / "no-kvm")
    assert kvm.kvm_works() is False


def test_an_unknown_accelerator_is_refused(tmp_path):
    with pytest.raises(CorralError, match="accel must be auto, tcg or kvm, not 'hvf'"):
        lab.Lab(tmp_path, accel="hvf")
