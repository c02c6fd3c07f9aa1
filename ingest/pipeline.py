"""The orchestration: one run for every source, from a loader's documents to the index.

A loader (``ingest.files``, ``ingest.web``) yields ``Parsed`` documents or ``Skipped`` notices;
``run`` splits each document into chunks (``ingest.chunking``) and hands them to LangChain's
indexing API (``index(..., cleanup="full")``) with a record manager (``ingest.records``) whose
namespace is the source (a folder or a start URL). The record manager is what makes ingestion
idempotent:

- a chunk whose content and metadata were indexed before is not embedded again;
- a changed document gets new chunks, and its old ones are deleted at the end of the run;
- a document that is no longer in the source is deleted at the end of the run, and so is one
  the loader skipped for good (a page that answers 404, a corrupt file); one it skipped for
  now (``SkippedForNow``: a timeout, HTTP 503, a file it may not read) keeps its chunks, its
  records refreshed so the cleanup leaves them, until a run reads it or finds it gone;
- a run killed part-way leaves records that the next run either refreshes or deletes, and
  chunk ids are content hashes (Chroma upserts), so the next run converges to a clean one.

Options a caller leaves out (crawl limits, the PDF char margin) come from the settings, and so
do the bounds on what a source may make Hearth read (``ReadLimits``). ``read_source`` is the
reading half alone (loader, parse cache): an API job runs it in a process of its own
(``ingest.worker``) and hands ``run`` the chunks it made (``Chunked``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hearth.access import DEFAULT, valid_name
from hearth.errors import HearthError, Unavailable
from hearth.ingest.cache import ParseCache, parse_cache_dir
from hearth.ingest.chunking import chunker_for
from hearth.ingest.documents import (
    Chunked,
    IngestError,
    Parsed,
    ReadLimits,
    Skipped,
    SkippedForNow,
    Summary,
)
from hearth.ingest.files import Exclusions, load_folder
from hearth.ingest.progress import Progress
from hearth.ingest.records import close_records, record_manager
from hearth.ingest.web import (
    crawl,
    older_namespaces,
    page_address,
    page_key,
    site_namespace,
    start_address,
)

T = TypeVar("T")


class IndexWriteError(Unavailable):
    """Indexing failed part-way: embedding, or writing the index or its records (a full disk,
    a damaged store)."""

    code = "index_write_failed"


if TYPE_CHECKING:
    import httpx
    from langchain_core.documents import Document
    from langchain_core.indexing import RecordManager

    from hearth.config import Settings
    from hearth.services import Services

log = logging.getLogger(__name__)

# Chunks handed to the indexing API at a time: one embedding call (which sorts its texts by
# length to pad less: bigger is a little faster), one step of the progress bar.
INDEX_BATCH = 128
# Records deleted at a time (SQLite bounds the values one statement binds).
RECORDS_BATCH = 1000


def records_namespace(collection: str, source: str) -> str:
    """The record manager's namespace of a source in a collection. The default collection's
    sources keep the bare namespaces they had before collections (so its records need no
    migration); another collection's are ``name|source``, which no folder path or URL starts
    like."""
    return source if collection == DEFAULT else f"{collection}|{source}"


def split_namespace(namespace: str) -> tuple[str, str]:
    """(collection, source) of a record manager's namespace."""
    collection, bar, source = namespace.partition("|")
    if bar and valid_name(collection):
        return collection, source
    return DEFAULT, namespace


def indexed_documents(store: Any, namespace: str,
                      records: RecordManager) -> dict[str, Counter[str]]:
    """Each document of a source indexed now, with the content hashes of its chunks that are
    both in the vector store and recorded, and how many of each: a document is whole in the
    index when its chunks of its current hash all are. A chunk no record names (a run stopped
    part-way) does not count: the run embeds it again, or deletes it (``unrecorded``).

    The records are checked against the store they describe first: a record of a chunk this
    store lacks (the store is another one since: a new ``HEARTH_CHROMA_COLLECTION`` or Chroma
    server, a deleted ``data/chroma``) is forgotten, so the run indexes that chunk again rather
    than skip it as present."""
    found = store.get(where={"root": namespace}, include=["metadatas"])
    stored = dict(zip(found["ids"], found["metadatas"], strict=True))
    recorded = records.list_keys()
    missing = [key for key in recorded if key not in stored]
    if missing:
        log.warning("%s: %d ingestion records name chunks that the vector store does not hold "
                    "(another store since?): they are indexed again", namespace, len(missing))
        for start in range(0, len(missing), RECORDS_BATCH):
            records.delete_keys(missing[start:start + RECORDS_BATCH])
    documents: dict[str, Counter[str]] = {}
    for key in recorded:
        if meta := stored.get(key):
            hashes = documents.setdefault(str(meta["source"]), Counter())
            hashes[str(meta.get("doc_hash", ""))] += 1
    return documents


