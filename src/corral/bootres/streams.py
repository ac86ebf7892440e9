"""Reading simplestreams mirrors: index:1.0 and products:1.0, signed or not.

A source URL is a mirror root (the folder holding ``streams/``), whose
``streams/v1/index.json`` is read (``index.sjson`` when the source has a
keyring), or the URL of an index file itself. Item paths are relative to the
mirror root. A signed document is verified with ``gpgv`` against the source's
keyring, and only the data gpgv vouches for is parsed.

A mirror is untrusted input, signed or not: every name it gives becomes a
path component, a database value or a line of a board's PXE configuration,
so each is checked against a strict pattern here, before anything else sees
it. Paths stay under the mirror root (after percent-decoding), a local mirror
may hold only regular files (no symlinks below its root), every item declares
its size and a checksum of the right length, and no read goes past what was
declared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import urllib.parse
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import httpx

from corral.errors import CorralError

INDEX_FORMAT = "index:1.0"
PRODUCTS_FORMAT = "products:1.0"
CHUNK = 1 << 16

MAX_DOCUMENT = 128 * 1024 * 1024
"""An index or products document. The largest of the public Ubuntu image
streams are tens of megabytes; one larger than this is not a catalogue."""

DEFAULT_MAX_ITEM_SIZE = 8 * 1024**3
"""A single file a mirror offers, unless the configuration says otherwise. A
kernel or initrd is tens of megabytes and a root image or squashfs one or two
gigabytes; 8 GiB leaves room for custom images while refusing a declared size
meant to fill the storage disk."""

MAX_CMDLINE = 4096
"""A ``boot-cmdline`` file, in bytes: no architecture's kernel takes a longer
command line (COMMAND_LINE_SIZE is 2048 on most, 4096 on s390)."""


# The C0 and C1 controls and DEL (Unicode category Cc), and the Unicode line and
# paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str) -> str:
    """``text`` with every run of control characters (newlines, tabs) as one space."""
    return _CONTROLS.sub(" ", text).strip()


class ImportFailed(CorralError):
    """An import cannot go on; nothing is published. The message is one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


# ------------------------------------------------------------------ names

# An arch, subarch, release or ftype becomes one path component under
# snapshots/<id>/control/, so it starts with a letter or digit (never '.' or
# '..', never '/') and holds no '/'; 64 characters is the width of the
# database columns they are recorded in. Product names (com.ubuntu.maas:v3:
# boot:16.04:amd64:ga-16.04) and versions (20140301.1) may also hold ':'.
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}"
_COMPONENT_RULE = "letters, digits and . _ + ~ -, starting with a letter or digit, at most 64"
NAMES: dict[str, tuple[re.Pattern[str], str]] = {
    "arch": (re.compile(_COMPONENT), _COMPONENT_RULE),
    "subarch": (re.compile(_COMPONENT), _COMPONENT_RULE),
    "release": (re.compile(_COMPONENT), _COMPONENT_RULE),
    "ftype": (re.compile(_COMPONENT), _COMPONENT_RULE),
    "version": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~:-]{0,63}"),
                "letters, digits and . _ + ~ : -, starting with a letter or digit, at most 64"),
    "product": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~:-]{0,254}"),
                "letters, digits and . _ + ~ : -, starting with a letter or digit, at most 255"),
}

HEX_DIGITS = {"sha512": 128, "sha256": 64, "md5": 32}
_HEX = re.compile(r"[0-9a-fA-F]+")


def check_name(kind: str, value: object, where: str) -> str:
    """``value`` if it is a valid ``kind`` (arch, subarch, release, ftype, product,
    version).

    Raises:
        ImportFailed: naming ``where`` and the rule.
    """
    pattern, rule = NAMES[kind]
    if not (isinstance(value, str) and pattern.fullmatch(value)):
        raise ImportFailed(f"{where}: {kind} {value!r} is not a valid name ({rule})")
    return value


def check_checksum(kind: str, value: object, where: str) -> str:
    """``value`` in lower case if it is exactly the hex digits of a ``kind`` digest.

    Raises:
        ImportFailed: anything else (a path, the wrong length, not a string).
    """
    digits = HEX_DIGITS[kind]
    if not (isinstance(value, str) and len(value) == digits and _HEX.fullmatch(value)):
        raise ImportFailed(f"{where}: {kind} must be {digits} hexadecimal digits, not "
                           f"{value!r}")
    return value.lower()


def has_control_character(text: str) -> bool:
    """Whether ``text`` would break a one-line value: a newline, a tab, any control."""
    return _CONTROLS.search(text) is not None


def read_cmdline(data: bytes) -> str | None:
    """The kernel command line a ``boot-cmdline`` file holds, or None if it is not
    one line of printable text (a single trailing newline is allowed)."""
    if len(data) > MAX_CMDLINE:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.removesuffix("\n").removesuffix("\r").strip(" ")
    return None if has_control_character(text) else text


