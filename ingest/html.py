"""The main text of an HTML page, in sections, with its tables kept whole; and its links.

Used for crawled pages and for ``.html`` files. Navigation, headers, footers, sidebars and
scripts are dropped; the page's main element (``<main>``, ``role="main"``, ``<article>``) is
preferred when it has one. Each heading starts a new section; each table becomes one block
with one row per line (cells joined by `` | ``), its header row first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from hearth.ingest.documents import Block

HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
HEADING_SEPARATOR = " › "
# Elements whose end is a line break in the text.
BLOCK_TAGS = {
    "address", "article", "blockquote", "br", "dd", "details", "div", "dl", "dt", "figcaption",
    "figure", "hr", "li", "main", "ol", "p", "section", "summary", "ul", "header", "caption",
}
# Never text: code that runs, form controls, media, and the page's frame. (Not <form>
# itself: some sites, ASP.NET ones among them, wrap the whole page in one.)
DROP_TAGS = [
    "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
    "button", "select", "input", "textarea", "label", "nav", "aside", "footer", "head",
]
DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu",
              "menubar", "toolbar", "dialog", "alert"}
# Class or id words that mark boilerplate in common site themes (Sphinx, Bootstrap, WordPress).
BOILERPLATE = re.compile(
    r"^(nav|navbar|navigation|menu|sidebar|sphinxsidebar|related|breadcrumbs?|footer|"
    r"headerlink|skip-link|skiplink|cookie-banner|cookies?|masthead|pagination|"
    r"mobile-nav|site-header|site-footer|toc-drawer|edit-link|share|social)$",
    re.IGNORECASE,
)
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_WHITESPACE = re.compile(r"\s+")
_BLANKS = re.compile(r"\n\s*\n+")


@dataclass
class HtmlPage:
    title: str
    blocks: list[Block]
    links: list[str] = field(default_factory=list)
    noindex: bool = False
    nofollow: bool = False


def parse_html(markup: str | bytes, url: str = "") -> HtmlPage:
    from bs4 import BeautifulSoup

    soup: Any = BeautifulSoup(markup, "lxml")
    robots = " ".join(
        str(m.get("content", "")).lower()
        for m in soup.find_all("meta", attrs={"name": re.compile("^robots$", re.I)})
    )
    base = soup.find("base", href=True)
    base_url = (_joined(url, str(base["href"])) if base else None) or url
    # A link that is not an address (a bracket left open) is left out, not let fail the page.
    links = [link for a in soup.find_all("a", href=True)
             if (link := _joined(base_url, str(a["href"]).strip())) is not None]
    title = _title(soup)

    drop = set(DROP_TAGS)
    for tag in soup.find_all(lambda t: t.name in drop or _is_boilerplate(t)):
        if not tag.decomposed:  # not inside something already dropped
            tag.decompose()
    main = (soup.find("main") or soup.find(attrs={"role": "main"}) or soup.find("article")
            or soup.body or soup)
    if main.name in ("body", "[document]"):
        # No main element: a page-level <header> is the site's banner, not the page's.
        for tag in main.find_all("header"):
            tag.decompose()

    walker = _Walker()
    walker.walk(main)
    walker.flush()
    return HtmlPage(title=title, blocks=walker.blocks, links=links,
                    noindex="noindex" in robots or "none" in robots,
                    nofollow="nofollow" in robots or "none" in robots)



def _joined(base: str, href: str) -> str | None:
    try:
        return urljoin(base, href)
    except ValueError:
        return None

def text_of(tag: Any) -> str:
    """A tag's text on one line, spaced as the page spaces it."""
    return _WHITESPACE.sub(" ", tag.get_text()).strip()


def _title(soup: Any) -> str:
    if soup.title and text_of(soup.title):
        return text_of(soup.title)
    h1 = soup.find("h1")
    return text_of(h1) if h1 else ""


def _is_boilerplate(tag: Any) -> bool:
    if tag.attrs is None or tag.name in ("html", "body", "main"):
        return False
    if str(tag.get("role", "")).lower() in DROP_ROLES:
        return True
    if tag.get("hidden") is not None or str(tag.get("aria-hidden", "")).lower() == "true":
        return True
    words = list(tag.get("class") or []) + str(tag.get("id") or "").split()
    return any(BOILERPLATE.match(w) for w in words)


def table_rows(table: Any) -> list[str]:
    """One line per row, cells joined by `` | ``; the header row (``<th>``s) first."""
    rows: list[list[str]] = []
    header: list[str] | None = None
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a nested table's rows belong to its cell
        cells = [text_of(c) for c in tr.find_all(["th", "td"])
                 if c.find_parent("tr") is tr]
        if not any(cells):
            continue
        if header is None and not rows and (tr.find_parent("thead") or tr.find("th")):
            header = cells
        else:
            rows.append(cells)
    lines = [" | ".join(header)] if header else []
    lines += [" | ".join(r) for r in rows]
    return lines


class _Walker:
    """Collects text in document order, cutting a new block at each heading and table."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.section = ""
        self._open: list[tuple[int, str]] = []  # (level, text) of the headings above
        self._parts: list[str] = []

    @property
    def headings(self) -> str:
        return HEADING_SEPARATOR.join(text for _, text in self._open)

    def heading(self, level: int, text: str) -> None:
        """A heading of ``level`` closes those at its level and below."""
        while self._open and self._open[-1][0] >= level:
            self._open.pop()
        if text:
            self._open.append((level, text))
        self.section = text

    def flush(self) -> None:
        text = "".join(self._parts)
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        text = _BLANKS.sub("\n\n", "\n".join(lines)).strip()
        if text:
            self.blocks.append(Block(text=text, section=self.section, headings=self.headings))
        self._parts = []

    def walk(self, node: Any) -> None:
        from bs4 import Comment, NavigableString, Tag

        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                self._parts.append(str(child).replace("\n", " "))
            elif isinstance(child, Tag):
                self._tag(child)

    def _tag(self, tag: Any) -> None:
        name = tag.name
        if name in HEADINGS:
            self.flush()
            self.heading(int(name[1]), text_of(tag))
            self._parts.append(self.section + "\n")
        elif name == "table":
            self.flush()
            rows = table_rows(tag)
            if rows:
                self.blocks.append(Block(text="\n".join(rows), section=self.section, table=True,
                                         headings=self.headings))
        elif name == "pre":
            self._parts.append("\n\n" + tag.get_text() + "\n\n")
        elif name in BLOCK_TAGS:
            self._parts.append("\n")
            self.walk(tag)
            self._parts.append("\n\n" if name in ("p", "section", "blockquote") else "\n")
        else:
            self.walk(tag)
