from __future__ import annotations

import sys

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
    assert "lab.yaml:3: boards[0]: unknown key 'colour' (allowed: name, arch, " in text
    assert "lab.yaml:4: boards[1].name: board 'b1' is listed twice" in text
    assert "lab.yaml:6: boards[2].mac: must look like" in text


@pytest.mark.parametrize(("line", "message"), [
    ('  - name: "b1\\n"\n', "name: must be letters, digits"),
    ('  - name: b1\n    mac: "02:00:00:00:00:01\\n"\n', "mac: must look like"),
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
        f"{path}:8: boards[2].mac: mac 02:00:00:00:00:0a is also b2's"]
    path.write_text('boards:\n  - name: b1\n    release: noble\n  - name: b2\n    release: 7\n')
    with pytest.raises(InventoryError,
                       match=r"boards\[1\].release: must be a string, not the number 7"):
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
    assert ("lab.yaml:5: boards[0].power: unknown key 'adress' (allowed: "
            "driver, controller, concurrency, timeout, power_on_wait, address, system") in text
    assert "lab.yaml:3: boards[0].power: missing required key 'address'" in text
    assert "lab.yaml:6: boards[0].power.verify_tls: must be true or false, not 'yes'" in text
    assert ("lab.yaml:8: boards[1].power.password_env: give one of password, password_env, "
            "not several") in text
    assert "lab.yaml:8: boards[1].power.port: must be a whole number, not 'x'" in text
    assert ("lab.yaml:10: boards[2].power.pdu: must be one of apc_rackpdu, apc_masterswitch, "
            "raritan_px") in text
    assert ("lab.yaml:12: boards[3].power.driver: must be one of command, ipmi, qemu, redfish, "
            "simulated, snmp, not 'redfsh'") in text
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


def test_a_secret_given_empty_or_as_a_number_is_not_repeated(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n  - name: p1\n    power: {driver: snmp, address: pdu-1, "
                    "outlet: 3, pdu: apc_rackpdu, community: 1234, priv_key_env: K}\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3: boards[0].power.community: must be a non-empty string",
        f"{path}:3: boards[0].power.priv_key_env: SNMP v3 privacy (priv_key) needs auth_key too"]


@pytest.mark.parametrize("template", [
    "relay-ctl {power_relay.__class__}", "relay-ctl {power_relay[0]}", "relay-ctl {}",
    "relay-ctl {0}", "relay-ctl {power_relay:{name.__class__}}"])
def test_a_command_template_reaches_only_the_boards_values(tmp_path, template):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n  - name: b1\n    power: {relay: r1}\n"
                    f"    commands: {{power_cycle: '{template}'}}\n")
    with pytest.raises(InventoryError, match=r"lab.yaml:4: boards\[0\].commands.power_cycle: "
                       "template field .* is not a board attribute's name"):
        load_inventory(path)


def test_a_command_template_names_a_value_the_board_has(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n  - name: b1\n    power: {relay: r1}\n"
                    "    commands: {power_cycle: 'relay-ctl {power_relay} {power_port}'}\n")
    with pytest.raises(InventoryError, match=r"template field \{power_port\} is not one of the "
                       r"board's values \(hostname, name, operation_id, power_relay\)"):
        load_inventory(path)


def test_every_drivers_secrets_are_hidden():
    from corral.power.drivers import DRIVERS
    from corral.power.settings import SECRET_KEYS

    assert {s for cls in DRIVERS.values() for s in cls.Settings.SECRETS} == SECRET_KEYS


def _uninstalled(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """``package`` as if pip had never installed it: importing it (or any of
    its modules, loaded or not) raises ModuleNotFoundError."""
    for name in [n for n in sys.modules if n.startswith(f"{package}.")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_driver_whose_library_is_not_installed_is_refused_at_import(tmp_path, monkeypatch):
    path = tmp_path / "lab.yaml"
    path.write_text("""boards:
  - name: s1
    power: {driver: redfish, address: "https://bmc-1"}
  - name: s2
    power:
      driver: snmp
      address: pdu-1
      outlet: 3
      pdu: apc_rackpdu
  - name: s3
    power: {driver: ipmi, address: 10.0.0.3}
""")
    assert set(load_inventory(path)) == {"s1", "s2", "s3"}  # the power extra is installed
    _uninstalled(monkeypatch, "sushy")
    _uninstalled(monkeypatch, "pysnmp")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3: boards[0].power.driver: driver redfish needs the power extra: "
        "pip install 'corral[power]'",
        f"{path}:6: boards[1].power.driver: driver snmp needs the power extra: "
        "pip install 'corral[power]'"]
