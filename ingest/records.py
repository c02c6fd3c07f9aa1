"""The record managers: which chunks of which document are in the vector store, and since when.

LangChain's indexing API keeps one record per chunk (its key, its document's ``group_id``, the
time it was last confirmed) in a namespace per source: a SQLite file under the data folder
(embedded profile), or the ``ingest_records`` collection of MongoDB when a URI is set (compose
profile). Both stores carry a schema version (``hearth.migrations``), brought up to date each
time a record manager is opened.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hearth.config import Settings
from hearth.errors import Unavailable
from hearth.migrations import (
    Migration,
    StoreVersion,
    damaged,
    migrate_mongo,
    migrate_sqlite,
    store_status,
)
from hearth.mongo import mongo_client

if TYPE_CHECKING:
    from langchain_core.indexing import RecordManager

# The MongoDB collection that holds ingestion records (compose profile).
RECORDS_COLLECTION = "ingest_records"
# One MongoDB operation of an ingest (a bulk upsert of a batch's records) may take this long.
INGEST_DB_TIMEOUT_S = 60.0
STORE = "ingestion records"


class RecordsUnavailable(Unavailable):
    """The ingestion records cannot be read or written (a damaged file, a full disk)."""

    code = "ingest_records_unavailable"

    @classmethod
    def of(cls, path: Path, exc: sqlite3.Error) -> RecordsUnavailable:
        return cls(f"the ingestion records at {path} cannot be used: {exc}"
                   + (" (the file is damaged: move it aside and ingest again; the index "
                      "itself is kept)" if damaged(exc) else ""))


def _create_mongo_indexes(collection: Any) -> None:
    """One collection for all sources, each source a namespace within it."""
    collection.create_index([("namespace", 1), ("key", 1)], unique=True)
    collection.create_index([("namespace", 1), ("group_id", 1)])
    collection.create_index([("namespace", 1), ("updated_at", 1)])


def _v1_mongo(db: Any) -> None:
    _create_mongo_indexes(db[RECORDS_COLLECTION])


RECORDS_MIGRATIONS = [
    # SQLite: the ``upsertion_record`` table of LangChain's SQLRecordManager, as Hearth 0.1.0
    # wrote it (the record manager creates it in a new file); MongoDB: its collection, with
    # the namespace indexes.
    Migration(1, "the record manager's table as Hearth 0.1.0 wrote it", None, _v1_mongo),
]


def records_path(settings: Settings) -> Path:
    """The SQLite file of the embedded profile."""
    return Path(settings.record_manager_url.removeprefix("sqlite:///"))


def records_status(settings: Settings) -> StoreVersion:
    """The ingestion records' schema version, read without changing (or creating) anything."""
    return store_status(settings, STORE, RECORDS_COLLECTION, records_path(settings),
                        RECORDS_MIGRATIONS)


def migrate_records(settings: Settings) -> list[int]:
    """Bring the ingestion records' store to the latest schema (creating it if need be);
    returns the migrations applied. Opening a record manager does it too."""
    if settings.mongodb_uri:
        client = mongo_client(settings.mongodb_uri, settings.backend_timeout_s,
                              op_timeout_s=INGEST_DB_TIMEOUT_S)
        try:
            return migrate_mongo(client[settings.mongodb_db], STORE, RECORDS_COLLECTION,
                                 RECORDS_MIGRATIONS)
        finally:
            client.close()
    return _migrate_sqlite(records_path(settings))


def _migrate_sqlite(path: Path) -> list[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            return migrate_sqlite(db, path, STORE, RECORDS_MIGRATIONS)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise RecordsUnavailable.of(path, exc) from exc


def record_manager(settings: Settings, namespace: str) -> RecordManager:
    """The record manager of source ``namespace``, its store migrated to the latest schema.
    Release it with ``close_records``."""
    if settings.mongodb_uri:
        manager = _mongo_record_manager(settings, settings.mongodb_uri, namespace)
    else:
        manager = _sqlite_record_manager(settings, namespace)
    manager.create_schema()
    return manager


def _sqlite_record_manager(settings: Settings, namespace: str) -> RecordManager:
    from langchain_classic.indexes import SQLRecordManager

    _migrate_sqlite(records_path(settings))
    return SQLRecordManager(namespace, db_url=settings.record_manager_url)


def _mongo_record_manager(settings: Settings, uri: str, namespace: str) -> RecordManager:
    from langchain_mongodb.indexes import MongoDBRecordManager

    class NamespacedMongoRecordManager(MongoDBRecordManager):
        """One collection for all sources; each source is a namespace within it (the stock
        class takes the collection's name as its only namespace)."""

        def __init__(self, collection: Any, namespace: str) -> None:
            super().__init__(collection)
            self.namespace = namespace

        def create_schema(self) -> None:
            _create_mongo_indexes(self._collection)

    client: Any = mongo_client(uri, settings.backend_timeout_s,
                               op_timeout_s=INGEST_DB_TIMEOUT_S)
    db = client[settings.mongodb_db]
    try:
        migrate_mongo(db, STORE, RECORDS_COLLECTION, RECORDS_MIGRATIONS)
    except BaseException:
        client.close()
        raise
    return NamespacedMongoRecordManager(db[RECORDS_COLLECTION], namespace)


def close_records(manager: Any) -> None:
    """Release the record manager's database connections (a MongoDB client, a SQL pool)."""
    if hasattr(manager, "close"):
        manager.close()
    elif getattr(manager, "engine", None) is not None:
        manager.engine.dispose()
