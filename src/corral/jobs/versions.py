"""Every job spec version, and reading a submitted spec whatever its version.

Rules (docs/upgrading.md): a version, once released, never changes; each
version module converts its documents to the internal form (``parse``) and
back (``dump``); a conversion down that cannot express something raises
:class:`~corral.jobs.spec.DowngradeError` instead of dropping it; specs are
stored as submitted, so a stored spec is read by the same version's code
forever, and tests/golden/jobspec/ holds frozen documents of every version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import yaml

from corral.errors import InvalidRequest, NotFound
from corral.jobs import v1, v2
from corral.jobs.checks import describe
from corral.jobs.spec import JobSpec, SpecError
from corral.payload import MAX_DEPTH, check_json
from corral.yamlio import YamlSyntaxError, load_yaml

VERSIONS: dict[str, ModuleType] = {v1.API_VERSION: v1, v2.API_VERSION: v2}
MAX_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Submitted:
    """A spec as submitted: its text, format and version, and its internal form."""

    api_version: str
    format: str
    text: str
    spec: JobSpec


def parse_text(text: str) -> tuple[str, Any]:
    """(format, document) of a YAML or JSON text.

    Raises:
        SpecError: not valid YAML or JSON, or nested too deeply to read.
    """
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise SpecError([f"(document): larger than {MAX_BYTES} bytes"])
    if text.lstrip().startswith(("{", "[")):
        try:
            return "json", json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError([f"line {exc.lineno}: not valid JSON: {exc.msg}"]) from None
        except RecursionError:
            raise SpecError([f"(document): nested too deeply to read; a spec may be nested "
                             f"at most {MAX_DEPTH} levels deep"]) from None
    try:
        return "yaml", load_yaml(text)
    except YamlSyntaxError as exc:
        raise SpecError([f"line {exc.line}: not valid YAML: {exc}"]) from None


def load(text: str) -> Submitted:
    """Read and validate a submitted spec of any known version.

    Raises:
        SpecError: every problem, each with its path.
    """
    fmt, doc = parse_text(text)
    version = version_of(doc)
    check_storable(doc)
    return Submitted(api_version=version, format=fmt, text=text,
                     spec=VERSIONS[version].parse(doc))


def check_storable(doc: Any) -> None:
    """The payload check every stored JSON value passes (finite numbers, no NUL,
    valid Unicode, at most :data:`~corral.payload.MAX_DEPTH` levels deep), run
    before the version's own checks so that they never walk a document too deep
    for them.

    Raises:
        SpecError: naming the first offending field.
    """
    try:
        # The text is already at most MAX_BYTES; aliases are bounded by the reader.
        check_json(doc, "spec", max_bytes=None)
    except InvalidRequest as exc:
        # check_json names places from a root ("spec.context.x"); spec problems
        # name fields from the top level, as the version's own checks do.
        raise SpecError([str(exc).removeprefix("spec.")]) from None


def version_of(doc: Any) -> str:
    known = ", ".join(VERSIONS)
    if not isinstance(doc, dict):
        raise SpecError([f"(document): a job spec is a mapping with apiVersion ({known}), "
                         "kind and the job's fields"])
    if "apiVersion" not in doc:
        raise SpecError([f"apiVersion: missing; versions: {known}"])
    version = doc["apiVersion"]
    if not isinstance(version, str):
        raise SpecError([f"apiVersion: must be a string, not {describe(version)}; "
                         f"versions: {known}"])
    if version not in VERSIONS:
        raise SpecError([f"apiVersion: unknown version {version!r}; versions: {known}"])
    return str(version)


def convert(spec: JobSpec, api_version: str) -> dict[str, Any]:
    """The spec as a document of ``api_version``.

    Raises:
        NotFound: no such version. DowngradeError: it cannot express the spec.
    """
    if api_version not in VERSIONS:
        raise NotFound(f"unknown spec version {api_version!r}; versions: {', '.join(VERSIONS)}")
    return dict(VERSIONS[api_version].dump(spec))


def dumps(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
