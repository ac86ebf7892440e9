"""A reimage as firmware and a second stage see it, over a real HTTP server:
per-MAC configurations, boot objects and iPXE scripts served under /boot/,
the reimage token's limits, local boot afterwards, and a second reimage."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.bootres.config import ImportConfig, Source
from corral.bootres.importer import run_import
from corral.bootres.pxe import BootResourcePxe
from corral.engine.worker import OperationWorker
from corral.operations.base import board_handlers
from corral.operations.simulated import SimulatedLab, SimulatedRates
from corral.power.drivers import simulated_power
from corral.tokens import TokenStore
from tests.integration.mirrors import Mirror
from tests.serving import serving

MAC = "52:54:00:c0:ff:01"
MAC_FILE = "01-52-54-00-c0-ff-01"


def _snapshot(tmp_path: Path) -> Path:
    mirror = Mirror(tmp_path / "mirror")
    items = mirror.boot_items("p", "amd64")
    items["boot-cmdline"] = mirror.item("p/cmdline", b"console=ttyS0\n", ftype="boot-cmdline")
    items["root-image"] = mirror.item("p/disk.img", b"DISK" * 1000, ftype="root-image")
    mirror.product("com.example:lab:amd64", arch="amd64", release="lab", subarches="generic",
                   versions={"1": {"items": items}})
    mirror.write()
    storage = tmp_path / "storage"
    run_import(ImportConfig(sources=(Source(url=mirror.url),), sorting=("sources_order",),
                            storage=storage))
    return storage


def _args(cmdline: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in cmdline.split() if "=" in word)


@pytest.fixture
def netboot(tmp_path, engine):
    storage = _snapshot(tmp_path)
    root = tmp_path / "tftp"
    tokens = TokenStore(engine.store, cache_seconds=0)
    lab = SimulatedLab(rates=SimulatedRates(power_cycle_failure=0, ping_failure=0,
                                            poll_failure=0))
    pxe = BootResourcePxe(storage, root, callback_url="http://corral.lab:8080",
                          tokens=tokens)
    worker = OperationWorker(engine, board_handlers(simulated_power(lab), lab, pxe), owner="test")
    engine.create("board", "q1", attrs={"arch": "amd64", "mac": MAC.upper(),
                                        "release": "lab"})
    engine.create("board", "q2", attrs={"arch": "amd64", "mac": "52:54:00:c0:ff:02"})
    for name in ("q1", "q2"):
        engine.force_state("board", name, "ready", actor="t", reason="set-up")
    worker.run_pending()
    operator = tokens.issue("ops", "operator")
    app = create_app(engine, tokens, CollectorRegistry(), pxe_root=str(root))
    with serving(app) as (address, _):
        with httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=30) as http:
            yield engine, worker, root, http, operator


def _reimage(engine, worker, http, operator) -> dict[str, str]:
    reply = http.post("/api/v1/boards/q1/events/reimage",
                      headers={"Authorization": f"Bearer {operator}"})
    assert reply.status_code == 200, reply.text
    worker.run_pending()
    worker.run_pending()
    assert engine.get("board", "q1").state == "pxe_booting"
    script = http.get(f"/boot/ipxe/{MAC}")
    assert script.status_code == 200
    assert script.headers["cache-control"] == "no-store"
    kernel_line = next(line for line in script.text.splitlines() if line.startswith("kernel "))
    return _args(kernel_line)


def _report(http, args, event, *, token=None, board="q1", content_type="application/json",
            body=b"{}"):
    return http.post(f"/api/v1/boards/{board}/events/{event}", content=body, headers={
        "Authorization": f"Bearer {token or args['corral.token']}",
        "Content-Type": content_type, "Idempotency-Key": f"{args['corral.boot']}-{event}"})


def test_a_reimage_from_first_fetch_to_local_boot(netboot):
    engine, worker, root, http, operator = netboot
    args = _reimage(engine, worker, http, operator)
    assert (args["corral.url"], args["corral.board"]) == ("http://corral.lab:8080", "q1")
    assert args["console"] == "ttyS0"
    # Every flavour boots the same objects, by paths relative to the root.
    pxelinux = (root / "pxelinux.cfg" / MAC_FILE).read_text()
    grub = (root / "grub" / f"grub.cfg-{MAC_FILE}").read_text()
    kernel = next(line.split()[1] for line in pxelinux.splitlines()
                  if line.strip().startswith("KERNEL"))
    assert kernel.startswith("objects/")
    assert f"linux /{kernel} corral.url=http://corral.lab:8080 corral.board=q1 " in grub
    assert grub.splitlines()[2].endswith(" console=ttyS0")
    assert "  IPAPPEND 2" in pxelinux
    # The objects and the image are served over HTTP, as iPXE fetches them.
    image = args["corral.image"].removeprefix("http://corral.lab:8080")
    assert http.get(image).content == b"DISK" * 1000
    assert http.get(f"/boot/{kernel}").content == b"kernel amd64"
    assert http.get("/boot/objects/" + "0" * 64).status_code == 404
    assert http.get("/boot/objects/../../etc/passwd").status_code == 404
    assert http.get("/boot/objects/XYZ").status_code == 422
    assert http.get("/boot/ipxe/52:54:00:00:00:99").status_code == 404
    assert http.get("/boot/ipxe/not-a-mac").status_code == 422

    # The token: only this board, only second-stage events, only JSON.
    assert _report(http, args, "second_stage_started", board="q2").status_code == 403
    assert _report(http, args, "reboot").status_code == 403
    refused = _report(http, args, "second_stage_started", content_type="text/plain",
                      body=b"started")
    assert refused.status_code == 415
    assert "send the payload as JSON with Content-Type: application/json" in refused.text
    assert http.get("/api/v1/boards/q1", headers={
        "Authorization": f"Bearer {args['corral.token']}"}).status_code == 403
    # Any valid token may ask who it is (docs/lab.md: the one read it may make).
    who = http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {args['corral.token']}"})
    assert (who.status_code, who.json()) == (200, {"name": "reimage:q1", "role": "reimage"})
    assert _report(http, args, "second_stage_started").status_code == 200
    done = _report(http, args, "install_ok", body=b'{"disk": "/dev/vda"}')
    assert (done.status_code, done.json()["state"]) == (200, "rebooting")
    # A repeat after a lost answer is replayed, though the board has moved on ...
    again = _report(http, args, "install_ok", body=b'{"disk": "/dev/vda"}')
    assert (again.status_code, again.json()["replayed"]) == (200, True)
    # ... but nothing new is accepted off the reimage path.
    late = _report(http, args, "maintenance_requested")
    assert late.status_code == 401
    assert late.headers["www-authenticate"] == "Bearer"
    assert "valid only while board q1 is in" in late.json()["message"]

    worker.run_pending()  # rebooting: boot_local
    assert "LOCALBOOT 0" in (root / "pxelinux.cfg" / MAC_FILE).read_text()
    assert (root / "grub" / f"grub.cfg-{MAC_FILE}").read_text().endswith("exit\n")
    assert http.get(f"/boot/ipxe/{MAC}").text.splitlines()[-1] == "exit"
    assert _report(http, args, "maintenance_requested").json()["message"] == (
        "the token is not valid")
    assert http.get("/api/v1/whoami", headers={
        "Authorization": f"Bearer {args['corral.token']}"}).status_code == 401
    history = engine.history("board", "q1", limit=50)
    seen = [(e.event, e.actor) for e in reversed(history)]
    assert ("second_stage_started", "reimage:q1") in seen
    assert ("install_ok", "reimage:q1") in seen
    assert args["corral.token"] not in json.dumps([e.payload for e in history])


def test_a_second_reimage_gets_a_new_token_and_boot_id(netboot):
    engine, worker, _root, http, operator = netboot
    first = _reimage(engine, worker, http, operator)
    for event in ("second_stage_started", "install_ok"):
        assert _report(http, first, event).status_code == 200
    worker.run_pending()
    engine.force_state("board", "q1", "ready", actor="t", reason="installed")
    worker.run_pending()
    second = _reimage(engine, worker, http, operator)
    assert second["corral.boot"] != first["corral.boot"]
    assert second["corral.token"] != first["corral.token"]
    assert _report(http, first, "second_stage_started").status_code == 401
    started = _report(http, second, "second_stage_started")
    assert (started.status_code, started.json()["replayed"]) == (200, False)
    assert engine.get("board", "q1").state == "installing"


def test_a_board_without_a_mac_fails_its_pxe_step_saying_why(netboot):
    engine, worker, _root, _http, _operator = netboot
    engine.create("board", "nomac", attrs={"arch": "amd64", "release": "lab"})
    engine.force_state("board", "nomac", "pxe_configuring", actor="t", reason="t")
    worker.run_pending()
    failed = next(e for e in engine.history("board", "nomac", limit=10)
                  if e.event == "write_pxe_config_failed")
    assert failed.reason.startswith("board nomac has no mac: firmware finds its boot "
                                    "configuration by MAC address")


def test_a_write_that_lost_the_race_with_leaving_pxe_configuring_writes_nothing(tmp_path,
                                                                               engine):
    """maintenance fired while write_pxe_config runs: its boot_local has the
    last word, whichever of the two takes the board's lock first."""
    from corral.operations.base import OperationContext, OperationFailed

    storage = _snapshot(tmp_path)
    engine.create("board", "q3", attrs={"arch": "amd64", "mac": MAC, "release": "lab"})
    states = {"q3": "maintenance"}
    pxe = BootResourcePxe(storage, tmp_path / "tftp", callback_url="http://c:1",
                          tokens=TokenStore(engine.store, cache_seconds=0),
                          board_state=states.get)
    ctx = OperationContext(operation_id=9, kind="write_pxe_config", machine_kind="board",
                           name="q3", attrs={"arch": "amd64", "mac": MAC, "release": "lab"},
                           payload={}, attempt=1)
    with pytest.raises(OperationFailed, match="is maintenance, no longer pxe_configuring"):
        pxe.write(ctx)
    assert not (tmp_path / "tftp" / "pxelinux.cfg" / MAC_FILE).exists()
    assert not (tmp_path / "tftp" / "ipxe" / f"{MAC_FILE}.ipxe").exists()
    states["q3"] = "pxe_configuring"
    assert pxe.write(ctx)["paths"]["pxelinux"] == f"pxelinux.cfg/{MAC_FILE}"


