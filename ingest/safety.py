"""Where ingestion may reach: public web addresses, and files under configured folders.

Web: every request the crawler makes (robots.txt, the sitemap, each page and each redirect hop)
goes through ``GuardedTransport``, which resolves the host and refuses it unless every address
it resolves to is globally routable, or the host or its network is allow-listed
(``HEARTH_INGEST_ALLOW_HOSTS``); it then connects to the address it checked, so a name that
resolves elsewhere the second time cannot get in.

The rule (``forbidden``), for IPv4 and IPv6 alike:

- an address is refused unless ``ipaddress`` calls it global (``is_global``): loopback,
  private, link-local (cloud metadata at 169.254.169.254), shared address space
  (100.64.0.0/10, carrier-grade NAT, where some clouds keep metadata services and VPNs live),
  benchmarking, documentation, reserved, unspecified, unique-local and the like;
- and also what ``is_global`` wrongly calls global: multicast (224.0.0.0/4, ff00::/8), the
  IETF protocol block 192.0.0.0/24, the 6to4 relay anycast 192.88.99.0/24, site-local
  fec0::/10, local-use NAT64 64:ff9b:1::/48, and (newer than Python's table) the IPv6
  documentation block 3fff::/20 and segment-routing identifiers 5f00::/16;
- an IPv6 address that carries an IPv4 address is judged by that IPv4 address: IPv4-mapped
  (::ffff:0:0/96), IPv4-translated (::ffff:0:0:0/96), NAT64 (64:ff9b::/96) and 6to4
  (2002::/16); IPv4-compatible addresses
  (::/96, deprecated) and Teredo (2001::/32, whose embedded addresses are obfuscated) are
  refused outright;
- an allow-listed network admits an address in it, or whose embedded IPv4 address is in it.

Files: a folder ingested through the API must lie under one of ``HEARTH_INGEST_ROOTS``, after
``..`` and symbolic links are resolved.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path

import httpx

from hearth.errors import HearthError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeTarget(HearthError):
    """An address or path that ingestion must not reach."""

    code = "target_not_allowed"
    status = 403


class AddressNotAllowed(UnsafeTarget):
    """A web address ingestion must not reach (private, loopback, not http or https)."""

    code = "address_not_allowed"


class FolderNotAllowed(UnsafeTarget):
    """A folder outside ``HEARTH_INGEST_ROOTS``."""

    code = "folder_not_allowed"


class InvalidFolder(HearthError):
    """A folder path that names no folder at all (a NUL byte, ``~someone`` who is not a user
    here)."""

    code = "invalid_request"
    status = 400


def parse_allow_list(entries: Sequence[str]) -> tuple[set[str], list[Network]]:
    hosts: set[str] = set()
    networks: list[Network] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower())
    return hosts, networks


# Ranges ipaddress calls global although no public site lives there.
_NOT_GLOBAL: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in (
        ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("fec0::/10", "site-local"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("2001::/32", "Teredo tunnel"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing (SRv6) identifiers"),
    ))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (SIIT, RFC 2765)
_6TO4 = ipaddress.IPv6Network("2002::/16")


def embedded_ipv4(address: Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address reaches (IPv4-mapped, IPv4-translated, NAT64, 6to4),
    with the kind."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in _TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-translated"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address.sixtofour:
        return address.sixtofour, "6to4"
    return None


def forbidden(address: Address) -> str | None:
    """Why an address is off-limits, or None for a globally routable one (the rule is in the
    module's docstring)."""
    if address.is_loopback or address.is_unspecified:
        return "loopback" if address.is_loopback else "unspecified"
    inner = embedded_ipv4(address)
    if inner is not None:
        why = forbidden(inner[0])
        return f"{inner[1]} form of a {why} address ({inner[0]})" if why else None
    for network, why in _NOT_GLOBAL:
        if address.version == network.version and address in network:
            return why
    if address.is_global:
        return None
    for test, why in ((address.is_link_local, "link-local"), (address.is_reserved, "reserved"),
                      (address.is_private, "private")):
        if test:
            return why
    return "non-global"


def _allowed(address: Address, networks: Sequence[Network]) -> bool:
    inner = embedded_ipv4(address)
    candidates = [address] if inner is None else [address, inner[0]]
    return any(a.version == n.version and a in n for a in candidates for n in networks)


def resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_host(host: str, port: int,
               allow: tuple[set[str], list[Network]]) -> Address | None:
    """The address to connect to, once every address of ``host`` is checked (None for a host
    allow-listed by name); AddressNotAllowed if one of them may not be reached."""
    hosts, networks = allow
    if host.lower() in hosts:
        return None
    addresses = resolve(host, port)
    for address in addresses:
        if _allowed(address, networks):
            continue
        why = forbidden(address)
        if why:
            raise AddressNotAllowed(
                f"{host} is a {why} address ({address}), not a public one: Hearth does not "
                "crawl inside your network unless HEARTH_INGEST_ALLOW_HOSTS lists it"
            )
    return addresses[0]


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport that checks every request's destination before connecting."""

    def __init__(self, allow_hosts: Sequence[str] = (), **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.allow_hosts = list(allow_hosts)
        self.allow = parse_allow_list(allow_hosts)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise AddressNotAllowed(f"{url}: only http and https addresses can be ingested")
        address = check_host(url.host, url.port or (443 if url.scheme == "https" else 80),
                             self.allow)
        if address is None or url.host == str(address):
            return super().handle_request(request)
        # Connect to the address just checked: resolving the name again could give another one
        # (DNS rebinding). The Host header and the TLS server name stay the site's; the caller
        # keeps the request it made, so redirects and page addresses use the name.
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        return super().handle_request(httpx.Request(
            request.method, url.copy_with(host=str(address)), headers=request.headers,
            stream=request.stream, extensions=extensions))


def check_folder(folder: Path, roots: Sequence[Path]) -> Path:
    """The folder, resolved, if it lies under one of ``roots``; FolderNotAllowed otherwise."""
    if not roots:
        raise FolderNotAllowed("no folder may be ingested through the API until "
                           "HEARTH_INGEST_ROOTS names the folders that may be")
    try:
        resolved = folder.expanduser().resolve()
    except (ValueError, RuntimeError, OSError) as exc:
        raise InvalidFolder(f"{str(folder)!r} is not a folder's path: {exc}") from None
    for root in roots:
        if resolved.is_relative_to(root.expanduser().resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise FolderNotAllowed(f"{folder} is outside the folders that may be ingested ({allowed})")
