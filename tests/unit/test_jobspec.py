"""Job specs of every version: the frozen golden corpus, negative fixtures,
round trips (hypothesis), conversions through the hub and downgrades, Maize
input, and the documented reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.jobs import maize, v1, v2, versions
from corral.jobs.actions import TYPES
from corral.jobs.actions.base import ActionType
from corral.jobs.spec import ActionSpec, DowngradeError, JobSpec, SpecError, StageSpec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "jobspec"
MODULES = {"v1": v1, "v2": v2}


def _specs(version: str) -> list[Path]:
    return sorted(p for p in (GOLDEN / version).glob("*.*")
                  if p.suffix in (".yaml", ".json") and not p.name.endswith(".internal.json"))


V1 = _specs("v1")
GOLDEN_SPECS = [(v, p) for v in MODULES for p in _specs(v)]
INVALID = [(v, p) for v in MODULES for p in sorted((GOLDEN / v / "invalid").glob("*.yaml"))]


def _ids(case) -> str:
    return f"{case[0]}/{case[1].name}" if isinstance(case, tuple) else str(case)


def expected_errors(path: Path) -> list[str]:
    return [line.removeprefix("# error: ") for line in path.read_text().splitlines()
            if line.startswith("# error: ")]


def says(problem: str, error: str) -> bool:
    """Whether ``problem`` is the fixture's ``error`` (or it, then ``: more``).

    A list of the known versions (``...; versions: corral/v1``) grows with
    every version added after the fixture was frozen: the fixture's list must
    be where the problem's begins."""
    if problem == error or problem.startswith(error + ":"):
        return True
    head, sep, known = error.partition("; versions: ")
    if not sep or not problem.startswith(head + sep):
        return False
    listed = problem.removeprefix(head + sep).split(", ")
    return listed[:len(known.split(", "))] == known.split(", ")


@pytest.mark.parametrize("case", GOLDEN_SPECS, ids=_ids)
def test_golden_specs_load_to_their_frozen_internal_form(case):
    version, path = case
    submitted = versions.load(path.read_text())
    assert submitted.api_version == f"corral/{version}"
    assert submitted.format == ("json" if path.suffix == ".json" else "yaml")
    frozen = json.loads(path.with_name(path.stem + ".internal.json").read_text())
    assert submitted.spec.to_json() == frozen
    assert JobSpec.from_json(frozen) == submitted.spec