def test_boot_networks_keep_scripts_from_other_networks(tmp_path, engine):
    from corral.bootres.netboot import BootRoot
    from corral.config import parse_networks
    from corral.errors import ConfigError

    root = tmp_path / "tftp"
    BootRoot(root).write(MAC, None)
    tokens = TokenStore(engine.store, cache_seconds=0)
    answers = {}
    for networks in ("10.9.0.0/16, fd00::/64", "10.9.0.0/16,127.0.0.0/8"):
        app = create_app(engine, tokens, CollectorRegistry(), pxe_root=str(root),
                         boot_networks=networks)
        with serving(app) as (address, _):
            answers[networks] = httpx.get(f"http://{address[0]}:{address[1]}/boot/ipxe/{MAC}",
                                          timeout=10)
    refused, allowed = answers.values()
    assert refused.status_code == 403
    assert "127.0.0.1 is not on a network allowed to netboot" in refused.json()["message"]
    assert allowed.status_code == 200
    assert allowed.text.splitlines()[-1] == "exit"
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.0/33' is not a network"):
        parse_networks("10.0.0.0/24, 10.0.0.0/33")


def test_a_symlink_in_the_boot_root_never_serves_a_file_from_elsewhere(netboot, tmp_path):
    """A symlink placed in pxe_root (to /etc/passwd, or out by ``..``) is a 404
    on every file route: never the file's bytes, never a 500."""
    _engine, _worker, root, http, _operator = netboot
    secret = Path("/etc/passwd").read_bytes()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not a boot file")
    fake = "ab" * 32
    (root / "objects" / fake).symlink_to("/etc/passwd")
    (root / "objects" / ("cd" * 32)).symlink_to(Path("..") / ".." / "outside.txt")
    (root / "ipxe" / "52-54-00-00-00-99.ipxe").symlink_to("/etc/passwd")
    for url in (f"/boot/objects/{fake}", f"/boot/objects/{'cd' * 32}",
                "/boot/ipxe/52:54:00:00:00:99"):
        reply = http.get(url)
        assert reply.status_code == 404, url
        assert secret not in reply.content
        assert b"not a boot file" not in reply.content
    # A directory of the root that is a symlink pointing out is refused too.
    (root / "ipxe").rename(root / "ipxe.real")
    (root / "ipxe").symlink_to(tmp_path)
    (tmp_path / "52-54-00-00-00-98.ipxe").write_text("#!ipxe\necho escaped\n")
    assert http.get("/boot/ipxe/52:54:00:00:00:98").status_code == 404
    # A symlink inside the root that stays inside it still serves.
    (root / "objects" / ("01" * 32)).write_bytes(b"kernel")
    (root / "objects" / ("ef" * 32)).symlink_to("01" * 32)
    assert http.get(f"/boot/objects/{'ef' * 32}").content == b"kernel"


