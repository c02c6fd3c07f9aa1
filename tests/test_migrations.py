"""Schema versions and migrations: stores written by Hearth 0.1.0 (main at 55fd47f, in
tests/fixtures/main-55fd47f) open, migrate and keep every turn, key and ingestion record; a
store from a newer Hearth is refused untouched; a copy of a SQLite store is kept before a
migration changes it. SQLite tests are real files (fast tier); MongoDB ones use the real wire
server (real tier)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.access import build_access
from hearth.auth import build_keys
from hearth.cli import main
from hearth.config import Settings, load_settings
from hearth.errors import SchemaError
from hearth.history import MongoHistory, SQLiteHistory, build_history
from hearth.ingest.records import close_records, record_manager
from hearth.migrations import Migration, backup_path, migrate_sqlite, sqlite_version
from tests.conftest import closed_port_url

FIXTURE = Path(__file__).parent / "fixtures" / "main-55fd47f"
TOKENS = json.loads((FIXTURE / "tokens.json").read_text())
STORES = ("history.sqlite3", "keys.sqlite3", "ingest-records.sqlite3")


@pytest.fixture
def old_data(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    for name in STORES:
        shutil.copy(FIXTURE / name, data / name)
    return load_settings(_env_file=None, data_dir=data)


def version_of(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return sqlite_version(db)


def test_the_fixture_is_from_before_versions(old_data: Settings) -> None:
    assert [version_of(old_data.data_dir / name) for name in STORES] == [0, 0, 0]


def test_the_history_of_0_1_0_keeps_every_turn(old_data: Settings) -> None:
    store = build_history(old_data)
    ann = store.list("ann")
    assert sorted(c.id for c in ann) == ["conv-ann-1", "conv-ann-2"]
    first = store.get("conv-ann-1")
    assert first is not None
    assert [t.question for t in first.turns] == ["How do I ingest a folder of PDFs?",
                                                 "And a website?"]
    assert first.turns[0].sources[0]["chunk_id"] == "chunk-1"
    assert first.turns[1].usage == {"prompt_tokens": 500, "completion_tokens": 20}
    assert [t.answer for t in store.get("conv-bob-1").turns] == [  # type: ignore[union-attr]
        "In data/history.sqlite3."]
    path = old_data.history_path
    # 1: 0.1.0's schema adopted; 2: turns carry their evidence; 3: their collections; 4: the
    # user's feedback; 5: the model's confidence.
    assert version_of(path) == 6
    assert first.turns[0].feedback is None and first.turns[0].confidence is None
    assert first.turns[0].collections == ["default"]  # what was indexed then is default now
    # The copy made before the migration is the old store, whole.
    copy = backup_path(path, 0)
    assert version_of(copy) == 0
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT COUNT(*) FROM turns").fetchone() == (4,)
    # A new turn goes on after the old ones.
    from hearth.conversations import Turn

    store.add_turn("conv-ann-1", "ann", Turn("Third?", "Yes."))
    assert len(store.get("conv-ann-1").turns) == 3  # type: ignore[union-attr]


def test_the_keys_of_0_1_0_still_authenticate(old_data: Settings) -> None:
    keys = build_keys(old_data)
    ann = keys.authenticate(TOKENS["ann"])
    root = keys.authenticate(TOKENS["root"])
    assert ann is not None and (ann.user_id, ann.admin) == ("ann", False)
    assert root is not None and (root.user_id, root.admin) == ("root", True)
    assert keys.authenticate(TOKENS["bob"]) is None  # revoked then, revoked now
    assert len(keys.list()) == 3
    assert version_of(old_data.data_dir / "keys.sqlite3") == 1
    assert backup_path(old_data.data_dir / "keys.sqlite3", 0).is_file()


def test_erasing_a_user_erases_them_from_the_copies_kept_before_upgrades(
        old_data: Settings) -> None:
    """The copy made before a migration held the whole old store: an erased user's turns and
    keys stayed readable in it. Erasing scrubs the copies too (overwritten, not left in free
    pages), and only what was erased: another user's conversation stays."""
    history, keys = build_history(old_data), build_keys(old_data)
    history_copy = backup_path(old_data.history_path, 0)
    keys_copy = backup_path(old_data.data_dir / "keys.sqlite3", 0)
    asked = "How do I ingest a folder of PDFs?"
    assert asked.encode() in history_copy.read_bytes()
    assert history.delete_user("ann") == 2 and keys.delete_user("ann") == 1
    with sqlite3.connect(history_copy) as db:
        assert db.execute("SELECT user_id FROM conversations").fetchall() == [("bob",)]
        assert db.execute("SELECT COUNT(*) FROM turns").fetchone() == (1,)
    with sqlite3.connect(keys_copy) as db:
        assert "ann" not in {row[0] for row in db.execute("SELECT user_id FROM api_keys")}
    for path in (old_data.history_path, history_copy):
        assert asked.encode() not in path.read_bytes(), path
    assert history.delete("conv-bob-1")
    with sqlite3.connect(history_copy) as db:
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone() == (0,)
    # A copy that cannot be scrubbed is not left holding what was erased: it is deleted.
    keys_copy.write_bytes(b"not a database" * 100)
    keys.delete_user("root")
    assert not keys_copy.exists()


