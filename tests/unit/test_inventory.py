from __future__ import annotations

import pytest

from corral.inventory import InventoryError, load_inventory


def test_inventory_loads(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text('boards:\n  - name: b1\n    arch: arm64\n    mac: "02:00:00:00:00:01"\n'
                    "    power: {relay: r1, port: 4}\n")
    inventory = load_inventory(path)
    assert inventory["b1"]["arch"] == "arm64"
    assert inventory["b1"]["power_relay"] == "r1"
    assert inventory["b1"]["hostname"] == "b1"


def test_inventory_reports_every_problem_with_lines(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n  - name: b1\n    colour: red\n  - name: b1\n"
                    "  - name: b3\n    mac: 00:11\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    text = str(info.value)
    assert "lab.yaml:3: unknown key 'colour'" in text
    assert "lab.yaml:4: board 'b1' is listed twice" in text
    assert "lab.yaml:6: mac must look like" in text


@pytest.mark.parametrize(("line", "message"), [
    ('  - name: "b1\\n"\n', "name is required: letters, digits"),
    ('  - name: b1\n    mac: "02:00:00:00:00:01\\n"\n', "mac must look like"),
], ids=["name", "mac"])
def test_inventory_refuses_a_trailing_newline(tmp_path, line, message):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n" + line)
    with pytest.raises(InventoryError, match=message):
        load_inventory(path)


def test_inventory_takes_a_release_and_refuses_a_shared_mac(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text('boards:\n  - name: b1\n    release: noble\n    mac: "02:00:00:00:00:01"\n'
                    '  - name: b2\n    mac: "02:00:00:00:00:0A"\n'
                    '  - name: b3\n    mac: "02:00:00:00:00:0a"\n')
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert str(info.value).splitlines() == [
        f"{path}:8: mac 02:00:00:00:00:0a is also b2's"]
    path.write_text('boards:\n  - name: b1\n    release: noble\n  - name: b2\n    release: 7\n')
    with pytest.raises(InventoryError, match="release must be a string, not 7"):
        load_inventory(path)
