"""What loaders produce and what an ingestion reports: the types every ingest module shares.

Loaders (``ingest.files``, ``ingest.web``) yield ``Parsed`` documents made of ``Block``s (text
with its page, section, and whether it is a table) or ``Skipped`` notices; the pipeline turns
them into chunks and reports a ``Summary``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hearth.errors import HearthError


class IngestError(HearthError):
    """Ingestion cannot run at all (a folder that is not there, a site that cannot be
    reached); nothing in the index was changed."""

    code = "ingest_failed"
    status = 400


@dataclass
class Block:
    """A run of text from one page and section; a table's text is one row per line."""

    text: str
    page: int = 0  # 1-based page of a paged document (PDF); 0 when the source has no pages
    section: str = ""
    table: bool = False


@dataclass
class Parsed:
    source: str  # a file's absolute path or a page's URL: what answers cite
    title: str
    blocks: list[Block]
    kind: str  # "web", "pdf", "markdown", "text", "html", "docx"


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class Summary:
    """What one ingestion did. Documents are pages or files; ``seen`` counts them all."""

    source: str
    seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    # What was passed over without being a document, by kind: links a crawl did not follow
    # (off-site, beyond the depth limit, ...), files of types Hearth does not read.
    ignored: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    chunks_added: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        return data

    def __str__(self) -> str:
        lines = [
            f"Ingested {self.source} in {self.seconds:.1f} s",
            f"  documents: {self.seen} seen, {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, {len(self.skipped)} skipped",
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
        if self.ignored:
            counts = ", ".join(f"{n} {what}" for what, n in self.ignored.items())
            lines.append(f"  ignored: {counts}")
        return "\n".join(lines)
