"""Imports from hostile simplestreams mirrors.

Every case is a mirror that tries to reach outside the storage directory,
outside the mirror, past the checks or into a board's PXE configuration. Each
import must fail saying why, leave the files around the storage directory as
they were, publish nothing, and be recorded as failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.bootres.config import ImportConfig, Source
from corral.bootres.importer import list_imports, run_import
from corral.bootres.store import Storage
from corral.bootres.streams import ImportFailed
from tests.integration.mirrors import Mirror, checksums

SECRET = b"a file outside the mirror"


@dataclass
class Lab:
    """``root`` holds the mirror, a secret file beside it, and ``box/storage``."""

    root: Path
    mirror: Mirror
    storage: Path
    secret: Path

    def config(self, **settings: object) -> ImportConfig:
        """The mirror as the only source; ``settings`` of the source or the import."""
        source = {k: v for k, v in settings.items() if k in ("allow_md5",)}
        top = {k: v for k, v in settings.items() if k not in source}
        return ImportConfig(sources=(Source(url=self.mirror.url, **source),),
                            sorting=("sources_order",), storage=self.storage, **top)

    def offer(self, items: dict, *, product: str = "com.example:trusty:amd64",
              version: str = "20140301", arch: str = "amd64", release: str = "trusty",
              subarches: str = "generic") -> None:
        """One product, kernel and initrd included, with ``items`` over them."""
        self.mirror.product(product, arch=arch, release=release, subarches=subarches,
                            versions={version: {"items": {
                                **self.mirror.boot_items("good", "good"), **items}}})


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    # Apart from the SQLite database in tmp_path.
    root = tmp_path / "lab"
    (root / "box").mkdir(parents=True)
    secret = root / "secret"
    secret.write_bytes(SECRET)
    return Lab(root=root, mirror=Mirror(root / "mirror"), storage=root / "box" / "storage",
               secret=secret)


def tree(root: Path, *, skip: Path) -> dict[str, str]:
    """Every path under ``root`` but ``skip``, with what it is (a symlink's target)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in dirs + files:
            path = here / name
            kind = f"-> {os.readlink(path)}" if path.is_symlink() else \
                "dir" if path.is_dir() else "file"
            found[str(path.relative_to(root))] = kind
    return found


def links_leaving(storage: Path) -> list[str]:
    """Symlinks under ``storage`` that resolve to somewhere outside it."""
    leaving = []
    for directory, dirs, files in os.walk(storage):
        for name in dirs + files:
            path = Path(directory, name)
            if path.is_symlink() and not path.resolve().is_relative_to(storage.resolve()):
                leaving.append(f"{path} -> {os.readlink(path)}")
    return leaving


# ---------------------------------------------------------------- the mirrors
# Each case builds its mirror in ``lab`` and returns (the expected error as a
# regular expression, extra source settings).

Case = Callable[[Lab], "tuple[str, dict]"]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(build: Case) -> Case:
        CASES[name] = build
        return build
    return register


@case("arch-traversal")
def _(lab):
    lab.offer({}, arch="../../../../escape")
    return r"arch '\.\./\.\./\.\./\.\./escape' is not a valid name", {}


@case("subarch-traversal")
def _(lab):
    lab.offer({}, subarches="generic,../../../../../escape")
    return r"subarch '(\.\./){5}escape' is not a valid name", {}


@case("absolute-release")
def _(lab):
    lab.offer({}, release=str(lab.root / "abs-release"))
    return r"release '/.*/abs-release' is not a valid name", {}


@case("absolute-ftype")
def _(lab):
    lab.offer({"boot-dtb": lab.mirror.item("p/dtb", b"dtb", ftype=str(lab.root / "abs-ftype"))})
    return r"ftype '/.*/abs-ftype' is not a valid name", {}


@case("ftype-traversal")
def _(lab):
    lab.offer({"boot-dtb": lab.mirror.item("p/dtb", b"dtb", ftype="../" * 7 + "escape")})
    return r"ftype '(\.\./){7}escape' is not a valid name", {}


@case("ftype-with-a-slash")
def _(lab):
    lab.offer({"boot-dtb": lab.mirror.item("p/dtb", b"dtb", ftype="boot/dtb")})
    return r"ftype 'boot/dtb' is not a valid name", {}


@case("item-name-as-ftype-traversal")
def _(lab):
    lab.offer({"../" * 7 + "escape": lab.mirror.item("p/dtb", b"dtb")})
    return r"ftype '(\.\./){7}escape' is not a valid name", {}


@case("product-with-a-newline")
def _(lab):
    lab.offer({}, product="com.example:trusty\nDEFAULT evil")
    return r"product 'com\.example:trusty\\nDEFAULT evil' is not a valid name", {}


@case("version-with-a-newline")
def _(lab):
    lab.offer({}, version="20140301\n  MENU HIDDEN")
    return r"version '20140301\\n  MENU HIDDEN' is not a valid name", {}


@case("cmdline-with-a-newline")
def _(lab):
    lab.offer({"boot-cmdline": lab.mirror.item(
        "p/cmdline", b"console=ttyS0\nLABEL evil\n  KERNEL /evil\n", ftype="boot-cmdline")})
    return r"p/cmdline: a boot-cmdline must be one line of printable text", {}


@case("cmdline-with-a-control-character")
def _(lab):
    lab.offer({"boot-cmdline": lab.mirror.item("p/cmdline", b"console=ttyS0\rDEFAULT evil",
                                               ftype="boot-cmdline")})
    return r"p/cmdline: a boot-cmdline must be one line of printable text", {}


@case("sha256-traversal")
def _(lab):
    # storage/objects/../../../secret is the secret file.
    lab.offer({"boot-dtb": {**lab.mirror.item("p/dtb", SECRET, ftype="boot-dtb"),
                            "sha256": "../../../secret"}})
    return r"sha256 must be 64 hexadecimal digits, not '\.\./\.\./\.\./secret'", {}


@case("sha256-absolute")
def _(lab):
    lab.offer({"boot-dtb": {**lab.mirror.item("p/dtb", SECRET, ftype="boot-dtb"),
                            "sha256": str(lab.secret)}})
    return r"sha256 must be 64 hexadecimal digits, not '/.*/secret'", {}


@case("sha256-not-hex")
def _(lab):
    lab.offer({"boot-dtb": {**lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb"),
                            "sha256": "z" * 64}})
    return r"sha256 must be 64 hexadecimal digits", {}


@case("sha512-too-short")
def _(lab):
    lab.offer({"boot-dtb": {**lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb"),
                            "sha512": "ab" * 32}})
    return r"sha512 must be 128 hexadecimal digits", {}


@case("md5-only")
def _(lab):
    item = lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb")
    del item["sha256"]
    lab.offer({"boot-dtb": item})
    return r"only an md5 checksum; a sha256 or sha512 is needed \(or allow_md5: true", {}


@case("no-size")
def _(lab):
    item = lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb")
    del item["size"]
    lab.offer({"boot-dtb": item})
    return r"item 'boot-dtb' has no size", {}


@case("string-size")
def _(lab):
    lab.offer({"boot-dtb": {**lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb"),
                            "size": "999999"}})
    return r"item 'boot-dtb': size must be a whole number of bytes, not '999999'", {}


@case("negative-size")
def _(lab):
    lab.offer({"boot-dtb": {**lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb"),
                            "size": -1}})
    return r"item 'boot-dtb': size must be a whole number of bytes, not -1", {}


@case("size-above-the-limit")
def _(lab):
    lab.offer({"boot-dtb": lab.mirror.item("p/dtb", b"x" * 2048, ftype="boot-dtb")})
    return r"item 'boot-dtb': size 2048 is more than max_item_size \(1024\)", \
        {"max_item_size": 1024}


@case("two-items-one-ftype")
def _(lab):
    lab.offer({"another-kernel": lab.mirror.item("p/k2", b"k2", ftype="boot-kernel")})
    return r"more than one item has ftype boot-kernel", {}


@case("percent-encoded-traversal")
def _(lab):
    lab.offer({"boot-dtb": {**checksums(SECRET), "ftype": "boot-dtb",
                            "path": "%2e%2e/secret"}})
    return r"refusing item path '%2e%2e/secret'", {}


@case("percent-encoded-slash")
def _(lab):
    lab.offer({"boot-dtb": {**checksums(SECRET), "ftype": "boot-dtb",
                            "path": "good/%2E%2E%2F%2e%2e%2Fsecret"}})
    return r"refusing item path 'good/%2E%2E%2F%2e%2e%2Fsecret'", {}


@case("absolute-item-path")
def _(lab):
    lab.offer({"boot-dtb": {**checksums(SECRET), "ftype": "boot-dtb",
                            "path": str(lab.secret)}})
    return r"refusing item path '/.*/secret'", {}


@case("symlink-to-a-file-outside")
def _(lab):
    (lab.mirror.root / "link").symlink_to(lab.secret)
    lab.offer({"boot-dtb": {**checksums(SECRET), "ftype": "boot-dtb", "path": "link"}})
    return r"mirror/link: a symlink; a local mirror may hold only regular files", {}


@case("symlink-to-a-directory-outside")
def _(lab):
    (lab.mirror.root / "dir").symlink_to(lab.root)
    lab.offer({"boot-dtb": {**checksums(SECRET), "ftype": "boot-dtb", "path": "dir/secret"}})
    return r"mirror/dir/secret: a symlink; a local mirror may hold only regular files", {}


@case("symlink-inside-the-mirror")
def _(lab):
    (lab.mirror.root / "also-kernel").symlink_to("good/kernel")
    lab.offer({"boot-kernel": {**checksums(b"kernel good"), "ftype": "boot-kernel",
                               "path": "also-kernel"}})
    return r"mirror/also-kernel: a symlink; a local mirror may hold only regular files", {}


@case("symlink-to-a-device")
def _(lab):
    (lab.mirror.root / "zero").symlink_to("/dev/zero")
    lab.offer({"boot-dtb": {**checksums(b"\0" * 16), "ftype": "boot-dtb", "path": "zero"}})
    return r"mirror/zero: a symlink; a local mirror may hold only regular files", {}


@case("a-fifo")
def _(lab):
    os.mkfifo(lab.mirror.root / "fifo")
    lab.offer({"boot-dtb": {**checksums(b"dtb"), "ftype": "boot-dtb", "path": "fifo"}})
    return r"mirror/fifo: not a regular file", {}


@case("products-file-through-percent-encoded-traversal")
def _(lab):
    lab.offer({})
    lab.mirror.write()
    products = lab.mirror.root / "streams" / "v1" / "com.example:images.json"
    (lab.root / "outside.json").write_text(products.read_text())
    index = lab.mirror.root / "streams" / "v1" / "index.json"
    doc = json.loads(index.read_text())
    doc["index"]["com.example:images"]["path"] = "%2e%2e/outside.json"
    index.write_text(json.dumps(doc))
    return r"refusing item path '%2e%2e/outside\.json'", {}


@case("products-file-is-a-symlink")
def _(lab):
    lab.offer({})
    lab.mirror.write()
    products = lab.mirror.root / "streams" / "v1" / "com.example:images.json"
    outside = lab.root / "outside.json"
    outside.write_text(products.read_text())
    products.unlink()
    products.symlink_to(outside)
    return r"com\.example:images\.json: a symlink; a local mirror may hold only regular", {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_mirror_fails_and_leaves_nothing_behind(lab, engine, name):
    expected, source = CASES[name](lab)
    if not (lab.mirror.root / "streams").exists():
        lab.mirror.write()
    before = tree(lab.root, skip=lab.storage)
    with pytest.raises(ImportFailed, match=expected) as info:
        run_import(lab.config(**source), engine.store)
    assert "\n" not in str(info.value)
    assert tree(lab.root, skip=lab.storage) == before
    assert links_leaving(lab.storage) == []
    assert not os.path.lexists(lab.storage / "current")
    assert list((lab.storage / "snapshots").iterdir()) == []
    [row] = list_imports(engine.store)
    assert row["status"] == "failed"
    assert re.search(expected, row["error"])
    assert row["finished_at"] is not None


# ---------------------------------------------------------------- what still works


def test_md5_only_items_import_when_the_source_allows_md5(lab):
    item = lab.mirror.item("p/dtb", b"dtb", ftype="boot-dtb")
    del item["sha256"]
    lab.offer({"boot-dtb": item})
    lab.mirror.write()
    with pytest.raises(ImportFailed, match="only an md5 checksum"):
        run_import(lab.config())
    run_import(lab.config(allow_md5=True))
    leaf = lab.storage / "current" / "control" / "amd64" / "generic" / "trusty" / "boot-dtb"
    assert leaf.read_bytes() == b"dtb"


def test_symlinks_above_the_mirror_root_are_followed(lab):
    lab.offer({})
    lab.mirror.write()
    (lab.root / "mirror-link").symlink_to(lab.mirror.root)
    run_import(ImportConfig(sources=(Source(url=(lab.root / "mirror-link").as_uri()),),
                            sorting=("sources_order",), storage=lab.storage))
    assert (lab.storage / "current" / "control" / "amd64" / "generic" / "trusty" /
            "boot-kernel").read_bytes() == b"kernel good"


def test_percent_encoded_names_inside_the_mirror_still_work(lab):
    lab.offer({"boot-dtb": {**lab.mirror.item("p/a b.dtb", b"dtb"), "ftype": "boot-dtb",
                            "path": "p/a%20b.dtb"}})
    lab.mirror.write()
    run_import(lab.config())
    assert (lab.storage / "current" / "control" / "amd64" / "generic" / "trusty" /
            "boot-dtb").read_bytes() == b"dtb"


def test_a_cmdline_ending_in_a_newline_is_one_line(lab):
    from corral.bootres.pxe import BootResourcePxe

    lab.offer({"boot-cmdline": lab.mirror.item("p/cmdline", b"console=ttyS0 quiet\n",
                                               ftype="boot-cmdline")})
    lab.mirror.write()
    run_import(lab.config())
    root = lab.root / "tftp"
    pxe = BootResourcePxe(lab.storage, root, callback_url="http://10.0.0.1:8080",
                          tokens=FixedTokens())
    written = pxe.write(_pxe_context())["paths"]
    assert sorted(written) == ["grub", "ipxe", "pxelinux"]
    for flavour, path in written.items():
        # The command line ends its kernel line in every flavour: the newline
        # neither splits it nor leaves a line of its own behind.
        text = (root / path).read_text()
        [kernel_line] = [line for line in text.splitlines() if "console=ttyS0" in line]
        assert kernel_line.endswith(" console=ttyS0 quiet"), flavour
        assert "quiet\n\n" not in text, flavour


def test_leftovers_of_an_interrupted_import_are_removed_by_the_next(lab):
    lab.offer({})
    lab.mirror.write()
    storage = Storage(lab.storage)
    storage.prepare()
    (storage.tmp / "0123abcd.part").write_bytes(b"half a kernel")
    (storage.snapshots / ".20260101T000000+0000-0123abcd.building").mkdir()
    (lab.storage / ".current-20260101T000000+0000-0123abcd").symlink_to("snapshots/nowhere")
    result = run_import(lab.config())
    assert list(storage.tmp.iterdir()) == []
    assert [p.name for p in storage.snapshots.iterdir()] == [result.snapshot]
    assert sorted(p.name for p in lab.storage.iterdir()) == [
        "current", "import.lock", "objects", "snapshots", "tmp"]


def test_an_object_already_stored_must_have_the_declared_size(lab):
    lab.offer({})
    lab.mirror.write()
    run_import(lab.config())
    kernel = b"kernel good"
    lab.offer({"boot-kernel": {"path": "good/kernel", "ftype": "boot-kernel",
                               "size": len(kernel) + 1,
                               "sha256": hashlib.sha256(kernel).hexdigest()}})
    lab.mirror.write()
    with pytest.raises(ImportFailed, match=r"good/kernel: declares 12 bytes, but the stored "
                                           r"object with its sha256 has 11"):
        run_import(lab.config())


def test_a_download_stops_once_more_than_the_declared_size_arrives(lab):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lab.offer({"boot-dtb": {**checksums(b"dtb"), "ftype": "boot-dtb", "path": "endless"}})
    lab.mirror.write()
    sent = []

    class Endless(BaseHTTPRequestHandler):
        """Serves the mirror's documents, and ``endless`` without end."""

        def do_GET(self):
            if self.path != "/endless":
                body = (lab.mirror.root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100_000):
                    self.wfile.write(b"\0" * 65536)
                    sent.append(65536)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = ImportConfig(sources=(Source(url=f"http://127.0.0.1:{server.server_port}/"),),
                           sorting=("sources_order",), storage=lab.storage)
        with pytest.raises(ImportFailed, match="endless: larger than its size 3"):
            run_import(cfg)
    finally:
        server.shutdown()
        server.server_close()
    # The socket buffers hold a few megabytes at most, nowhere near the 6.5 GB offered.
    assert sum(sent) < 64 * 1024 * 1024


# ---------------------------------------------------------------- failures of any kind


def test_an_import_that_fails_on_the_storage_is_recorded_as_failed(lab, engine):
    lab.offer({})
    lab.mirror.write()
    lab.storage.mkdir()
    (lab.storage / "objects").write_text("a file where a directory should be")
    with pytest.raises(ImportFailed, match=re.escape(f"{lab.storage / 'objects'}: File exists")
                       ) as info:
        run_import(lab.config(), engine.store)
    assert "\n" not in str(info.value)
    [row] = list_imports(engine.store)
    assert (row["status"], row["error"]) == ("failed", str(info.value))


def test_an_unexpected_error_is_recorded_and_reported_as_an_import_failure(lab, engine):
    lab.offer({})
    lab.mirror.write()

    def broken(where, done, total):
        raise RuntimeError("the progress display broke\nover two lines")

    with pytest.raises(ImportFailed, match=r"unexpected error: RuntimeError: the progress "
                                           r"display broke over two lines") as info:
        run_import(lab.config(), engine.store, progress=broken)
    assert "\n" not in str(info.value)
    [row] = list_imports(engine.store)
    assert (row["status"], row["error"]) == ("failed", str(info.value))
    assert not os.path.lexists(lab.storage / "current")


def test_an_interrupted_import_is_recorded_as_failed(lab, engine):
    lab.offer({})
    lab.mirror.write()

    def interrupt(where, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_import(lab.config(), engine.store, progress=interrupt)
    [row] = list_imports(engine.store)
    assert (row["status"], row["error"]) == ("failed", "interrupted")
    assert list((lab.storage / "tmp").iterdir()) == []


# ---------------------------------------------------------------- the PXE step


class FixedTokens:
    """The token service's part the PXE step uses, without a database (the
    real one is exercised by the reimage tests)."""

    def issue_for_reimage(self, board: str) -> str:
        return f"corral_1_reimage-{board}"

    def revoke_reimage(self, board: str) -> bool:
        return True


def _pxe_context(name: str = "b1"):
    from corral.operations.base import OperationContext

    return OperationContext(operation_id=1, kind="write_pxe_config", machine_kind="board",
                            name=name, attrs={"arch": "amd64", "subarch": "generic",
                                              "mac": "52:54:00:00:00:01"},
                            payload={}, attempt=1, vars={"release": "trusty"})


def _tamper_manifest(storage: Path, key: str, value: str) -> None:
    manifest = storage / "current" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["winners"][0][key] = value
    manifest.write_text(json.dumps(doc))


def _tamper_cmdline(storage: Path, value: str) -> None:
    leaf = storage / "current" / "control" / "amd64" / "generic" / "trusty" / "boot-cmdline"
    target = leaf.resolve()
    target.chmod(0o644)
    target.write_text(value)


@pytest.mark.parametrize(("tamper", "board", "expected"), [
    (lambda s: _tamper_manifest(s, "product", "p\nDEFAULT evil"), "b1",
     r"product 'p\\nDEFAULT evil' holds a control character"),
    (lambda s: _tamper_manifest(s, "version", "1\n  MENU HIDDEN"), "b1",
     r"version '1\\n  MENU HIDDEN' holds a control character"),
    (lambda s: _tamper_manifest(s, "source", "x\nLABEL evil"), "b1",
     r"source 'x\\nLABEL evil' holds a control character"),
    (lambda s: _tamper_cmdline(s, "quiet\nLABEL evil\n  KERNEL /evil"), "b1",
     r"boot-cmdline .* holds a control character"),
    (lambda s: None, "b1\n", r"board name 'b1\\n' cannot go on a kernel command line"),
    (lambda s: None, "../b1", r"board name '\.\./b1' cannot go on a kernel command line"),
    (lambda s: _tamper_cmdline(s, "quiet; chainloader (tftp)/evil.efi"), "b1",
     r"boot-cmdline .* holds ;, which GRUB or iPXE would read as syntax"),
    (lambda s: _tamper_cmdline(s, "quiet corral.url=http://evil.example"), "b1",
     r"boot-cmdline .* sets corral\.\* parameters"),
    (lambda s: None, "b" * 193, r"is longer than the 192 characters"),
], ids=["product", "version", "source", "cmdline", "board-name-newline",
        "board-name-traversal", "cmdline-grub-syntax", "cmdline-corral-params",
        "board-name-too-long"])
def test_the_pxe_step_refuses_control_characters_in_a_stored_snapshot(lab, tamper, board,
                                                                       expected):
    """A snapshot written before imports checked its names must not reach a board."""
    from corral.bootres.pxe import BootResourcePxe
    from corral.operations.base import OperationFailed

    lab.offer({"boot-cmdline": lab.mirror.item("p/cmdline", b"console=ttyS0 quiet\n",
                                               ftype="boot-cmdline")})
    lab.mirror.write()
    run_import(lab.config())
    root = lab.root / "tftp"
    pxe = BootResourcePxe(lab.storage, root, callback_url="http://10.0.0.1:8080",
                          tokens=FixedTokens())
    written = pxe.write(_pxe_context())["paths"]
    text = (root / written["pxelinux"]).read_text()
    assert "  APPEND corral.url=http://10.0.0.1:8080 corral.board=b1 corral.boot=" in text
    assert " console=ttyS0 quiet\n  IPAPPEND 2\n" in text
    for path in written.values():
        (root / path).unlink()
    tamper(lab.storage)
    with pytest.raises(OperationFailed, match=expected):
        pxe.write(_pxe_context(board))
    assert [p.name for p in (root / "pxelinux.cfg").iterdir()] == ["default"]
    assert list((root / "ipxe").iterdir()) == []
    assert [p.name for p in (root / "grub").iterdir()] == ["grub.cfg"]
