"""One pipeline for every source: split into chunks, index incrementally, summarise.

Loaders (``ingest.web``, ``ingest.files``) yield ``Parsed`` documents made of ``Block``s (text
with its page, section, and whether it is a table) or ``Skipped`` notices. The pipeline splits
each document into chunks that fit the embedding model's window and hands them to LangChain's
indexing API (``index(..., cleanup="full")``) with a record manager whose namespace is the
source (a folder or a start URL). The record manager is what makes ingestion idempotent:

- a chunk whose content and metadata were indexed before is not embedded again;
- a changed document gets new chunks, and its old ones are deleted at the end of the run;
- a document that is no longer in the source is deleted at the end of the run;
- a run killed part-way leaves records that the next run either refreshes or deletes, and
  chunk ids are content hashes (Chroma upserts), so the next run converges to a clean one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.indexing import RecordManager

log = logging.getLogger(__name__)

# all-MiniLM-L6-v2 reads 256 word pieces, [CLS] and [SEP] included, and drops the rest.
CHUNK_TOKENS = 256
CHUNK_OVERLAP_TOKENS = 32
# The heading line (title and section) put before each chunk's text, at most this long.
HEADING_TOKENS = 40
# Chunks handed to the indexing API at a time: one embedding call (which sorts its texts by
# length to pad less: bigger is a little faster), one step of the progress bar.
INDEX_BATCH = 128
# Bump when the way documents become chunks changes, so re-ingesting reports "updated".
CHUNKING_VERSION = 1
# The MongoDB collection that holds ingestion records (compose profile).
RECORDS_COLLECTION = "ingest_records"
# One MongoDB operation of an ingest (a bulk upsert of a batch's records) may take this long.
INGEST_DB_TIMEOUT_S = 60.0


class IngestError(Exception):
    """Ingestion cannot run at all (a folder that is not there, a site that cannot be
    reached); nothing in the index was changed."""


# ---------------------------------------------------------------------------------------------
# What loaders produce


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


# ---------------------------------------------------------------------------------------------
# Progress and summary


class Progress:
    """Counts of the work done so far: read by the API's job status, drawn by the CLI."""

    def __init__(self) -> None:
        self.unit = "documents"
        self.documents = 0
        self.documents_total: int | None = None
        self.chunks = 0
        self.indexed = 0
        self.phase = "starting"

    def begin(self, unit: str, total: int | None = None) -> None:
        self.unit, self.documents_total, self.phase = unit, total, "reading"

    def document_done(self, name: str) -> None:
        self.documents += 1

    def chunked(self, n: int) -> None:
        self.chunks += n

    def indexed_to(self, n: int) -> None:
        self.indexed = n

    def finish(self) -> None:
        self.phase = "done"

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "unit": self.unit, "documents": self.documents,
            "documents_total": self.documents_total, "chunks": self.chunks,
            "chunks_indexed": self.indexed,
        }


