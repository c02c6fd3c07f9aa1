"""Schema versions of the stores Hearth owns, and the numbered migrations between them.

Every store records the version of its schema: a SQLite file in ``PRAGMA user_version``, a
MongoDB store in one document of the ``hearth_schema`` collection. When a store opens, the
migrations it lacks are applied in order, each in its own transaction, and recorded. A SQLite
file is copied (``NAME.vN.bak`` beside it) before the first migration changes it. A store
written by a newer Hearth is refused with a message, never changed.

Version 0 is a store from before versions were recorded (Hearth 0.1.0, commit 55fd47f): its
migration 1 adopts that schema as it is.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.errors import SchemaError
from hearth.mongo import mongo_client

log = logging.getLogger("hearth.migrations")

SCHEMA_COLLECTION = "hearth_schema"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: Callable[[sqlite3.Connection], None] | None = None
    mongo: Callable[[Any], None] | None = None  # given the database


@dataclass(frozen=True)
class StoreVersion:
    store: str
    where: str
    version: int | None  # None: the store does not exist yet (or cannot be read)
    latest: int
    error: str | None = None  # why the store could not be read

    @property
    def usable(self) -> bool:
        """Whether this Hearth can open the store: readable, and not of a newer schema."""
        return self.error is None and (self.version is None or self.version <= self.latest)

    @property
    def state(self) -> str:
        if self.error is not None:
            return f"CANNOT BE READ: {self.error}"
        if self.version is None:
            return "not created yet"
        if self.version > self.latest:
            return "written by a newer Hearth: refused"
        if self.version < self.latest:
            return f"needs migrations {self.version + 1}..{self.latest} (applied when it opens)"
        return "up to date"


def _check(store: str, where: str, current: int, migrations: Sequence[Migration]) -> int:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{store}: migrations must be numbered 1, 2, ... in order")
    latest = versions[-1] if versions else 0
    if current > latest:
        raise SchemaError(
            f"the {store} at {where} has schema version {current}, written by a newer Hearth "
            f"(this one knows versions up to {latest}): upgrade Hearth, or restore the copy "
            "kept before that upgrade")
    return latest


def sqlite_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.v{version}.bak")


def scrub_backups(path: Path, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> int:
    """Run ``statements`` (deletions) on each copy kept before an upgrade of the SQLite store
    at ``path``, deleted content overwritten: what is erased from a store is erased from its
    backups too. A backup that cannot be scrubbed (damaged, locked) is deleted whole rather
    than left holding it. Returns the rows deleted."""
    deleted = 0
    for backup in sorted(path.parent.glob(f"{path.name}.v*.bak")):
        try:
            with contextlib.closing(sqlite3.connect(backup, timeout=5.0)) as db:
                db.execute("PRAGMA secure_delete=ON")
                with db:
                    deleted += sum(int(db.execute(sql, args).rowcount)
                                   for sql, args in statements)
        except sqlite3.Error as exc:
            log.warning("the backup %s could not be scrubbed (%s): deleted", backup, exc)
            backup.unlink(missing_ok=True)
    return deleted


def damaged(exc: BaseException) -> bool:
    """Whether SQLite's error says the file is damaged ("file is not a database",
    "malformed"), not busy, locked or out of room."""
    return type(exc) is sqlite3.DatabaseError


def use_wal(db: sqlite3.Connection, wait_s: float = 10.0) -> None:
    """Put a SQLite file in write-ahead-log mode. Changing the mode takes the file for itself
    and fails at once ("database is locked"), not after the busy timeout, when another
    process opens a new file at the same moment: tried again for a while."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def migrate_sqlite(db: sqlite3.Connection, path: Path, store: str,
                   migrations: Sequence[Migration]) -> list[int]:
    """Bring the SQLite store open on ``db`` to the latest version; returns what was applied.

    ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    current = sqlite_version(db)
    latest = _check(store, str(path), current, migrations)
    if current == latest:
        return []
    if _has_tables(db):
        # A copy before anything changes: the way back if an upgrade goes wrong.
        target = backup_path(path, current)
        with sqlite3.connect(target) as copy:
            db.backup(copy)
        copy.close()
        target.chmod(0o600)
    applied = []
    for migration in migrations[current:]:
        db.execute("BEGIN IMMEDIATE")
        try:
            if sqlite_version(db) >= migration.version:
                db.execute("COMMIT")  # another process opening the store applied it meanwhile
                continue
            if migration.sqlite is not None:
                migration.sqlite(db)
            db.execute(f"PRAGMA user_version = {migration.version:d}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied


def sqlite_status(path: Path, store: str, migrations: Sequence[Migration]) -> StoreVersion:
    latest = migrations[-1].version if migrations else 0
    if not path.is_file():
        return StoreVersion(store, str(path), None, latest)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return StoreVersion(store, str(path), sqlite_version(db), latest)
    finally:
        db.close()


def mongo_version(db: Any, store: str) -> int | None:
    doc = db[SCHEMA_COLLECTION].find_one({"_id": store})
    return int(doc["version"]) if doc else None


def migrate_mongo(db: Any, store: str, collection: str,
                  migrations: Sequence[Migration]) -> list[int]:
    """The same for a MongoDB store (a collection of ``db``). No copy is made: back MongoDB up
    with its own tools (``mongodump``) before an upgrade."""
    recorded = mongo_version(db, store)
    if recorded is None:
        # Before versions were recorded, or new: a collection there is a version-0 store.
        recorded = 0
    _check(store, f"{db.name}.{collection}", recorded, migrations)
    applied = []
    for migration in migrations[recorded:]:
        if migration.mongo is not None:
            migration.mongo(db)
        # $max: two workers starting at once both record it, and neither goes back.
        db[SCHEMA_COLLECTION].update_one(
            {"_id": store},
            {"$max": {"version": migration.version},
             "$set": {"migrated_at": time.time(), "description": migration.description}},
            upsert=True)
        applied.append(migration.version)
    return applied


def mongo_status(db: Any, store: str, collection: str,
                 migrations: Sequence[Migration]) -> StoreVersion:
    latest = migrations[-1].version if migrations else 0
    version = mongo_version(db, store)
    if version is None and collection in db.list_collection_names():
        version = 0
    return StoreVersion(store, f"{db.name}.{collection}", version, latest)


def store_status(settings: Settings, store: str, collection: str, path: Path,
                 migrations: Sequence[Migration]) -> StoreVersion:
    """A store's schema version where the settings keep it (MongoDB when a URI is set, else
    the SQLite file at ``path``), read without changing or creating anything. A store that
    cannot be read (MongoDB not answering, a damaged file) says why, in ``error``."""
    latest = migrations[-1].version if migrations else 0
    if settings.mongodb_uri:
        where = f"{settings.mongodb_db}.{collection}"
        try:
            client = mongo_client(settings.mongodb_uri, settings.backend_timeout_s)
            try:
                return mongo_status(client[settings.mongodb_db], store, collection, migrations)
            finally:
                client.close()
        except Exception as exc:  # pymongo's errors: not reachable, refused, timed out
            return StoreVersion(store, where, None, latest, f"{type(exc).__name__}: {exc}"[:300])
    try:
        return sqlite_status(path, store, migrations)
    except (sqlite3.Error, OSError) as exc:
        return StoreVersion(store, str(path), None, latest, f"{type(exc).__name__}: {exc}")
