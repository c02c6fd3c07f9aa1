"""Collections: named sets of sources, and who may read each.

Every ingested source belongs to exactly one collection. A collection is public (everyone
reads it), or private: read by its owner (the user whose uploads it holds, if any) and by the
users it is granted to. Administrators manage collections (``hearth collections``). An index
from before collections is the public collection ``default``: the store's first migration
creates it, and its chunks are where they always were (``vectorstore``), so nothing is copied.

The registry lives beside the API keys: a SQLite file under the data directory, or the
``collections`` collection of MongoDB when the history is there. Questions read only what
their user may read (``Access.readable``); the vector store applies that inside its query.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hearth.config import Settings
from hearth.conversations import USER_ID_RULE, user_id_of
from hearth.errors import HearthError, Unavailable
from hearth.migrations import (
    Migration,
    StoreVersion,
    migrate_mongo,
    migrate_sqlite,
    store_status,
)
from hearth.mongo import mongo_client
from hearth.private import private_dir, private_file

DEFAULT = "default"
# Lower-case letters, digits, - and _, starting and ending with a letter or digit: a name that
# is safe in a URL, a file name and a Chroma collection name alike.
NAME = r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$"


class CollectionStoreError(Unavailable):
    code = "collection_store_unavailable"


class CollectionForbidden(HearthError):
    """A collection the user may not read: one that does not exist reads the same, so that a
    name alone tells nobody whether somebody else's collection exists."""

    code = "collection_forbidden"
    status = 403

    def __init__(self, name: str) -> None:
        super().__init__(f"no collection {name!r} that you may read")
        self.name = name


class CollectionNotFound(HearthError):
    """For administrators, who see every collection: this one does not exist."""

    code = "collection_not_found"
    status = 404


class CollectionExists(HearthError):
    code = "collection_exists"
    status = 409


class InvalidCollection(HearthError):
    code = "invalid_collection"
    status = 400


# How a user names their own collection in the API (``ingest.uploads.MINE``): no collection
# may be made under it, or it could never be reached there.
RESERVED = "mine"


def valid_name(name: str) -> bool:
    return re.fullmatch(NAME, name) is not None


def check_name(name: str) -> str:
    if not valid_name(name):
        raise InvalidCollection(
            f"{name[:80]!r} is not a collection name: 1-64 lower-case letters, digits, - and _, "
            "starting and ending with a letter or digit")
    return name


@dataclass(frozen=True)
class Collection:
    name: str
    description: str = ""
    public: bool = False
    # The user whose own collection this is (their uploads); None: an administrator's.
    owner: str | None = None
    readers: tuple[str, ...] = ()
    created_at: float = field(default_factory=time.time)

    def readable_by(self, user_id: str | None) -> bool:
        return self.public or (user_id is not None
                               and (user_id == self.owner or user_id in self.readers))

    def to_dict(self, *, readers: bool = True) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": self.name, "description": self.description,
                                 "public": self.public, "owner": self.owner,
                                 "created_at": self.created_at}
        if readers:
            shown["readers"] = list(self.readers)
        return shown


class CollectionStore(Protocol):
    def all(self) -> list[Collection]: ...
    def get(self, name: str) -> Collection | None: ...
    def add(self, collection: Collection) -> bool: ...
    # Each change of who reads a collection touches that alone, so that two made at once
    # (a grant here, a revoke or "private" there) both hold: a read-then-write-back of the
    # whole collection let the later one undo the other.
    def add_readers(self, name: str, users: Sequence[str]) -> None: ...
    def remove_readers(self, name: str, users: Sequence[str]) -> None: ...
    def set_public(self, name: str, public: bool) -> None: ...
    def delete(self, name: str) -> bool: ...


def reader_ids(users: Iterable[str]) -> list[str]:
    """User ids as every route reads them (stripped; 1 to 128 characters, no "/" or control
    character), each once; InvalidCollection for one that no user could ever be."""
    ids: list[str] = []
    for user in users:
        stripped = user_id_of(user)
        if stripped is None:
            raise InvalidCollection(f"{user!r} is not a user id: {USER_ID_RULE}")
        if stripped not in ids:
            ids.append(stripped)
    return ids


def _default() -> Collection:
    return Collection(DEFAULT, "everything ingested before collections existed, and what is "
                      "ingested without naming a collection", public=True, created_at=0.0)


