"""Per-user chat history: a user has many conversations, a conversation many turns.

Two stores with one behaviour: SQLite in a file under the data directory (the default) and
MongoDB when ``HEARTH_MONGODB_URI`` is set. A turn is written whole, in one transaction or one
atomic document update, and only once its answer is complete: a failed or cancelled generation
leaves nothing behind.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from hearth.config import Settings
from hearth.conversations import Conversation, ConversationNotFound, Turn, title_of
from hearth.errors import Unavailable
from hearth.migrations import (
    Migration,
    StoreVersion,
    migrate_mongo,
    migrate_sqlite,
    scrub_backups,
    store_status,
    use_wal,
)
from hearth.mongo import mongo_client, redact
from hearth.private import private_dir, private_file


class HistoryError(Unavailable):
    code = "history_unavailable"


class HistoryStore(Protocol):
    where: str

    def ping(self) -> None: ...
    # ``new``: the conversation may be created; else it must exist (one deleted while its
    # question was answered is not made again): ConversationNotFound. ``asked_at``: when the
    # question was asked (time.time()); the user's history erased since, by this process or
    # another, the turn is not stored either: ConversationNotFound.
    def add_turn(self, conversation_id: str, user_id: str, turn: Turn, *,
                 new: bool = True, asked_at: float | None = None) -> None: ...
    def get(self, conversation_id: str) -> Conversation | None: ...
    def list(self, user_id: str) -> list[Conversation]: ...
    def delete(self, conversation_id: str) -> bool: ...
    def delete_user(self, user_id: str) -> int: ...
    def set_feedback(self, conversation_id: str, position: int,
                     feedback: dict[str, Any]) -> bool: ...
    def marked(self) -> Sequence[tuple[Conversation, int]]: ...


# The schema of Hearth 0.1.0 (55fd47f), adopted as version 1.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user_id, updated_at);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position)
);
"""



def _v1_sqlite(db: sqlite3.Connection) -> None:
    for statement in SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1_mongo(db: Any) -> None:
    db["conversations"].create_index([("user_id", 1), ("updated_at", -1)])


