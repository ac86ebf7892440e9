"""Where a webhook may connect: the target policy, checked before every
connection.

A subscriber types a URL; Corral's worker connects to it from inside the
lab's network. Without a policy that URL can reach what only Corral should:
the database on loopback, a cloud's metadata address, a BMC on the
management network. So before each delivery pass the URL's host is resolved,
*every* address it resolves to is checked, and the connection goes to the
address that was checked (the request keeps the URL's name in its ``Host``
header and, over HTTPS, in the TLS server name the certificate is verified
against): a name cannot pass the check and then resolve to a refused
address for the connection itself.

Refused by default (the address classes, whatever the spelling: ``127.1``,
``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1`` and ``[::ffff:127.0.0.1]``
are all loopback): loopback, link-local (the metadata address
169.254.169.254 among them), unspecified, multicast, broadcast and reserved
addresses, and IPv6 addresses that embed a refused IPv4 one. Private ranges
(10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are refused unless
``webhook_allow_private`` is set. ``webhook_allow`` names networks allowed
even so (a receiver on the lab's own host: ``127.0.0.1/32``), and
``webhook_deny`` networks refused even so; deny wins (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from corral.errors import InvalidRequest
from corral.names import MAX_WEBHOOK_URL, WEBHOOK_URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")   # carrier-grade NAT: private to the site
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TargetRefused(InvalidRequest):
    """The URL cannot be delivered to: malformed, unresolvable, or an address
    the policy refuses. The message is safe to store and show (no password)."""


def redact_url(url: str) -> str:
    """The URL with the password of its userinfo shown as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
        parts = None
    if parts is None or password is None:
        return url
    at = parts.netloc.rfind("@")
    user = parts.netloc[:at].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{parts.netloc[at + 1:]}").geturl()


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, 6to4,
    NAT64), which a connection to it may end up reaching."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:      # ::a.b.c.d, deprecated
        return ipaddress.IPv4Address(int(address))
    return None


def address_class(address: Address) -> str | None:
    """Why the default policy refuses ``address`` ("loopback", ...), or None
    when it is a public address. "private" is the one class a setting
    allows."""
    if address in _METADATA:
        return "the metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            inner_class = address_class(inner)
            if inner_class is not None:
                return inner_class
    for name, test in (("unspecified", address.is_unspecified),
                       ("loopback", address.is_loopback),
                       ("link-local", address.is_link_local),
                       ("multicast", address.is_multicast)):
        if test:
            return name
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if address.is_reserved or address in ipaddress.ip_network("0.0.0.0/8"):
        return "reserved"
    if address.is_private or address in _SHARED:
        return "private"
    return None


@dataclass(frozen=True)
class Target:
    """Where one delivery pass connects: ``url`` names the checked address;
    ``headers`` and ``extensions`` keep the name the subscriber gave."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> TargetPolicy:
        from corral.config import parse_networks

        return cls(allow_private=bool(settings.webhook_allow_private),
                   allow=tuple(parse_networks(settings.webhook_allow, name="webhook_allow")),
                   deny=tuple(parse_networks(settings.webhook_deny, name="webhook_deny")))

    def refusal(self, address: Address) -> str | None:
        """Why a connection to ``address`` is refused, or None."""
        addresses = [address]
        if isinstance(address, ipaddress.IPv6Address):
            inner = _embedded_ipv4(address)
            if inner is not None:
                addresses.append(inner)
        if any(a in n for a in addresses for n in self.deny if a.version == n.version):
            return f"{address} is in webhook_deny"
        if any(a in n for a in addresses for n in self.allow if a.version == n.version):
            return None
        kind = address_class(address)
        if kind is None or (kind == "private" and self.allow_private):
            return None
        hint = ("webhook_allow_private allows private ranges" if kind == "private"
                else "webhook_allow can allow a network")
        return f"{address} is a {kind} address, which webhooks may not reach ({hint})"

    def check(self, addresses: Iterable[Address]) -> Address:
        """The first of ``addresses`` once every one is allowed.

        Raises: TargetRefused naming the first refused address."""
        listed = list(addresses)
        for address in listed:
            why = self.refusal(address)
            if why is not None:
                raise TargetRefused(why)
        if not listed:
            raise TargetRefused("the host resolves to no address")
        return listed[0]

    def target(self, url: str) -> Target:
        """Resolve ``url``'s host and check it: where to connect, for one pass.

        Raises: TargetRefused."""
        import httpx

        check_url(url)
        try:
            parsed = httpx.URL(url)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            host = parsed.host
        except (httpx.InvalidURL, ValueError) as exc:
            raise TargetRefused(f"the URL cannot be read: {exc}") from None
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise TargetRefused(f"{host} does not resolve ({exc})") from None
        address = self.check(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                             for info in found)
        literal = _is_literal(host)
        extensions: dict[str, Any] = {}
        if parsed.scheme == "https" and not literal:
            extensions["sni_hostname"] = host
        port_part = "" if parsed.port is None else f":{parsed.port}"
        return Target(url=str(parsed.copy_with(host=str(address))),
                      headers={"Host": _bracketed(host) + port_part},
                      extensions=extensions)


def check_url(url: str) -> None:
    """What a webhook URL must be: http:// or https://, a host, printable
    ASCII with no spaces, at most MAX_WEBHOOK_URL characters (the pattern the
    API's schema states).

    Raises: TargetRefused (an InvalidRequest), naming the URL with its
    password hidden."""
    if len(url) > MAX_WEBHOOK_URL:
        raise TargetRefused(f"a webhook URL has at most {MAX_WEBHOOK_URL} characters")
    if not WEBHOOK_URL.matches(url):
        shown = excerpt(redact_url(url), 120)
        raise TargetRefused("a webhook URL is http:// or https:// with a host, in printable "
                             f"characters with no spaces, not {shown!r}")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def excerpt(text: str, limit: int = 200) -> str:
    """``text`` on one line, without control characters, at most ``limit``
    characters (what a target's answer or error may leave in ``last_error``)."""
    flat = " ".join(_CONTROL.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"