def is_site(namespace: str) -> bool:
    """Whether the source named ``namespace`` is a website (else a folder)."""
    return "://" in namespace


def stored_namespace(store: Any, namespace: str) -> str:
    """The namespace a site's chunks are stored under: ``namespace``, or the spelling of the
    same start page an older Hearth named the source by (``web.older_namespaces``) while only
    that one is in the store, so a re-run replaces its chunks rather than adding a copy."""
    def stored(root: str) -> bool:
        return bool(store.get(where={"root": root}, limit=1, include=[])["ids"])

    if not is_site(namespace) or stored(namespace):
        return namespace
    return next((older for older in older_namespaces(namespace) if stored(older)), namespace)


def known_names(namespace: str, before: Iterable[str]) -> dict[str, str]:
    """The documents indexed before, by the name ``skipped_sources`` finds them by."""
    web = is_site(namespace)
    return {page_key(source) if web else source: source for source in before}


def skipped_sources(item: Skipped, namespace: str, known: dict[str, str]) -> list[str]:
    """The documents indexed before (``known``, from ``known_names``) that a ``Skipped``
    notice names: a page by its address (or another address of the same page), a file by its
    path under the folder, a folder ("sub/", "./" for the whole) by every file under it."""
    if is_site(namespace):
        return [s for s in [known.get(page_key(page_address(item.name)))] if s]
    if item.name.endswith("/"):
        folder = item.name.rstrip("/")
        under = namespace.rstrip("/") + "/" + ("" if folder == "." else f"{folder}/")
        return [source for name, source in known.items() if name.startswith(under)]
    return [s for s in [known.get(str(Path(namespace) / item.name))] if s]


def keep_records(records: RecordManager, source: str) -> None:
    """Refresh the records of a document's chunks, so this run's full cleanup, which deletes
    what was not confirmed since the run began, leaves them."""
    keys = records.list_keys(group_ids=[source])
    for start in range(0, len(keys), INDEX_BATCH):
        batch = keys[start:start + INDEX_BATCH]
        records.update(batch, group_ids=[source] * len(batch))


def shown_name(source: str, namespace: str) -> str:
    """A folder's document as the summary names what it skips: by its path in the folder (a
    page of a website keeps its address)."""
    folder = namespace.rstrip("/") + "/"
    return source[len(folder):] if not is_site(namespace) and source.startswith(folder) else source


def run(services: Services, namespace: str, items: Iterable[Parsed | Chunked | Skipped], *,
        collection: str = DEFAULT, progress: Progress | None = None,
        summary: Summary | None = None, batch_size: int = INDEX_BATCH) -> Summary:
    """Index everything ``items`` yields as the whole content of source ``namespace`` in
    ``collection`` (documents chunked here, or already), as the index's one writer."""
    services.access.get(collection)  # CollectionNotFound before anything is read
    with services.vectorstore.writing():
        summary = _run(services, namespace, items, collection=collection, progress=progress,
                       summary=summary, batch_size=batch_size)
        if summary.chunks_deleted:  # a document deleted or changed: its old words not kept
            services.vectorstore.scrub()
        return summary