class BarProgress(Progress):
    """Progress bars on the terminal (stderr): documents read, chunks indexed."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bars = RichProgress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[current]}", style="dim"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._documents = self._bars.add_task("documents", total=None, current="")
        self._chunks = self._bars.add_task("chunks indexed", total=None, current="")
        self._bars.start()

    def begin(self, unit: str, total: int | None = None) -> None:
        super().begin(unit, total)
        self._bars.update(self._documents, description=unit, total=total)

    def document_done(self, name: str) -> None:
        super().document_done(name)
        self._bars.update(self._documents, completed=self.documents, current=_short(name))

    def chunked(self, n: int) -> None:
        super().chunked(n)
        self._bars.update(self._chunks, total=self.chunks)

    def indexed_to(self, n: int) -> None:
        super().indexed_to(n)
        self._bars.update(self._chunks, completed=n)

    def finish(self) -> None:
        if self.phase == "done":
            return
        super().finish()
        self._bars.update(self._documents, total=self.documents, completed=self.documents)
        self._bars.update(self._chunks, total=self.chunks, completed=self.indexed)
        self._bars.stop()


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


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


class ParseCache:
    """Parsed documents by a hash of their bytes (and the parser's options), so re-ingesting
    an unchanged source does not parse it again: PDFs are the slow part of a folder, HTML
    parsing the slow part of a re-crawl. Only a cache: deleting it costs time, never
    correctness. ``prune`` after a successful run forgets what the run did not use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.used: set[str] = set()

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder / f"{key}.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        self.used.add(key)
        return data if isinstance(data, dict) else None

    def put(self, key: str, data: dict[str, Any]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{key}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(data), "utf-8")
            tmp.replace(self.folder / f"{key}.json")
            self.used.add(key)
        except OSError as exc:
            log.warning("cannot write the parse cache in %s: %s", self.folder, exc)

    def prune(self) -> None:
        if self.folder.is_dir():
            for entry in self.folder.iterdir():
                if entry.suffix == ".json" and entry.stem not in self.used:
                    entry.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Chunking


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tokenizer.no_truncation()  # the file truncates at 128: we need true lengths
    tokenizer.no_padding()
    return tokenizer


def _minilm_path() -> str:
    from embeddings import minilm_path

    return minilm_path()


class Chunker:
    """Splits parsed documents into chunks of at most ``max_tokens`` word pieces of the
    embedding model's own tokenizer, special tokens included, so no text is ever dropped."""

    def __init__(self, max_tokens: int = CHUNK_TOKENS, overlap: int = CHUNK_OVERLAP_TOKENS,
                 tokenizer_path: str | None = None) -> None:
        if max_tokens < 64:
            raise ValueError("chunks must allow at least 64 tokens")
        self.max_tokens = max_tokens
        self.overlap = min(overlap, max_tokens // 4)
        self._tok = _tokenizer(tokenizer_path or _minilm_path())
        self._splitters: dict[int, Any] = {}

    def count(self, text: str) -> int:
        """Word pieces the embedding model reads for ``text``, [CLS] and [SEP] included."""
        return len(self._tok.encode(text, add_special_tokens=True).ids)

    def _count_plain(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def _splitter(self, budget: int) -> Any:
        if budget not in self._splitters:
            from langchain_text_splitters import RecursiveCharacterTextSplitter

            self._splitters[budget] = RecursiveCharacterTextSplitter(
                chunk_size=budget, chunk_overlap=min(self.overlap, budget // 4),
                length_function=self._count_plain, separators=["\n\n", "\n", ". ", " ", ""],
                keep_separator="end", strip_whitespace=True,
            )
        return self._splitters[budget]

    def _truncate(self, text: str, tokens: int) -> str:
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= tokens:
            return text
        return text[: enc.offsets[tokens - 1][1]].rstrip() + "…"

    def _hard_split(self, text: str, budget: int) -> list[str]:
        """Cut at word-piece boundaries: the last resort for text the splitter left too long."""
        enc = self._tok.encode(text, add_special_tokens=False)
        offsets, parts = enc.offsets, []
        for start in range(0, len(offsets), budget):
            piece = offsets[start:start + budget]
            parts.append(text[piece[0][0]:piece[-1][1]])
        return [p for p in parts if p.strip()]

    def _fit(self, heading: str, pieces: Iterable[str], budget: int) -> Iterator[str]:
        for piece in pieces:
            text = heading + piece
            if self.count(text) <= self.max_tokens:
                yield text
                continue
            for part in self._hard_split(piece, max(16, budget - 8)):
                yield heading + part

    def _table_pieces(self, text: str, budget: int) -> list[str]:
        """Whole rows only, and the header row again at the top of every piece."""
        rows = [r for r in text.split("\n") if r.strip()]
        if not rows:
            return []
        header, body = rows[0], rows[1:]
        pieces: list[str] = []
        current: list[str] = [header]
        used = self._count_plain(header)
        for row in body:
            cost = self._count_plain(row) + 1
            if len(current) > 1 and used + cost > budget:
                pieces.append("\n".join(current))
                current, used = [header], self._count_plain(header)
            current.append(row)
            used += cost
        pieces.append("\n".join(current))
        return pieces

    def split(self, doc: Parsed, root: str) -> list[Document]:
        from langchain_core.documents import Document

        blocks = merge_blocks(doc.blocks)
        doc_hash = _sha256(json.dumps(
            [CHUNKING_VERSION, self.max_tokens, self.overlap, doc.title, doc.kind,
             [[b.text, b.page, b.section, b.table] for b in blocks]]))
        chunks: list[Document] = []
        for block in blocks:
            heading = doc.title.strip()
            if block.section and block.section.strip() not in heading:
                heading = f"{heading} › {block.section.strip()}" if heading else block.section
            heading = self._truncate(heading, HEADING_TOKENS) + "\n" if heading else ""
            budget = self.max_tokens - 2 - self._count_plain(heading)
            pieces = (self._table_pieces(block.text, budget) if block.table
                      else self._splitter(budget).split_text(block.text))
            for text in self._fit(heading, pieces, budget):
                chunks.append(Document(page_content=text, metadata={
                    "source": doc.source, "root": root, "title": doc.title,
                    "page": block.page, "section": block.section, "table": block.table,
                    "kind": doc.kind, "hash": _sha256(text), "doc_hash": doc_hash,
                }))
        return chunks


def merge_blocks(blocks: Iterable[Block]) -> list[Block]:
    """Join neighbouring text blocks of the same page and section; tables stay apart."""
    merged: list[Block] = []
    for block in blocks:
        text = block.text.strip()
        if not text:
            continue
        last = merged[-1] if merged else None
        if (last and not block.table and not last.table and last.page == block.page
                and last.section == block.section):
            last.text += "\n\n" + text
        else:
            merged.append(Block(text, block.page, block.section, block.table))
    return merged


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunker_for(settings: Any) -> Chunker:
    return Chunker(
        max_tokens=getattr(settings, "chunk_tokens", CHUNK_TOKENS),
        overlap=getattr(settings, "chunk_overlap_tokens", CHUNK_OVERLAP_TOKENS),
    )


# ---------------------------------------------------------------------------------------------
# Record manager: which chunks of which document are in the vector store, and since when


def record_manager(settings: Any, namespace: str) -> RecordManager:
    """SQLite under the data folder (embedded profile), or MongoDB when a URI is set."""
    if getattr(settings, "mongodb_uri", None):
        manager = _mongo_record_manager(settings, namespace)
    else:
        from langchain_classic.indexes import SQLRecordManager

        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        manager = SQLRecordManager(namespace, db_url=settings.record_manager_url)
    manager.create_schema()
    return manager


def _mongo_record_manager(settings: Any, namespace: str) -> RecordManager:
    from langchain_mongodb.indexes import MongoDBRecordManager

    from history import mongo_client

    class NamespacedMongoRecordManager(MongoDBRecordManager):
        """One collection for all sources; each source is a namespace within it (the stock
        class takes the collection's name as its only namespace)."""

        def __init__(self, collection: Any, namespace: str) -> None:
            super().__init__(collection)
            self.namespace = namespace

        def create_schema(self) -> None:
            self._collection.create_index([("namespace", 1), ("key", 1)], unique=True)
            self._collection.create_index([("namespace", 1), ("group_id", 1)])
            self._collection.create_index([("namespace", 1), ("updated_at", 1)])

    client: Any = mongo_client(settings.mongodb_uri, getattr(settings, "backend_timeout_s", 5.0),
                               op_timeout_s=INGEST_DB_TIMEOUT_S)
    return NamespacedMongoRecordManager(client[settings.mongodb_db][RECORDS_COLLECTION], namespace)


def close_records(manager: Any) -> None:
    """Release the record manager's database connections (a MongoDB client, a SQL pool)."""
    if hasattr(manager, "close"):
        manager.close()
    elif getattr(manager, "engine", None) is not None:
        manager.engine.dispose()


# ---------------------------------------------------------------------------------------------
# The run


def indexed_documents(store: Any, namespace: str) -> dict[str, str]:
    """Each document of a source now in the vector store, with the hash of its content."""
    found = store.get(where={"root": namespace}, include=["metadatas"])
    return {str(m["source"]): str(m.get("doc_hash", "")) for m in found["metadatas"] if m}


def run(services: Any, namespace: str, items: Iterable[Parsed | Skipped], *,
        progress: Progress | None = None, summary: Summary | None = None,
        batch_size: int = INDEX_BATCH) -> Summary:
    """Index everything ``items`` yields as the whole content of source ``namespace``."""
    from langchain_core.indexing import index

    progress = progress or Progress()
    summary = summary or Summary(source=namespace)
    started = time.monotonic()
    store = services.vectorstore.langchain
    records = record_manager(services.settings, namespace)
    chunker = chunker_for(services.settings)
    before = indexed_documents(store, namespace)
    indexed: set[str] = set()

    def chunks() -> Iterator[Document]:
        yielded = 0
        for item in items:
            progress.document_done(item.name if isinstance(item, Skipped) else item.source)
            summary.seen += 1
            if isinstance(item, Skipped):
                summary.skipped.append(item)
                continue
            if item.source in indexed:
                summary.seen -= 1  # the same page reached by two URLs
                continue
            docs = chunker.split(item, namespace)
            if not docs:
                summary.skipped.append(Skipped(item.source, "no text"))
                continue
            indexed.add(item.source)
            old = before.get(item.source)
            if old is None:
                summary.added += 1
            elif old != docs[0].metadata["doc_hash"]:
                summary.updated += 1
            else:
                summary.unchanged += 1
            summary.chunks += len(docs)
            progress.chunked(len(docs))
            for doc in docs:
                if yielded and yielded % batch_size == 0:
                    progress.indexed_to(yielded)  # index() asks for more: a batch is stored
                yielded += 1
                yield doc
        if not indexed and before:
            # An empty folder or a site that yields nothing is more likely unmounted or down
            # than emptied on purpose: keep what is indexed, and say how to remove it.
            raise IngestError(
                f"found nothing to index in {namespace}; the {len(before)} documents indexed "
                f"from it are kept (remove them with `hearth sources remove {namespace}`)")

    try:
        result = index(chunks(), records, store, cleanup="full", source_id_key="source",
                       key_encoder="sha256", batch_size=batch_size)
    finally:
        summary.seconds = time.monotonic() - started
        close_records(records)
    progress.indexed_to(summary.chunks)
    progress.finish()
    summary.deleted = len(set(before) - indexed)
    summary.chunks_added = result["num_added"] + result["num_updated"]
    summary.chunks_unchanged = result["num_skipped"]
    summary.chunks_deleted = result["num_deleted"]
    log.info("ingested %s: %s", namespace, json.dumps(summary.to_dict())[:2000])
    return summary


def remove(services: Any, namespace: str) -> int:
    """Delete every chunk of a source, through its record manager; returns chunks deleted."""
    from langchain_core.indexing import index

    records = record_manager(services.settings, namespace)
    try:
        result = index([], records, services.vectorstore.langchain, cleanup="full",
                       source_id_key="source", key_encoder="sha256")
    finally:
        close_records(records)
    return int(result["num_deleted"])


def _progress(progress: bool | Progress) -> Progress:
    if isinstance(progress, Progress):
        return progress
    return BarProgress() if progress else Progress()


def files_namespace(root: Path) -> str:
    return str(Path(root).expanduser().resolve())


def ingest_files(services: Any, root: Path, *, progress: bool | Progress = False,
                 batch_size: int = INDEX_BATCH, **options: Any) -> Summary:
    """Ingest a folder, recursively: PDF, Markdown, text, HTML and Word files.

    Re-running it embeds only what changed and removes what was deleted from the folder.
    """
    from ingest.files import load_folder

    namespace = files_namespace(root)
    if not Path(namespace).is_dir():
        raise IngestError(f"no folder at {namespace}")
    bar = _progress(progress)
    summary = Summary(source=namespace)
    cache = ParseCache(parse_cache_dir(services.settings, namespace))
    try:
        files = load_folder(Path(namespace), progress=bar, ignored=summary.ignored, cache=cache,
                            **options)
        summary = run(services, namespace, files, progress=bar, summary=summary,
                      batch_size=batch_size)
        cache.prune()
        return summary
    finally:
        bar.finish()


def parse_cache_dir(settings: Any, namespace: str) -> Path:
    return Path(settings.data_dir) / "ingest-cache" / _sha256(namespace)[:24]


def ingest_web(services: Any, url: str, *, progress: bool | Progress = False,
               batch_size: int = INDEX_BATCH, **options: Any) -> Summary:
    """Crawl a website from ``url`` and ingest its pages (see ``ingest.web.crawl``)."""
    from ingest.web import crawl, site_namespace

    namespace = site_namespace(url)
    bar = _progress(progress)
    summary = Summary(source=namespace)
    cache = ParseCache(parse_cache_dir(services.settings, namespace))
    try:
        pages = crawl(namespace, progress=bar, ignored=summary.ignored, cache=cache, **options)
        summary = run(services, namespace, pages, progress=bar, summary=summary,
                      batch_size=batch_size)
        cache.prune()
        return summary
    finally:
        bar.finish()

