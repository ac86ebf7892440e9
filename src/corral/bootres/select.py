"""Choosing one winner per (arch, subarch, release) among every source's candidates.

A candidate counts for each subarch in its ``subarches`` that its source's
mask admits (masks are ``arch/subarch/release`` globs matched per part with
fnmatch; no mask admits everything). The configured rules order the
candidates of a triple: ``sources_order`` (an earlier source wins) and
``num_subarches(less)`` (a product declaring fewer subarches is more specific
and wins; the count is of the newest version's full list, before masking).
Ties after the rules go to the newest version, then the product name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from corral.bootres.streams import Candidate

Triple = tuple[str, str, str]


@dataclass(frozen=True, kw_only=True)
class Winner:
    arch: str
    subarch: str
    release: str
    candidate: Candidate

    @property
    def triple(self) -> Triple:
        return (self.arch, self.subarch, self.release)


def admitted(mask: Sequence[str] | None, triple: Triple) -> bool:
    if mask is None:
        return True
    return any(all(fnmatchcase(part, glob) for part, glob in zip(triple, m.split("/"),
                                                                strict=True))
               for m in mask)


def choose(candidates: Sequence[Candidate], masks: Sequence[Sequence[str] | None],
           sorting: Sequence[str]) -> list[Winner]:
    """One winner per triple, sorted by triple."""
    by_triple: dict[Triple, list[Candidate]] = {}
    for candidate in candidates:
        for subarch in candidate.subarches:
            triple = (candidate.arch, subarch, candidate.release)
            if admitted(masks[candidate.source_index], triple):
                by_triple.setdefault(triple, []).append(candidate)

    def rank(c: Candidate) -> tuple:
        keys: list[object] = []
        for rule in sorting:
            if rule == "sources_order":
                keys.append(c.source_index)
            elif rule == "num_subarches(less)":
                keys.append(len(c.subarches))
        return tuple(keys)

    winners = []
    for triple, found in sorted(by_triple.items()):
        # Newest version first among equals, then the product name.
        found = sorted(found, key=lambda c: c.product)
        found = sorted(found, key=lambda c: c.version, reverse=True)
        best = sorted(found, key=rank)[0]
        winners.append(Winner(arch=triple[0], subarch=triple[1], release=triple[2],
                              candidate=best))
    return winners
