"""A website, crawled from a start URL: same site, bounded, polite, and never stopped by one page.

- Scope: the start URL's host (and port); paths under the ``include`` prefixes (default: the
  start URL's folder) and not under an ``exclude`` prefix. Other links are counted, not followed.
- Bounds: ``max_depth`` links from the start page (a sitemap's pages count as one link away),
  ``max_pages`` fetches in all, ``concurrency`` requests at a time, ``timeout_s`` per request
  (these four from the settings, ``HEARTH_CRAWL_*``), ``max_redirects`` hops with loop
  detection, and ``limits`` on what one response may unpack to: a page or robots.txt
  (``HEARTH_CRAWL_MAX_PAGE_BYTES``), a sitemap (``HEARTH_INGEST_MAX_UNPACKED_BYTES``, the
  sitemap protocol's own 50 MB by default). Bodies are unpacked here (gzip, deflate; nothing
  else is asked for), a bounded step at a time, so a small gzip bomb never expands in memory
  past the bound: httpx would unpack each 64 KiB it receives whole, up to 64 MiB at once.
- Politeness: robots.txt (``Disallow``, ``Allow``, the longest rule winning, and
  ``Crawl-delay``) and ``<meta name="robots">``.
  robots.txt is read as RFC 9309 says: through up to five redirects (on the site: Hearth
  calls no other), as none when it is not there (HTTP 4xx), and as "crawl nothing" when it
  cannot be reached (HTTP 5xx, a timeout, a refused connection), so the crawl stops.
- The order is breadth-first and stable (each level in discovery order), so the same site gives
  the same pages when the page limit cuts the crawl short, and re-ingesting churns nothing.
- Every failure is one ``Skipped`` entry (HTTP 4xx/5xx, unreachable, not HTML, redirect loop);
  only a start page that cannot be fetched stops the crawl, before anything is changed. A
  failure that may not happen next time (a timeout, a reset connection, HTTP 5xx, 408 or 429)
  is a ``SkippedForNow``: a page indexed before stays in the index as it was.
- A page's charset that Python does not know (``utf8mb4``, ``none``) is left out: the page's
  own ``<meta charset>`` or the parser's guess reads it.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, asdict, astuple, dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlparse, urlsplit, urlunparse, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx
from defusedxml import ElementTree

from hearth.ingest.cache import ParseCache
from hearth.ingest.documents import Block, IngestError, Parsed, ReadLimits, Skipped, SkippedForNow
from hearth.ingest.files import looks_binary
from hearth.ingest.progress import Progress
from hearth.ingest.safety import UnsafeTarget

USER_AGENT = "Hearth-ingest/0.1 (local document indexer)"
MAX_REDIRECTS = 5
# The encodings read_body unpacks with a bound: the only ones the crawler asks for.
ACCEPT_ENCODING = "gzip, deflate"
MAX_SITEMAP_URLS = 50_000
MAX_CRAWL_DELAY_S = 10.0
PARSER_VERSION = 2  # bump when parse_html changes, so cached pages are parsed again (2: headings)
REDIRECTS = {301, 302, 303, 307, 308}
# The statuses that say "not now" rather than "not here": with every 5xx, a page that answers
# one is tried again next time, and its copy in the index is kept meanwhile.
TRY_AGAIN = {408, 425, 429}
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Links to these are not fetched at all: they are never HTML.
NOT_HTML = {
    ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico", ".bmp", ".css", ".js", ".mjs",
    ".json", ".xml", ".pdf", ".zip", ".gz", ".tgz", ".bz2", ".xz", ".tar", ".7z", ".exe",
    ".dmg", ".mp3", ".mp4", ".webm", ".avi", ".mov", ".woff", ".woff2", ".ttf", ".otf", ".eot",
    ".epub", ".docx", ".xlsx", ".pptx", ".bin", ".whl", ".inv",
}


def normalize(url: str) -> str:
    """One spelling per page: lower-case scheme and host, no default port, no fragment.
    ValueError for what is not an address (a bracket left open, a port that is not a number
    from 0 to 65535): read as another address, it would fetch another page."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if (scheme, port) in (("http", 80), ("https", 443)):
        port = None
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