def _v1_sqlite(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, "
               "description TEXT NOT NULL, public INTEGER NOT NULL, owner TEXT, "
               "created_at REAL NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS readers (collection TEXT NOT NULL "
               "REFERENCES collections(name) ON DELETE CASCADE, user_id TEXT NOT NULL, "
               "PRIMARY KEY (collection, user_id))")
    d = _default()
    db.execute("INSERT OR IGNORE INTO collections VALUES (?, ?, 1, NULL, ?)",
               (d.name, d.description, d.created_at))


def _v1_mongo(db: Any) -> None:
    d = _default()
    db["collections"].update_one(
        {"_id": d.name},
        {"$setOnInsert": {"description": d.description, "public": True, "owner": None,
                          "readers": [], "created_at": d.created_at}},
        upsert=True)


STORE = "collections"
MIGRATIONS = [Migration(1, "collections, and the public collection 'default' that holds "
                           "what was indexed before them", _v1_sqlite, _v1_mongo)]


def collections_path(settings: Settings) -> Path:
    return settings.data_dir / "collections.sqlite3"


class SQLiteCollections:
    def __init__(self, path: Path) -> None:
        self.where = str(path)
        self._lock = threading.Lock()
        try:
            private_dir(path.parent)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate_sqlite(self._db, path, STORE, MIGRATIONS)
            private_file(path)
        except (OSError, sqlite3.Error) as exc:
            raise CollectionStoreError(f"cannot open the collections at {path}: {exc}") from exc

    def _run(self, fn: Any) -> Any:
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise CollectionStoreError(f"collections at {self.where} failed: {exc}") from exc

    def all(self) -> list[Collection]:
        def read(db: sqlite3.Connection) -> list[Collection]:
            readers: dict[str, list[str]] = {}
            for name, user in db.execute("SELECT collection, user_id FROM readers "
                                         "ORDER BY user_id"):
                readers.setdefault(name, []).append(user)
            return [Collection(r[0], r[1], bool(r[2]), r[3], tuple(readers.get(r[0], ())), r[4])
                    for r in db.execute("SELECT name, description, public, owner, created_at "
                                        "FROM collections ORDER BY name")]
        return self._run(read)  # type: ignore[no-any-return]

    def get(self, name: str) -> Collection | None:
        return next((c for c in self.all() if c.name == name), None)

    def add(self, collection: Collection) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO collections VALUES (?, ?, ?, ?, ?)",
                    (collection.name, collection.description, int(collection.public),
                     collection.owner, collection.created_at))
                if cursor.rowcount:
                    db.executemany("INSERT INTO readers VALUES (?, ?)",
                                   [(collection.name, u) for u in collection.readers])
                db.execute("COMMIT")
                return bool(cursor.rowcount)
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self._run(write)  # type: ignore[no-any-return]

    def add_readers(self, name: str, users: Sequence[str]) -> None:
        self._run(lambda db: db.executemany("INSERT OR IGNORE INTO readers VALUES (?, ?)",
                                            [(name, u) for u in users]))

    def remove_readers(self, name: str, users: Sequence[str]) -> None:
        self._run(lambda db: db.executemany(
            "DELETE FROM readers WHERE collection = ? AND user_id = ?", [(name, u) for u in users]))

    def set_public(self, name: str, public: bool) -> None:
        self._run(lambda db: db.execute("UPDATE collections SET public = ? WHERE name = ?",
                                        (int(public), name)))

    def delete(self, name: str) -> bool:
        return bool(self._run(
            lambda db: db.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount))


