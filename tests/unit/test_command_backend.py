"""The command backend with real processes: whatever a lab script prints is a
result the engine can store, and board values reach a shell as data."""

from __future__ import annotations

import sys

import pytest

from corral.operations.base import OperationContext, OperationFailed
from corral.operations.command import CommandBackend
from corral.payload import check_json

PYTHON = sys.executable


def context(template: str, **attrs: object) -> OperationContext:
    return OperationContext(operation_id=7, kind="power_cycle", machine_kind="board",
                            name="b1", attrs={"commands": {"power_cycle": template}, **attrs},
                            payload={}, attempt=1)


def write(data: bytes, status: int = 0) -> str:
    """A command printing ``data`` as raw bytes, then exiting with ``status``."""
    return f'{PYTHON} -c "import sys; sys.stdout.buffer.write({data!r}); sys.exit({status})"'


@pytest.mark.parametrize("status", [0, 3])
def test_output_that_is_not_utf8_or_holds_nul_is_a_storable_result(status):
    backend = CommandBackend({})
    ctx = context(write(b"relay \xff\xfe ok\x00 done\n", status))
    if status == 0:
        detail = backend.cycle(ctx)
    else:
        with pytest.raises(OperationFailed) as info:
            backend.cycle(ctx)
        detail = info.value.detail
    assert detail == {"exit_status": status, "output": "relay \ufffd\ufffd ok done\n"}
    check_json(detail)


def test_values_in_a_shell_script_are_quoted(tmp_path):
    marker = tmp_path / "injected"
    hostile = f"b1; touch {marker}; echo $(id -u) `id -u` 'q\" *"
    detail = CommandBackend({}).cycle(context("sh -c 'printf %s {hostname}'",
                                              hostname=hostile))
    assert detail["output"] == hostile
    assert not marker.exists()
    # Flags before -c, and a format spec, are quoted alike.
    detail = CommandBackend({}).cycle(context("/bin/sh -ec 'echo port {power_port:>3}'",
                                              power_port="4;x"))
    assert detail["output"] == "port 4;x\n"


def test_values_outside_a_shell_stay_one_argument_each():
    detail = CommandBackend({}).cycle(context(
        f"{PYTHON} -c 'import sys; print(sys.argv[1:])' {{hostname}} {{name}}",
        hostname="a b; c"))
    assert detail["output"] == "['a b; c', 'b1']\n"


@pytest.mark.parametrize("template", ["echo {name.__class__}", "echo {hostname[0]}", "echo {}"])
def test_a_template_field_is_a_plain_name(template):
    # An inventory refuses these at import; a configured template is refused here.
    with pytest.raises(OperationFailed, match="is not a board attribute's name"):
        CommandBackend({}).cycle(context(template, hostname="h1"))