INDEX_PAGES = ("index.html", "index.htm")


def page_key(url: str) -> str:
    """What names one page whichever way it is linked: a folder's ``index.html`` is the folder
    (``/tutorial/`` and ``/tutorial/index.html`` are one page), so it is read once. The page is
    still fetched, and named in the index, by the address the crawl met first."""
    parts = urlsplit(url)
    folder, _, name = parts.path.rpartition("/")
    if name.lower() in INDEX_PAGES:
        return urlunsplit(parts._replace(path=folder + "/"))
    return url


class OffSite(Exception):
    """A redirect to another site than the one crawled."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class BodyTooLarge(Exception):
    """A response that unpacks past its bound."""


class BodyNotReadable(Exception):
    """A response in an encoding that cannot be unpacked with a bound."""


def _unpacker(encoding: str, first: bytes) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":  # zlib-wrapped as the standard says, or raw as some servers send
        wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
    raise BodyNotReadable(f"compressed as {encoding!r}, which Hearth does not unpack")


def read_body(response: httpx.Response, limit: int, *, truncate: bool = False,
              deadline: float | None = None) -> bytes:
    """A streamed response's body, unpacked, of at most ``limit`` bytes: past it BodyTooLarge,
    or the first ``limit`` bytes with ``truncate``. Each step unpacks at most what is left of
    the bound, so memory never holds more than ``limit`` (and one network read) of it.

    Past ``deadline`` (``time.monotonic()``) it raises httpx.ReadTimeout: httpx times each
    read alone, so a server that sends a few bytes a second would otherwise hold the crawl
    for as long as it likes."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    unpack: Any = None
    pieces: list[bytes] = []  # joined once at the end: at most twice the bound in memory
    size = 0
    for raw in response.iter_raw():
        if deadline is not None and time.monotonic() > deadline:
            raise httpx.ReadTimeout("the response did not end in time", request=response.request)
        if encoding not in ("", "identity") and unpack is None:
            unpack = _unpacker(encoding, raw)
        data = raw
        while data:
            if unpack is None:
                piece, data = data[: limit + 1 - size], b""
            else:
                piece = unpack.decompress(data, limit + 1 - size)
                data = b"" if unpack.eof else unpack.unconsumed_tail
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                if truncate:
                    return b"".join(pieces)[:limit]
                raise BodyTooLarge(f"larger than {limit / 2**20:.3g} MiB")
        if unpack is not None and unpack.eof:
            break
    return b"".join(pieces)


def start_address(url: str) -> str:
    """The start URL, normalized: where the crawl begins; IngestError for what is not a web
    address."""
    try:
        normal = normalize(url)
    except ValueError as exc:
        raise IngestError(f"not a web address: {url!r} ({exc})") from None
    parts = urlsplit(normal)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IngestError(f"not a web address: {url!r} (give an http:// or https:// URL)")
    return normal


def site_namespace(url: str) -> str:
    """The name of the source in the index: the start URL, normalized, as one page whichever
    way it is written (``page_key``), so ``/docs/`` and ``/docs/index.html`` are one source
    and a second crawl from the other spelling does not store every page twice."""
    return page_key(start_address(url))


def older_namespaces(namespace: str) -> list[str]:
    """The names a source of ``namespace`` may have been stored under by a Hearth whose
    ``site_namespace`` kept the start URL as written: the folder's index page, which
    ``page_key`` now names by the folder."""
    parts = urlsplit(namespace)
    if not parts.path.endswith("/"):
        return []
    return [urlunsplit(parts._replace(path=parts.path + name))
            for index in INDEX_PAGES for name in (index, index.capitalize(), index.upper())]