def _run(services: Services, namespace: str, items: Iterable[Parsed | Chunked | Skipped], *,
         collection: str, progress: Progress | None, summary: Summary | None,
         batch_size: int) -> Summary:
    from langchain_core.indexing import index

    progress = progress or Progress()
    started = time.monotonic()
    store = services.vectorstore.writer(collection)
    read_as, namespace = namespace, stored_namespace(store, namespace)
    summary = summary or Summary(source=namespace)
    summary.source = namespace
    chunker = chunker_for(services.settings)
    records = record_manager(services.settings, records_namespace(collection, namespace))
    try:
        before = written(lambda: indexed_documents(store, namespace, records))
    except BaseException:
        close_records(records)
        raise
    known = known_names(namespace, before)
    indexed: set[str] = set()
    kept: set[str] = set()
    # Documents indexed before that could not be read this time, with their notice's place in
    # the summary: their chunks are kept, unless the run reads them after all.
    for_now: dict[str, int] = {}

    def chunks() -> Iterator[Document]:
        yielded = 0
        for item in items:
            progress.document_done(item.name if isinstance(item, Skipped) else item.source)
            summary.seen += 1
            if isinstance(item, Skipped):
                if isinstance(item, SkippedForNow):
                    for source in skipped_sources(item, namespace, known):
                        for_now.setdefault(source, len(summary.skipped))
                summary.skipped.append(item)
                continue
            if item.source in indexed:
                summary.seen -= 1  # the same page reached by two URLs
                continue
            summary.ocr_pages += item.ocr_pages
            summary.skipped_pages += item.skipped_pages
            docs = item.docs if isinstance(item, Chunked) else chunker.split(item, namespace)
            if isinstance(item, Chunked) and read_as != namespace:
                for doc in docs:  # read under the new spelling of the source's name
                    doc.metadata["root"] = namespace
            if not docs:
                summary.skipped.append(Skipped(shown_name(item.source, namespace), "no text"))
                continue
            indexed.add(item.source)
            old = before.get(item.source)
            if old is None:
                summary.added += 1
            elif old == {docs[0].metadata["doc_hash"]: len(docs)}:
                summary.unchanged += 1  # every chunk indexed and recorded: none embedded
            else:
                summary.updated += 1  # changed, or indexed in part by a run stopped part-way
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
            where = "" if collection == DEFAULT else f" --collection {collection}"
            raise IngestError(
                f"found nothing to index in {namespace}; the {len(before)} documents indexed "
                f"from it are kept (remove them with `hearth sources remove {namespace}{where}`)")
        # Run once all is read (index() cleans up after the last chunk), so a document read
        # after all is not kept twice.
        said: set[int] = set()
        for source, place in for_now.items():
            if source in indexed:
                continue
            keep_records(records, source)
            kept.add(source)
            if place in said:  # a folder's notice, for each of its documents
                continue
            said.add(place)
            item = summary.skipped[place]
            summary.skipped[place] = SkippedForNow(
                item.name, f"{item.reason} (indexed before: kept as it was until it can be read)")

    try:
        result = written(lambda: index(chunks(), records, store, cleanup="full",
                                       source_id_key="source", key_encoder="sha256",
                                       batch_size=batch_size))
        # The records delete what they name; a run killed (or failed) part-way had added
        # chunks that none names (a document deleted or changed since), which stayed.
        stray = written(lambda: unrecorded(store, namespace, records))
    finally:
        summary.seconds = time.monotonic() - started
        close_records(records)
        services.vectorstore.changed()  # another process serving this index reopens it
    progress.indexed_to(summary.chunks)
    progress.finish()
    summary.deleted = len(set(before) - indexed - kept)
    summary.kept = len(kept)
    summary.chunks_added = result["num_added"] + result["num_updated"]
    summary.chunks_unchanged = result["num_skipped"]
    summary.chunks_deleted = result["num_deleted"] + stray
    log.info("ingested %s: %s", namespace, json.dumps(summary.to_dict())[:2000])
    return summary


def remove(services: Services, namespace: str, collection: str = DEFAULT) -> int:
    """Delete every chunk of a source, through its record manager; returns chunks deleted."""
    from langchain_core.indexing import index

    records = record_manager(services.settings, records_namespace(collection, namespace))
    try:
        with services.vectorstore.writing():
            store = services.vectorstore.writer(collection)
            result = written(lambda: index([], records, store, cleanup="full",
                                           source_id_key="source", key_encoder="sha256"))
            stray = written(lambda: unrecorded(store, namespace, records))  # a killed run's
    finally:
        close_records(records)
        services.vectorstore.changed()
    return int(result["num_deleted"]) + stray


def unrecorded(store: Any, namespace: str, records: RecordManager) -> int:
    """Delete the chunks of source ``namespace`` that no record of it names, once the records'
    cleanup is done (chunk ids are the records' keys). Returns how many."""
    named = set(records.list_keys())
    ids = [i for i in store.get(where={"root": namespace}, include=[])["ids"] if i not in named]
    if ids:
        log.warning("%s: %d chunks that no ingestion record named (a run stopped part-way) "
                    "deleted", namespace, len(ids))
        store.delete(ids=ids)
    return len(ids)


def written(write: Callable[[], T]) -> T:
    """``write`` to the index and its records, its failure said in a line (a full disk, a
    damaged store): raised as it came, the database's error printed every value it bound."""
    try:
        return write()
    except HearthError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise IndexWriteError(f"indexing failed ({type(exc).__name__}: {first}); run the same "
                              "ingest again once the cause is fixed (a full disk, memory?): it "
                              "goes on from what was written") from exc


def files_namespace(root: Path) -> str:
    return str(Path(root).expanduser().resolve())


