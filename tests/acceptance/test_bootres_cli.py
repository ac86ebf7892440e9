"""``corral bootres import`` failing as an operator sees it: one line, an exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.bootres.importer import list_imports
from corral.store import open_store
from tests.integration.mirrors import Mirror

CORRAL = str(Path(sys.executable).with_name("corral"))


def _mirror(tmp_path: Path, **item_extra: str) -> Mirror:
    mirror = Mirror(tmp_path / "mirror")
    items = mirror.boot_items("t", "trusty")
    items["boot-kernel"].update(item_extra)
    mirror.product("com.example:trusty:amd64", arch="amd64", release="trusty",
                   subarches="generic", versions={"20140301": {"items": items}})
    mirror.write()
    return mirror


@pytest.mark.parametrize(("make_storage", "item_extra", "expected"), [
    (lambda s: s.write_text("not a directory"), {}, "boot is not a directory"),
    (lambda s: None, {"ftype": "boot/kernel"}, "ftype 'boot/kernel' is not a valid name"),
], ids=["storage-is-a-file", "hostile-ftype"])
def test_a_failed_import_is_one_line_an_exit_code_and_a_failed_row(
        migrated_url, tmp_path, make_storage, item_extra, expected):
    mirror = _mirror(tmp_path, **item_extra)
    make_storage(tmp_path / "boot")
    (tmp_path / "import.yaml").write_text(f"sources:\n  - url: {mirror.url}\nstorage: boot\n")
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url, "CORRAL_LOG_FORMAT": "json"}
    env.pop("CORRAL_CONFIG", None)
    result = subprocess.run([CORRAL, "bootres", "import", "--config", "import.yaml"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert expected in line
    db = open_store(migrated_url)
    try:
        [row] = list_imports(db)
    finally:
        db.dispose()
    assert row["status"] == "failed"
    assert expected in row["error"]