def test_the_ingestion_records_of_0_1_0_are_kept(old_data: Settings) -> None:
    manager = record_manager(old_data, "/docs")
    try:
        assert sorted(manager.list_keys()) == ["k1", "k2", "k3"]
        assert sorted(manager.list_keys(group_ids=["/docs/a.md"])) == ["k1", "k2"]
    finally:
        close_records(manager)
    path = old_data.data_dir / "ingest-records.sqlite3"
    assert version_of(path) == 1 and backup_path(path, 0).is_file()


@pytest.mark.parametrize("name", STORES)
def test_a_store_from_a_newer_hearth_is_refused_untouched(old_data: Settings, name: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`hearth migrate --status` exited 0 for the store it called "refused", where `migrate`
    and `doctor` exit 1."""
    path = old_data.data_dir / name
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    before = path.read_bytes()
    monkeypatch.setenv("HEARTH_DATA_DIR", str(old_data.data_dir))
    status = CliRunner().invoke(main, ["migrate", "--status"])
    assert status.exit_code == 1, status.output
    assert "schema 99 of " in status.output and ": written by a newer Hearth: refused" in status.output
    opens: dict[str, Callable[[], Any]] = {
        "history.sqlite3": lambda: build_history(old_data),
        "keys.sqlite3": lambda: build_keys(old_data),
        "ingest-records.sqlite3": lambda: record_manager(old_data, "/docs"),
    }
    with pytest.raises(SchemaError, match="newer Hearth") as raised:
        opens[name]()
    assert raised.value.status == 503
    assert path.read_bytes() == before
    assert not list(path.parent.glob(f"{name}.*.bak"))


def test_a_new_store_starts_at_the_latest_version_with_no_copy(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    SQLiteHistory(path)
    assert version_of(path) == 6 and not list(tmp_path.glob("*.bak"))


def test_migrations_apply_in_order_each_in_a_transaction(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    steps = [
        Migration(1, "a table", sqlite=lambda d: d.execute("CREATE TABLE t (x INTEGER)")),
        Migration(2, "a row", sqlite=lambda d: d.execute("INSERT INTO t VALUES (1)")),
    ]
    assert migrate_sqlite(db, path, "test store", steps[:1]) == [1]
    assert not backup_path(path, 0).exists()  # it was empty: nothing to keep

    def fails(d: sqlite3.Connection) -> None:
        d.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("a migration that fails half-way")

    with pytest.raises(RuntimeError):
        migrate_sqlite(db, path, "test store", [*steps, Migration(3, "broken", sqlite=fails)])
    # Migration 2 is in; the failed 3 left nothing behind, and the version says so.
    assert sqlite_version(db) == 2
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert backup_path(path, 1).is_file()  # the copy taken before migration 2
    with pytest.raises(ValueError, match="numbered"):
        migrate_sqlite(db, path, "test store", [steps[1]])


def test_hearth_migrate_shows_then_applies(old_data: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_DATA_DIR", str(old_data.data_dir))
    status = CliRunner().invoke(main, ["migrate", "--status"])
    assert status.exit_code == 0, status.output
    assert "history            schema 0 of 6: needs migrations 1..6" in status.output
    assert status.output.count("schema 0 of 1: needs migrations 1..1") == 2, status.output
    assert "collections        schema - of 1: not created yet" in status.output
    assert [version_of(old_data.data_dir / n) for n in STORES] == [0, 0, 0]  # only looked
    assert not (old_data.data_dir / "collections.sqlite3").exists()
    applied = CliRunner().invoke(main, ["migrate"])
    assert applied.exit_code == 0, applied.output
    assert applied.output.count(": up to date") == 4, applied.output
    assert "history            schema 6 of 6: up to date" in applied.output
    # The index of 0.1.0 is the public collection "default": everyone reads it.
    assert [(c.name, c.public) for c in build_access(old_data).all()] == [("default", True)]


def test_a_store_that_cannot_be_read_is_a_line_of_the_status_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged SQLite file, or a MongoDB that does not answer: `hearth migrate --status`
    (and `hearth doctor`, which reads the same) says so for that store and exits 1."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(b"not a database, a note saved by mistake" * 50)
    monkeypatch.setenv("HEARTH_DATA_DIR", str(data))
    status = CliRunner().invoke(main, ["migrate", "--status"])
    assert status.exit_code == 1, status.output
    assert "history            schema - of 6: CANNOT BE READ: DatabaseError: file is not a " \
        "database" in status.output, status.output
    assert "collections        schema - of 1: not created yet" in status.output
    assert "Traceback" not in status.output
    monkeypatch.setenv("HEARTH_MONGODB_URI", closed_port_url().replace("http", "mongodb") +
                       "/?directConnection=true")
    monkeypatch.setenv("HEARTH_BACKEND_TIMEOUT_S", "0.5")
    down = CliRunner().invoke(main, ["migrate", "--status"])
    assert down.exit_code == 1, down.output
    assert down.output.count("CANNOT BE READ: ") == 4, down.output


def test_a_bad_setting_is_one_clean_line_in_every_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_TOP_K", "many")
    for command in (["migrate", "--status"], ["sources", "list"], ["keys", "list"],
                    ["eval", "generate"], ["ingest", "files", "."], ["doctor"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, (command, result.output)
        assert "HEARTH_TOP_K" in result.output and "Traceback" not in result.output, command
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit), (command, result.exception)


@pytest.mark.real
def test_mongodb_stores_of_0_1_0_migrate(mongo_server: str, tmp_path: Path) -> None:
    import pymongo

    documents = json.loads((FIXTURE / "mongo.json").read_text())
    client: Any = pymongo.MongoClient(mongo_server)
    db = client["old_main"]
    for name in ("conversations", "api_keys", "ingest_records"):
        db[name].insert_many(documents[name])
    settings = load_settings(_env_file=None, data_dir=tmp_path, mongodb_uri=mongo_server,
                             mongodb_db="old_main")
    history = build_history(settings)
    assert isinstance(history, MongoHistory)
    conversation = history.get("conv-ann-1")
    assert conversation is not None and len(conversation.turns) == 2
    assert [c.id for c in history.list("bob")] == ["conv-bob-1"]
    principal = build_keys(settings).authenticate(documents["tokens"]["root"])
    assert principal is not None and principal.admin
    manager = record_manager(settings, "/docs")
    try:
        assert sorted(manager.list_keys()) == ["k1", "k2"]
    finally:
        close_records(manager)
    assert [(c.name, c.public) for c in build_access(settings).all()] == [("default", True)]
    versions = {d["_id"]: d["version"] for d in db["hearth_schema"].find()}
    assert versions == {"history": 6, "API keys": 1, "ingestion records": 1, "collections": 1}
    # A newer writer's store is refused.
    db["hearth_schema"].update_one({"_id": "history"}, {"$set": {"version": 7}})
    with pytest.raises(SchemaError, match="newer Hearth"):
        build_history(settings).get("conv-ann-1")
    client.close()


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from hearth.history import SQLiteHistory
from hearth.keywords import KeywordIndex
folder, when = Path(sys.argv[1]), float(sys.argv[2])
while time.time() < when:
    pass
KeywordIndex(folder / "keywords.sqlite3")
SQLiteHistory(folder / "history.sqlite3")
"""


def test_processes_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Workers on a fresh shared data folder taking their first questions at once: both read
    the new file's version as 0 and both applied its first migration ("table chunks already
    exists"), or one failed to turn on the write-ahead log ("database is locked")."""
    import subprocess
    import sys
    import time

    for attempt in range(4):
        folder = tmp_path / f"fresh{attempt}"
        folder.mkdir()
        when = time.time() + 4.0
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(folder), str(when)],
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
