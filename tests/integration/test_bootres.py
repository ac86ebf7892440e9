"""Boot resource imports against simplestreams mirrors the tests generate."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from corral.bootres.config import BootConfigError, ImportConfig, Source, parse_config
from corral.bootres.importer import list_imports, run_import
from corral.bootres.store import Storage
from corral.bootres.streams import ImportFailed
from tests.integration.helpers import firing
from tests.integration.mirrors import Mirror, Signer

BOTH = ["sources_order", "num_subarches(less)"]


def config(tmp_path: Path, *sources: Source, sorting=BOTH) -> ImportConfig:
    return ImportConfig(sources=tuple(sources), sorting=tuple(sorting),
                        storage=tmp_path / "storage")


def published(cfg: ImportConfig) -> dict[tuple[str, str, str], dict]:
    manifest = Storage(cfg.storage).current_manifest()
    assert manifest is not None
    return {(w["arch"], w["subarch"], w["release"]): w for w in manifest["winners"]}


def leaf(cfg: ImportConfig, arch: str, subarch: str, release: str, name: str) -> bytes:
    return (cfg.storage / "current" / "control" / arch / subarch / release / name).read_bytes()


def generic_and_midway(tmp_path: Path) -> tuple[Mirror, Mirror]:
    """Source A: a generic armhf product (3 subarches); source B: a midway-only one."""
    a = Mirror(tmp_path / "a")
    a.product("com.example:trusty:armhf:generic", arch="armhf", release="trusty",
              versions={"20140101": {"subarches": "generic,midway,highbank",
                                     "items": a.boot_items("a/generic", "A generic")}})
    a.write()
    b = Mirror(tmp_path / "b")
    b.product("com.example:trusty:armhf:midway", arch="armhf", release="trusty",
              subarches="midway",
              versions={"20140101": {"items": b.boot_items("b/midway", "B midway")}})
    b.write()
    return a, b


def test_masks_filter_per_arch_subarch_release(tmp_path):
    a, _ = generic_and_midway(tmp_path)
    cfg = config(tmp_path, Source(url=a.url, mask=("armhf/mid*/*", "armhf/generic/precise")))
    run_import(cfg)
    assert list(published(cfg)) == [("armhf", "midway", "trusty")]
    assert leaf(cfg, "armhf", "midway", "trusty", "boot-kernel") == b"kernel A generic"


@pytest.mark.parametrize(("sorting", "winner"), [
    (["sources_order", "num_subarches(less)"], "com.example:trusty:armhf:generic"),
    (["num_subarches(less)", "sources_order"], "com.example:trusty:armhf:midway"),
])
def test_sorting_rules_apply_in_the_configured_order(tmp_path, sorting, winner):
    a, b = generic_and_midway(tmp_path)
    cfg = config(tmp_path, Source(url=a.url), Source(url=b.url), sorting=sorting)
    run_import(cfg)
    chosen = published(cfg)
    assert chosen[("armhf", "midway", "trusty")]["product"] == winner
    # Triples only one source offers are unaffected by the rules.
    assert chosen[("armhf", "highbank", "trusty")]["product"] == \
        "com.example:trusty:armhf:generic"


def test_num_subarches_counts_the_full_list_before_masking(tmp_path):
    a, b = generic_and_midway(tmp_path)
    # A's mask leaves it one subarch, but its product still declares three.
    cfg = config(tmp_path, Source(url=a.url, mask=("armhf/midway/*",)), Source(url=b.url),
                 sorting=["num_subarches(less)"])
    run_import(cfg)
    assert published(cfg)[("armhf", "midway", "trusty")]["product"] == \
        "com.example:trusty:armhf:midway"


def test_only_the_newest_version_of_a_product_takes_part(tmp_path):
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic", versions={
        "20140301": {"items": m.boot_items("old", "old")},
        "20140301.1": {"items": m.boot_items("new", "new")},
        "20140228.9": {"items": m.boot_items("older", "older")},
    })
    m.write()
    cfg = config(tmp_path, Source(url=m.url))
    run_import(cfg)
    assert published(cfg)[("amd64", "generic", "trusty")]["version"] == "20140301.1"
    assert leaf(cfg, "amd64", "generic", "trusty", "boot-kernel") == b"kernel new"


def test_attributes_flatten_top_product_version_item(tmp_path):
    m = Mirror(tmp_path / "m", top={"release": "precise", "arch": "i386",
                                    "labels": ["not", "inherited"]})
    # release from the top level; arch overridden at product level; subarches at
    # version level; ftype from the version level, overridden by one item.
    m.product("p1", arch="amd64", versions={"1": {
        "subarches": "generic", "ftype": "boot-kernel",
        "items": {"k": m.item("p1/k", b"k1"),
                  "i": m.item("p1/i", b"i1", ftype="boot-initrd")}}})
    # release overridden at version level.
    m.product("p2", arch="amd64", versions={"1": {
        "subarches": "hwe", "release": "trusty",
        "items": {"boot-kernel": m.item("p2/k", b"k2"),
                  "boot-initrd": m.item("p2/i", b"i2")}}})
    m.write()
    cfg = config(tmp_path, Source(url=m.url))
    run_import(cfg)
    chosen = published(cfg)
    assert set(chosen) == {("amd64", "generic", "precise"), ("amd64", "hwe", "trusty")}
    assert chosen[("amd64", "generic", "precise")]["items"].keys() == {"boot-kernel",
                                                                       "boot-initrd"}
    # Items without an ftype are published under their item name.
    assert leaf(cfg, "amd64", "hwe", "trusty", "boot-kernel") == b"k2"


def test_a_shared_object_is_stored_once_and_extra_items_are_published(tmp_path):
    m = Mirror(tmp_path / "m")
    shared = m.item("common/initrd", b"the same initrd", ftype="boot-initrd")
    m.product("p1", arch="armhf", release="trusty", subarches="generic,highbank",
              versions={"1": {"items": {
                  "boot-kernel": m.item("p1/kernel", b"kernel 1", ftype="boot-kernel"),
                  "boot-initrd": shared,
                  "boot-dtb": m.item("p1/dtb", b"dtb", ftype="boot-dtb"),
                  "boot-cmdline": m.item("p1/cmdline", b"console=ttyAMA0", ftype="boot-cmdline"),
              }}})
    m.product("p2", arch="armhf", release="precise", subarches="generic",
              versions={"1": {"items": {
                  "boot-kernel": m.item("p2/kernel", b"kernel 2", ftype="boot-kernel"),
                  "boot-initrd": m.item("p2/initrd", b"the same initrd", ftype="boot-initrd"),
              }}})
    m.write()
    cfg = config(tmp_path, Source(url=m.url))
    result = run_import(cfg)
    assert len(result.winners) == 3
    # kernel 1, kernel 2, the initrd (one object for three leaves), dtb, cmdline.
    assert len(list((cfg.storage / "objects").iterdir())) == 5
    assert result.objects == 5
    control = cfg.storage / "current" / "control" / "armhf"
    assert sorted(p.name for p in (control / "highbank" / "trusty").iterdir()) == [
        "boot-cmdline", "boot-dtb", "boot-initrd", "boot-kernel"]
    initrds = {(control / s / r / "boot-initrd").resolve()
               for s, r in (("generic", "trusty"), ("highbank", "trusty"),
                            ("generic", "precise"))}
    assert len(initrds) == 1


def test_a_corrupted_payload_publishes_nothing_and_keeps_the_old_snapshot(tmp_path):
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"1": {"items": m.boot_items("p1", "v1")}})
    m.write()
    cfg = config(tmp_path, Source(url=m.url))
    first = run_import(cfg)
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"2": {"items": m.boot_items("p2", "v2")}})
    m.write()
    (m.root / "p2" / "initrd").write_bytes(b"initrd v2 but corrupted")
    with pytest.raises(ImportFailed, match=r"p2/initrd: larger than its size 9"):
        run_import(cfg)
    assert os.readlink(cfg.storage / "current").endswith(first.snapshot)
    assert [p.name for p in (cfg.storage / "snapshots").iterdir()] == [first.snapshot]
    assert leaf(cfg, "amd64", "generic", "trusty", "boot-kernel") == b"kernel v1"
    assert list((cfg.storage / "tmp").iterdir()) == []
    # Same size, different bytes: the checksum catches it.
    (m.root / "p2" / "initrd").write_bytes(b"initrd vX")
    with pytest.raises(ImportFailed, match="sha256 mismatch"):
        run_import(cfg)
    assert os.readlink(cfg.storage / "current").endswith(first.snapshot)


def test_signed_sources_are_verified_and_a_tampered_index_fails(tmp_path):
    signer = Signer(tmp_path / "gnupg")
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"1": {"items": m.boot_items("p", "signed")}})
    m.write(signer=signer)
    cfg = config(tmp_path, Source(url=m.url, keyring=str(signer.keyring)))
    good = run_import(cfg)
    signed = m.root / "streams" / "v1" / "index.sjson"
    signed.write_text(signed.read_text().replace("products:1.0", "products:1.1", 1))
    with pytest.raises(ImportFailed, match=re.escape("index.sjson: signature check failed")):
        run_import(cfg)
    assert os.readlink(cfg.storage / "current").endswith(good.snapshot)
    # An unsigned mirror with a keyring configured fails too.
    plain = Mirror(tmp_path / "plain")
    plain.product("p", arch="amd64", release="trusty", subarches="generic",
                  versions={"1": {"items": plain.boot_items("p", "x")}})
    plain.write()
    with pytest.raises(ImportFailed, match=re.escape("index.sjson")):
        run_import(config(tmp_path, Source(url=plain.url, keyring=str(signer.keyring))))


def test_bad_item_paths_and_unreachable_sources_fail(tmp_path):
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"1": {"items": {"boot-kernel": {"path": "../../etc/passwd",
                                                        "size": 1, "md5": "0" * 32}}}})
    m.write()
    with pytest.raises(ImportFailed, match=re.escape("refusing item path '../../etc/passwd'")):
        run_import(config(tmp_path, Source(url=m.url)))
    with pytest.raises(ImportFailed, match=re.escape("nowhere/streams/v1/index.json")):
        run_import(config(tmp_path, Source(url=str(tmp_path / "nowhere"))))
    assert not (tmp_path / "storage" / "current").exists()


def test_an_index_url_and_a_plain_path_work_like_a_mirror_root(tmp_path):
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"1": {"items": m.boot_items("p", "x")}})
    m.write()
    for url in (f"{m.url}streams/v1/index.json", str(m.root)):
        cfg = config(tmp_path, Source(url=url))
        run_import(cfg)
        assert published(cfg)[("amd64", "generic", "trusty")]["source"] == url


def test_configuration_errors_name_their_place(tmp_path):
    with pytest.raises(BootConfigError) as info:
        parse_config({"sources": [{"url": "x", "mask": ["armhf/*"]}, {"mirror": "y"}],
                      "sorting": ["newest"], "storage": "s"}, "import.yaml", base=tmp_path)
    assert info.value.problems == [
        "sources[0].mask[0]: must be arch/subarch/release (globs allowed per part), not "
        "'armhf/*'",
        "sources[1]: missing required key 'url'",
        "sources[1]: unknown key 'mirror' (allowed: url, mask, keyring, allow_md5)",
        "sorting[0]: must be one of sources_order, num_subarches(less), not 'newest'"]


def test_allow_md5_max_item_size_and_urls_are_checked(tmp_path):
    cfg = parse_config({"sources": [{"url": "m", "allow_md5": True}, {"url": "n"}],
                        "storage": "s", "max_item_size": 1024}, "import.yaml", base=tmp_path)
    assert [s.allow_md5 for s in cfg.sources] == [True, False]
    assert cfg.max_item_size == 1024
    assert parse_config({"sources": [{"url": "m"}], "storage": "s"}, "import.yaml",
                        base=tmp_path).max_item_size == 8 * 1024**3
    with pytest.raises(BootConfigError) as info:
        parse_config({"sources": [{"url": "m", "allow_md5": "yes"}, {"url": "x\nDEFAULT y"}],
                      "storage": "s", "max_item_size": 0}, "import.yaml", base=tmp_path)
    assert info.value.problems == [
        "sources[0].allow_md5: must be true or false, not 'yes'",
        "sources[1].url: must not hold control characters, not 'x\\nDEFAULT y'",
        "max_item_size: must be a whole number of at least 1, not the number 0"]


def test_one_import_at_a_time_holds_the_storage(tmp_path):
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"1": {"items": m.boot_items("p", "x")}})
    m.write()
    cfg = config(tmp_path, Source(url=m.url))
    with Storage(cfg.storage).lock(), pytest.raises(ImportFailed,
                                                    match="another import is running in"):
        run_import(cfg)
    run_import(cfg)


def test_a_document_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    from corral.bootres import streams

    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic",
              versions={"1": {"items": m.boot_items("p", "x")}})
    m.write()
    # The index (180 bytes) fits; the products file (714) does not.
    monkeypatch.setattr(streams, "MAX_DOCUMENT", 400)
    with pytest.raises(ImportFailed, match=r"com\.example:images\.json: larger than 400 "
                                           r"bytes, the most a document may hold"):
        run_import(config(tmp_path, Source(url=m.url)))


def test_the_database_records_every_import(tmp_path, engine):
    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="trusty", subarches="generic,hwe",
              versions={"7": {"items": m.boot_items("p", "x")}})
    m.write()
    cfg = config(tmp_path, Source(url=m.url))
    result = run_import(cfg, engine.store)
    (m.root / "p" / "kernel").write_bytes(b"tampered")
    m.product("p", arch="amd64", release="trusty", subarches="generic,hwe",
              versions={"8": {"items": {"boot-kernel": {"path": "p/kernel", "size": 1,
                                                        "sha256": "0" * 64}}}})
    m.write()
    with pytest.raises(ImportFailed):
        run_import(cfg, engine.store)
    failed, ok = list_imports(engine.store)
    assert (ok["status"], ok["snapshot"]) == ("published", result.snapshot)
    assert (failed["status"], failed["snapshot"]) == ("failed", None)
    assert "p/kernel" in failed["error"]
    from sqlalchemy import select

    from corral.store.schema import bootres_published
    with engine.store.sa.begin() as conn:
        rows = conn.execute(select(bootres_published.c.subarch, bootres_published.c.version)
                            .where(bootres_published.c.import_id == ok["id"])).all()
    assert sorted(rows) == [("generic", "7"), ("hwe", "7")]
    assert json.loads((cfg.storage / "current" / "manifest.json").read_text())["winners"]


def test_a_reimaged_board_gets_a_pxe_config_pointing_at_its_winner(tmp_path, engine, clock):
    from corral.bootres.pxe import BootResourcePxe
    from corral.engine.worker import OperationWorker
    from corral.operations.base import board_handlers
    from corral.operations.simulated import SimulatedLab, SimulatedRates
    from corral.power.drivers import simulated_power

    a, b = generic_and_midway(tmp_path)
    cfg = config(tmp_path, Source(url=a.url), Source(url=b.url),
                 sorting=["num_subarches(less)"])
    run_import(cfg)
    lab = SimulatedLab(rates=SimulatedRates(power_cycle_failure=0, ping_failure=0,
                                            poll_failure=0))
    from corral.tokens import TokenStore

    tokens = TokenStore(engine.store, cache_seconds=0)
    pxe = BootResourcePxe(cfg.storage, tmp_path / "tftp", callback_url="http://10.0.0.1:8080/",
                          tokens=tokens)
    worker = OperationWorker(engine, board_handlers(simulated_power(lab), lab, pxe), owner="test")
    engine.create("board", "panda-1", attrs={"arch": "armhf", "subarch": "midway",
                                             "mac": "52:54:00:AB:00:01"})
    engine.force_state("board", "panda-1", "ready", actor="test", reason="set-up")
    worker.run_pending()
    engine.fire("board", "panda-1", "reimage", source="operator", payload={"release": "trusty"})
    worker.run_pending()
    worker.run_pending()
    assert engine.get("board", "panda-1").state == "pxe_booting"
    root = tmp_path / "tftp"
    written = (root / "pxelinux.cfg" / "01-52-54-00-ab-00-01").read_text()
    kernel = (cfg.storage / "current" / "control" / "armhf" / "midway" / "trusty" /
              "boot-kernel").resolve()
    assert f"  KERNEL objects/{kernel.name}\n" in written
    assert (root / "objects" / kernel.name).read_bytes() == b"kernel B midway"
    assert "com.example:trusty:armhf:midway 20140101" in written
    assert "  IPAPPEND 2\n" in written
    token = written.split("corral.token=")[1].split()[0]
    assert tokens.verify(token).role == "reimage"
    # The second stage installs and the board comes back, to be health-checked.
    for event in ("second_stage_started", "install_ok"):
        engine.fire("board", "panda-1", event, **firing(event))
    worker.run_pending()
    clock.advance(46)
    engine.sweeper.sweep_timeouts()
    worker.run_pending()
    assert engine.get("board", "panda-1").state == "check_queued"
    entry = next(e for e in engine.history("board", "panda-1", limit=50)
                 if e.event == "write_pxe_config_ok")
    assert entry.payload["product"] == "com.example:trusty:armhf:midway"
    assert token not in json.dumps([e.payload for e in engine.history("board", "panda-1")])
    # Rebooting switched every flavour to the local disk and revoked the token.
    assert "LOCALBOOT 0" in (root / "pxelinux.cfg" / "01-52-54-00-ab-00-01").read_text()
    assert (root / "grub" / "grub.cfg-01-52-54-00-ab-00-01").read_text().endswith("exit\n")
    assert (root / "ipxe" / "01-52-54-00-ab-00-01.ipxe").read_text().endswith("exit\n")
    assert tokens.verify(token) is None
    # A board whose triple nothing covers fails its PXE step, saying why.
    engine.create("board", "odd-1", attrs={"arch": "s390x", "release": "trusty",
                                           "mac": "52:54:00:ab:00:02"})
    engine.force_state("board", "odd-1", "pxe_configuring", actor="test", reason="test")
    worker.run_pending()
    failed = next(e for e in engine.history("board", "odd-1", limit=50)
                  if e.event == "write_pxe_config_failed")
    assert failed.reason == "no boot resources for s390x/generic/trusty in the current snapshot"


def test_an_http_source_is_read_like_a_local_one(tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    m = Mirror(tmp_path / "m")
    m.product("p", arch="amd64", release="noble", subarches="generic",
              versions={"1": {"items": m.boot_items("p", "over http")}})
    m.write()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(m.root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        cfg = config(tmp_path, Source(url=url))
        run_import(cfg)
        assert leaf(cfg, "amd64", "generic", "noble", "boot-kernel") == b"kernel over http"
        with pytest.raises(ImportFailed, match=re.escape("missing/streams/v1/index.json: "
                                                         "HTTP 404")):
            run_import(config(tmp_path, Source(url=url + "missing/")))
    finally:
        server.shutdown()
        server.server_close()
