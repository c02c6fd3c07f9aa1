"""Who may ask, read and ingest: API keys, each mapped to one user and a role.

A key is shown once, when it is created; only its sha256 is stored (keys are 256 random bits,
so a slow hash adds nothing). Keys live beside the history: in SQLite under the data directory,
or in MongoDB when the history does.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hearth.config import Settings
from hearth.errors import HearthError, Unavailable
from hearth.migrations import (
    Migration,
    StoreVersion,
    migrate_mongo,
    migrate_sqlite,
    scrub_backups,
    store_status,
)
from hearth.mongo import mongo_client
from hearth.private import private_dir, private_file

PREFIX = "hearth_"


class KeyStoreError(Unavailable):
    code = "key_store_unavailable"


class Forbidden(HearthError):
    code = "forbidden"
    status = 403


class MissingUser(HearthError):
    code = "missing_field"
    status = 400


@dataclass(frozen=True)
class Key:
    id: str  # the first characters of the key, safe to show and log
    user_id: str
    admin: bool
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    user_id: str
    admin: bool


def acting_user(principal: Principal | None, requested: str | None) -> str:
    """The one rule for whom a request acts: with a key, its user, or the user it names when
    the key is an admin's; without keys (one person on loopback), the user it names."""
    requested = requested.strip() if requested else None
    if principal is None:
        if not requested:
            raise MissingUser("user_id: the user is required")
        return requested
    if requested and requested != principal.user_id and not principal.admin:
        raise Forbidden(f"this API key may act only for user {principal.user_id!r}")
    return requested or principal.user_id


def new_token() -> str:
    """A new key. Its id (``key_id``: its first characters) never starts with "-", which a
    command line would read as an option (`hearth keys revoke -Ssfq...`)."""
    while True:
        token = PREFIX + secrets.token_urlsafe(32)
        if not key_id(token).startswith("-"):
            return token


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_id(token: str) -> str:
    return token[len(PREFIX):len(PREFIX) + 8]


class KeyStore(Protocol):
    def add(self, key: Key, hashed: str) -> None: ...
    def find(self, hashed: str) -> Key | None: ...
    def all(self) -> list[Key]: ...
    def revoke(self, key_id: str) -> bool: ...
    def delete_user(self, user_id: str) -> int: ...


def _v1_sqlite(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS api_keys (hash TEXT PRIMARY KEY, id TEXT NOT NULL, "
        "user_id TEXT NOT NULL, admin INTEGER NOT NULL, created_at REAL NOT NULL, "
        "revoked_at REAL)"
    )


def _v1_mongo(db: Any) -> None:
    db["api_keys"].create_index("id")


STORE = "API keys"
MIGRATIONS = [Migration(1, "API keys as Hearth 0.1.0 stored them", _v1_sqlite, _v1_mongo)]


def keys_path(settings: Settings) -> Path:
    return settings.data_dir / "keys.sqlite3"


class SQLiteKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            private_dir(path.parent)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            migrate_sqlite(self._db, path, STORE, MIGRATIONS)
            private_file(path)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"cannot open the key store at {path}: {exc}") from exc

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise KeyStoreError(f"key store failed: {exc}") from exc

    def add(self, key: Key, hashed: str) -> None:
        self._rows("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                   (hashed, key.id, key.user_id, int(key.admin), key.created_at))

    def find(self, hashed: str) -> Key | None:
        rows = self._rows("SELECT id, user_id, admin, created_at, revoked_at FROM api_keys "
                          "WHERE hash = ?", (hashed,))
        return Key(rows[0][0], rows[0][1], bool(rows[0][2]), rows[0][3], rows[0][4]) if rows else None

    def all(self) -> list[Key]:
        rows = self._rows("SELECT id, user_id, admin, created_at, revoked_at FROM api_keys "
                          "ORDER BY created_at")
        return [Key(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id))
        return cursor.rowcount > 0

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            deleted = self._db.execute("DELETE FROM api_keys WHERE user_id = ?",
                                       (user_id,)).rowcount
        # The copies kept before an upgrade name the user too.
        scrub_backups(self.path, [("DELETE FROM api_keys WHERE user_id = ?", (user_id,))])
        return int(deleted)


class MongoKeys:
    def __init__(self, uri: str, db_name: str, timeout_s: float) -> None:
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = mongo_client(uri, timeout_s)
        self._db = client[db_name]
        self._coll = self._db["api_keys"]
        self._errors = pymongo.errors.PyMongoError
        self._migrated = False

    def _run(self, fn: Any) -> Any:
        try:
            if not self._migrated:
                migrate_mongo(self._db, STORE, "api_keys", MIGRATIONS)
                self._migrated = True
            return fn(self._coll)
        except self._errors as exc:
            raise KeyStoreError(f"key store (MongoDB) failed: {exc}") from exc

    @staticmethod
    def _key(doc: dict[str, Any]) -> Key:
        return Key(doc["id"], doc["user_id"], doc["admin"], doc["created_at"], doc.get("revoked_at"))

    def add(self, key: Key, hashed: str) -> None:
        self._run(lambda c: c.insert_one({"_id": hashed, "id": key.id, "user_id": key.user_id,
                                          "admin": key.admin, "created_at": key.created_at,
                                          "revoked_at": None}))

    def find(self, hashed: str) -> Key | None:
        doc = self._run(lambda c: c.find_one({"_id": hashed}))
        return self._key(doc) if doc else None

    def all(self) -> list[Key]:
        return [self._key(d) for d in self._run(lambda c: list(c.find().sort("created_at", 1)))]

    def revoke(self, key_id: str) -> bool:
        result = self._run(lambda c: c.update_many({"id": key_id, "revoked_at": None},
                                                   {"$set": {"revoked_at": time.time()}}))
        return bool(result.modified_count)

    def delete_user(self, user_id: str) -> int:
        return int(self._run(lambda c: c.delete_many({"user_id": user_id})).deleted_count)


class Keys:
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def create(self, user_id: str, admin: bool = False) -> tuple[str, Key]:
        token = new_token()
        key = Key(key_id(token), user_id, admin, time.time())
        self.store.add(key, digest(token))
        return token, key

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise."""
        if not token.startswith(PREFIX):
            return None
        key = self.store.find(digest(token))
        if key is None or key.revoked_at is not None:
            return None
        return Principal(key.user_id, key.admin)

    def list(self) -> list[Key]:
        return self.store.all()

    def revoke(self, key_id: str) -> bool:
        return self.store.revoke(key_id)

    def delete_user(self, user_id: str) -> int:
        """Every key of a user, gone (not only revoked): erasing a user."""
        return self.store.delete_user(user_id)


def build_keys(settings: Settings) -> Keys:
    if settings.mongodb_uri:
        return Keys(MongoKeys(settings.mongodb_uri, settings.mongodb_db, settings.backend_timeout_s))
    return Keys(SQLiteKeys(keys_path(settings)))


def keys_status(settings: Settings) -> StoreVersion:
    """The key store's schema version, read without changing anything."""
    return store_status(settings, STORE, "api_keys", keys_path(settings), MIGRATIONS)
