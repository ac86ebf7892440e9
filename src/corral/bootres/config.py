"""The boot resource import configuration (docs/boot-resources.md).

```yaml
sources:
  - url: https://images.example.com/ephemeral/     # a mirror root, or an index URL
    mask: ["armhf/midway/*"]                        # arch/subarch/release globs
    keyring: /etc/corral/images.gpg                 # verify index.sjson with gpgv
  - url: /srv/mirror2
    allow_md5: true                                 # items with only an md5 are accepted
sorting: [sources_order, num_subarches(less)]
storage: /var/lib/corral/boot-resources
max_item_size: 8589934592                           # bytes; the default is 8 GiB
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.bootres.streams import DEFAULT_MAX_ITEM_SIZE, has_control_character
from corral.errors import ConfigError
from corral.jobs.checks import Checker, describe
from corral.jobs.spec import SpecError
from corral.jobs.versions import parse_text

SORTING_RULES = ("sources_order", "num_subarches(less)")
SOURCE_KEYS = ("url", "mask", "keyring", "allow_md5")


@dataclass(frozen=True, kw_only=True)
class Source:
    url: str
    mask: tuple[str, ...] | None = None
    keyring: str | None = None
    allow_md5: bool = False


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    sources: tuple[Source, ...]
    sorting: tuple[str, ...]
    storage: Path
    max_item_size: int = DEFAULT_MAX_ITEM_SIZE


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
    top = check.mapping(doc, "", ("sources", "sorting", "storage", "max_item_size"),
                        ("sources", "storage"))
    if top is None:
        raise BootConfigError(name, check.problems)
    sources = []
    raw_sources = top.get("sources")
    if "sources" in top and (not isinstance(raw_sources, list) or not raw_sources):
        check.error("sources", "must be a non-empty list of {url, mask?, keyring?, "
                    "allow_md5?}")
    for i, raw in enumerate(raw_sources if isinstance(raw_sources, list) else []):
        where = f"sources[{i}]"
        body = check.mapping(raw, where, SOURCE_KEYS, ("url",))
        if body is None or "url" not in body:
            continue
        url = check.string(body["url"], f"{where}.url", limit=4096)
        if url is not None and has_control_character(url):
            # The URL is written into every PXE configuration the source's files boot.
            check.error(f"{where}.url", f"must not hold control characters, not {url!r}")
            url = None
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
        allow_md5 = body.get("allow_md5", False)
        if not isinstance(allow_md5, bool):
            check.error(f"{where}.allow_md5", f"must be true or false, not "
                        f"{describe(allow_md5)}")
        if url is not None:
            sources.append(Source(url=url, mask=mask, keyring=keyring,
                                  allow_md5=allow_md5 is True))
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
    max_item_size = DEFAULT_MAX_ITEM_SIZE
    if "max_item_size" in top:
        max_item_size = check.integer(top["max_item_size"], "max_item_size", 1,
                                      2**63 - 1) or DEFAULT_MAX_ITEM_SIZE
    if check.problems:
        raise BootConfigError(name, check.problems)
    assert storage is not None
    return ImportConfig(sources=tuple(sources), sorting=tuple(sorting), storage=storage,
                        max_item_size=max_item_size)