def _v6_sqlite(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS erasures (user_id TEXT PRIMARY KEY, at REAL NOT NULL)")


# How long an erasure is remembered (``erasures``): a question asked before it and answered
# after it is not stored. Longer than a question can take (its wait and its answer), and no
# longer: the record names the user whose history was erased.
def remember_erasures_s(settings: Settings) -> float:
    return 2 * settings.llm_timeout_s + 600


STORE = "history"
MIGRATIONS = [
    Migration(1, "conversations and turns as Hearth 0.1.0 stored them", _v1_sqlite, _v1_mongo),
    # Turns gain evidence, grounded and unsupported; older turns read with the defaults. The
    # version says so, so that a Hearth from before refuses the store instead of misreading it.
    Migration(2, "turns carry their evidence and grounding verdict"),
    # Turns gain the collections they read, and each source its collection; a turn from
    # before reads as asked over ``default``, which held everything then.
    Migration(3, "turns carry the collections they were asked over"),
    Migration(4, "turns carry the user's feedback on the answer"),
    Migration(5, "turns carry the model's confidence in the answer"),
    # Each user's last erasure, for a while: a question asked before it, answered by another
    # worker after it, does not store its turn (a new conversation made again).
    Migration(6, "when each user's history was last erased", _v6_sqlite),
]


class SQLiteHistory:
    def __init__(self, path: Path, timeout_s: float = 5.0, remember_s: float = 3600.0) -> None:
        self.where = str(path)
        self.remember_s = remember_s
        self._lock = threading.Lock()
        try:
            private_dir(path.parent)
            self._db = sqlite3.connect(
                path, timeout=timeout_s, check_same_thread=False, isolation_level=None
            )
            use_wal(self._db)
            self._db.execute("PRAGMA foreign_keys=ON")
            # Deleted text is overwritten, not left in free pages (erasing a user's history).
            self._db.execute("PRAGMA secure_delete=ON")
            migrate_sqlite(self._db, path, STORE, MIGRATIONS)
            private_file(path)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open the history store at {path}: {exc}") from exc

    def _run(self, fn: Any) -> Any:
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise HistoryError(f"history store at {self.where} failed: {exc}") from exc

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone())

    def add_turn(self, conversation_id: str, user_id: str, turn: Turn, *,
                 new: bool = True, asked_at: float | None = None) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # serialised with an erasure (``_erase``)
            try:
                if asked_at is not None and db.execute(
                    "SELECT 1 FROM erasures WHERE user_id = ? AND at > ?", (user_id, asked_at)
                ).fetchone():
                    raise ConversationNotFound(conversation_id)
                row = db.execute(
                    "SELECT user_id FROM conversations WHERE id = ?", (conversation_id,)
                ).fetchone()
                if row is None and not new:
                    raise ConversationNotFound(conversation_id)
                if row is None:
                    db.execute(
                        "INSERT INTO conversations VALUES (?, ?, ?, ?, ?)",
                        (conversation_id, user_id, title_of(turn.question),
                         turn.created_at, turn.created_at),
                    )
                elif row[0] != user_id:
                    raise ConversationNotFound(conversation_id)
                db.execute(
                    "INSERT INTO turns SELECT ?, COALESCE(MAX(position), -1) + 1, ? "
                    "FROM turns WHERE conversation_id = ?",
                    (conversation_id, json.dumps(asdict(turn)), conversation_id),
                )
                db.execute(
                    "UPDATE conversations SET updated_at = ? WHERE id = ?",
                    (turn.created_at, conversation_id),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        self._run(write)

    def _conversation(self, db: sqlite3.Connection, row: tuple[Any, ...]) -> Conversation:
        turns = [
            Turn.from_dict(json.loads(body))
            for (body,) in db.execute(
                "SELECT body FROM turns WHERE conversation_id = ? ORDER BY position", (row[0],)
            )
        ]
        return Conversation(id=row[0], user_id=row[1], title=row[2], created_at=row[3],
                            updated_at=row[4], turns=turns)

    def get(self, conversation_id: str) -> Conversation | None:
        def read(db: sqlite3.Connection) -> Conversation | None:
            row = db.execute(
                "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            return self._conversation(db, row) if row else None

        return self._run(read)  # type: ignore[no-any-return]

    def list(self, user_id: str) -> list[Conversation]:
        def read(db: sqlite3.Connection) -> list[Conversation]:
            rows = db.execute(
                "SELECT c.*, COUNT(t.position) FROM conversations c "
                "LEFT JOIN turns t ON t.conversation_id = c.id WHERE c.user_id = ? "
                "GROUP BY c.id ORDER BY c.updated_at DESC",
                (user_id,),
            ).fetchall()
            # Summaries only: the turns are counted, not loaded.
            return [Conversation(id=r[0], user_id=r[1], title=r[2], created_at=r[3],
                                 updated_at=r[4], turn_count=r[5]) for r in rows]

        return self._run(read)  # type: ignore[no-any-return]

    def _erase(self, where: str, arg: str, user_id: str | None = None) -> int:
        """Delete the conversations ``where`` says, from the store and from the copies kept
        before an upgrade (``history.sqlite3.v0.bak``), which hold the same text; with
        ``user_id``, remember the erasure for ``remember_s`` (``add_turn``'s ``asked_at``)."""
        def erase(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = int(db.execute(f"DELETE FROM conversations WHERE {where}",
                                         (arg,)).rowcount)
                if user_id is not None:
                    now = time.time()
                    db.execute("DELETE FROM erasures WHERE at < ?", (now - self.remember_s,))
                    db.execute("INSERT OR REPLACE INTO erasures VALUES (?, ?)", (user_id, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            # The write-ahead log still holds the deleted text until a checkpoint copies it
            # over (with secure_delete) and truncates the log.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return deleted

        deleted = int(self._run(erase))
        scrub_backups(Path(self.where), [
            (f"DELETE FROM turns WHERE conversation_id IN (SELECT id FROM conversations "
             f"WHERE {where})", (arg,)),
            (f"DELETE FROM conversations WHERE {where}", (arg,))])
        return deleted

    def delete(self, conversation_id: str) -> bool:
        return bool(self._erase("id = ?", conversation_id))

    def delete_user(self, user_id: str) -> int:
        return self._erase("user_id = ?", user_id, user_id)

    def set_feedback(self, conversation_id: str, position: int,
                     feedback: dict[str, Any]) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT body FROM turns WHERE conversation_id = ? AND "
                                 "position = ?", (conversation_id, position)).fetchone()
                if row is not None:
                    body = {**json.loads(row[0]), "feedback": feedback}
                    db.execute("UPDATE turns SET body = ? WHERE conversation_id = ? AND "
                               "position = ?", (json.dumps(body), conversation_id, position))
                db.execute("COMMIT")
                return row is not None
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return bool(self._run(write))

    def marked(self) -> Sequence[tuple[Conversation, int]]:
        """Every turn with feedback: its conversation, and its position there."""
        def read(db: sqlite3.Connection) -> Sequence[tuple[Conversation, int]]:
            rows = db.execute(
                "SELECT DISTINCT conversation_id FROM turns WHERE body LIKE '%\"feedback\": {%'"
            ).fetchall()
            found = []
            for (conversation_id,) in rows:
                row = db.execute("SELECT * FROM conversations WHERE id = ?",
                                 (conversation_id,)).fetchone()
                conversation = self._conversation(db, row)
                found += [(conversation, n) for n, t in enumerate(conversation.turns)
                          if t.feedback]
            return found

        return self._run(read)  # type: ignore[no-any-return]


class MongoHistory:
    """One document per conversation; a turn is appended with one atomic ``$push``."""

    def __init__(self, uri: str, db_name: str, timeout_s: float = 5.0,
                 remember_s: float = 3600.0) -> None:
        import pymongo

        self.where = redact(uri)
        self.remember_s = remember_s
        self._client: pymongo.MongoClient[dict[str, Any]] = mongo_client(uri, timeout_s)
        self._db = self._client[db_name]
        self._coll = self._db["conversations"]
        self._errors = pymongo.errors.PyMongoError
        self._duplicate = pymongo.errors.DuplicateKeyError
        self._migrated = False

    def _run(self, fn: Any) -> Any:
        try:
            if not self._migrated:  # on first use: a database that is down fails a request
                migrate_mongo(self._db, STORE, "conversations", MIGRATIONS)
                self._migrated = True
            return fn(self._coll)
        except self._errors as exc:
            if isinstance(exc, self._duplicate):
                raise
            raise HistoryError(f"MongoDB at {self.where} failed: {exc}") from exc

    def ping(self) -> None:
        self._run(lambda coll: coll.database.command("ping"))

    def add_turn(self, conversation_id: str, user_id: str, turn: Turn, *,
                 new: bool = True, asked_at: float | None = None) -> None:
        def write(coll: Any) -> int:
            return int(coll.update_one(
                {"_id": conversation_id, "user_id": user_id},
                {
                    "$push": {"turns": asdict(turn)},
                    "$set": {"updated_at": turn.created_at},
                    "$setOnInsert": {"title": title_of(turn.question),
                                     "created_at": turn.created_at},
                },
                upsert=new,
            ).matched_count)

        try:
            matched = self._run(write)
        except self._duplicate as exc:  # the id exists, owned by another user
            raise ConversationNotFound(conversation_id) from exc
        if not new and not matched:
            raise ConversationNotFound(conversation_id)
        # Written first, checked after (an erasure records itself first, deletes after):
        # whichever order the two take, a turn asked before the erasure does not stay.
        if asked_at is not None and self._run(lambda coll: coll.database["erasures"].find_one(
                {"_id": user_id, "at": {"$gt": asked_at}})):
            def undo(coll: Any) -> None:
                mine = {"_id": conversation_id, "user_id": user_id}
                coll.update_one(mine, {"$pull": {"turns": {"created_at": turn.created_at,
                                                           "question": turn.question}}})
                coll.delete_one({**mine, "turns": {"$size": 0}})

            self._run(undo)
            raise ConversationNotFound(conversation_id)

    @staticmethod
    def _conversation(doc: dict[str, Any]) -> Conversation:
        return Conversation(
            id=doc["_id"], user_id=doc["user_id"], title=doc["title"],
            created_at=doc["created_at"], updated_at=doc["updated_at"],
            turns=[Turn.from_dict(t) for t in doc.get("turns", [])],
        )

    def get(self, conversation_id: str) -> Conversation | None:
        doc = self._run(lambda coll: coll.find_one({"_id": conversation_id}))
        return self._conversation(doc) if doc else None

    def list(self, user_id: str) -> list[Conversation]:
        def read(coll: Any) -> list[Conversation]:
            docs = coll.aggregate([
                {"$match": {"user_id": user_id}},
                {"$sort": {"updated_at": -1}},
                {"$project": {"user_id": 1, "title": 1, "created_at": 1, "updated_at": 1,
                              "count": {"$size": {"$ifNull": ["$turns", []]}}}},
            ])
            return [
                Conversation(id=d["_id"], user_id=d["user_id"], title=d["title"],
                             created_at=d["created_at"], updated_at=d["updated_at"],
                             turn_count=d["count"])
                for d in docs
            ]

        return self._run(read)  # type: ignore[no-any-return]

    def delete(self, conversation_id: str) -> bool:
        return bool(self._run(lambda coll: coll.delete_one({"_id": conversation_id}).deleted_count))

    def delete_user(self, user_id: str) -> int:
        def erase(coll: Any) -> int:
            now, erasures = time.time(), coll.database["erasures"]
            erasures.delete_many({"at": {"$lt": now - self.remember_s}})
            erasures.update_one({"_id": user_id}, {"$set": {"at": now}}, upsert=True)
            return int(coll.delete_many({"user_id": user_id}).deleted_count)

        return int(self._run(erase))

    def set_feedback(self, conversation_id: str, position: int,
                     feedback: dict[str, Any]) -> bool:
        result = self._run(lambda coll: coll.update_one(
            {"_id": conversation_id, f"turns.{position}": {"$exists": True}},
            {"$set": {f"turns.{position}.feedback": feedback}}))
        return bool(result.matched_count)

    def marked(self) -> Sequence[tuple[Conversation, int]]:
        docs = self._run(lambda coll: list(coll.find({"turns.feedback": {"$type": "object"}})))
        found = []
        for doc in docs:
            conversation = self._conversation(doc)
            found += [(conversation, n) for n, t in enumerate(conversation.turns) if t.feedback]
        return found


def build_history(settings: Settings) -> HistoryStore:
    remember_s = remember_erasures_s(settings)
    if settings.mongodb_uri:
        return MongoHistory(settings.mongodb_uri, settings.mongodb_db, settings.backend_timeout_s,
                            remember_s)
    return SQLiteHistory(settings.history_path, settings.backend_timeout_s, remember_s)


def history_status(settings: Settings) -> StoreVersion:
    """The history store's schema version, read without changing anything."""
    return store_status(settings, STORE, "conversations", settings.history_path, MIGRATIONS)
