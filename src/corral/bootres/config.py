"""The boot resource import configuration (seed 002).

```yaml
sources:
  - url: https://images.example.com/ephemeral/     # a mirror root, or an index URL
    mask: ["armhf/midway/*"]                        # arch/subarch/release globs
    keyring: /etc/corral/images.gpg                 # verify index.sjson with gpgv
  - url: /srv/mirror2
sorting: [sources_order, num_subarches(less)]
storage: /var/lib/corral/boot-resources
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import ConfigError
from corral.jobs.checks import Checker
from corral.jobs.spec import SpecError
from corral.jobs.versions import parse_text

SORTING_RULES = ("sources_order", "num_subarches(less)")


@dataclass(frozen=True, kw_only=True)
class Source:
    url: str
    mask: tuple[str, ...] | None = None
    keyring: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    sources: tuple[Source, ...]
    sorting: tuple[str, ...]
    storage: Path


class BootConfigError(ConfigError):
    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def load_config(path: Path) -> ImportConfig:
    """Read and validate an import configuration (YAML or JSON).

    Raises:
        BootConfigError: every problem, each with its path in the document.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BootConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        _, doc = parse_text(text)
    except SpecError as exc:
        raise BootConfigError(str(path), exc.problems) from None
    return parse_config(doc, str(path), base=path.parent)


def parse_config(doc: Any, name: str, *, base: Path) -> ImportConfig:
    check = Checker()
    top = check.mapping(doc, "", ("sources", "sorting", "storage"), ("sources", "storage"))
    if top is None:
        raise BootConfigError(name, check.problems)
    sources = []
    raw_sources = top.get("sources")
    if "sources" in top and (not isinstance(raw_sources, list) or not raw_sources):
        check.error("sources", "must be a non-empty list of {url, mask?, keyring?}")
    for i, raw in enumerate(raw_sources if isinstance(raw_sources, list) else []):
        where = f"sources[{i}]"
        body = check.mapping(raw, where, ("url", "mask", "keyring"), ("url",))
        if body is None or "url" not in body:
            continue
        url = check.string(body["url"], f"{where}.url", limit=4096)
        mask = None
        if "mask" in body:
            raw_mask = body["mask"]
            if not isinstance(raw_mask, list) or not all(isinstance(m, str) for m in raw_mask):
                check.error(f"{where}.mask", "must be a list of arch/subarch/release globs")
            else:
                for j, glob in enumerate(raw_mask):
                    if len(glob.split("/")) != 3:
                        check.error(f"{where}.mask[{j}]", f"must be arch/subarch/release "
                                    f"(globs allowed per part), not {glob!r}")
                mask = tuple(raw_mask)
        keyring = None
        if "keyring" in body:
            keyring = check.string(body["keyring"], f"{where}.keyring", limit=4096)
            if keyring is not None and not Path(base, keyring).is_file():
                check.error(f"{where}.keyring", f"no such file: {keyring}")
            elif keyring is not None:
                keyring = str(Path(base, keyring).resolve())
        if url is not None:
            sources.append(Source(url=url, mask=mask, keyring=keyring))
    sorting = top.get("sorting", list(SORTING_RULES))
    if not isinstance(sorting, list) or not all(isinstance(r, str) for r in sorting):
        check.error("sorting", f"must be a list of rules: {', '.join(SORTING_RULES)}")
        sorting = []
    for i, rule in enumerate(sorting):
        if rule not in SORTING_RULES:
            check.error(f"sorting[{i}]", f"unknown rule {rule!r}; rules: "
                        f"{', '.join(SORTING_RULES)}")
    if len(set(sorting)) != len(sorting):
        check.error("sorting", "a rule is listed twice")
    storage = None
    if "storage" in top:
        text = check.string(top["storage"], "storage", limit=4096)
        storage = Path(base, text).resolve() if text else None
    if check.problems:
        raise BootConfigError(name, check.problems)
    assert storage is not None
    return ImportConfig(sources=tuple(sources), sorting=tuple(sorting), storage=storage)