@dataclass(frozen=True, kw_only=True)
class Item:
    """One file of a product version, with its attributes flattened."""

    name: str
    path: str
    ftype: str
    size: int
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
    """(mirror root, index location) of a source URL; a plain path becomes a
    ``file://`` URL, so item paths are percent-decoded the same way for both."""
    name = "index.sjson" if signed else "index.json"
    if not _is_remote(url) and urllib.parse.urlsplit(url).scheme != "file":
        url = Path(url).absolute().as_uri() + ("/" if url.endswith("/") else "")
    trimmed = url.rstrip("/")
    if trimmed.endswith((".json", ".sjson")):
        root, sep, _ = trimmed.rpartition("/streams/")
        if not sep:
            root = trimmed.rsplit("/", 1)[0]
        return root + "/", trimmed
    return trimmed + "/", f"{trimmed}/streams/v1/{name}"


def join(root: str, relative: object) -> str:
    """A location under the mirror root (see :func:`check_path`)."""
    return root + check_path(relative)


def check_path(relative: object) -> str:
    """``relative`` if it is a path a mirror may give: relative to the mirror root.

    It is percent-encoded, as in a URL; it is decoded before it is checked, so
    ``%2e%2e/`` is as much a ``..`` as ``../``.

    Raises:
        ImportFailed: not a string, absolute, with a ``..``, a backslash, a control
            character, a query or a fragment.
    """
    if not isinstance(relative, str):
        raise ImportFailed(f"refusing item path {relative!r}: not a string")
    decoded = urllib.parse.unquote(relative)
    pure = PurePosixPath(decoded)
    if not decoded or pure.is_absolute() or ".." in pure.parts or "\\" in decoded \
            or has_control_character(decoded) or any(c in relative for c in "?#"):
        raise ImportFailed(f"refusing item path {relative!r}: paths must be relative to the "
                           "mirror root, without '..' (percent-encoded or not)")
    return relative


