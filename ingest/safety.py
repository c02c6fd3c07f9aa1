"""Where ingestion may reach: public web addresses, and files under configured folders.

Web: every request the crawler makes (robots.txt, the sitemap, each page and each redirect hop)
goes through ``GuardedTransport``, which resolves the host and refuses loopback, private,
link-local (cloud metadata at 169.254.169.254 included), multicast and reserved addresses,
unless the host or its network is allow-listed (``HEARTH_INGEST_ALLOW_HOSTS``); it then connects
to the address it checked, so a name that resolves elsewhere the second time cannot get in.

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


def forbidden(address: Address) -> str | None:
    """Why an address is off-limits, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for test, why in ((address.is_loopback, "loopback"), (address.is_link_local, "link-local"),
                      (address.is_private, "private"), (address.is_multicast, "multicast"),
                      (address.is_reserved, "reserved"), (address.is_unspecified, "unspecified")):
        if test:
            return why
    return None


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
        if any(address in network for network in networks):
            continue
        why = forbidden(address)
        if why:
            raise AddressNotAllowed(
                f"{host} is a {why} address ({address}): Hearth does not crawl inside your "
                "network unless HEARTH_INGEST_ALLOW_HOSTS lists it"
            )
    return addresses[0]


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport that checks every request's destination before connecting."""

    def __init__(self, allow_hosts: Sequence[str] = (), **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
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
    resolved = folder.expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(root.expanduser().resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise FolderNotAllowed(f"{folder} is outside the folders that may be ingested ({allowed})")
