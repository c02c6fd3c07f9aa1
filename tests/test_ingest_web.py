"""Crawling a website: the Python 3.11 documentation (Debian's ``python3.11-doc``) served by a
real HTTP server on 127.0.0.1, with made-up bad cases beside it (a 404, a 500, a redirect loop,
a slow page, a CSV file, a link to another site, a page robots.txt disallows) and a sitemap.

Proves: the crawl stays on the site and within its paths, depth and page limits; it uses the
sitemap and respects robots.txt; it reports every bad page and never stops for one; it keeps
each page's main text, title and URL; re-crawling embeds nothing; a changed page is replaced and
a page that disappeared is removed.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hearth.config import load_settings
from hearth.ingest.documents import IngestError, Parsed, Skipped
from hearth.ingest.pipeline import ingest_web
from hearth.ingest.web import Crawler, crawl, start_address
from hearth.services import Services
from tests.test_ingest import CountingEmbeddings, chunks, search_sources

PY_DOCS = Path("/usr/share/doc/python3.11/html")
pytestmark = [
    pytest.mark.real,  # a real HTTP server on 127.0.0.1 and real pages
    pytest.mark.skipif(not PY_DOCS.is_dir(),
                       reason="needs Debian's python3.11-doc (apt-get install python3.11-doc)"),
]


HANG_UP = 0  # a Site route's status that answers nothing and closes the connection


class Site:
    """A real HTTP server on 127.0.0.1 over a folder, with extra routes; it logs each path."""

    def __init__(self, root: Path) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes, float, float]] = {}
        self.requests: list[str] = []
        site = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                site.requests.append(path)
                if path not in site.routes:
                    return super().do_GET()
                status, headers, body, delay, drip = site.routes[path]
                time.sleep(delay)
                if status == HANG_UP:
                    self.close_connection = True  # no answer at all: the connection is cut
                    return
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if not drip:
                        self.wfile.write(body)  # a client that timed out has gone
                    for i in range(len(body) if drip else 0):  # a byte at a time, never still
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(drip)

        self.server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, path: str, status: int = 200, body: str | bytes = "", delay: float = 0.0,
              drip: float = 0.0, **headers: str) -> None:
        """Serve ``path`` so; ``status`` HANG_UP closes the connection without an answer, and
        ``drip`` sends the body a byte at a time, that many seconds apart."""
        named = {"Content-Type": "text/html; charset=utf-8",
                 **{k.replace("_", "-"): v for k, v in headers.items()}}
        self.routes[path] = (status, named, body if isinstance(body, bytes) else body.encode(),
                             delay, drip)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def page(title: str, *links: str, text: str = "") -> str:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (f"<html><head><title>{title}</title></head><body><nav>site menu</nav>"
            f"<main><h1>{title}</h1><p>{text}</p><ul>{anchors}</ul></main></body></html>")


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Site]:
    """Another site: the crawl must never call it."""
    site = Site(Path("/nonexistent"))
    site.route("/page.html", body=page("Elsewhere"))
    yield site
    site.close()


@pytest.fixture(scope="module")
def docs(elsewhere: Site) -> Iterator[Site]:
    site = Site(PY_DOCS)
    site.route("/robots.txt", body=f"User-agent: *\nDisallow: /tutorial/errors.html\n"
               f"Sitemap: {site.url}/sitemap.xml\n", Content_Type="text/plain")
    listed = ["/tutorial/hearth-links.html", "/tutorial/appetite.html", "/library/os.html"]
    site.route("/sitemap.xml", Content_Type="application/xml", body=(
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        + "".join(f"<url><loc>{site.url}{p}</loc></url>" for p in listed)
        + f"<url><loc>{elsewhere.url}/page.html</loc></url></urlset>"))
    # A page nothing links to: only the sitemap knows it. It links to the bad cases.
    site.route("/tutorial/hearth-links.html", body=page(
        "Hearth test links", "missing.html", "broken.html", "loop-a.html", "slow.html",
        "data.csv", "photo.html", "old-appetite.html", f"{elsewhere.url}/page.html",
        "mailto:someone@example.org", text="Links to pages that fail in every way."))
    site.route("/tutorial/broken.html", status=500, body="server error")
    site.route("/tutorial/loop-a.html", status=302, Location="loop-b.html")
    site.route("/tutorial/loop-b.html", status=302, Location="loop-a.html")
    site.route("/tutorial/old-appetite.html", status=301, Location="appetite.html")
    site.route("/tutorial/slow.html", body=page("Slow"), delay=3.0)
    site.route("/tutorial/data.csv", body="a,b\n1,2\n", Content_Type="text/csv")
    # A picture served without its type: its bytes are no page's words.
    site.route("/tutorial/photo.html", body="\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50,
               Content_Type="")
    yield site
    site.close()


def crawl_options(**given: Any) -> dict[str, Any]:
    """The crawl limits of the default settings (the crawler has none of its own), and
    ``given``."""
    settings = load_settings(_env_file=None)
    return {"max_depth": settings.crawl_max_depth, "max_pages": settings.crawl_max_pages,
            "concurrency": settings.crawl_concurrency, "timeout_s": settings.crawl_timeout_s,
            **given}


def run_crawl(start: str, **options: Any) -> tuple[list[Parsed], list[Skipped], dict[str, int]]:
    ignored: dict[str, int] = {}
    items = list(crawl(start, ignored=ignored, **crawl_options(**options)))
    return ([i for i in items if isinstance(i, Parsed)],
            [i for i in items if isinstance(i, Skipped)], ignored)


def test_crawl_reports_every_bad_page_and_keeps_going(docs: Site, elsewhere: Site) -> None:
    docs.requests.clear()
    pages, skipped, ignored = run_crawl(f"{docs.url}/tutorial/index.html", max_depth=2,
                                        timeout_s=1.0)

    urls = {p.source for p in pages}
    tutorial = {f"{docs.url}/tutorial/{p.name}" for p in (PY_DOCS / "tutorial").glob("*.html")}
    disallowed = f"{docs.url}/tutorial/errors.html"
    assert urls == (tutorial - {disallowed}) | {f"{docs.url}/tutorial/hearth-links.html"}
    reasons = {s.name.split(" ")[0].rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert reasons == {
        "missing.html": "HTTP 404", "broken.html": "HTTP 500", "loop-a.html": "redirect loop",
        "slow.html": "timed out after 1 s", "data.csv": "not HTML (text/csv)",
        "photo.html": "binary content, not HTML",
    }
    assert "linked from " + f"{docs.url}/tutorial/hearth-links.html" in skipped[0].name
    # Robots.txt is obeyed, the other site is never called, the redirect is followed once.
    assert "/tutorial/errors.html" not in docs.requests
    assert elsewhere.requests == []
    assert ignored["off-site links"] >= 1 and ignored["off-site sitemap entries"] == 1
    assert ignored["links disallowed by robots.txt"] == 1
    assert ignored["links outside the included paths"] > 10  # ../library/... and the like
    assert ignored["sitemap entries outside the included paths"] == 1  # /library/os.html
    assert docs.requests.count("/tutorial/appetite.html") == 1  # old-appetite.html redirects
    assert len(urls) == len(pages)


def test_depth_and_page_limits_hold_and_the_order_is_stable(docs: Site) -> None:
    start = f"{docs.url}/tutorial/index.html"
    only_start, _, _ = run_crawl(start, max_depth=0)
    assert [p.source for p in only_start] == [start]

    docs.requests.clear()
    pages, skipped, ignored = run_crawl(start, max_depth=1, use_sitemap=False)
    assert f"{docs.url}/tutorial/hearth-links.html" not in {p.source for p in pages}
    assert skipped == [] and len(pages) == 16
    assert "/tutorial/missing.html" not in docs.requests

    docs.requests.clear()
    first, _, ignored = run_crawl(start, max_pages=5)
    again, _, _ = run_crawl(start, max_pages=5)
    assert len(first) == 5 and [p.source for p in first] == [p.source for p in again]
    assert ignored["pages beyond max pages 5"] > 0
    fetched = [r for r in docs.requests if r.endswith(".html")]
    assert len(fetched) == 10  # five per crawl, no more


def test_a_folder_and_its_index_html_are_one_page(tmp_path: Path) -> None:
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "index.html").write_text(page(
        "Guide", "./", "index.html", "setup.html", "/guide/", text="Start here."))
    (tmp_path / "guide" / "setup.html").write_text(page(
        "Setup", "./", "../guide/index.html", "index.html#top", text="Install it."))
    site = Site(tmp_path)
    try:
        for start in (f"{site.url}/guide/", f"{site.url}/guide/index.html"):
            site.requests.clear()
            pages, skipped, _ = run_crawl(start, use_sitemap=False)
            # Each page once, named by the address the crawl met first.
            assert sorted(p.source for p in pages) == sorted([start, f"{site.url}/guide/setup.html"])
            assert skipped == []
            assert len([r for r in site.requests if r.startswith("/guide")]) == 2
    finally:
        site.close()


def test_excluded_prefixes_are_neither_fetched_nor_indexed(docs: Site) -> None:
    start = f"{docs.url}/tutorial/index.html"
    docs.requests.clear()
    pages, _, ignored = run_crawl(start, max_depth=1, use_sitemap=False, exclude=[
        "/tutorial/class", f"{docs.url}/tutorial/errors.html"])  # a path prefix, or a URL's
    sources = {p.source for p in pages}
    assert f"{docs.url}/tutorial/venv.html" in sources
    assert not {f"{docs.url}/tutorial/classes.html", f"{docs.url}/tutorial/errors.html"} & sources
    assert not {"/tutorial/classes.html", "/tutorial/errors.html"} & set(docs.requests)
    assert ignored["excluded links"] >= 2


def test_each_page_keeps_its_main_text_title_and_url(docs: Site) -> None:
    crawler = Crawler(f"{docs.url}/library/stdtypes.html", **crawl_options())
    result = crawler.fetch(f"{docs.url}/library/stdtypes.html")
    assert not isinstance(result, Skipped)
    assert result.url == f"{docs.url}/library/stdtypes.html"
    assert result.title == "Built-in Types — Python 3.11.2 documentation"
    text = "\n".join(b.text for b in result.blocks)
    assert "The principal built-in types are numerics, sequences, mappings" in text
    for chrome in ("Table of Contents", "Previous topic", "Report a Bug", "Show Source",
                   "Quick search", "Theme", "¶"):
        assert chrome not in text, chrome
    # The comparison table, whole, header first, in its section.
    table = next(b for b in result.blocks if b.table and "strictly less than" in b.text)
    assert table.section == "Comparisons"
    assert table.text.splitlines()[:3] == ["Operation | Meaning", "< | strictly less than",
                                           "<= | less than or equal"]


def test_a_start_page_that_cannot_be_fetched_stops_before_anything_changes(docs: Site) -> None:
    with pytest.raises(IngestError, match="HTTP 404"):
        list(crawl(f"{docs.url}/tutorial/missing.html", **crawl_options()))
    with pytest.raises(IngestError, match="not a web address"):
        list(crawl("file:///etc/passwd", **crawl_options()))


@pytest.fixture
def small_site(tmp_path: Path) -> Iterator[tuple[Site, Path]]:
    """Four real tutorial pages under a made-up hub page, from a folder the test can edit.
    (Their links to the tutorial's other pages lead nowhere here: crawl it at depth 1.)"""
    root = tmp_path / "site"
    (root / "tutorial").mkdir(parents=True)
    names = ["appetite.html", "interpreter.html", "whatnow.html", "interactive.html"]
    for name in names:
        shutil.copy(PY_DOCS / "tutorial" / name, root / "tutorial" / name)
    (root / "tutorial" / "hub.html").write_text(page("Hub", *names))
    site = Site(root)
    yield site, root
    site.close()


def test_recrawl_embeds_nothing_replaces_changed_pages_and_drops_lost_ones(
        small_site: tuple[Site, Path], make_settings: Callable[..., Any], embeddings: Any) -> None:
    from hearth.services import build_services

    site, root = small_site
    counting = CountingEmbeddings(embeddings)
    services: Services = build_services(make_settings(), embeddings=counting)
    start = f"{site.url}/tutorial/hub.html"

    first = ingest_web(services, start, max_depth=1)
    assert (first.seen, first.added, first.skipped) == (5, 5, [])
    assert first.chunks_added == counting.texts > 5
    stored = chunks(services, start)
    assert {c["source"] for c in stored} == {f"{site.url}/tutorial/{n}" for n in
                                             ("hub.html", "appetite.html", "interpreter.html",
                                              "whatnow.html", "interactive.html")}
    assert all(c["title"] and c["page"] == 0 for c in stored)

    counting.texts = 0
    second = ingest_web(services, start, max_depth=1)
    assert (second.unchanged, second.chunks_added, counting.texts) == (5, 0, 0)

    appetite = root / "tutorial" / "appetite.html"
    marker = "Hearth test: a lighthouse keeper tends the almanac of tides by lamplight."
    appetite.write_text(appetite.read_text().replace(
        "<p>If you do much work on computers", f"<p>{marker}</p><p>If you do much work on "
        "computers", 1))
    (root / "tutorial" / "whatnow.html").unlink()
    counting.texts = 0
    third = ingest_web(services, start, max_depth=1)

    assert (third.updated, third.deleted, third.unchanged) == (1, 1, 3)
    assert [(s.name.split(" ")[0], s.reason) for s in third.skipped] == [
        (f"{site.url}/tutorial/whatnow.html", "HTTP 404")]
    assert 0 < counting.texts < first.chunks_added
    stored = chunks(services, start)
    assert not any(c["source"].endswith("whatnow.html") for c in stored)
    assert any(marker in c["text"] for c in stored)
    assert search_sources(services, marker)[0] == f"{site.url}/tutorial/appetite.html"


# --- a re-run where pages fail for now --------------------------------------------------------


def test_a_page_that_fails_for_now_keeps_its_chunks_and_a_page_gone_loses_them(
        tmp_path: Path, make_settings: Callable[..., Any], embeddings: Any) -> None:
    """A timeout, HTTP 503 or 429, a cut connection: the page may answer next time, so what is
    indexed of it stays (and is said to be kept); a page that answers 410 is gone, and goes.
    A page never indexed that fails for now is only skipped."""
    from hearth.services import build_services

    site = Site(tmp_path)
    names = ["slow", "busy", "limited", "hangup", "gone"]
    texts = {name: page(name.title(), text=f"The {name} page: lighthouse keeper number "
                        f"{i} tends the almanac of tides.") for i, name in enumerate(names)}
    site.route("/docs/", body=page("Hub", *[f"{n}.html" for n in names], "new.html"))
    for name in names:
        site.route(f"/docs/{name}.html", body=texts[name])
    site.route("/docs/new.html", status=404)
    counting = CountingEmbeddings(embeddings)
    services: Services = build_services(make_settings(), embeddings=counting)
    start = f"{site.url}/docs/"
    options: dict[str, Any] = {"max_depth": 1, "use_sitemap": False, "timeout_s": 1.0}
    try:
        first = ingest_web(services, start, **options)
        assert (first.added, first.kept, [s.reason for s in first.skipped]) == (6, 0, ["HTTP 404"])
        stored = chunks(services, start)
        gone = {c["id"] for c in stored if c["source"].endswith("/gone.html")}

        site.route("/docs/slow.html", body=texts["slow"], delay=2.0)
        site.route("/docs/busy.html", status=503, body="down for maintenance")
        site.route("/docs/limited.html", status=429, body="slow down")
        site.route("/docs/hangup.html", status=HANG_UP)
        site.route("/docs/gone.html", status=410, body="gone")
        site.route("/docs/new.html", status=503, body="down for maintenance")
        second = ingest_web(services, start, **options)

        assert (second.unchanged, second.kept, second.deleted, second.added) == (1, 4, 1, 0)
        kept = " (indexed before: kept as it was until it can be read)"
        reasons = {s.name.split(" ")[0].rsplit("/", 1)[-1]: s.reason for s in second.skipped}
        assert reasons == {
            "slow.html": "timed out after 1 s" + kept, "busy.html": "HTTP 503" + kept,
            "limited.html": "HTTP 429" + kept,
            "hangup.html": "unreachable: RemoteProtocolError" + kept,
            "gone.html": "HTTP 410", "new.html": "HTTP 503"}
        assert "6 skipped (4 of them kept as indexed before)" in str(second)
        assert {c["id"] for c in chunks(services, start)} == {c["id"] for c in stored} - gone
        assert second.chunks_deleted == len(gone) > 0

        # Answering again, the pages are read, found unchanged, and nothing is embedded.
        for name in names[:4]:
            site.route(f"/docs/{name}.html", body=texts[name])
        counting.texts = 0
        third = ingest_web(services, start, **options)
        assert (third.unchanged, third.kept, third.deleted, counting.texts) == (5, 0, 0, 0)
        assert {c["id"] for c in chunks(services, start)} == {c["id"] for c in stored} - gone
    finally:
        site.close()


def test_a_page_that_never_stops_sending_times_out_as_a_whole(tmp_path: Path) -> None:
    """The timeout is the whole request's: a server that sends a byte every 20 ms is never
    silent long enough for a read to time out, and would hold the crawl for 12 s (forever,
    for a server that never ends); robots.txt the same way stops the crawl."""
    site = Site(tmp_path)
    site.route("/docs/", body=page("Hub", "drip.html", "quick.html"))
    site.route("/docs/quick.html", body=page("Quick", text="Read at once."))
    site.route("/docs/drip.html", body=page("Drip", text="x" * 500), drip=0.02)
    try:
        began = time.monotonic()
        pages, skipped, _ = run_crawl(f"{site.url}/docs/", use_sitemap=False, timeout_s=1.0)
        assert time.monotonic() - began < 5
        assert sorted(p.title for p in pages) == ["Hub", "Quick"]
        assert [(s.name.split(" ")[0], s.reason) for s in skipped] == [
            (f"{site.url}/docs/drip.html", "timed out after 1 s")]

        site.route("/robots.txt", body="User-agent: *\nDisallow: /private/\n" * 20, drip=0.02,
                   Content_Type="text/plain")
        with pytest.raises(IngestError, match="robots.txt at .* timed out after 1 s"):
            run_crawl(f"{site.url}/docs/", use_sitemap=False, timeout_s=1.0)
    finally:
        site.close()


# --- robots.txt -------------------------------------------------------------------------------


@pytest.fixture
def private_docs(tmp_path: Path) -> Iterator[Site]:
    """A site whose robots.txt (routed by each test) may disallow /docs/private/."""
    site = Site(tmp_path)
    site.route("/docs/", body=page("Home", "private/secret.html", "public.html"))
    site.route("/docs/public.html", body=page("Public", text="Anyone may read this."))
    site.route("/docs/private/secret.html", body=page("Secret", text="Not for crawlers."))
    yield site
    site.close()


DISALLOW_PRIVATE = "User-agent: *\nDisallow: /docs/private/\n"


def test_robots_txt_behind_redirects_on_the_site_is_obeyed(private_docs: Site) -> None:
    site = private_docs
    site.route("/robots.txt", status=301, Location="/static/robots.txt", body="<p>Moved</p>")
    site.route("/static/robots.txt", status=302, Location=f"{site.url}/static/robots-v2.txt")
    site.route("/static/robots-v2.txt", body=DISALLOW_PRIVATE, Content_Type="text/plain")
    pages, _, ignored = run_crawl(f"{site.url}/docs/", use_sitemap=False)
    assert {p.source for p in pages} == {f"{site.url}/docs/", f"{site.url}/docs/public.html"}
    assert "/docs/private/secret.html" not in site.requests
    assert ignored == {"links disallowed by robots.txt": 1}

    # More than five redirects: as if there were none, as RFC 9309 allows.
    site.requests.clear()
    site.route("/robots.txt", status=302, Location="/robots.txt")
    pages, _, ignored = run_crawl(f"{site.url}/docs/", use_sitemap=False)
    assert site.requests.count("/robots.txt") == 6 and len(pages) == 3
    assert ignored == {"robots.txt behind more than 5 redirects (taken as none, as RFC 9309 "
                       "allows)": 1}


def test_robots_txt_rules_match_as_rfc_9309_says(private_docs: Site) -> None:
    """The longest rule that matches wins, whatever their order, and ``*`` and ``$`` are
    patterns: behind the common ``Allow: /`` first, a ``Disallow`` still holds."""
    site = private_docs
    for robots, allowed in (
            ("Allow: /\nDisallow: /docs/private/\n", {"/docs/", "/docs/public.html"}),
            ("Allow: /\nDisallow: /*/private/\n", {"/docs/", "/docs/public.html"}),
            ("Disallow: /docs/p\nAllow: /docs/public.html$\n", {"/docs/", "/docs/public.html"}),
            ("Disallow: /docs/*.html\nAllow: /docs/private/\n",
             {"/docs/", "/docs/private/secret.html"})):
        site.requests.clear()
        site.route("/robots.txt", body="User-agent: *\n" + robots, Content_Type="text/plain")
        pages, _, ignored = run_crawl(f"{site.url}/docs/", use_sitemap=False)
        assert {p.source for p in pages} == {site.url + path for path in allowed}, robots
        assert set(site.requests) == {"/robots.txt"} | allowed, robots
        assert ignored == {"links disallowed by robots.txt": 1}, robots


def test_sitemaps_are_read_on_the_site_only(private_docs: Site, elsewhere: Site) -> None:
    """A sitemap robots.txt names on another host, one an index lists there, and one that
    redirects there are counted, never fetched: Hearth calls no host but the one it crawls.
    Those on the site are read, through a redirect on the site too."""
    site = private_docs
    urlset = ('<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/'
              f'schemas/sitemap/0.9"><url><loc>{site.url}/docs/only-in-the-sitemap.html</loc>'
              '</url></urlset>')
    site.route("/docs/only-in-the-sitemap.html", body=page("Listed", text="Found by the map."))
    site.route("/robots.txt", Content_Type="text/plain", body=(
        f"User-agent: *\nSitemap: {elsewhere.url}/sitemap.xml\nSitemap: {site.url}/index.xml\n"))
    site.route("/index.xml", Content_Type="application/xml", body=(
        '<?xml version="1.0" encoding="UTF-8"?><sitemapindex xmlns="http://www.sitemaps.org/'
        f'schemas/sitemap/0.9"><sitemap><loc>{elsewhere.url}/more.xml</loc></sitemap>'
        f'<sitemap><loc>{site.url}/moved.xml</loc></sitemap>'
        f'<sitemap><loc>{site.url}/away.xml</loc></sitemap></sitemapindex>'))
    site.route("/moved.xml", status=301, Location="/map.xml")
    site.route("/map.xml", Content_Type="application/xml", body=urlset)
    site.route("/away.xml", status=302, Location=f"{elsewhere.url}/map.xml")
    pages, _, ignored = run_crawl(f"{site.url}/docs/")
    assert f"{site.url}/docs/only-in-the-sitemap.html" in {p.source for p in pages}
    assert ignored["sitemaps on another site (not fetched)"] == 3, ignored
    assert elsewhere.requests == []


def test_robots_txt_that_cannot_be_reached_stops_the_crawl(private_docs: Site,
                                                           elsewhere: Site) -> None:
    """RFC 9309: robots.txt unreachable (a timeout, a cut connection, HTTP 5xx) means the
    whole site is disallowed for now; not there (HTTP 404) means nothing is. A redirect to
    another site is not followed: the crawl calls no one else."""
    site = private_docs
    for route, error in (
            ({"delay": 2.0, "body": DISALLOW_PRIVATE}, "timed out after 1 s"),
            ({"status": HANG_UP}, "is unreachable \\(RemoteProtocolError\\)"),
            ({"status": 503}, "answered HTTP 503"),
            ({"status": 302, "Location": f"{elsewhere.url}/robots.txt"},
             f"redirects to another site \\({elsewhere.url}/robots.txt\\)")):
        site.requests.clear()
        site.route("/robots.txt", **route)
        with pytest.raises(IngestError, match=f"robots.txt at {site.url}/robots.txt {error}"):
            run_crawl(f"{site.url}/docs/", use_sitemap=False, timeout_s=1.0)
        assert site.requests == ["/robots.txt"]  # not one page
    assert elsewhere.requests == []

    site.route("/robots.txt", status=404)
    pages, _, _ = run_crawl(f"{site.url}/docs/", use_sitemap=False)
    assert len(pages) == 3


def test_a_link_met_first_on_a_nofollow_page_is_still_followed_from_another(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    nofollow = '<meta name="robots" content="nofollow">'
    site.route("/docs/", body=page("Home", "a-login.html", "b-search.html", "guide.html"))
    for name in ("a-login", "b-search"):  # met first, both nofollow
        site.route(f"/docs/{name}.html", body=page(name, "install.html", "only-here.html")
                   .replace("<head>", f"<head>{nofollow}"))
    site.route("/docs/guide.html", body=page("Guide", "install.html"))
    site.route("/docs/install.html", body=page("Install", text="How to install."))
    site.route("/docs/only-here.html", body=page("Only here"))
    try:
        pages, skipped, ignored = run_crawl(f"{site.url}/docs/", use_sitemap=False)
        assert {p.source.rsplit("/", 1)[-1] for p in pages} == {
            "", "a-login.html", "b-search.html", "guide.html", "install.html"}
        assert skipped == [] and site.requests.count("/docs/install.html") == 1
        assert ignored == {"links on nofollow pages": 1}  # only-here.html, counted once
    finally:
        site.close()


def test_a_page_linked_with_a_query_string_is_indexed_once(tmp_path: Path) -> None:
    """``guide.html?utm_source=nav`` is ``guide.html`` again: indexed twice, each passage
    would come back twice in an answer's sources. A page whose content differs is kept."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text(page(
        "Hub", "guide.html", "guide.html?utm_source=nav", "guide.html?highlight=x#top",
        "search.html?q=tides"))
    (tmp_path / "docs" / "guide.html").write_text(page("Guide", text="The almanac of tides."))
    site = Site(tmp_path)
    site.route("/docs/search.html", body=page("Search", text="Results for tides."))
    try:
        pages, skipped, ignored = run_crawl(f"{site.url}/docs/", use_sitemap=False)
        assert [p.source for p in pages] == [f"{site.url}/docs/", f"{site.url}/docs/guide.html",
                                             f"{site.url}/docs/search.html?q=tides"]
        assert skipped == []
        assert ignored["pages the same as another page (another address of it)"] == 2
    finally:
        site.close()


def test_a_charset_python_does_not_know_is_not_a_failure(tmp_path: Path) -> None:
    """utf8mb4, none, x-user-defined: the page's own <meta charset>, or the parser's guess,
    reads it; robots.txt is read as UTF-8."""
    site = Site(tmp_path)
    site.route("/robots.txt", body=DISALLOW_PRIVATE, Content_Type="text/plain; charset=utf8mb4")
    site.route("/docs/", body=page("Home", "none.html", "meta.html", "private/secret.html",
                                   text="Welcome to the café."),
               Content_Type="text/html; charset=utf8mb4")
    site.route("/docs/none.html", body=page("None", text="Plain words."),
               Content_Type="text/html; charset=none")
    site.route("/docs/meta.html", Content_Type="text/html; charset=x-user-defined", body=(
        '<html><head><meta charset="windows-1252"><title>Meta</title></head><body><main>'
        '<p>Un café crème, s’il vous plaît.</p></main></body></html>').encode("cp1252"))
    try:
        pages, skipped, ignored = run_crawl(f"{site.url}/docs/", use_sitemap=False)
        text = {p.source.rsplit("/", 1)[-1]: "\n".join(b.text for b in p.blocks) for p in pages}
        assert skipped == [] and set(text) == {"", "none.html", "meta.html"}
        assert "Welcome to the café." in text[""] and "Plain words." in text["none.html"]
        assert "Un café crème, s’il vous plaît." in text["meta.html"]
        assert ignored == {"links disallowed by robots.txt": 1}
    finally:
        site.close()


def test_links_that_are_not_addresses_are_passed_over_not_fatal(tmp_path: Path) -> None:
    """One link with a bracket left open on the start page failed the page, and so the whole
    crawl; one with a port that is no number was read as the site's default port (another
    address). A start URL of either kind was a traceback, and a 500 from the API."""
    site = Site(tmp_path)
    site.route("/docs/", body=page("Home", "http://[::1", "http://127.0.0.1:99999/x",
                                   "http://a:notaport/", "next.html", text="The start page."))
    site.route("/docs/next.html", status=302, Location="http://127.0.0.1:notaport/")
    site.route("/sitemap.xml", Content_Type="application/xml", body=(
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        '<url><loc>http://[::1</loc></url></urlset>'))
    try:
        pages, skipped, ignored = run_crawl(f"{site.url}/docs/")
        assert [p.source for p in pages] == [f"{site.url}/docs/"]
        # A redirect to what is not an address fails that page only (httpx refuses it).
        assert [s.name.split(" ")[0] for s in skipped] == [f"{site.url}/docs/next.html"]
        assert ignored["links that are not valid addresses"] == 3  # 2 links, 1 sitemap entry
    finally:
        site.close()
    for bad in ("http://[::1", "http://127.0.0.1:99999/docs/", "http://a:notaport/"):
        with pytest.raises(IngestError, match="not a web address"):
            start_address(bad)


# --- one source whichever way its start page is written ---------------------------------------


@pytest.fixture
def index_site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    home = page("Home", "a.html", text="The lighthouse almanac of tides.")
    site.route("/docs/", body=home)
    site.route("/docs/index.html", body=home)
    site.route("/docs/a.html", body=page("A", text="Page a, about the winter ferries."))
    yield site
    site.close()


def test_two_spellings_of_a_start_page_are_one_source(
        index_site: Site, make_settings: Callable[..., Any], embeddings: Any) -> None:
    from hearth.ingest.sources import list_sources, remove_source
    from hearth.services import build_services

    site = index_site
    services: Services = build_services(make_settings(), embeddings=embeddings)
    first = ingest_web(services, f"{site.url}/docs/", use_sitemap=False)
    again = ingest_web(services, f"{site.url}/docs/index.html", use_sitemap=False)
    assert first.source == again.source == f"{site.url}/docs/"
    listed = list_sources(services.settings)
    assert [(s.source, s.documents) for s in listed] == [(f"{site.url}/docs/", 2)]
    stored = chunks(services, f"{site.url}/docs/")
    assert len(stored) == len({c["source"] for c in stored}) == services.vectorstore.count()
    _, deleted = remove_source(services, f"{site.url}/docs/index.html")
    assert deleted == len(stored) and list_sources(services.settings) == []


def test_a_source_named_by_its_index_page_before_is_still_that_source(
        index_site: Site, make_settings: Callable[..., Any], embeddings: Any,
        tmp_path: Path) -> None:
    """A Hearth that named a source by the start URL as written stored it under
    ``/docs/index.html``: a re-run, by either spelling, on the command line or through an API
    job (its chunks made in another process), replaces those chunks, never copies them."""
    from hearth.ingest.pipeline import run
    from hearth.ingest.progress import Progress
    from hearth.ingest.sources import list_sources
    from hearth.ingest.web import site_namespace
    from hearth.ingest.worker import _read, spooled
    from hearth.services import build_services

    site = index_site
    old = f"{site.url}/docs/index.html"
    counting = CountingEmbeddings(embeddings)
    services: Services = build_services(make_settings(ingest_allow_hosts=["127.0.0.1/32"]),
                                        embeddings=counting)
    run(services, old, crawl(old, **crawl_options(use_sitemap=False)))  # as it was stored
    stored = {c["id"] for c in chunks(services, old)}

    counting.texts = 0
    cli = ingest_web(services, old, use_sitemap=False)
    assert (cli.source, cli.unchanged, cli.added, counting.texts) == (old, 2, 0, 0)
    spool = tmp_path / "job.jsonl"  # what an API job does: read in a child, index here
    read = _read(services.settings, "web", site_namespace(f"{site.url}/docs/"),
                 crawl_options(use_sitemap=False), spool, Progress())
    job = run(services, read.namespace, spooled(spool))
    assert job.source == old and (job.unchanged, job.added, job.deleted) == (1, 1, 1)
    assert [s.source for s in list_sources(services.settings)] == [old]
    assert {c["source"] for c in chunks(services, old)} == {f"{site.url}/docs/",
                                                           f"{site.url}/docs/a.html"}
    assert services.vectorstore.count() == len(chunks(services, old)) == len(stored)

    # Removed, it leaves nothing on disk: its pages' parses were cached under the folder's
    # name, which the crawls read by.
    from hearth.ingest.cache import parse_cache_dir
    from hearth.ingest.sources import remove_source

    cached = [parse_cache_dir(services.settings, name) for name in (old, f"{site.url}/docs/")]
    assert any(folder.is_dir() for folder in cached)
    assert remove_source(services, old)[0] == old
    assert not any(folder.exists() for folder in cached) and services.vectorstore.count() == 0
