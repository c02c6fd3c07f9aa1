"""What has been ingested: one source per folder or start URL, read from the record manager.

The record manager already knows each source (its namespace), each document (group id), each
chunk (key) and when it was last confirmed (``updated_at``): listing sources is one grouped
query over its table (SQLite) or collection (MongoDB), with no bookkeeping of our own.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hearth.access import DEFAULT
from hearth.config import Settings
from hearth.ingest.cache import parse_cache_dir
from hearth.ingest.documents import IngestError
from hearth.ingest.pipeline import files_namespace, is_site, remove, split_namespace
from hearth.ingest.records import (
    INGEST_DB_TIMEOUT_S,
    RECORDS_COLLECTION,
    RecordsUnavailable,
    records_path,
)
from hearth.ingest.uploads import Uploads
from hearth.ingest.web import site_namespace
from hearth.mongo import mongo_client

if TYPE_CHECKING:
    from hearth.services import Services


@dataclass
class Source:
    source: str
    kind: str  # "web" or "files"
    documents: int
    chunks: int
    last_ingest: datetime
    collection: str = DEFAULT

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "collection": self.collection, "kind": self.kind,
                "documents": self.documents, "chunks": self.chunks,
                "last_ingest": self.last_ingest.isoformat()}


def list_sources(settings: Settings, collection: str | None = None) -> list[Source]:
    """Every source, or those of one collection."""
    rows = (_mongo_rows(settings, settings.mongodb_uri) if settings.mongodb_uri
            else _sqlite_rows(records_path(settings)))
    found = []
    for namespace, chunks, docs, last in rows:
        within, source = split_namespace(namespace)
        if collection is None or within == collection:
            found.append(Source(
                source=source, collection=within,
                kind="web" if source.startswith(("http://", "https://")) else "files",
                documents=int(docs), chunks=int(chunks),
                last_ingest=datetime.fromtimestamp(float(last), tz=UTC)))
    return sorted(found, key=lambda s: (s.collection, s.source))


def _sqlite_rows(path: Path) -> list[tuple[str, int, int, float]]:
    if not path.is_file():
        return []  # nothing ingested yet: do not create the file just to list it
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                          "AND name = 'upsertion_record'").fetchone() is None:
                return []
            return [(r[0], r[1], r[2], r[3]) for r in db.execute(
                "SELECT namespace, COUNT(*), COUNT(DISTINCT group_id), MAX(updated_at) "
                "FROM upsertion_record GROUP BY namespace")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise RecordsUnavailable.of(path, exc) from exc


def _mongo_rows(settings: Settings, uri: str) -> list[tuple[str, int, int, float]]:
    import pymongo

    client: Any = mongo_client(uri, settings.backend_timeout_s, op_timeout_s=INGEST_DB_TIMEOUT_S)
    try:
        collection = client[settings.mongodb_db][RECORDS_COLLECTION]
        per_document = collection.aggregate([
            {"$group": {"_id": {"ns": "$namespace", "doc": "$group_id"},
                        "chunks": {"$sum": 1}, "last": {"$max": "$updated_at"}}},
        ])
        totals: dict[str, list[float]] = {}
        for row in per_document:
            ns = row["_id"]["ns"]
            chunks, docs, last = totals.get(ns, [0, 0, 0.0])
            totals[ns] = [chunks + row["chunks"], docs + 1, max(last, float(row["last"] or 0))]
        return [(ns, int(c), int(d), last) for ns, (c, d, last) in totals.items()]
    except pymongo.errors.PyMongoError as exc:  # not reachable, refused, timed out
        raise RecordsUnavailable(
            f"the ingestion records (MongoDB) cannot be read: {exc}") from exc
    finally:
        client.close()


class SourceNotFound(IngestError):
    """No source of that name in the collection (which may not exist either)."""


def resolve(settings: Settings, source: str, collection: str = DEFAULT) -> str:
    """The source a user means by ``source`` in ``collection``: as listed, a URL, or a folder
    path."""
    known = {s.source for s in list_sources(settings, collection)}
    candidates = [source]
    if source.startswith(("http://", "https://")):
        candidates.append(site_namespace(source))
    else:
        candidates.append(files_namespace(Path(source)))
    for candidate in candidates:
        if candidate in known:
            return candidate
    raise SourceNotFound(f"no source {source!r} in collection {collection!r} "
                         "(`hearth sources list` shows them)")


def remove_source(services: Services, source: str, collection: str = DEFAULT, *,
                  scrub: bool = True) -> tuple[str, int]:
    """Remove every chunk of a source from a collection; returns (source, chunks deleted).
    ``scrub=False``: the caller scrubs the index's files once it has removed all it meant to
    (each scrub writes Chroma's file again)."""
    namespace = resolve(services.settings, source, collection)
    deleted = remove(services, namespace, collection)
    if not any(s.source == namespace for s in list_sources(services.settings)):
        # Its parse cache serves every collection that ingests it: kept while one does. A site
        # stored under its index page's name (an older Hearth) keeps its cache under the
        # folder's name, which a crawl now reads by.
        names = {namespace, site_namespace(namespace)} if is_site(namespace) else {namespace}
        for name in names:
            shutil.rmtree(parse_cache_dir(services.settings, name), ignore_errors=True)
    if scrub:
        services.vectorstore.scrub()  # nothing of its text left in the index's files
    return namespace, deleted


def remove_collection(services: Services, name: str) -> int:
    """Delete a collection: its sources' chunks and records, its Chroma collection, then its
    entry (so that a failure part-way leaves a collection that can be deleted again, never
    chunks that no collection names). Returns the chunks deleted."""
    access = services.access
    access.get(name)
    if name == DEFAULT:
        raise IngestError("the default collection stays: remove its sources with "
                          "`hearth sources remove` instead")
    deleted = sum(remove_source(services, s.source, name, scrub=False)[1]
                  for s in list_sources(services.settings, name))
    services.vectorstore.drop(name)
    services.vectorstore.scrub()
    Uploads(services).forget_collection(name)
    access.forget(name)
    return deleted