class MongoCollections:
    def __init__(self, uri: str, db_name: str, timeout_s: float) -> None:
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = mongo_client(uri, timeout_s)
        self.where = f"{db_name}.collections"
        self._db = client[db_name]
        self._coll = self._db["collections"]
        self._errors = pymongo.errors.PyMongoError
        self._migrated = False

    def _run(self, fn: Any) -> Any:
        try:
            if not self._migrated:
                migrate_mongo(self._db, STORE, "collections", MIGRATIONS)
                self._migrated = True
            return fn(self._coll)
        except self._errors as exc:
            raise CollectionStoreError(f"collections (MongoDB) failed: {exc}") from exc

    @staticmethod
    def _collection(doc: dict[str, Any]) -> Collection:
        return Collection(doc["_id"], doc.get("description", ""), bool(doc.get("public")),
                          doc.get("owner"), tuple(sorted(doc.get("readers", []))),
                          float(doc.get("created_at", 0.0)))

    @staticmethod
    def _doc(c: Collection) -> dict[str, Any]:
        return {"description": c.description, "public": c.public, "owner": c.owner,
                "readers": list(c.readers), "created_at": c.created_at}

    def all(self) -> list[Collection]:
        return [self._collection(d) for d in self._run(lambda c: list(c.find().sort("_id", 1)))]

    def get(self, name: str) -> Collection | None:
        doc = self._run(lambda c: c.find_one({"_id": name}))
        return self._collection(doc) if doc else None

    def add(self, collection: Collection) -> bool:
        result = self._run(lambda c: c.update_one(
            {"_id": collection.name}, {"$setOnInsert": self._doc(collection)}, upsert=True))
        return result.upserted_id is not None

    def add_readers(self, name: str, users: Sequence[str]) -> None:
        self._run(lambda c: c.update_one({"_id": name},
                                         {"$addToSet": {"readers": {"$each": list(users)}}}))

    def remove_readers(self, name: str, users: Sequence[str]) -> None:
        self._run(lambda c: c.update_one({"_id": name}, {"$pull": {"readers": {"$in": list(users)}}}))

    def set_public(self, name: str, public: bool) -> None:
        self._run(lambda c: c.update_one({"_id": name}, {"$set": {"public": public}}))

    def delete(self, name: str) -> bool:
        return bool(self._run(lambda c: c.delete_one({"_id": name})).deleted_count)


class Access:
    """The collections, and the one rule for who reads which."""

    def __init__(self, store: CollectionStore) -> None:
        self.store = store

    def all(self) -> list[Collection]:
        return self.store.all()

    def get(self, name: str) -> Collection:
        collection = self.store.get(name)
        if collection is None:
            raise CollectionNotFound(
                f"no collection {name!r} (`hearth collections list` shows them)")
        return collection

    def readable(self, user_id: str | None, *, everything: bool = False) -> list[Collection]:
        """What ``user_id`` may read (None: an anonymous client, which reads public ones);
        ``everything``: an administrator or the operator at the terminal."""
        return [c for c in self.store.all() if everything or c.readable_by(user_id)]

    def choose(self, user_id: str | None, wanted: Sequence[str] | None, *,
               everything: bool = False) -> list[str]:
        """The collections a question reads: those wanted, each of which the user must be able
        to read (else CollectionForbidden), or, with none named, all the user may read."""
        readable = [c.name for c in self.readable(user_id, everything=everything)]
        if wanted is None:
            return readable
        chosen: list[str] = []
        for name in wanted:
            if name not in readable:
                raise CollectionForbidden(name)
            if name not in chosen:
                chosen.append(name)
        return chosen

    def create(self, name: str, description: str = "", *, public: bool = False,
               owner: str | None = None, readers: Iterable[str] = ()) -> Collection:
        if name == RESERVED:
            raise InvalidCollection(f"{RESERVED!r} names each user's own collection in the API "
                                    "(their uploads): choose another name")
        collection = Collection(check_name(name), description.strip(), public, owner,
                                tuple(sorted(reader_ids(readers))))
        if not self.store.add(collection):
            raise CollectionExists(f"there is already a collection {name!r}")
        return collection

    def set_public(self, name: str, public: bool) -> Collection:
        self.get(name)
        self.store.set_public(name, public)
        return self.get(name)

    def grant(self, name: str, users: Iterable[str]) -> Collection:
        added = reader_ids(users)
        self.get(name)
        self.store.add_readers(name, added)
        return self.get(name)

    def revoke(self, name: str, users: Iterable[str]) -> Collection:
        # Stripped, not checked: a reader stored before ids were checked can still be revoked.
        gone = [u.strip() for u in users if u.strip()]
        self.get(name)
        self.store.remove_readers(name, gone)
        return self.get(name)

    def forget_reader(self, user_id: str) -> int:
        """Take ``user_id`` off every collection's readers; returns how many it read."""
        granted = [c for c in self.store.all() if user_id in c.readers]
        for collection in granted:
            self.revoke(collection.name, [user_id])
        return len(granted)

    def forget(self, name: str) -> bool:
        """Remove the collection from the registry (its chunks go first: ``remove_collection``)."""
        return self.store.delete(name)


def build_access(settings: Settings) -> Access:
    if settings.mongodb_uri:
        return Access(MongoCollections(settings.mongodb_uri, settings.mongodb_db,
                                       settings.backend_timeout_s))
    return Access(SQLiteCollections(collections_path(settings)))


def collections_status(settings: Settings) -> StoreVersion:
    """The registry's schema version, read without changing anything."""
    return store_status(settings, STORE, "collections", collections_path(settings), MIGRATIONS)
