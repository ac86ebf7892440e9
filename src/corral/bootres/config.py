"""The boot resource import configuration read by ``corral bootres import``.

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

:class:`ConfigFile` is the file's shape; :func:`parse_config` turns it into
the :class:`ImportConfig` the importer reads, with paths resolved against the
file's directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from corral.bootres.streams import DEFAULT_MAX_ITEM_SIZE, has_control_character
from corral.errors import ConfigError
from corral.validation import Omittable, Problem, refuse, validate
from corral.yamlio import YamlSyntaxError, load_yaml

SORTING_RULES = ("sources_order", "num_subarches(less)")
PATH_LIMIT = 4096


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
    """Every problem of a configuration; ``problems`` holds each as ``path:
    message``, the error's text each with its file and line."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.problems = [p.message for p in problems]
        super().__init__("; ".join(str(p) for p in problems))


def _one_line(url: str) -> str:
    if has_control_character(url):
        # The URL is written into every PXE configuration the source's files boot.
        raise refuse("must not hold control characters, not {url}", url=repr(url))
    return url


def _glob(glob: str) -> str:
    if len(glob.split("/")) != 3:
        raise refuse("must be arch/subarch/release (globs allowed per part), not {glob}",
                     glob=repr(glob))
    return glob


PathText = Annotated[str, Field(min_length=1, max_length=PATH_LIMIT)]


class SourceEntry(Omittable):
    url: Annotated[PathText, AfterValidator(_one_line)]
    mask: list[Annotated[str, AfterValidator(_glob)]] | None = None
    keyring: PathText | None = None
    allow_md5: bool = False

    @field_validator("keyring")
    @classmethod
    def _keyring_exists(cls, keyring: str, info: ValidationInfo) -> str:
        path = Path((info.context or {}).get("base", "."), keyring)
        if not path.is_file():
            raise refuse("no such file: {keyring}", keyring=keyring)
        return str(path.resolve())


class ConfigFile(Omittable):
    sources: list[SourceEntry] = Field(min_length=1)
    sorting: list[Literal[SORTING_RULES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(SORTING_RULES))
    storage: PathText
    max_item_size: int = Field(default=DEFAULT_MAX_ITEM_SIZE, ge=1, le=2**63 - 1)

    @field_validator("sorting")
    @classmethod
    def _each_rule_once(cls, sorting: list[str]) -> list[str]:
        if len(set(sorting)) != len(sorting):
            raise refuse("a rule is listed twice")
        return sorting


def load_config(path: Path) -> ImportConfig:
    """Read and validate an import configuration (YAML or JSON).

    Raises:
        BootConfigError: every problem, each with its line and its path in the
            document.
    """
    name = str(path)
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BootConfigError(name, [Problem(path=name, line=0,
                                             message=f"cannot read: {exc.strerror}")]) from None
    except YamlSyntaxError as exc:
        raise BootConfigError(name, [Problem(path=name, line=exc.line,
                                             message=f"not valid YAML: {exc}")]) from None
    return parse_config(doc, name, base=path.parent)


def parse_config(doc: Any, name: str, *, base: Path) -> ImportConfig:
    """The configuration ``doc`` (read from the file ``name``) holds; relative
    paths are taken from ``base``.

    Raises:
        BootConfigError: every problem.
    """
    config, problems = validate(ConfigFile, doc, name, context={"base": base})
    if config is None:
        raise BootConfigError(name, problems)
    return ImportConfig(
        sources=tuple(Source(url=s.url, mask=None if s.mask is None else tuple(s.mask),
                             keyring=s.keyring, allow_md5=s.allow_md5)
                      for s in config.sources),
        sorting=tuple(config.sorting), storage=Path(base, config.storage).resolve(),
        max_item_size=config.max_item_size)
