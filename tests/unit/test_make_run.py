"""`make run` and the README's tour say commands a newcomer types or watches
run: each must be a `corral` command with options it has, the settings
`make run` passes must exist, its simulated processes must talk to the
address the server listens on, and the simulated runs must ask for boards
that examples/simlab.yaml has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from corral.cli.main import cli
from corral.config import SETTINGS, Settings
from corral.inventory import load_inventory
from corral.leases import selector as selectors
from corral.simulate.runs import WANTS

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def run_recipe() -> str:
    """The `run:` target's recipe, its continued lines joined."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^run: .*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "the Makefile has a run: target"
    return match[1].replace("\\\n", " ")


def make_run_commands() -> list[tuple[dict[str, str], list[str]]]:
    """Each `corral` command `make run` starts: its environment assignments
    and its arguments."""
    commands = []
    for part in re.split(r"[;&\n]", run_recipe()):
        words = shlex.split(part)
        env = {}
        while words and (assigned := ASSIGNMENT.match(words[0])):
            env[assigned[1]] = assigned[2]
            words.pop(0)
        if words and words[0] == "$(BIN)/corral":
            commands.append((env, words[1:]))
        else:
            assert words in ([], ["wait"]), f"make run runs something unexpected: {part!r}"
    return commands


def tour_commands() -> list[list[str]]:
    """Every `$ corral ...` line of the README (continuations joined, comments dropped)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [shlex.split(line, comments=True)[2:] for line in text.splitlines()
            if line.startswith("$ corral ")]


def parse(args: list[str]) -> click.Command:
    """The command ``corral ARGS`` runs, its options and arguments parsed
    (not run).

    Raises:
        click.UsageError: no such command, an unknown option, a missing argument.
    """
    group: click.Group = cli
    ctx = None
    name = "corral"
    while True:
        at = next((i for i, word in enumerate(args) if word in group.commands), None)
        if at is None:
            raise click.UsageError(f"no command of {name!r} in {args!r}")
        # The group's own options (the root's --url), tolerant of no arguments.
        ctx = group.make_context(name, args[:at], parent=ctx, resilient_parsing=not args[:at])
        name, command, args = args[at], group.commands[args[at]], args[at + 1:]
        if not isinstance(command, click.Group):
            # Closing the context closes what it opened (a spec file).
            with command.make_context(name, args, parent=ctx):
                return command
        group = command


def test_make_run_starts_corral_commands_that_exist():
    commands = make_run_commands()
    names = [" ".join(w for w in args[:2]) for _, args in commands]
    assert names == ["db upgrade", "board import", "pool create-fleet", "mo-sim --listen",
                     "serve --simulate", "simulate runs", "simulate boards"]
    for _, args in commands:
        parse(args)


def test_make_run_passes_settings_that_exist_and_talks_to_its_server():
    commands = make_run_commands()
    passed = {name for env, _ in commands for name in env}
    assert passed, "make run passes settings to the server"
    for name in passed:
        assert name.startswith("CORRAL_")
        assert name.removeprefix("CORRAL_").lower() in SETTINGS, name
    [(serve_env, _)] = [(env, args) for env, args in commands if args[0] == "serve"]
    assert "CORRAL_TIMEOUT_SCALE" in serve_env
    # The simulated boards and runs report to where `serve` listens by default.
    urls = {args[args.index("--url") + 1] for _, args in commands if "--url" in args}
    assert urls == {f"http://{Settings().listen}"}
    # The import names the lab the simulated runs ask for.
    [(_, board_import)] = [(env, args) for env, args in commands if args[:2] == ["board", "import"]]
    assert board_import[2] == "examples/simlab.yaml"


@pytest.mark.parametrize("args", tour_commands(), ids=" ".join)
def test_the_readme_tour_uses_corral_commands_that_exist(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    parse(args)


def test_the_tour_shows_the_lease_commands():
    shown = {" ".join(args[:2]) for args in tour_commands()}
    assert {"lease request", "lease list", "lease explain", "lease release",
            "board holders"} <= shown
    [request] = [a for a in tour_commands() if a[:2] == ["lease", "request"] and "--wait" in a]
    assert "--selector" in request


@pytest.mark.parametrize(("selector", "purpose"), WANTS, ids=[w[0] for w in WANTS])
def test_simulated_runs_ask_for_boards_the_simulated_lab_has(selector, purpose):
    # A run asks for up to two boards: a lab with fewer matching would refuse it.
    lab = load_inventory(ROOT / "examples" / "simlab.yaml")
    wanted = selectors.parse(selector)
    matching = [name for name, attrs in lab.items()
                if wanted.matches(selectors.facts_of(name, attrs))]
    assert len(matching) >= 2, (selector, matching)
    assert len(matching) < len(lab), f"{selector} rules nothing out"