def _open_local(root: str | None, location: str) -> BinaryIO:
    """A local file for reading, if it is a regular file reached without symlinks
    below the mirror root (symlinks above it, in the root's own path, are fine).

    Raises:
        ImportFailed: a symlink, not a regular file.
        OSError: missing or unreadable.
    """
    path = _local_path(location)
    if root is not None:
        base = _local_path(root)
        if not path.is_relative_to(base):
            raise ImportFailed(f"{location}: outside the mirror root {root}")
        path = base.resolve()
        for part in _local_path(location).relative_to(base).parts:
            path = path / part
            if path.is_symlink():
                raise ImportFailed(f"{location}: a symlink; a local mirror may hold only "
                                   "regular files")
    # O_NOFOLLOW: the file cannot become a symlink between the check and the open;
    # O_NONBLOCK: opening a FIFO does not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImportFailed(f"{location}: not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class Fetcher:
    """Reads file://, plain-path and http(s):// locations."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.http = httpx.Client(timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def read(self, location: str, *, root: str | None = None, limit: int) -> bytes:
        """The whole content, at most ``limit`` bytes.

        Raises:
            ImportFailed: unreachable, missing, refused, or larger than ``limit``.
        """
        data = b"".join(self.stream(location, root=root, limit=limit))
        if len(data) > limit:
            raise ImportFailed(f"{location}: larger than {limit} bytes, the most a document "
                               "may hold")
        return data

    def stream(self, location: str, *, root: str | None = None,
               limit: int | None = None) -> Generator[bytes, None, None]:
        """The content in chunks, and no more than ``limit`` + 1 bytes of it: one byte
        past the limit tells the caller there is more, without reading the rest.

        ``root``: the mirror root a local location must stay under (without
        symlinks below it).

        Raises:
            ImportFailed: unreachable, missing, a symlink or not a regular file.
        """
        left = None if limit is None else limit + 1
        try:
            if _is_remote(location):
                with self.http.stream("GET", location) as reply:
                    if reply.status_code != 200:
                        raise ImportFailed(f"{location}: HTTP {reply.status_code}")
                    for chunk in reply.iter_bytes(CHUNK):
                        if left is not None:
                            chunk = chunk[:left]
                            left -= len(chunk)
                        yield chunk
                        if left == 0:
                            return
                return
            with _open_local(root, location) as handle:
                while left != 0 and (chunk := handle.read(CHUNK if left is None
                                                          else min(CHUNK, left))):
                    if left is not None:
                        left -= len(chunk)
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


def read_document(fetcher: Fetcher, location: str, keyring: str | None, *, root: str) -> Any:
    data = fetcher.read(location, root=root, limit=MAX_DOCUMENT)
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


def candidates(doc: Any, *, source_index: int, source_url: str, root: str, location: str,
               allow_md5: bool = False,
               max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> list[Candidate]:
    """Every product of a products:1.0 document, through its newest version only.

    Raises:
        ImportFailed: the document, or a name, path, size or checksum in it, is not
            what a mirror may contain.
    """
    if not isinstance(doc, dict) or doc.get("format") != PRODUCTS_FORMAT:
        raise ImportFailed(f"{location}: not a {PRODUCTS_FORMAT} document")
    products = doc.get("products") or {}
    if not isinstance(products, dict):
        raise ImportFailed(f"{location}: products must be a mapping")
    top = _inherit({}, doc)
    result = []
    for product_name, product in sorted(products.items()):
        if not isinstance(product, dict) or not isinstance(product.get("versions"), dict) \
                or not product["versions"]:
            continue
        check_name("product", product_name, location)
        product_attrs = _inherit(top, product)
        # Version keys compare as strings: 20140301.1 is newer than 20140301.
        newest = max(product["versions"], key=_version_key)
        check_name("version", newest, f"{location}: {product_name}")
        version = product["versions"][newest]
        if not isinstance(version, dict):
            raise ImportFailed(f"{location}: {product_name} {newest} is not a mapping")
        version_attrs = _inherit(product_attrs, version)
        where = f"{location}: {product_name} {newest}"
        raw_items = version.get("items") or {}
        if not isinstance(raw_items, dict):
            raise ImportFailed(f"{where}: items must be a mapping")
        items = []
        for name, item in sorted(raw_items.items()):
            if not isinstance(item, dict):
                raise ImportFailed(f"{where} item {name!r} is not a mapping")
            items.append(_item(name, _inherit(version_attrs, item), where,
                               allow_md5=allow_md5, max_item_size=max_item_size))
        leaves = [item.leaf for item in items]
        if len(set(leaves)) != len(leaves):
            twice = sorted({leaf for leaf in leaves if leaves.count(leaf) > 1})
            raise ImportFailed(f"{where}: more than one item has ftype {', '.join(twice)}")
        arch, release = version_attrs.get("arch"), version_attrs.get("release")
        subarches = version_attrs.get("subarches")
        if not (isinstance(arch, str) and isinstance(release, str)
                and isinstance(subarches, str) and items):
            continue
        check_name("arch", arch, where)
        check_name("release", release, where)
        listed = tuple(check_name("subarch", s.strip(), where)
                       for s in subarches.split(",") if s.strip())
        result.append(Candidate(
            source_index=source_index, source_url=source_url, mirror_root=root,
            product=product_name, version=newest, arch=arch, release=release,
            subarches=listed, items=tuple(items)))
    return result


def _item(name: str, attrs: Mapping[str, Any], where: str, *, allow_md5: bool,
          max_item_size: int) -> Item:
    """One item, its flattened attributes checked."""
    where = f"{where} item {name!r}"
    if "path" not in attrs:
        raise ImportFailed(f"{where} has no path")
    path = check_path(attrs["path"])
    ftype = check_name("ftype", attrs.get("ftype", name), where)
    if "size" not in attrs:
        raise ImportFailed(f"{where} has no size; every item must declare its size in bytes")
    size = attrs["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImportFailed(f"{where}: size must be a whole number of bytes, not {size!r}")
    if size > max_item_size:
        raise ImportFailed(f"{where}: size {size} is more than max_item_size "
                           f"({max_item_size})")
    sums = {kind: check_checksum(kind, attrs[kind], where) for kind in HEX_DIGITS
            if kind in attrs}
    if not sums:
        raise ImportFailed(f"{where} has no checksum (sha512, sha256 or md5) to verify")
    if "sha512" not in sums and "sha256" not in sums and not allow_md5:
        raise ImportFailed(f"{where} has only an md5 checksum; a sha256 or sha512 is "
                           "needed (or allow_md5: true in the source's configuration)")
    return Item(name=name, path=path, ftype=ftype, size=size, checksums=sums,
                attrs=dict(attrs))


def read_source(fetcher: Fetcher, source_index: int, url: str, keyring: str | None, *,
                allow_md5: bool = False, max_item_size: int = DEFAULT_MAX_ITEM_SIZE
                ) -> list[Candidate]:
    """Every candidate a source offers (through its index).

    Raises:
        ImportFailed: unreachable, unsigned or badly signed, malformed, or holding
            what a mirror may not (see :func:`candidates`).
    """
    root, index_location = locate(url, keyring is not None)
    index = read_document(fetcher, index_location, keyring, root=root)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ImportFailed(f"{index_location}: not an {INDEX_FORMAT} document")
    found: list[Candidate] = []
    for content_id, entry in sorted((index.get("index") or {}).items()):
        if not isinstance(entry, dict) or entry.get("format", PRODUCTS_FORMAT) != \
                PRODUCTS_FORMAT or "path" not in entry:
            continue
        path = entry["path"]
        if keyring is not None and isinstance(path, str) and path.endswith(".json"):
            path = path[:-len(".json")] + ".sjson"
        location = join(root, path)
        doc = read_document(fetcher, location, keyring, root=root)
        found.extend(candidates(doc, source_index=source_index, source_url=url, root=root,
                                location=f"{location} ({content_id!r})",
                                allow_md5=allow_md5, max_item_size=max_item_size))
    return found