def decoded(body: bytes, charset: str | None) -> str | None:
    """``body`` as text in ``charset``, or None when Python cannot decode with that charset (a
    name it does not know, such as ``utf8mb4`` or ``none``, or not a text encoding)."""
    if not charset:
        return None
    try:
        if not getattr(codecs.lookup(charset), "_is_text_encoding", True):
            return None
        return body.decode(charset, errors="replace")
    except (LookupError, ValueError):  # ValueError: UnicodeError, a NUL in the name
        return None


class Robots(RobotFileParser):
    """robots.txt read as RFC 9309 says: of the rules that match a path, the longest wins (an
    ``Allow`` on a tie), and ``*`` in a rule matches any characters, ``$`` at its end the end of
    the path. Python's parser takes the first rule that matches, as a prefix: behind the
    common ``Allow: /``, every ``Disallow`` was ignored, and so was every rule with a ``*``."""

    def can_fetch(self, useragent: str, url: str) -> bool:
        # The path as Python's parser has it (each rule's path is quoted the same way).
        parts = urlparse(unquote(url))
        path = quote(urlunparse(("", "", parts.path, parts.params, parts.query, ""))) or "/"
        entries: list[Any] = getattr(self, "entries", [])  # the parser's, untyped in typeshed
        entry = next((e for e in entries if e.applies_to(useragent)),
                     getattr(self, "default_entry", None))
        if entry is None:
            return True
        best: tuple[int, bool] = (-1, True)
        for rule in entry.rulelines:
            if _rule_matches(rule.path, path):
                # The rule's length as written; on a tie True, Allow, wins.
                best = max(best, (len(unquote(rule.path)), rule.allowance))
        return best[1]


def _rule_matches(rule: str, path: str) -> bool:
    """Whether a robots.txt rule, quoted as Python's parser keeps it (``*`` is ``%2A``, ``$``
    is ``%24``), matches the start of ``path``."""
    anchored = rule.endswith("%24")
    pieces = (rule[:-3] if anchored else rule).split("%2A")
    pattern = ".*".join(re.escape(piece) for piece in pieces) + ("$" if anchored else "")
    return re.match(pattern, path) is not None


