"""Reading simplestreams mirrors: index:1.0 and products:1.0, signed or not.

A source URL is a mirror root (the folder holding ``streams/``), whose
``streams/v1/index.json`` is read (``index.sjson`` when the source has a
keyring), or the URL of an index file itself. Item paths are relative to the
mirror root. A signed document is verified with ``gpgv`` against the source's
keyring, and only the data gpgv vouches for is parsed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from corral.errors import CorralError

INDEX_FORMAT = "index:1.0"
PRODUCTS_FORMAT = "products:1.0"
CHUNK = 1 << 16


class ImportFailed(CorralError):
    """An import cannot go on; nothing is published."""

    exit_code = 1


@dataclass(frozen=True, kw_only=True)
class Item:
    """One file of a product version, with its attributes flattened."""

    name: str
    path: str
    ftype: str
    size: int | None
    checksums: Mapping[str, str]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def leaf(self) -> str:
        """The published file's name: its ftype (boot-kernel, boot-dtb, ...)."""
        return self.ftype


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A product's newest version, as a source offers it."""

    source_index: int
    source_url: str
    mirror_root: str
    product: str
    version: str
    arch: str
    release: str
    subarches: tuple[str, ...]
    items: tuple[Item, ...]


# ------------------------------------------------------------------ locations


def _is_remote(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("http", "https")


def _local_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    return Path(url)


def locate(url: str, signed: bool) -> tuple[str, str]:
    """(mirror root, index location) of a source URL."""
    name = "index.sjson" if signed else "index.json"
    trimmed = url.rstrip("/")
    if trimmed.endswith((".json", ".sjson")):
        root, sep, _ = trimmed.rpartition("/streams/")
        if not sep:
            root = trimmed.rsplit("/", 1)[0]
        return root + "/", trimmed
    return trimmed + "/", f"{trimmed}/streams/v1/{name}"


def join(root: str, relative: str) -> str:
    """An item's location under the mirror root; refuses absolute paths and ``..``."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise ImportFailed(f"refusing item path {relative!r}: paths must be relative to the "
                           "mirror root, without '..'")
    return root + relative


class Fetcher:
    """Reads file://, plain-path and http(s):// locations."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.http = httpx.Client(timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def read(self, location: str) -> bytes:
        return b"".join(self.stream(location))

    def stream(self, location: str) -> Iterator[bytes]:
        """The content in chunks.

        Raises:
            ImportFailed: unreachable or missing.
        """
        try:
            if _is_remote(location):
                with self.http.stream("GET", location) as reply:
                    if reply.status_code != 200:
                        raise ImportFailed(f"{location}: HTTP {reply.status_code}")
                    yield from reply.iter_bytes(CHUNK)
                return
            with _local_path(location).open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
        except OSError as exc:
            raise ImportFailed(f"{location}: {exc.strerror or exc}") from None
        except httpx.HTTPError as exc:
            raise ImportFailed(f"{location}: {exc}") from None


# ------------------------------------------------------------------ documents


def verify(data: bytes, keyring: str, location: str) -> bytes:
    """The content of a clearsigned document, if ``gpgv`` accepts its signature.

    Raises:
        ImportFailed: a bad or missing signature, or no gpgv.
    """
    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise ImportFailed("gpgv is needed to verify signed sources; install GnuPG")
    with tempfile.TemporaryDirectory(prefix="corral-gpgv-") as tmp:
        signed, out = Path(tmp, "doc.sjson"), Path(tmp, "doc.json")
        signed.write_bytes(data)
        result = subprocess.run([gpgv, "--keyring", keyring, "--output", str(out),
                                 str(signed)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not out.exists():
            reason = (result.stderr.strip().splitlines() or ["no valid signature"])[-1]
            raise ImportFailed(f"{location}: signature check failed: {reason}")
        return out.read_bytes()


def read_document(fetcher: Fetcher, location: str, keyring: str | None) -> Any:
    data = fetcher.read(location)
    if keyring is not None:
        data = verify(data, keyring, location)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportFailed(f"{location}: not valid JSON: {exc}") from None


def _inherit(base: Mapping[str, Any], level: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes of a level over its parent's: only strings and numbers inherit."""
    merged = dict(base)
    for key, value in level.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            merged[key] = value
    return merged


def _version_key(version: str) -> str:
    return version


def candidates(doc: Any, *, source_index: int, source_url: str, root: str,
               location: str) -> list[Candidate]:
    """Every product of a products:1.0 document, through its newest version only."""
    if not isinstance(doc, dict) or doc.get("format") != PRODUCTS_FORMAT:
        raise ImportFailed(f"{location}: not a {PRODUCTS_FORMAT} document")
    top = _inherit({}, doc)
    result = []
    for product_name, product in sorted((doc.get("products") or {}).items()):
        if not isinstance(product, dict) or not isinstance(product.get("versions"), dict) \
                or not product["versions"]:
            continue
        product_attrs = _inherit(top, product)
        # Version keys compare as strings: 20140301.1 is newer than 20140301.
        newest = max(product["versions"], key=_version_key)
        version = product["versions"][newest]
        version_attrs = _inherit(product_attrs, version)
        items = []
        for item_name, item in sorted((version.get("items") or {}).items()):
            attrs = _inherit(version_attrs, item)
            if "path" not in attrs:
                raise ImportFailed(f"{location}: {product_name} {newest} item {item_name} "
                                   "has no path")
            join(root, str(attrs["path"]))
            checksums: dict[str, str] = {k: str(attrs[k]) for k in ("sha512", "sha256", "md5")
                                         if k in attrs}
            size = attrs.get("size")
            items.append(Item(name=item_name, path=str(attrs["path"]),
                              ftype=str(attrs.get("ftype", item_name)),
                              size=int(size) if isinstance(size, int) else None,
                              checksums=checksums, attrs=attrs))
        arch, release = version_attrs.get("arch"), version_attrs.get("release")
        subarches = version_attrs.get("subarches")
        if not (isinstance(arch, str) and isinstance(release, str)
                and isinstance(subarches, str) and items):
            continue
        result.append(Candidate(
            source_index=source_index, source_url=source_url, mirror_root=root,
            product=product_name, version=newest, arch=arch, release=release,
            subarches=tuple(s.strip() for s in subarches.split(",") if s.strip()),
            items=tuple(items)))
    return result


def read_source(fetcher: Fetcher, source_index: int, url: str, keyring: str | None
                ) -> list[Candidate]:
    """Every candidate a source offers (through its index).

    Raises:
        ImportFailed: unreachable, unsigned or badly signed, malformed.
    """
    root, index_location = locate(url, keyring is not None)
    index = read_document(fetcher, index_location, keyring)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ImportFailed(f"{index_location}: not an {INDEX_FORMAT} document")
    found: list[Candidate] = []
    for content_id, entry in sorted((index.get("index") or {}).items()):
        if not isinstance(entry, dict) or entry.get("format", PRODUCTS_FORMAT) != \
                PRODUCTS_FORMAT or "path" not in entry:
            continue
        path = str(entry["path"])
        if keyring is not None and path.endswith(".json"):
            path = path[:-len(".json")] + ".sjson"
        location = join(root, path)
        doc = read_document(fetcher, location, keyring)
        found.extend(candidates(doc, source_index=source_index, source_url=url, root=root,
                                location=f"{location} ({content_id})"))
    return found