@dataclass
class Reading:
    """A source being read: its namespace, its documents as the loader yields them, and its
    parse cache (to prune once the run has succeeded)."""

    namespace: str
    items: Iterator[Parsed | Skipped]
    cache: ParseCache


def read_files(settings: Settings, root: Path, *, progress: Progress, ignored: dict[str, int],
               pdf_char_margin: float | None = None, exclude: Sequence[str] = ()) -> Reading:
    """A folder's documents, read within the settings' bounds, less the files and folders the
    ``exclude`` patterns match (``files.Exclusions``); IngestError if it is not there or a
    pattern is not one."""
    exclusions = Exclusions(exclude)
    namespace = files_namespace(root)
    if not Path(namespace).is_dir():
        raise IngestError(f"no folder at {namespace}")
    cache = ParseCache(parse_cache_dir(settings, namespace))
    items = load_folder(
        Path(namespace), progress=progress, ignored=ignored, cache=cache,
        pdf_char_margin=pdf_char_margin or settings.pdf_char_margin,
        limits=ReadLimits.of(settings), exclude=exclusions)
    return Reading(namespace, items, cache)


def read_web(settings: Settings, url: str, *, progress: Progress, ignored: dict[str, int],
             max_depth: int | None = None, max_pages: int | None = None,
             concurrency: int | None = None, timeout_s: float | None = None,
             include: Sequence[str] = (), exclude: Sequence[str] = (), use_sitemap: bool = True,
             transport: httpx.BaseTransport | None = None) -> Reading:
    """A site's pages, crawled from ``url`` within the settings' bounds (limits left out are
    the settings', ``HEARTH_CRAWL_*``). The crawl starts at ``url`` as given; the source is
    named by ``site_namespace`` (``/docs/index.html`` and ``/docs/`` are one)."""
    namespace = site_namespace(url)
    cache = ParseCache(parse_cache_dir(settings, namespace))
    items = crawl(
        start_address(url), progress=progress, ignored=ignored, cache=cache,
        max_depth=settings.crawl_max_depth if max_depth is None else max_depth,
        max_pages=max_pages or settings.crawl_max_pages,
        concurrency=concurrency or settings.crawl_concurrency,
        timeout_s=timeout_s or settings.crawl_timeout_s,
        include=include, exclude=exclude, use_sitemap=use_sitemap, transport=transport,
        limits=ReadLimits.of(settings))
    return Reading(namespace, items, cache)


def _ingest(services: Services, reading: Reading, progress: Progress, summary: Summary,
            batch_size: int, collection: str) -> Summary:
    try:
        summary = run(services, reading.namespace, reading.items, collection=collection,
                      progress=progress, summary=summary, batch_size=batch_size)
        reading.cache.prune()
        return summary
    finally:
        progress.finish()


def ingest_files(services: Services, root: Path, *, collection: str = DEFAULT,
                 progress: Progress | None = None, batch_size: int = INDEX_BATCH,
                 pdf_char_margin: float | None = None, exclude: Sequence[str] = ()) -> Summary:
    """Ingest a folder, recursively, into ``collection``: PDF, Markdown, text, HTML and Word
    files, less those the ``exclude`` patterns match (``files.Exclusions``).

    Re-running it embeds only what changed and removes what was deleted from the folder, or
    is now excluded. ``pdf_char_margin`` left out: ``HEARTH_PDF_CHAR_MARGIN``.
    """
    services.access.get(collection)
    progress = progress or Progress()
    summary = Summary(source=files_namespace(root))
    reading = read_files(services.settings, root, progress=progress, ignored=summary.ignored,
                         pdf_char_margin=pdf_char_margin, exclude=exclude)
    return _ingest(services, reading, progress, summary, batch_size, collection)


def ingest_web(services: Services, url: str, *, collection: str = DEFAULT,
               progress: Progress | None = None, batch_size: int = INDEX_BATCH,
               **options: Any) -> Summary:
    """Crawl a website from ``url`` and ingest its pages into ``collection`` (see
    ``ingest.web.Crawler``, and ``read_web`` for the options).

    Limits left out come from the settings (``HEARTH_CRAWL_*``); ``transport`` is the one
    every request goes through (``ingest.safety.GuardedTransport`` keeps a crawl out of
    private addresses).
    """
    services.access.get(collection)
    progress = progress or Progress()
    summary = Summary(source=site_namespace(url))
    reading = read_web(services.settings, url, progress=progress, ignored=summary.ignored,
                       **options)
    return _ingest(services, reading, progress, summary, batch_size, collection)
