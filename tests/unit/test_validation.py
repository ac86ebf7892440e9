"""One wording and a line for every problem of a file, YAML or JSON alike."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import AfterValidator, Field

from corral.validation import Omittable, Strict, refuse, validate
from corral.yamlio import load_yaml


class Disk(Strict):
    size: int
    kind: Literal["ssd", "hdd"] = "ssd"


class Host(Omittable):
    name: str
    disks: list[Disk] = Field(default_factory=list)
    verbose: bool = False


@pytest.mark.parametrize("text", [
    "name: h1\nverbose: 1\ndisks:\n  - size: big\n    colour: red\n  - kind: tape\n",
    '{"name": "h1",\n "verbose": 1,\n "disks": [\n  {"size": "big",\n   "colour": "red"},\n'
    '  {"kind": "tape"}]}\n',
], ids=["yaml", "json"])
def test_each_problem_has_its_line_path_and_the_projects_words(text):
    value, problems = validate(Host, load_yaml(text), "host.yaml")
    assert value is None
    assert [str(p) for p in problems] == [
        "host.yaml:2: verbose: must be true or false, not the number 1",
        "host.yaml:4: disks[0].size: must be a whole number, not 'big'",
        "host.yaml:5: disks[0]: unknown key 'colour' (allowed: size, kind)",
        "host.yaml:6: disks[1]: missing required key 'size'",
        "host.yaml:6: disks[1].kind: must be one of ssd, hdd, not 'tape'",
    ]


def test_a_written_key_needs_a_value():
    _, problems = validate(Host, load_yaml("name: h1\nverbose:\n"), "host.yaml")
    assert [str(p) for p in problems] == ["host.yaml:2: verbose: needs a value (it is empty)"]


def test_a_document_that_is_not_a_mapping_lists_the_keys():
    _, problems = validate(Host, load_yaml("- h1\n"), "host.yaml")
    assert [str(p) for p in problems] == [
        "host.yaml:1: must be a mapping with keys name, disks, verbose, not a list"]


def test_a_wrong_key_of_a_mapping_is_shown_at_that_key():
    def lowercase(key: str) -> str:
        if not key.islower():
            raise refuse("must be lowercase, not {key}", key=repr(key))
        return key

    class Labels(Strict):
        labels: dict[Annotated[str, AfterValidator(lowercase)], int]

    _, problems = validate(Labels, load_yaml("labels:\n  rack: 1\n  Row: 2\n"), "labels.yaml")
    assert [str(p) for p in problems] == [
        "labels.yaml:3: labels.Row: must be lowercase, not 'Row'"]
