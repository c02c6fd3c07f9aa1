"""Feedback on answers: marked helpful or wrong through the API and the OpenAI-compatible face,
stored with the turn (SQLite here, MongoDB in the compose profile's test), and exported as
candidate questions by `hearth eval feedback`. Real parts: SmolLM2, the embedding model,
Chroma, the SQLite history."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.api import create_app
from hearth.cli import main
from hearth.history import MongoHistory
from hearth.services import Services
from tests.test_api import index


@pytest.fixture
def served(make_services: Any) -> Any:
    services: Services = make_services()
    index(services)
    return create_app(services.settings, services).test_client(), services


def test_an_answer_is_marked_and_the_mark_is_kept_and_exported(served: Any,
                                                                monkeypatch: Any) -> None:
    client, services = served
    first = client.post("/api/question", json={"question": "How do I ingest PDFs?",
                                               "user_id": "ann"}).get_json()
    cid = first["conversation_id"]
    client.post("/api/question", json={"question": "And a website?", "user_id": "ann",
                                       "conversation_id": cid})
    marked = client.post(f"/api/conversations/{cid}/feedback", json={
        "user_id": "ann", "turn": 0, "rating": "wrong", "comment": "  it missed the flag  "})
    assert marked.status_code == 200, marked.get_data(as_text=True)
    assert marked.get_json() == {"conversation_id": cid, "turn": 0, "rating": "wrong",
                                 "comment": "it missed the flag"}
    last = client.post(f"/api/conversations/{cid}/feedback",
                       json={"user_id": "ann", "rating": "helpful"})
    assert last.get_json()["turn"] == 1  # no turn: the last answer
    turns = client.get(f"/api/conversations/{cid}?user_id=ann").get_json()["turns"]
    assert [t["feedback"]["rating"] for t in turns] == ["wrong", "helpful"]
    assert turns[0]["answer"] == first["answer"]  # the rest of the turn is as it was
    # Marked again: the mark is replaced, not added.
    client.post(f"/api/conversations/{cid}/feedback",
                json={"user_id": "ann", "turn": 1, "rating": "wrong"})
    # Exported: the wrong ones by default, in the evaluation sets' shape.
    monkeypatch.setenv("HEARTH_DATA_DIR", str(services.settings.data_dir))
    result = CliRunner().invoke(main, ["eval", "feedback"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [(c["question"], c["rating"], c["comment"]) for c in lines] == [
        ("How do I ingest PDFs?", "wrong", "it missed the flag"), ("And a website?", "wrong", "")]
    assert lines[0]["id"] == f"feedback-{cid}-0" and lines[0]["key_facts"] == []
    assert lines[0]["answerable"] is True and lines[0]["answer"] == first["answer"]
    # Into a folder that is not there: one clear line, not a traceback.
    missing = services.settings.data_dir / "no-such-folder" / "marked.jsonl"
    result = CliRunner().invoke(main, ["eval", "feedback", "-o", str(missing)])
    assert result.exit_code == 1 and "No such file or directory" in result.output, result.output
    assert str(missing) in result.output and "Traceback" not in result.output


def test_an_exported_answer_names_its_pdf_page_as_the_sets_do(served: Any, tmp_path: Any,
                                                               monkeypatch: Any) -> None:
    from hearth.evaluation.keyfacts import load_fact_sets

    client, services = served
    asked = client.post("/api/question", json={
        "question": "How do I ingest a folder of PDFs?", "user_id": "ann"}).get_json()
    places = [(s["source"], s["page"]) for s in asked["sources"]]
    assert places[0] == ("/docs/ingest.md", 3), places  # page 3 of a paged document, first
    client.post(f"/api/conversations/{asked['conversation_id']}/feedback",
                json={"user_id": "ann", "rating": "wrong"})
    monkeypatch.setenv("HEARTH_DATA_DIR", str(services.settings.data_dir))
    result = CliRunner().invoke(main, ["eval", "feedback"])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert (line["source"], line["page"]) == ("/docs/ingest.md", 3)
    assert line["cited"] == [{"source": source, "page": page} if page else {"source": source}
                             for source, page in places]  # a page only where there is one
    # With its key facts filled in, the line is a question of a set, page and all.
    line["key_facts"] = ["hearth ingest files"]
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps(line) + "\n")
    [question] = load_fact_sets([candidates])
    assert (question.source, question.page) == ("/docs/ingest.md", 3)


def test_feedback_is_the_owners_and_bad_marks_are_clear_errors(served: Any) -> None:
    client, _ = served
    cid = client.post("/api/question", json={"question": "How do I ingest PDFs?",
                                             "user_id": "ann"}).get_json()["conversation_id"]
    url = f"/api/conversations/{cid}/feedback"
    assert client.post(url, json={"user_id": "bob", "rating": "wrong"}).status_code == 404
    assert client.post("/api/conversations/nope/feedback",
                       json={"user_id": "ann", "rating": "wrong"}).status_code == 404
    missing = client.post(url, json={"user_id": "ann", "rating": "wrong", "turn": 5})
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "turn_not_found"
    for bad in ({"user_id": "ann", "rating": "meh"}, {"user_id": "ann"},
                {"user_id": "ann", "rating": "wrong", "comment": "x" * 2001},
                {"user_id": "ann", "rating": "wrong", "turn": -1}):
        response = client.post(url, json=bad)
        assert response.status_code == 400, bad
    turn = client.get(f"/api/conversations/{cid}?user_id=ann").get_json()["turns"][0]
    assert turn["feedback"] is None


def test_an_openai_client_marks_a_completion(served: Any) -> None:
    client, _ = served
    completion = client.post("/v1/chat/completions", json={
        "model": "hearth", "user": "ann",
        "messages": [{"role": "user", "content": "How do I ingest PDFs?"}]}).get_json()
    cid = completion["conversation_id"]
    marked = client.post("/v1/feedback", json={"conversation_id": cid, "user": "ann",
                                               "rating": "helpful"})
    assert marked.status_code == 200 and marked.get_json()["turn"] == 0
    wrong_user = client.post("/v1/feedback", json={"conversation_id": cid, "user": "bob",
                                                   "rating": "helpful"})
    assert wrong_user.status_code == 404
    assert wrong_user.get_json()["error"]["type"] == "not_found_error"


@pytest.mark.real
def test_feedback_is_stored_in_mongodb(mongo_server: str, make_settings: Any) -> None:
    from hearth.conversations import Turn

    settings = make_settings(mongodb_uri=mongo_server, mongodb_db="feedback_test")
    store = MongoHistory(mongo_server, settings.mongodb_db)
    store.add_turn("c1", "ann", Turn(question="Q?", answer="A."))
    store.add_turn("c1", "ann", Turn(question="Q2?", answer="A2."))
    assert store.set_feedback("c1", 1, {"rating": "wrong", "comment": "", "at": 1.0})
    assert not store.set_feedback("c1", 2, {"rating": "wrong", "comment": "", "at": 1.0})
    conversation = store.get("c1")
    assert conversation is not None and conversation.turns[1].feedback == {
        "rating": "wrong", "comment": "", "at": 1.0}
    assert [(c.id, n) for c, n in store.marked()] == [("c1", 1)]
