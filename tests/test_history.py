"""Both history stores, the same behaviour: SQLite in a file, MongoDB over a real wire server."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hearth.conversations import ConversationNotFound, Turn
from hearth.history import HistoryError, MongoHistory, SQLiteHistory
from tests.conftest import MongoServer, closed_port_url


@pytest.fixture(params=["sqlite", pytest.param("mongodb", marks=pytest.mark.real)])
def store(request: Any, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SQLiteHistory(tmp_path / "history.sqlite3")
    uri = request.getfixturevalue("mongo_server")
    return MongoHistory(uri, f"test_{tmp_path.name[-20:]}")


def turn(n: int, **extra: Any) -> Turn:
    return Turn(question=f"question {n}", answer=f"answer {n}", created_at=1000.0 + n, **extra)


def test_turns_are_stored_whole_and_in_order(store: Any) -> None:
    sources = [{"source": "a.pdf", "title": "A", "page": 2, "section": None, "snippet": "s",
                "chunk_id": "c1", "score": 0.5}]
    store.add_turn("c1", "ann", turn(1, sources=sources, model="llamacpp:x",
                                     timings={"total_s": 1.5}, usage={"prompt_tokens": 9}))
    store.add_turn("c1", "ann", turn(2))
    conversation = store.get("c1")
    assert conversation.user_id == "ann"
    assert conversation.title == "question 1"
    assert [t.question for t in conversation.turns] == ["question 1", "question 2"]
    first = conversation.turns[0]
    assert (first.sources, first.model, first.timings, first.usage) == (
        sources, "llamacpp:x", {"total_s": 1.5}, {"prompt_tokens": 9})
    assert store.get("nope") is None


def test_conversations_are_listed_newest_first_per_user(store: Any) -> None:
    store.add_turn("old", "ann", turn(1))
    store.add_turn("new", "ann", turn(5))
    store.add_turn("other", "bob", turn(3))
    store.add_turn("old", "ann", turn(2))
    listed = [(c.id, c.summary()["turn_count"]) for c in store.list("ann")]
    assert listed == [("new", 1), ("old", 2)]
    assert [c.id for c in store.list("nobody")] == []


def test_a_conversation_belongs_to_its_user(store: Any) -> None:
    store.add_turn("c1", "ann", turn(1))
    with pytest.raises(ConversationNotFound):
        store.add_turn("c1", "eve", turn(2))
    assert len(store.get("c1").turns) == 1


def test_delete_one_and_erase_a_user(store: Any) -> None:
    for cid, user in (("a1", "ann"), ("a2", "ann"), ("b1", "bob")):
        store.add_turn(cid, user, turn(1))
    assert store.delete("a1") is True
    assert store.delete("a1") is False
    assert store.delete_user("ann") == 1
    assert store.list("ann") == []
    assert [c.id for c in store.list("bob")] == ["b1"]
    # A turn for a conversation that was there (new=False) does not make it again.
    with pytest.raises(ConversationNotFound):
        store.add_turn("a2", "ann", turn(2), new=False)
    assert store.get("a2") is None
    store.add_turn("b1", "bob", turn(2), new=False)
    assert len(store.get("b1").turns) == 2


def test_a_turn_asked_before_another_workers_erasure_is_not_stored(
        request: Any, store: Any, tmp_path: Path) -> None:
    """Two workers over one store: a question asked, then its user's history erased by the
    other worker (or `hearth users erase`) while it was answered, then its turn saved. It
    began a new conversation, so nothing said it was gone: it was stored after the erasure."""
    if isinstance(store, SQLiteHistory):
        other = SQLiteHistory(tmp_path / "history.sqlite3", remember_s=60)
    else:
        other = MongoHistory(request.getfixturevalue("mongo_server"),
                             f"test_{tmp_path.name[-20:]}", remember_s=60)
    asked = time.time()
    store.add_turn("old", "ann", turn(1))
    assert other.delete_user("ann") == 1
    with pytest.raises(ConversationNotFound):
        store.add_turn("new", "ann", turn(2), asked_at=asked)
    assert store.get("new") is None and store.list("ann") == []
    store.add_turn("b1", "bob", turn(3), asked_at=asked)  # another user's: stored
    store.add_turn("new", "ann", turn(4), asked_at=time.time())  # asked after: stored
    assert [c.id for c in store.list("ann")] == ["new"]
    # The record of an erasure, which names the user, is kept only while a question asked
    # before it may still be answered (remember_s): the next erasure drops older ones.
    other.remember_s = 0
    time.sleep(0.01)
    other.delete_user("bob")
    store.add_turn("late", "ann", turn(5), asked_at=asked)
    assert [c.id for c in store.list("ann")] == ["late", "new"]


def test_concurrent_turns_of_one_user_are_all_stored_in_order(store: Any) -> None:
    def ask(thread: int) -> None:
        for n in range(25):
            store.add_turn("busy", "ann", Turn(question=f"{thread}:{n}", answer="a"))

    threads = [threading.Thread(target=ask, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    questions = [t.question for t in store.get("busy").turns]
    assert len(questions) == 200
    for thread in range(8):
        mine = [q for q in questions if q.startswith(f"{thread}:")]
        assert mine == [f"{thread}:{n}" for n in range(25)]


def test_mongodb_down_is_a_history_error(tmp_path: Path) -> None:
    store = MongoHistory(closed_port_url("mongodb"), "hearth", timeout_s=0.3)
    with pytest.raises(HistoryError, match="MongoDB at mongodb://127.0.0.1"):
        store.ping()
    with pytest.raises(HistoryError):
        store.add_turn("c1", "ann", turn(1))


def test_mongodb_keeps_history_across_a_restart(mongo: MongoServer, mongo_server: str) -> None:
    MongoHistory(mongo_server, "restart").add_turn("c1", "ann", turn(1))
    mongo.stop()
    with pytest.raises(HistoryError):
        MongoHistory(mongo_server, "restart", timeout_s=0.5).ping()
    mongo.start()
    assert [t.question for t in MongoHistory(mongo_server, "restart").get("c1").turns] == [
        "question 1"]


def test_sqlite_unwritable_path_is_a_history_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(HistoryError, match="cannot open the history store"):
        SQLiteHistory(blocker / "history.sqlite3")
