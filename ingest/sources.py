"""What has been ingested: one source per folder or start URL, read from the record manager.

The record manager already knows each source (its namespace), each document (group id), each
chunk (key) and when it was last confirmed (``updated_at``): listing sources is one grouped
query over its table (SQLite) or collection (MongoDB), with no bookkeeping of our own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.pipeline import (
    INGEST_DB_TIMEOUT_S,
    RECORDS_COLLECTION,
    IngestError,
    files_namespace,
    parse_cache_dir,
    remove,
)


@dataclass
class Source:
    source: str
    kind: str  # "web" or "files"
    documents: int
    chunks: int
    last_ingest: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "documents": self.documents,
                "chunks": self.chunks, "last_ingest": self.last_ingest.isoformat()}


def list_sources(settings: Any) -> list[Source]:
    rows = _mongo_rows(settings) if getattr(settings, "mongodb_uri", None) else _sql_rows(settings)
    return sorted(
        (Source(source=ns, kind="web" if ns.startswith(("http://", "https://")) else "files",
                documents=int(docs), chunks=int(chunks),
                last_ingest=datetime.fromtimestamp(float(last), tz=UTC))
         for ns, chunks, docs, last in rows),
        key=lambda s: s.source,
    )


def _sql_rows(settings: Any) -> list[tuple[str, int, int, float]]:
    from sqlalchemy import create_engine, inspect, text

    url = settings.record_manager_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []  # nothing ingested yet: do not create the file just to list it
    engine = create_engine(settings.record_manager_url)
    try:
        if not inspect(engine).has_table("upsertion_record"):
            return []
        with engine.connect() as conn:
            result = conn.execute(text(
                "SELECT namespace, COUNT(*), COUNT(DISTINCT group_id), MAX(updated_at) "
                "FROM upsertion_record GROUP BY namespace"))
            return [(r[0], r[1], r[2], r[3]) for r in result]
    finally:
        engine.dispose()


def _mongo_rows(settings: Any) -> list[tuple[str, int, int, float]]:
    from history import mongo_client

    client: Any = mongo_client(settings.mongodb_uri, getattr(settings, "backend_timeout_s", 5.0),
                               op_timeout_s=INGEST_DB_TIMEOUT_S)
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
    finally:
        client.close()


def resolve(settings: Any, source: str) -> str:
    """The namespace a user means by ``source``: as listed, a URL, or a folder path."""
    known = {s.source for s in list_sources(settings)}
    candidates = [source]
    if source.startswith(("http://", "https://")):
        from ingest.web import site_namespace

        candidates.append(site_namespace(source))
    else:
        candidates.append(files_namespace(Path(source)))
    for candidate in candidates:
        if candidate in known:
            return candidate
    raise IngestError(f"no source {source!r} in the index (`hearth sources list` shows them)")


def remove_source(services: Any, source: str) -> tuple[str, int]:
    """Remove every chunk of a source from the index; returns (namespace, chunks deleted)."""
    namespace = resolve(services.settings, source)
    deleted = remove(services, namespace)
    shutil.rmtree(parse_cache_dir(services.settings, namespace), ignore_errors=True)
    return namespace, deleted
