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
from hearth.ingest.web import Crawler, crawl
from hearth.services import Services
from tests.test_ingest import CountingEmbeddings, chunks, search_sources

PY_DOCS = Path("/usr/share/doc/python3.11/html")
pytestmark = [
    pytest.mark.real,  # a real HTTP server on 127.0.0.1 and real pages
    pytest.mark.skipif(not PY_DOCS.is_dir(),
                       reason="needs Debian's python3.11-doc (apt-get install python3.11-doc)"),
]


class Site:
    """A real HTTP server on 127.0.0.1 over a folder, with extra routes; it logs each path."""

    def __init__(self, root: Path) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes, float]] = {}
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
                status, headers, body, delay = site.routes[path]
                time.sleep(delay)
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # a client that timed out has gone

        self.server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, path: str, status: int = 200, body: str = "", delay: float = 0.0,
              **headers: str) -> None:
        named = {"Content-Type": "text/html; charset=utf-8",
                 **{k.replace("_", "-"): v for k, v in headers.items()}}
        self.routes[path] = (status, named, body.encode(), delay)

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