@pytest.mark.parametrize("escape", ["object", "objects-directory"])
def test_a_symlink_in_the_storage_root_is_not_published(tmp_path, escape):
    """A storage object, or the storage's objects/ itself, made a symlink
    pointing out: the reimage refuses it instead of publishing the file."""
    import shutil

    from corral.operations.base import OperationFailed

    storage = _snapshot(tmp_path)
    pxe = BootResourcePxe(storage, tmp_path / "tftp", callback_url="http://corral.lab:8080",
                          tokens=None)  # type: ignore[arg-type]
    _winner, files = pxe._winner(("amd64", "generic", "lab"))
    kernel = files["boot-kernel"]
    if escape == "object":
        kernel.unlink()
        kernel.symlink_to("/etc/passwd")
    else:
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(storage / "objects", elsewhere)
        shutil.rmtree(storage / "objects")
        (storage / "objects").symlink_to(elsewhere)
    with pytest.raises(OperationFailed, match="is not an object of"):
        pxe._winner(("amd64", "generic", "lab"))


def test_the_docs_name_whoami_as_the_one_read_a_reimage_token_may_make():
    """A reimage token answers whoami, as every token does (its own name and
    role, nothing about the lab): no page says it reads nothing at all."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    for page in ("lab.md", "architecture.md", "http-api.md"):
        text = " ".join((docs / page).read_text().split())
        assert "cannot read the API at all" not in text, page
        assert "including reading the API" not in text, page
    section = (docs / "lab.md").read_text().partition("## The reimage token")[2]
    assert "GET /api/v1/whoami" in section.partition("\n## ")[0]