def _site(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port in (80, 443):
        port = None  # http://host and https://host are one site
    return (parts.hostname or "").lower(), port


@dataclass
class _Fetched:
    url: str  # after redirects
    title: str
    blocks: list[Block]
    links: list[str]
    noindex: bool
    nofollow: bool


@dataclass
class Crawler:
    """One crawl from ``start``. The limits have no defaults here: callers take them from
    the settings (``HEARTH_CRAWL_*``), where they are defined."""

    start: str
    _: KW_ONLY
    max_depth: int
    max_pages: int
    concurrency: int
    timeout_s: float
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_redirects: int = MAX_REDIRECTS
    use_sitemap: bool = True
    respect_robots: bool = True
    user_agent: str = USER_AGENT
    ignored: dict[str, int] = field(default_factory=dict)
    cache: ParseCache | None = None
    # An httpx transport every request goes through (a guard on where the crawl may connect).
    transport: httpx.BaseTransport | None = None
    # What a response may unpack to (the settings'; config.py's defaults when left out).
    limits: ReadLimits = field(default_factory=ReadLimits.of)

    def __post_init__(self) -> None:
        self.start = start_address(self.start)
        self.site = _site(self.start)
        if not self.include:
            path = urlsplit(self.start).path
            self.include = (path[: path.rfind("/") + 1] or "/",)
        # Prefixes are paths; a full URL given as one means its path.
        self.include = tuple(urlsplit(p).path or "/" if "://" in p else p for p in self.include)
        self.exclude = tuple(urlsplit(p).path or "/" if "://" in p else p for p in self.exclude)
        self.client = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s), follow_redirects=False,
            headers={"User-Agent": self.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
            transport=self.transport,
            limits=httpx.Limits(max_connections=max(1, self.concurrency)),
        )
        self.robots: Robots | None = None
        self.delay = 0.0
        self._last_request = 0.0
        self._polite = threading.Lock()
        # Every page met (by page_key) that is fetched or out of scope: never looked at again.
        self.seen: set[str] = {page_key(self.start)}
        self.queued: set[str] = {page_key(self.start)}  # the pages the crawl fetches
        # Links passed over where they were met (on a nofollow page, or one level too deep),
        # with the reason they were counted under: another page may still lead to them.
        self.passed: dict[str, str] = {}
        self.referrer: dict[str, str] = {}
        # The content of each page read: another address of one (``?utm_source=...``,
        # ``?highlight=...``) is that page again, not one more to index.
        self.contents: set[str] = set()

    # -- scope ---------------------------------------------------------------------------------

    def out_of_scope(self, url: str) -> str | None:
        """Why a link is not followed, or None when it is in scope."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return "non-web links"
        if _site(url) != self.site:
            return "off-site links"
        path = parts.path or "/"
        if not any(path.startswith(prefix) for prefix in self.include):
            return "links outside the included paths"
        if any(path.startswith(prefix) for prefix in self.exclude):
            return "excluded links"
        suffix = path[path.rfind("."):].lower() if "." in path.rsplit("/", 1)[-1] else ""
        if suffix in NOT_HTML:
            return "links to non-HTML files"
        if self.robots and not self.robots.can_fetch(self.user_agent, url):
            return "links disallowed by robots.txt"
        return None

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _addresses(self, urls: Iterable[str]) -> list[str]:
        """``urls`` normalized; one that is not an address (a page's typo, a hostile link)
        is counted and passed over, not let stop the crawl."""
        found = []
        for url in urls:
            try:
                found.append(normalize(url))
            except ValueError:
                self._ignore("links that are not valid addresses")
        return found

    # -- robots.txt and sitemaps ---------------------------------------------------------------

    def read_robots(self) -> None:
        """Read the site's robots.txt as RFC 9309 says. A redirect is followed, up to five
        hops, each through the same transport (and its guard), but only on the site: the
        crawl calls no other. Not there (HTTP 4xx), or more than five redirects away: nothing
        is disallowed. Not reachable (HTTP 5xx, a timeout, a refused or reset connection), or
        not readable: the whole site is disallowed, so the crawl stops here, before anything
        changes."""
        url = urljoin(self.start, "/robots.txt")
        limit = self.limits.page_bytes
        stop = ("by the robots exclusion standard the site may not be crawled while its "
                "robots.txt cannot be read; try again later")
        current = url
        try:
            deadline = time.monotonic() + self.timeout_s
            response, current = self._get_on_site(url)
            if response is None:
                self._ignore(f"robots.txt behind more than {MAX_REDIRECTS} redirects (taken as "
                             "none, as RFC 9309 allows)")
                return
            try:
                status = response.status_code
                body = (read_body(response, limit, truncate=True, deadline=deadline)
                        if status < 400 else b"")
                charset = response.charset_encoding
            finally:
                response.close()
        except OffSite as off:
            raise IngestError(f"robots.txt at {url} redirects to another site ({off.url}), "
                              "which Hearth does not call: start the crawl from that site's "
                              "address") from None
        except (MemoryError, IngestError):
            raise
        except UnsafeTarget as exc:  # the guard refused the site's address (as it would a page)
            raise IngestError(f"cannot crawl {self.start}: {type(exc).__name__}: {exc}") from None
        except httpx.TimeoutException:
            raise IngestError(f"cannot crawl {self.start}: robots.txt at {current} timed out "
                              f"after {self.timeout_s:g} s: {stop}") from None
        except httpx.TransportError as exc:
            raise IngestError(f"cannot crawl {self.start}: robots.txt at {current} is "
                              f"unreachable ({type(exc).__name__}): {stop}") from None
        except Exception as exc:  # compressed in a way Hearth does not unpack, corrupt...
            raise IngestError(f"cannot crawl {self.start}: robots.txt at {current} could not "
                              f"be read ({type(exc).__name__}: {exc})"[:400] + f": {stop}") from None
        if status >= 500:
            raise IngestError(f"robots.txt at {current} answered HTTP {status}: "
                              "by the robots exclusion standard the site may not be crawled now")
        if len(body) >= limit:
            self._ignore(f"robots.txt past {limit / 2**20:.3g} MiB (not read, as search "
                         "engines do)")
        text = decoded(body, charset)  # None: UTF-8, as RFC 9309 has robots.txt written
        robots = Robots(url)
        robots.parse((body.decode("utf-8", errors="replace") if text is None else text)
                     .splitlines())
        self.robots = robots
        delay = robots.crawl_delay(self.user_agent)
        if delay:
            self.delay = min(float(delay), MAX_CRAWL_DELAY_S)

    def _on_site(self, urls: list[str]) -> list[str]:
        """The sitemaps of ``urls`` on the site being crawled; the others are counted, not
        fetched: Hearth calls no host but the one it was asked to crawl."""
        kept = [u for u in urls if _site(u) == self.site]
        for _ in range(len(urls) - len(kept)):
            self._ignore("sitemaps on another site (not fetched)")
        return kept

    def sitemap_urls(self) -> list[str]:
        listed = (self.robots.site_maps() if self.robots else None) or []
        queue = self._on_site(self._addresses(listed)) if listed \
            else [urljoin(self.start, "/sitemap.xml")]
        found: list[str] = []
        fetched = 0
        while queue and fetched < 20 and len(found) < MAX_SITEMAP_URLS:
            url = queue.pop(0)
            fetched += 1
            try:
                deadline = time.monotonic() + self.timeout_s
                response, _ = self._get_on_site(url)
                if response is None:
                    continue
                try:
                    if response.status_code != 200:
                        continue
                    body = read_body(response, self.limits.unpacked_bytes, deadline=deadline)
                finally:
                    response.close()
                # Untrusted XML: defusedxml refuses entity expansion ("billion laughs")
                # and external entities.
                root = ElementTree.fromstring(body)
            except OffSite:
                self._ignore("sitemaps on another site (not fetched)")
                continue
            except BodyTooLarge as exc:
                self._ignore(f"sitemaps {exc} (HEARTH_INGEST_MAX_UNPACKED_BYTES)")
                continue
            except MemoryError:
                raise
            except Exception:
                continue
            locs = [(el.text or "").strip() for el in root.iter() if el.tag.endswith("loc")]
            if root.tag.endswith("sitemapindex"):
                queue += self._on_site(self._addresses(u for u in locs if u))
            else:
                found += self._addresses(u for u in locs if u)
        return found

    def _get_on_site(self, url: str) -> tuple[httpx.Response | None, str]:
        """GET ``url`` through up to five redirects on the site, each through the client's
        transport (and its guard): the response, open (the caller closes it), and the address
        it came from; None past five redirects. ``OffSite`` for a redirect to another site,
        which the crawl does not call."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self.client.send(self.client.build_request("GET", url), stream=True)
            location = response.headers.get("location")
            if response.status_code not in REDIRECTS or not location:
                return response, url
            response.close()
            url = normalize(urljoin(url, location))  # httpx refused one to no address
            if _site(url) != self.site:
                raise OffSite(url)
        return None, url

    # -- fetching ------------------------------------------------------------------------------

    def _wait_turn(self) -> None:
        if not self.delay:
            return
        with self._polite:
            wait = self._last_request + self.delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_request = time.monotonic()

    def fetch(self, url: str) -> _Fetched | Skipped | None:
        name = url if url not in self.referrer else f"{url} (linked from {self.referrer[url]})"
        chain = [url]
        current = url
        try:
            for _ in range(self.max_redirects + 1):
                self._wait_turn()
                deadline = time.monotonic() + self.timeout_s  # the whole request, body included
                with self.client.stream("GET", current) as response:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECTS and location:
                        target = normalize(urljoin(current, location))
                        if target in chain:
                            return Skipped(name, "redirect loop")
                        reason = self.out_of_scope(target)
                        if reason:
                            return Skipped(name, f"redirects out of the crawl ({reason})")
                        if page_key(target) in self.queued:
                            return None  # another address of a page the crawl reads anyway
                        chain.append(target)
                        current = target
                        continue
                    if response.status_code >= 400:
                        return _http_error(name, response.status_code)
                    ctype = response.headers.get("content-type", "").split(";")[0].strip()
                    if ctype and ctype.lower() not in HTML_TYPES:
                        return Skipped(name, f"not HTML ({ctype})")
                    body = read_body(response, self.limits.page_bytes, deadline=deadline)
                    charset = response.charset_encoding
                if looks_binary(body, charset):  # a page served without its type, or the wrong one
                    return Skipped(name, "binary content, not HTML")
                return self._parse(current, body, charset)
            return Skipped(name, f"more than {self.max_redirects} redirects")
        except BodyTooLarge as exc:
            return Skipped(name, f"{exc} (HEARTH_CRAWL_MAX_PAGE_BYTES)")
        except BodyNotReadable as exc:
            return Skipped(name, str(exc))
        except MemoryError:
            raise
        except httpx.TimeoutException:
            return SkippedForNow(name, f"timed out after {self.timeout_s:g} s")
        except httpx.TransportError as exc:  # refused, reset, cut short, a name not resolved
            return SkippedForNow(name, f"unreachable: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Skipped(name, f"unreachable: {type(exc).__name__}")
        except Exception as exc:  # a refused address, a page that breaks the parser...
            return Skipped(name, f"{type(exc).__name__}: {exc}"[:240])

    def _parse(self, url: str, body: bytes, charset: str | None) -> _Fetched:
        from hearth.ingest.html import parse_html

        key = hashlib.sha256(f"web|{PARSER_VERSION}|{url}|{charset}|".encode() + body).hexdigest()
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            return _Fetched(url, cached["title"], [Block(**b) for b in cached["blocks"]],
                            cached["links"], cached["noindex"], cached["nofollow"])
        text = decoded(body, charset)  # None: the page's <meta charset>, or the parser's guess
        page = parse_html(body if text is None else text, url)
        fetched = _Fetched(url, page.title, page.blocks, page.links, page.noindex, page.nofollow)
        if self.cache:
            data = asdict(fetched)
            del data["url"]
            self.cache.put(key, data)
        return fetched

    # -- the crawl -----------------------------------------------------------------------------

    def _queue_links(self, page: _Fetched, depth: int, queue: list[str]) -> None:
        """Queue the page's links in scope. A link on a nofollow page, or one level too deep,
        is counted once but not marked seen: another page of this level may link to it."""
        for url in self._addresses(page.links):
            key = page_key(url)
            if key in self.seen:
                continue
            reason = self.out_of_scope(url)
            if reason:
                self.seen.add(key)
                self._ignore(reason)
            elif page.nofollow or depth + 1 > self.max_depth:
                if key not in self.passed:
                    self.passed[key] = ("links on nofollow pages" if page.nofollow
                                        else f"links beyond max depth {self.max_depth}")
                    self._ignore(self.passed[key])
            else:
                self.referrer[url] = page.url
                self._queue(url, queue)

    def _queue(self, url: str, queue: list[str]) -> None:
        """Queue a page to fetch; one counted as passed over where it was met is not."""
        key = page_key(url)
        self.seen.add(key)
        self.queued.add(key)
        queue.append(url)
        reason = self.passed.pop(key, None)
        if reason is not None:
            self.ignored[reason] -= 1
            if not self.ignored[reason]:
                del self.ignored[reason]

    def pages(self, progress: Progress | None = None) -> Iterator[Parsed | Skipped]:
        try:
            yield from self._crawl(progress)
        finally:
            self.client.close()

    def _crawl(self, progress: Progress | None) -> Iterator[Parsed | Skipped]:
        if progress:
            progress.begin("pages crawled", total=None)
        if self.respect_robots:
            self.read_robots()
            if self.robots and not self.robots.can_fetch(self.user_agent, self.start):
                raise IngestError(f"robots.txt of {self.start} does not allow crawling it")
        first = self.fetch(self.start)
        if first is None or isinstance(first, Skipped):
            reason = first.reason if first else "it redirects to itself"
            raise IngestError(f"cannot crawl {self.start}: {reason}")
        yielded: set[str] = set()
        level: list[str] = []
        fetched = 1
        yield from self._emit(first, 0, level, yielded)
        if self.use_sitemap and self.max_depth >= 1:
            for url in self.sitemap_urls():
                if page_key(url) in self.seen:
                    continue
                why = self.out_of_scope(url)
                if why:
                    self.seen.add(page_key(url))
                    self._ignore(why.replace("links", "sitemap entries", 1))
                else:
                    self._queue(url, level)
        workers = 1 if self.delay else max(1, self.concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl") as pool:
            depth = 1
            while level:
                room = max(0, self.max_pages - fetched)
                for _ in level[room:]:
                    self._ignore(f"pages beyond max pages {self.max_pages}")
                level = level[:room]
                fetched += len(level)
                next_level: list[str] = []
                for result in pool.map(self.fetch, level):
                    yield from self._emit(result, depth, next_level, yielded)
                level, depth = next_level, depth + 1

    def _emit(self, result: _Fetched | Skipped | None, depth: int, queue: list[str],
              yielded: set[str]) -> Iterator[Parsed | Skipped]:
        if result is None:
            self._ignore("redirects to pages already crawled")
            return
        if isinstance(result, Skipped):
            yield result
            return
        self.seen.add(page_key(result.url))
        self.queued.add(page_key(result.url))
        self._queue_links(result, depth, queue)
        if page_key(result.url) in yielded:
            return  # a second address of a page already read (a redirect to it)
        yielded.add(page_key(result.url))
        content = hashlib.sha256(repr((result.title, [astuple(b) for b in result.blocks]))
                                 .encode()).hexdigest()
        if content in self.contents:
            self._ignore("pages the same as another page (another address of it)")
            return
        self.contents.add(content)
        if result.noindex:
            yield Skipped(result.url, "robots meta tag: noindex")
        else:
            yield Parsed(result.url, result.title or result.url, result.blocks, "web")


def _http_error(name: str, status: int) -> Skipped:
    """A page that answered an HTTP error: gone for now (5xx, 408, 425, 429), or for good."""
    if status >= 500 or status in TRY_AGAIN:
        return SkippedForNow(name, f"HTTP {status}")
    return Skipped(name, f"HTTP {status}")


def page_address(name: str) -> str:
    """The address of the page a ``Skipped`` entry of the crawl names (``fetch`` adds the page
    that links to it)."""
    return name.split(" (linked from ", 1)[0]


def crawl(start_url: str, *, max_depth: int, max_pages: int, concurrency: int,
          timeout_s: float, progress: Progress | None = None,
          ignored: dict[str, int] | None = None, **options: Any) -> Iterator[Parsed | Skipped]:
    """Crawl a site (see ``Crawler`` for the options); yields its pages in a stable order."""
    crawler = Crawler(start_url, max_depth=max_depth, max_pages=max_pages,
                      concurrency=concurrency, timeout_s=timeout_s,
                      ignored=ignored if ignored is not None else {}, **options)
    return crawler.pages(progress)