def _paths(value, prefix: str = "") -> set[str]:
    """Field paths of a document, list indices written as []."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            found.add(path)
            if not (prefix == "" and key == "context") and not path.endswith(
                    ("timeout", "timeouts.job", "timeouts.action", "duration", "heartbeat")):
                found |= _paths(item, path)
    elif isinstance(value, list):
        for item in value:
            found |= _paths(item, prefix + "[]")
    return found


@pytest.mark.parametrize("version", list(MODULES))
def test_every_field_appears_in_a_golden_spec(version):
    used: set[str] = set()
    for path in _specs(version):
        used |= _paths(versions.parse_text(path.read_text())[1])
    fields = {f[0] for f in MODULES[version].FIELDS}
    assert fields - used == set()
    assert used - fields == set()


@pytest.mark.parametrize("case", INVALID, ids=_ids)
def test_negative_fixtures_fail_with_their_errors(case):
    _, path = case
    wanted = expected_errors(path)
    assert wanted, f"{path.name} names no expected error"
    with pytest.raises(SpecError) as info:
        versions.load(path.read_text())
    problems = info.value.problems
    for error in wanted:
        assert any(says(p, error) for p in problems), (error, problems)
    assert len(problems) == len(wanted), problems


def test_a_frozen_list_of_versions_is_matched_as_the_start_of_the_current_one():
    error = "apiVersion: unknown version 'corral/v9'; versions: corral/v1"
    assert says("apiVersion: unknown version 'corral/v9'; versions: corral/v1, corral/v2",
                error)
    assert not says("apiVersion: unknown version 'corral/v9'; versions: corral/v2", error)
    assert not says("apiVersion: unknown version 'corral/v8'; versions: corral/v1", error)


def test_documented_errors_are_the_fixtures_errors():
    doc = (ROOT / "docs" / "jobs.md").read_text()
    for _, path in INVALID:
        for error in expected_errors(path):
            assert error in doc, f"docs/jobs.md does not show: {error}"


@pytest.mark.parametrize("version", list(MODULES))
def test_documented_reference_matches_the_schema(version):
    from corral.jobs.reference import table

    doc = (ROOT / "docs" / "jobs.md").read_text()
    start, end = f"<!-- fields:{version} -->\n", f"<!-- /fields:{version} -->"
    assert doc[doc.index(start) + len(start):doc.index(end)] == table(version), (
        "docs/jobs.md is stale: run `make docs`")


def test_a_spec_converts_down_only_without_loss(monkeypatch):
    class Future(ActionType):
        key = "futureAction"
        since = 3

    monkeypatch.setitem(TYPES, "futureAction", Future())
    spec = versions.load((GOLDEN / "v1" / "maize-minimal.yaml").read_text()).spec
    future = JobSpec(**{**spec.__dict__, "stages": (*spec.stages, StageSpec(
        name="later", actions=(ActionSpec(name="f", type="futureAction", params={}),)))})
    for version in ("corral/v1", "corral/v2"):
        with pytest.raises(DowngradeError, match=re.escape(
                f"stages[1].actions[0]: action type futureAction needs corral/v3; {version} "
                "cannot express it")):
            versions.convert(future, version)
    assert versions.convert(spec, "corral/v1")["stages"][0]["name"] == "os-override"


def test_a_lease_cannot_be_written_as_v1():
    spec = versions.load((GOLDEN / "v2" / "full.yaml").read_text()).spec
    with pytest.raises(DowngradeError) as info:
        versions.convert(spec, "corral/v1")
    assert str(info.value) == (
        "cannot convert to corral/v1 without losing information: stages[0].actions[0]: "
        "action type leaseAction needs corral/v2; corral/v1 cannot express it")


@pytest.mark.parametrize("path", V1, ids=lambda p: p.name)
def test_every_v1_spec_converts_to_v2_and_back_through_the_hub(path):
    spec = versions.load(path.read_text()).spec
    as_v2 = versions.load(versions.dumps(versions.convert(spec, "corral/v2"), "yaml"))
    assert as_v2.api_version == "corral/v2"
    assert as_v2.spec == spec
    back = versions.load(versions.dumps(versions.convert(as_v2.spec, "corral/v1"), "json"))
    assert back.spec == spec


def test_a_v2_spec_without_v2_features_is_the_same_job_as_v1():
    v2_spec = versions.load((GOLDEN / "v2" / "v1-features.json").read_text()).spec
    as_v1 = versions.convert(v2_spec, "corral/v1")
    assert as_v1["apiVersion"] == "corral/v1"
    assert v1.parse(as_v1) == v2_spec


def test_a_v1_spec_may_not_use_a_lease():
    text = (GOLDEN / "v2" / "lease-minimal.yaml").read_text().replace("corral/v2", "corral/v1")
    with pytest.raises(SpecError) as info:
        versions.load(text)
    assert info.value.problems == [
        "stages[0].actions[0].leaseAction: unknown key; allowed keys: name, timeout, "
        "failure_retry, osOverrideAction, holdAction, waitForEventAction",
        "stages[0].actions[0]: must have exactly one action type of osOverrideAction, "
        "holdAction, waitForEventAction"]


def test_a_selector_is_kept_in_its_canonical_form():
    text = (GOLDEN / "v2" / "full.yaml").read_text()
    spec = versions.load(text).spec
    assert spec.stages[0].actions[0].params["selector"] == "arch=arm64,rack in (r1,r2),!broken"
    doc = versions.convert(spec, "corral/v2")
    assert doc["stages"][0]["actions"][0]["leaseAction"] == {
        "selector": "arch=arm64,rack in (r1,r2),!broken", "count": 2, "duration": {"hours": 6},
        "release": "ubuntu-24.04", "heartbeat": {"minutes": 1}, "priority": 10,
        "on_return": "power_cycle"}


def test_maize_snapshot_becomes_one_override_stage():
    job = maize.job_from_maize({"snapshot": {"release": "azurelinux3-test-x86_64-r11"}},
                               fabric="f1")
    spec = v1.parse(job)
    [(stage, index, action)] = spec.actions()
    assert (stage, index) == (0, 0)
    assert (action.type, action.params) == ("osOverrideAction",
                                            {"os_version": "azurelinux3-test-x86_64-r11"})
    assert spec.fabric == "f1"
    for doc, error in (({}, "(top level): missing required key 'snapshot'"),
                       ({"snapshot": {"release": 11}},
                        "snapshot.release: must be a string, not the number 11"),
                       ({"snapshot": {"release": "r1", "x": 1}},
                        "snapshot.x: unknown key; allowed keys: release")):
        with pytest.raises(SpecError) as info:
            maize.job_from_maize(doc)
        assert info.value.problems == [error]


# ---------------------------------------------------------------- round trips

names = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40)
durations = st.sampled_from([1, 59, 60, 90, 3600, 5400, 86400, 172800])
plain = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters=" -_."),
                max_size=20)
contexts = st.none() | st.dictionaries(
    plain.filter(bool), st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6)
                                     | plain, lambda c: st.lists(c, max_size=3), max_leaves=5),
    max_size=4)


@st.composite
def specs(draw, version: int = 1) -> JobSpec:
    job = draw(durations)
    default = draw(durations.filter(lambda d: d <= job))
    kinds = sorted(k for k, t in TYPES.items() if t.since <= version)
    stages = []
    for stage_name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        actions = []
        for action_name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
            timeout = draw(st.none() | durations.filter(lambda d: d <= job))
            kind = draw(st.sampled_from(kinds))
            if kind == "osOverrideAction":
                params = {"os_version": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,30}",
                                                           fullmatch=True))}
            elif kind == "holdAction":
                params = {"duration_seconds": draw(durations.filter(
                    lambda d, t=timeout or default: d <= t))}
            elif kind == "leaseAction":
                params = {"selector": draw(selectors), "count": draw(st.integers(1, 100)),
                          "duration_seconds": draw(durations),
                          "release": draw(st.none() | st.from_regex(
                              r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,30}", fullmatch=True)),
                          "heartbeat_seconds": draw(st.none() | st.sampled_from(
                              [5, 60, 90, 3600, 86400])),
                          "priority": draw(st.integers(-100, 100)),
                          "on_return": draw(st.sampled_from(["reimage", "power_cycle"]))}
            else:
                params = {"event": draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,20}",
                                                      fullmatch=True))}
            actions.append(ActionSpec(name=action_name, type=kind, params=params,
                                      timeout_seconds=timeout,
                                      failure_retry=draw(st.integers(0, v1.MAX_RETRY))))
        stages.append(StageSpec(name=stage_name, actions=tuple(actions)))
    return JobSpec(job_name=draw(names), priority=draw(st.integers(0, 100)),
                   job_timeout_seconds=job, action_timeout_seconds=default,
                   stages=tuple(stages),
                   fabric=draw(st.none() | st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}",
                                                         fullmatch=True)),
                   context=draw(contexts))


words = st.from_regex(r"[A-Za-z0-9_.:/-]{1,12}", fullmatch=True)
terms = st.one_of(
    st.tuples(words, st.sampled_from(["=", "!="]), words).map("".join),
    st.tuples(words, st.sampled_from([" in ", " notin "]),
              st.lists(words, min_size=1, max_size=3)).map(
        lambda t: f"{t[0]}{t[1]}({','.join(t[2])})"),
    words, words.map(lambda w: "!" + w))
selectors = st.lists(terms, min_size=1, max_size=4).map(",".join)


@settings(max_examples=150, deadline=None)
@given(specs(), st.sampled_from(["yaml", "json"]))
def test_v1_round_trips_through_text_without_loss(spec, fmt):
    text = versions.dumps(versions.convert(spec, "corral/v1"), fmt)
    submitted = versions.load(text)
    assert submitted.format == fmt
    assert submitted.spec == spec
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@settings(max_examples=150, deadline=None)
@given(specs(version=2), st.sampled_from(["yaml", "json"]))
def test_v2_round_trips_through_text_without_loss(spec, fmt):
    text = versions.dumps(versions.convert(spec, "corral/v2"), fmt)
    submitted = versions.load(text)
    assert (submitted.api_version, submitted.format) == ("corral/v2", fmt)
    assert submitted.spec == spec
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


# ---------------------------------------------------------------- hostile input

MINIMAL = (GOLDEN / "v1" / "maize-minimal.yaml").read_text()


@pytest.mark.parametrize("text", [
    MINIMAL.replace("apiVersion: corral/v1", "apiVersion: [corral/v1]"),
    MINIMAL.replace("apiVersion: corral/v1", "apiVersion: {corral: v1}"),
    '{"apiVersion": ["corral/v1"], "kind": "Job"}',
], ids=["yaml-list", "yaml-mapping", "json-list"])
def test_an_api_version_that_is_not_a_string_is_named(text):
    with pytest.raises(SpecError) as info:
        versions.load(text)
    assert info.value.problems == [
        f"apiVersion: must be a string, not a {'mapping' if '{corral' in text else 'list'}; "
        "versions: corral/v1, corral/v2"]


@pytest.mark.parametrize(("text", "error"), [
    ("[" * 3000 + "]" * 3000, "(document): nested too deeply"),
    ('{"a":' * 3000 + "1" + "}" * 3000, "(document): nested too deeply"),
    ("a: " + "[" * 3000 + "]" * 3000, "line 1: not valid YAML: nested more than"),
    ("context:\n  " + "- " * 3000 + "x\n", "line 2: not valid YAML: nested more than"),
], ids=["json-list", "json-object", "yaml-flow", "yaml-block"])
def test_a_spec_nested_thousands_deep_is_a_spec_error(text, error):
    with pytest.raises(SpecError) as info:
        versions.load(text)
    [problem] = info.value.problems
    assert error in problem


def _with_context(context: str) -> str:
    return MINIMAL + f"context: {context}\n"


@pytest.mark.parametrize(("context", "error"), [
    ('{note: "a\\0b"}', "context.note: the string holds a NUL character"),
    ("{ratio: .inf}", "context.ratio: numbers must be finite"),
    ("{big: 99999999999999999999}", "context.big: the integer is outside the signed 64-bit"),
    ("{deep: " + "[" * 40 + "]" * 40 + "}",
     "context.deep" + "[0]" * 30 + ": nested more than 32 levels deep"),
], ids=["nul", "infinity", "big-integer", "depth"])
def test_a_spec_passes_the_payload_check(context, error):
    with pytest.raises(SpecError) as info:
        versions.load(_with_context(context))
    [problem] = info.value.problems
    assert problem.startswith(error), problem


def test_a_json_spec_passes_the_payload_check():
    doc = json.loads(json.dumps(versions.parse_text(MINIMAL)[1]))
    text = json.dumps(doc | {"context": {"x": 1}}).replace('"x": 1', '"x": NaN')
    with pytest.raises(SpecError) as info:
        versions.load(text)
    [problem] = info.value.problems
    assert problem.startswith("context.x: numbers must be finite"), problem


def test_multiplying_aliases_in_a_spec_are_refused_at_their_line():
    levels = ["  x0: &x0 [a, a, a, a, a, a, a, a, a]"] + [
        f"  x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 8)]
    text = _with_context("") + "\n".join(levels) + "\n"
    with pytest.raises(SpecError) as info:
        versions.load(text)
    [problem] = info.value.problems
    assert re.match(r"line (1[6-9]|2\d): not valid YAML: aliases expand to more than", problem), \
        problem


def test_a_few_aliases_in_a_spec_still_load():
    text = MINIMAL.replace("job: {hours: 6}", "job: &six {hours: 6}").replace(
        "action: {hours: 3}", "action: *six")
    assert versions.load(text).spec.action_timeout_seconds == 6 * 3600
