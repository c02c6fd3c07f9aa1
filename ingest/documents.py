"""What loaders produce and what an ingestion reports: the types every ingest module shares.

Loaders (``ingest.files``, ``ingest.web``) yield ``Parsed`` documents made of ``Block``s (text
with its page, section, and whether it is a table) or ``Skipped`` notices; the pipeline turns
them into chunks and reports a ``Summary``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hearth.config import Settings
from hearth.errors import HearthError

if TYPE_CHECKING:
    from langchain_core.documents import Document


class IngestError(HearthError):
    """Ingestion cannot run at all (a folder that is not there, a site that cannot be
    reached); nothing in the index was changed."""

    code = "ingest_failed"
    status = 400


@dataclass(frozen=True)
class ReadLimits:
    """How much one ingestion may read: a file, what a .docx or a sitemap unpacks to, a PDF's
    pages, a web page decoded, the pages of a PDF read by OCR and how long each may take. No
    defaults here: they are the settings' (``of``)."""

    file_bytes: int
    unpacked_bytes: int
    pdf_pages: int
    page_bytes: int
    ocr_pages: int
    ocr_page_s: float

    @classmethod
    def of(cls, settings: Settings | None = None) -> ReadLimits:
        """The bounds of ``settings``; config.py's defaults when none are given."""
        if settings is None:
            fields = Settings.model_fields
            values = {name: fields[name].default for name in _LIMIT_SETTINGS.values()}
        else:
            values = {name: getattr(settings, name) for name in _LIMIT_SETTINGS.values()}
        return cls(**{mine: values[theirs] for mine, theirs in _LIMIT_SETTINGS.items()})


_LIMIT_SETTINGS = {"file_bytes": "ingest_max_file_bytes",
                   "unpacked_bytes": "ingest_max_unpacked_bytes",
                   "pdf_pages": "ingest_max_pdf_pages", "page_bytes": "crawl_max_page_bytes",
                   "ocr_pages": "ingest_ocr_max_pages", "ocr_page_s": "ingest_ocr_timeout_s"}


@dataclass
class Block:
    """A run of text from one page and section; a table's text is one row per line."""

    text: str
    page: int = 0  # 1-based page of a paged document (PDF); 0 when the source has no pages
    section: str = ""
    table: bool = False
    # The headings above the text, outermost first, joined by " › " ("datetime › timedelta
    # Objects › Examples"); empty where the source has no nesting to tell (PDF, plain text).
    headings: str = ""


@dataclass
class SkippedPages:
    """Pages of an indexed document that are not in the index, and why (a scanned page that
    OCR could not read)."""

    name: str
    pages: list[int]
    reason: str


@dataclass
class Parsed:
    source: str  # a file's absolute path or a page's URL: what answers cite
    title: str
    blocks: list[Block]
    kind: str  # "web", "pdf", "markdown", "text", "html", "docx"
    ocr_pages: int = 0  # pages whose text OCR read (a scanned PDF's)
    skipped_pages: list[SkippedPages] = field(default_factory=list)
    # False when a page was passed over for a reason that may not hold next time (OCR not
    # installed, a page that took too long): the parse cache does not keep it.
    lasting: bool = True


@dataclass
class Skipped:
    name: str
    reason: str


class SkippedForNow(Skipped):
    """Skipped for a reason that may not hold next time (OCR not installed, a page that took
    too long, a web page that timed out or answered HTTP 503, a file Hearth may not read now):
    the parse cache does not keep it, so the next run tries again, and a document indexed
    before keeps its chunks meanwhile (``pipeline.run``) rather than being deleted."""


@dataclass
class Chunked:
    """A document already split into chunks (by an API job's reading process)."""

    source: str
    docs: list[Document]
    ocr_pages: int = 0
    skipped_pages: list[SkippedPages] = field(default_factory=list)


@dataclass
class Summary:
    """What one ingestion did. Documents are pages or files; ``seen`` counts them all.
    ``ocr_pages`` counts the pages of the documents seen whose text OCR read (this run or,
    for an unchanged file, an earlier one); ``skipped_pages`` the pages of indexed documents
    left out, with the reason."""

    source: str
    seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    # Documents indexed before, skipped for now (``SkippedForNow``): their chunks are kept.
    kept: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    # What was passed over without being a document, by kind: links a crawl did not follow
    # (off-site, beyond the depth limit, ...), files of types Hearth does not read.
    ignored: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    chunks_added: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    ocr_pages: int = 0
    skipped_pages: list[SkippedPages] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        return data

    def __str__(self) -> str:
        lines = [
            f"Ingested {self.source} in {self.seconds:.1f} s",
            f"  documents: {self.seen} seen, {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, {len(self.skipped)} skipped"
            + (f" ({self.kept} of them kept as indexed before)" if self.kept else ""),
            f"  chunks:    {self.chunks} in the source, {self.chunks_added} embedded, "
            f"{self.chunks_unchanged} unchanged, {self.chunks_deleted} deleted",
        ]
        if self.skipped:
            lines.append("  skipped:")
            by_reason: dict[str, list[str]] = {}
            for item in self.skipped:
                by_reason.setdefault(item.reason, []).append(item.name)
            for reason, names in by_reason.items():
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if names[5:] else "")
                lines.append(f"    {reason}: {shown}")
        if self.ocr_pages or self.skipped_pages:
            skipped = sum(len(item.pages) for item in self.skipped_pages)
            lines.append(f"  pages:     {self.ocr_pages} read by OCR, {skipped} skipped")
        if self.skipped_pages:
            lines.append("  pages skipped:")
            pages_by_reason: dict[str, list[str]] = {}
            for part in self.skipped_pages:
                pages_by_reason.setdefault(part.reason, []).append(
                    f"{part.name} {page_list(part.pages)}")
            for reason, names in pages_by_reason.items():
                shown = "; ".join(names[:5]) + (f" and {len(names) - 5} more" if names[5:] else "")
                lines.append(f"    {reason}: {shown}")
        if self.ignored:
            counts = ", ".join(f"{n} {what}" for what, n in self.ignored.items())
            lines.append(f"  ignored: {counts}")
        return "\n".join(lines)


def page_list(pages: list[int]) -> str:
    """Pages as a reader writes them: "p. 3", "pp. 2, 5-9"."""
    runs: list[str] = []
    ordered = sorted(set(pages))
    start = 0
    for i, page in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != page + 1:
            first = ordered[start]
            runs.append(str(page) if first == page else f"{first}-{page}")
            start = i + 1
    return ("p. " if len(ordered) == 1 else "pp. ") + ", ".join(runs)
