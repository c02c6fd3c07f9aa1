"""Ingestion reaches only what it may: no address that is not globally routable (name
resolution is stubbed: no test sends anything outside 127.0.0.0/8), no folder outside the roots."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.ingest.safety import (
    GuardedTransport,
    UnsafeTarget,
    check_folder,
    check_host,
    parse_allow_list,
)


@pytest.fixture
def redirector() -> Iterator[tuple[str, list[str]]]:
    """A site on 127.0.0.1 whose /to?url=X redirects to X; it records what it served."""
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            served.append(self.path)
            if self.path.startswith("/to?url="):
                self.send_response(302)
                self.send_header("Location", self.path.split("=", 1)[1])
                self.end_headers()
                return
            body = b"<html><title>ok</title><body>public page</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/page", "http://localhost:9/", "http://[::1]:9/",
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7/", "http://192.168.1.1/",
    "http://172.16.5.4/", "http://0.0.0.0:9/", "http://[fe80::1]/", "file:///etc/passwd",
])
def test_private_and_metadata_addresses_are_refused(url: str) -> None:
    with httpx.Client(transport=GuardedTransport()) as client, pytest.raises(UnsafeTarget):
        client.get(url)


def test_an_allowed_site_that_redirects_inside_the_network_is_refused_at_the_hop(
    redirector: tuple[str, list[str]]
) -> None:
    base, served = redirector
    # 127.0.0.1 stands for a public site here: it alone is allow-listed, by network.
    with httpx.Client(transport=GuardedTransport(["127.0.0.1/32"]),
                      follow_redirects=True) as client:
        assert client.get(f"{base}/page").status_code == 200
        for target in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/admin",
                       "http://10.0.0.7/"):
            with pytest.raises(UnsafeTarget):
                client.get(f"{base}/to?url={target}")
    assert served.count("/page") == 1  # the redirect was followed no further


def test_allow_list_by_host_name(redirector: tuple[str, list[str]]) -> None:
    base, _ = redirector
    port = base.rsplit(":", 1)[1]
    with httpx.Client(transport=GuardedTransport(["localhost"])) as client:
        assert client.get(f"http://localhost:{port}/page").status_code == 200
        with pytest.raises(UnsafeTarget):
            client.get(f"{base}/page")  # the same server by address is not allow-listed


def test_folders_outside_the_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "documents"
    (root / "team").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (root / "escape").symlink_to(secret)
    assert check_folder(root / "team", [root]) == (root / "team").resolve()
    for attempt in (root / ".." / "secret", root / "team" / ".." / ".." / "secret",
                    root / "escape", Path("/etc")):
        with pytest.raises(UnsafeTarget, match="outside the folders"):
            check_folder(attempt, [root])
    with pytest.raises(UnsafeTarget, match="HEARTH_INGEST_ROOTS"):
        check_folder(root, [])


def serve(address: str, port: int, body: bytes, hosts: list[str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_name_that_resolves_inside_the_network_the_second_time_does_not_get_in(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name passes the check with one address, then resolves to another.
    127.0.0.1 stands for the public site (allow-listed by network); 127.0.0.2 is inside."""
    seen_public: list[str] = []
    seen_inside: list[str] = []
    public = serve("127.0.0.1", 0, b"public page", seen_public)
    port = public.server_address[1]
    inside = serve("127.0.0.2", port, b"the router's admin page", seen_inside)
    answers = iter(["127.0.0.1"])
    real = socket.getaddrinfo

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            host = next(answers, "127.0.0.2")  # the first answer, then the inside address
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        with httpx.Client(transport=GuardedTransport(["127.0.0.1/32"])) as client:
            response = client.get(f"http://rebind.example:{port}/page")
        assert response.text == "public page"
        assert str(response.url) == f"http://rebind.example:{port}/page"
        assert seen_public == [f"rebind.example:{port}"] and seen_inside == []
        with httpx.Client(transport=GuardedTransport(["127.0.0.1/32"])) as client, \
                pytest.raises(UnsafeTarget):
            client.get(f"http://rebind.example:{port}/page")  # it now resolves inside
        assert seen_inside == []
    finally:
        public.shutdown()
        inside.shutdown()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_over_https_the_pinned_connection_still_checks_the_sites_certificate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Connecting to the checked address keeps the name for TLS: the certificate is verified
    against rebind.example (not 127.0.0.1), and a certificate for another name is refused."""
    import ssl
    import subprocess

    def certificate(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return cert, key

    seen: list[str] = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real(
        "127.0.0.1" if host == "rebind.example" else host, *a, **k))
    for name, works in (("rebind.example", True), ("another.example", False)):
        cert, key = certificate(name)
        server = serve("127.0.0.1", 0, b"public page", seen)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        port = server.server_address[1]
        trusted = ssl.create_default_context(cafile=str(cert))
        try:
            with httpx.Client(transport=GuardedTransport(["127.0.0.1/32"], verify=trusted)) as c:
                if works:
                    assert c.get(f"https://rebind.example:{port}/page").text == "public page"
                else:
                    with pytest.raises(httpx.ConnectError, match="(?i)certificate|hostname"):
                        c.get(f"https://rebind.example:{port}/page")
        finally:
            server.shutdown()
    assert len(seen) == 1 and seen[0].startswith("rebind.example:")  # the refused one: none


# --- every address that is not globally routable ----------------------------------------------

NOT_GLOBAL = [
    "100.64.0.1", "100.127.255.254",  # shared address space (carrier-grade NAT, cloud VPNs)
    "192.0.0.8", "198.18.0.1", "240.0.0.1", "255.255.255.255", "0.0.0.0", "224.0.0.1",
    "192.88.99.1", "169.254.169.254", "10.0.0.7", "127.0.0.2",
    "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:0:7f00:1", "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT) of 127.0.0.1 and metadata
    "3fff::1", "5f00::1",  # IPv6 documentation (RFC 9637); SRv6 identifiers (RFC 9602)
    "2002:a00:1::1", "2002:a9fe:a9fe::1",  # 6to4 of 10.0.0.1 and of the metadata address
    "64:ff9b::a9fe:a9fe", "64:ff9b:1::1",  # NAT64 of 169.254.169.254; local-use NAT64
    "2001::1", "::a00:1",  # Teredo; IPv4-compatible (deprecated)
    "fc00::1", "fd00:ec2::254", "fe80::1", "fec0::1", "::1", "::", "ff02::1", "ff0e::1",
    "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808",
          "::ffff:0:808:808"]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], list[Any]]:
    """Names resolved by a stub (name -> the address under test), and every connection
    attempted: none may leave 127.0.0.0/8, whatever the code under test does."""
    import ipaddress

    names: dict[str, str] = {}
    connections: list[Any] = []
    real_resolve, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in names:
            return real_resolve(host, port, *args, **kwargs)
        address = names[host]
        if ipaddress.ip_address(address).version == 6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port or 0, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        connections.append(address)
        assert ipaddress.ip_address(address[0]) in ipaddress.ip_network("127.0.0.0/8"), address
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return names, connections


@pytest.mark.parametrize("address", NOT_GLOBAL)
def test_every_address_that_is_not_global_is_refused_before_connecting(
    address: str, resolver: tuple[dict[str, str], list[Any]]
) -> None:
    names, connections = resolver
    names["target.example"] = address
    with httpx.Client(transport=GuardedTransport()) as client, \
            pytest.raises(UnsafeTarget, match="not a public one"):
        client.get("http://target.example/latest/meta-data/")
    assert connections == []


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_the_check(
    address: str, resolver: tuple[dict[str, str], list[Any]]
) -> None:
    """Checked only: nothing is sent to a public address from a test."""
    import ipaddress

    names, _ = resolver
    names["public.example"] = address
    assert check_host("public.example", 80, parse_allow_list([])) == ipaddress.ip_address(address)


def test_an_allow_listed_network_admits_the_ipv6_forms_of_its_addresses(
    resolver: tuple[dict[str, str], list[Any]]
) -> None:
    import ipaddress

    names, _ = resolver
    allow = parse_allow_list(["10.0.0.0/8"])
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203"):
        names["intranet.example"] = address
        assert check_host("intranet.example", 80, allow) == ipaddress.ip_address(address)
    names["intranet.example"] = "100.64.0.1"
    with pytest.raises(UnsafeTarget, match="shared address space"):
        check_host("intranet.example", 80, allow)


@pytest.mark.parametrize("address", ["100.64.0.1", "192.0.0.8", "::ffff:10.0.0.1",
                                     "2002:a00:1::1", "64:ff9b::a9fe:a9fe", "fe80::1"])
def test_a_redirect_to_a_name_that_resolves_inside_is_refused_at_the_hop(
    address: str, redirector: tuple[str, list[str]],
    resolver: tuple[dict[str, str], list[Any]]
) -> None:
    base, served = redirector
    names, connections = resolver
    names["inside.example"] = address
    # 127.0.0.1 stands for a public site here: it alone is allow-listed, by network.
    with httpx.Client(transport=GuardedTransport(["127.0.0.1/32"]),
                      follow_redirects=True) as client, \
            pytest.raises(UnsafeTarget, match="not a public one"):
        client.get(f"{base}/to?url=http://inside.example/latest/meta-data/")
    assert served == ["/to?url=http://inside.example/latest/meta-data/"]
    assert {host for host, _ in connections} == {"127.0.0.1"}  # the site; never the hop


# --- robots.txt, read through the guard -------------------------------------------------------


@pytest.fixture
def robots_site() -> Iterator[tuple[int, dict[str, tuple[int, dict[str, str], bytes]], list[str]]]:
    """A site on 127.0.0.1 serving routes (path -> status, headers, body); it records what it
    served. Each test names it through the resolver stub."""
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            served.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in {"Content-Type": "text/html", **headers,
                               "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], routes, served
    server.shutdown()


def crawl_through(url: str, transport: GuardedTransport) -> list[str]:
    """The pages a small crawl from ``url`` indexes, every request through ``transport``."""
    from hearth.ingest.documents import Parsed
    from hearth.ingest.web import crawl

    return [item.source for item in crawl(url, max_depth=2, max_pages=10, concurrency=1,
                                          timeout_s=5.0, use_sitemap=False, transport=transport)
            if isinstance(item, Parsed)]


def test_robots_txt_redirects_are_followed_through_the_guard_and_never_off_the_site(
    robots_site: tuple[int, dict[str, tuple[int, dict[str, str], bytes]], list[str]],
    resolver: tuple[dict[str, str], list[Any]]
) -> None:
    """Each hop is a request of its own through the guard (which resolves the name again);
    a hop to another host is not made at all, whatever that host resolves to."""
    from hearth.ingest.documents import IngestError

    port, routes, served = robots_site
    names, connections = resolver
    names["docs.example"], names["inside.example"] = "127.0.0.1", "10.0.0.7"
    site = f"http://docs.example:{port}"
    routes["/robots.txt"] = (301, {"Location": "/static/robots.txt"}, b"")
    routes["/static/robots.txt"] = (200, {"Content-Type": "text/plain"},
                                    b"User-agent: *\nDisallow: /docs/private/\n")
    routes["/docs/"] = (200, {}, b'<title>Home</title><main><a href="private/a.html">a</a>'
                                 b'<a href="b.html">b</a> Welcome.</main>')
    routes["/docs/b.html"] = (200, {}, b"<title>B</title><main>Public words.</main>")
    routes["/docs/private/a.html"] = (200, {}, b"<title>A</title><main>Private words.</main>")
    guard = GuardedTransport(["127.0.0.1/32"])
    assert crawl_through(f"{site}/docs/", guard) == [f"{site}/docs/", f"{site}/docs/b.html"]
    assert served == ["/robots.txt", "/static/robots.txt", "/docs/", "/docs/b.html"]

    served.clear()
    routes["/robots.txt"] = (302, {"Location": f"http://inside.example:{port}/robots.txt"}, b"")
    with pytest.raises(IngestError, match="redirects to another site"):
        crawl_through(f"{site}/docs/", guard)
    assert served == ["/robots.txt"]
    assert {host for host, _ in connections} == {"127.0.0.1"}


def test_a_start_address_the_guard_refuses_is_refused_at_robots_txt(
    resolver: tuple[dict[str, str], list[Any]]
) -> None:
    """The refusal is the crawl's answer, not taken for a robots.txt that is not there."""
    from hearth.ingest.documents import IngestError

    names, connections = resolver
    names["target.example"] = "10.0.0.7"
    with pytest.raises(IngestError, match="cannot crawl http://target.example/docs/: "
                       "AddressNotAllowed: .* not a public one"):
        crawl_through("http://target.example/docs/", GuardedTransport())
    assert connections == []
