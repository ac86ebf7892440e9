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


def test_power_settings_are_checked_per_driver_with_lines(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("""boards:
  - name: s1
    power:
      driver: redfish
      adress: https://bmc-1
      verify_tls: "yes"
  - name: s2
    power: {driver: ipmi, address: 10.0.0.2, password: a, password_env: B, port: x}
  - name: s3
    power: {driver: snmp, address: pdu-1, outlet: 3, pdu: acme}
  - name: s4
    power: {driver: redfsh}
""")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    text = str(info.value)
    assert ("lab.yaml:5: unknown power setting 'adress' for driver redfish; allowed keys: "
            "driver, controller, concurrency, timeout, power_on_wait, address, system") in text
    assert "lab.yaml:3: power driver redfish needs 'address'" in text
    assert "lab.yaml:6: verify_tls must be true or false, not 'yes'" in text
    assert "lab.yaml:8: give one of password, password_env, not several" in text
    assert "lab.yaml:8: port must be a whole number, not 'x'" in text
    assert "lab.yaml:10: pdu must be one of apc_rackpdu, apc_masterswitch, raritan_px" in text
    assert ("lab.yaml:12: power driver 'redfsh' is not one of: command, ipmi, qemu, redfish, "
            "simulated, snmp") in text
    # A secret's value is never repeated in a message.
    assert "password: a" not in text


def test_a_secret_is_not_flattened_for_templates(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n  - name: p1\n    power: {driver: snmp, address: pdu-1, "
                    "outlet: 3, pdu: apc_rackpdu, community: c0mm}\n")
    board = load_inventory(path)["p1"]
    assert board["power_address"] == "pdu-1"
    assert "power_community" not in board
    assert board["power"]["community"] == "c0mm"  # the engine needs it
