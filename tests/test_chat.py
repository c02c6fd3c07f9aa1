"""The chat service: who may continue a conversation, one complete turn stored or none, the
queue, and the same behaviour on every face (fast tier: a scripted fake model and a fake
index; the history store is a real SQLite file)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from hearth.api import create_app
from hearth.auth import MissingUser, Principal
from hearth.chat import Ask, Chat, Reply
from hearth.conversations import ConversationNotFound, Turn
from hearth.history import HistoryError
from hearth.llm import LLMError
from hearth.model import QuestionTooLong, Token
from hearth.throttle import Busy
from tests.fakes import FakeLLM, fake_services
from tests.test_api import parse_sse

WIFI = "What is the guest Wi-Fi password?"


def chat_with(tmp_path: Path, *replies: str, **overrides: Any) -> Chat:
    return Chat(fake_services(tmp_path, replies, **overrides))


def turns_of(chat: Chat, user: str) -> list[list[str]]:
    store = chat.services.history
    return [[t.question for t in store.get(c.id).turns]  # type: ignore[union-attr]
            for c in store.list(user)]


def test_an_answer_is_stored_as_one_turn_of_a_new_conversation(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "The password is marigold-42.")
    reply = chat.answer(Ask(WIFI, user_id="ann"))
    assert reply.answer.answer == "The password is marigold-42."
    assert reply.answer.sources[0].source == "wifi.md"
    assert reply.conversation_id and turns_of(chat, "ann") == [[WIFI]]


def test_a_follow_up_reads_the_stored_conversation(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "marigold-42.", "What is the guest Wi-Fi network called?",
                     "AcmeGuest.")
    first = chat.answer(Ask(WIFI, user_id="ann"))
    second = chat.answer(Ask("And the network's name?", user_id="ann",
                             conversation_id=first.conversation_id))
    assert second.conversation_id == first.conversation_id
    assert second.answer.standalone_question == "What is the guest Wi-Fi network called?"
    assert turns_of(chat, "ann") == [[WIFI, "And the network's name?"]]
    llm = chat.services.llm
    assert isinstance(llm, FakeLLM)
    assert "marigold-42." in llm.prompts[1][-1].content  # the condense prompt had the turn


@pytest.mark.parametrize("rewrite", ["as the model rewrites it", "as the user wrote it"])
def test_a_long_follow_up_that_fits_alone_fits_as_a_follow_up(tmp_path: Path,
                                                               rewrite: str) -> None:
    """A follow-up as long as a first question may be is answered: the rewrite's prompt
    counts the question beside the conversation, and the earlier question added to a follow-up
    the model did not rewrite is left out when both do not fit (it was a 503, then a 413
    "ask a shorter question" for words the user never wrote). The fake model refuses, as
    llama.cpp does, a prompt the window cannot hold."""
    first = (WIFI + " My notes: " + "the visitor laptop cannot join the network " * 80)[:2300]
    follow = ("And is it the same for the printer? " + "the printer setup details " * 150)[:3900]
    rewritten = follow if rewrite == "as the model rewrites it" else "Something else entirely"
    chat = chat_with(tmp_path, "Its password is marigold-42.", rewritten, "Yes, marigold-42.",
                     n_ctx=2048, llamacpp_n_ctx=2048, strict_window=True, max_question_chars=4000)
    asked = chat.answer(Ask(first, user_id="ann"))
    again = chat.answer(Ask(follow, user_id="ann", conversation_id=asked.conversation_id))
    assert again.conversation_id == asked.conversation_id
    assert len(turns_of(chat, "ann")[0]) == 2


@pytest.mark.parametrize("owner", [None, "bob"])
def test_an_unknown_or_foreign_conversation_is_not_found_before_the_model_runs(
        tmp_path: Path, owner: str | None) -> None:
    chat = chat_with(tmp_path, "bob's answer", "never generated")
    conversation_id = "nope"
    if owner:
        conversation_id = str(chat.answer(Ask(WIFI, user_id=owner)).conversation_id)
    llm = chat.services.llm
    assert isinstance(llm, FakeLLM)
    calls = len(llm.prompts)
    for ask in (chat.answer, chat.stream):
        with pytest.raises(ConversationNotFound) as raised:
            ask(Ask(WIFI, user_id="ann", conversation_id=conversation_id))
        assert raised.value.status == 404 and raised.value.code == "conversation_not_found"
    assert len(llm.prompts) == calls
    assert turns_of(chat, "ann") == []


def test_a_conversation_id_without_a_user_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MissingUser):
        chat_with(tmp_path).answer(Ask(WIFI, conversation_id="abc"))


def test_without_a_user_or_when_told_not_to_nothing_is_stored(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "marigold-42.", "marigold-42.")
    assert chat.answer(Ask(WIFI)).conversation_id is None
    assert chat.answer(Ask(WIFI, user_id="ann", store=False)).conversation_id is None
    assert turns_of(chat, "ann") == []


def test_a_question_over_the_limit_is_refused_before_anything_else(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, max_question_chars=20)
    with pytest.raises(QuestionTooLong) as raised:
        chat.answer(Ask(WIFI, user_id="ann"))
    assert raised.value.status == 413 and "limit is 20" in str(raised.value)


def test_a_stream_yields_tokens_then_the_stored_reply(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "marigold-42.")
    events = list(chat.stream(Ask(WIFI, user_id="ann")))
    assert "".join(e.text for e in events if isinstance(e, Token)) == "marigold-42."
    assert isinstance(events[-1], Reply) and events[-1].conversation_id
    assert turns_of(chat, "ann") == [[WIFI]]
    assert chat.services.gate.running == 0


def test_a_conversation_deleted_while_answered_is_not_made_again(tmp_path: Path) -> None:
    """A follow-up's answer, streamed while another request deleted the conversation (or
    erased the user's history): saving it made the conversation again, with this one turn."""
    chat = chat_with(tmp_path, "marigold-42.", "What is the network called?", "AcmeGuest.",
                     "marigold-42.", "marigold-42.")
    first = chat.answer(Ask(WIFI, user_id="ann"))
    stream = chat.stream(Ask("And its name?", user_id="ann",
                             conversation_id=first.conversation_id))
    assert isinstance(next(stream), Token)  # the answer is under way
    assert chat.delete_conversation(str(first.conversation_id), None, "ann")
    reply = [event for event in stream if isinstance(event, Reply)][0]
    assert reply.answer.answer == "AcmeGuest." and reply.conversation_id is None
    assert chat.conversations("ann") == []
    # The same when the user's whole history is erased meanwhile.
    first = chat.answer(Ask(WIFI, user_id="ann"))
    stream = chat.stream(Ask("And again?", user_id="ann", conversation_id=first.conversation_id))
    next(stream)
    assert chat.erase_history("ann") == 1
    assert [e for e in stream if isinstance(e, Reply)][0].conversation_id is None
    assert chat.conversations("ann") == []
    # And a new conversation's first answer, the user's history erased meanwhile, through
    # this process or another worker over the same store (the same data folder).
    other = chat_with(tmp_path)
    for eraser in (chat, other):
        stream = chat.stream(Ask(WIFI, user_id="ann"))
        next(stream)
        eraser.erase_history("ann")
        assert [e for e in stream if isinstance(e, Reply)][0].conversation_id is None
        assert chat.conversations("ann") == []
    assert chat.answer(Ask(WIFI, user_id="ann")).conversation_id  # asked after: stored
    assert len(chat.conversations("ann")) == 1
    chat.erase_history("ann")
    # A second delete of the same conversation is not found, not "deleted 0".
    kept = chat.answer(Ask(WIFI, user_id="ann"))
    assert chat.delete_conversation(str(kept.conversation_id), None, "ann")
    with pytest.raises(ConversationNotFound):
        chat.delete_conversation(str(kept.conversation_id), None, "ann")


def test_a_stream_closed_midway_stores_nothing_and_frees_the_model(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "The password of the guest network is marigold-42.")
    stream = chat.stream(Ask(WIFI, user_id="ann"))
    assert chat.services.gate.running == 1
    assert isinstance(next(stream), Token)
    stream.close()
    stream.close()  # twice is harmless: the place is released once
    assert chat.services.gate.running == 0
    assert turns_of(chat, "ann") == []


def test_a_model_failing_mid_answer_stores_nothing_and_frees_the_model(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "The password of the guest network is marigold-42.",
                     fail_after=5)
    with pytest.raises(LLMError):
        chat.answer(Ask(WIFI, user_id="ann"))
    with pytest.raises(LLMError):
        list(chat.stream(Ask(WIFI, user_id="ann")))
    assert chat.services.gate.running == 0
    assert turns_of(chat, "ann") == []


def test_a_history_store_that_is_down_fails_before_the_model_runs(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "never generated")
    chat.services.history._db.close()  # type: ignore[attr-defined]
    with pytest.raises(HistoryError):
        chat.answer(Ask(WIFI, user_id="ann"))
    llm = chat.services.llm
    assert isinstance(llm, FakeLLM) and llm.prompts == []


def test_a_full_queue_is_busy(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "marigold-42.", max_queued_generations=0)
    holding = chat.stream(Ask(WIFI, user_id="ann"))
    with pytest.raises(Busy) as raised:
        chat.answer(Ask(WIFI, user_id="bob"))
    assert raised.value.status == 503 and raised.value.retry_after > 0
    holding.close()
    assert chat.answer(Ask(WIFI, user_id="bob")).conversation_id


def test_who_may_see_a_conversation(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "marigold-42.")
    conversation_id = str(chat.answer(Ask(WIFI, user_id="ann")).conversation_id)
    ann, bob, admin = Principal("ann", False), Principal("bob", False), Principal("root", True)
    assert chat.conversation(conversation_id, ann).user_id == "ann"
    assert chat.conversation(conversation_id, admin).user_id == "ann"
    assert chat.conversation(conversation_id, None).user_id == "ann"  # keys off
    for viewer, user in ((bob, None), (None, "bob"), (admin, "bob")):
        with pytest.raises(ConversationNotFound):
            chat.conversation(conversation_id, viewer, user)
    with pytest.raises(ConversationNotFound):
        chat.delete_conversation(conversation_id, bob)
    assert chat.delete_conversation(conversation_id, ann)
    assert chat.conversations("ann") == []


# -- every face asks through the chat service, and behaves alike ---------------------------------

@pytest.fixture
def client(tmp_path: Path) -> Any:
    services = fake_services(tmp_path, ["marigold-42."] * 10)
    return create_app(services.settings, services).test_client()


def test_an_unknown_conversation_is_404_on_every_face(client: Any) -> None:
    api = client.post("/api/question", json={"question": WIFI, "user_id": "ann",
                                              "conversation_id": "nope"})
    assert api.status_code == 404 and api.get_json()["error"]["code"] == "conversation_not_found"
    v1 = client.post("/v1/chat/completions", json={
        "user": "ann", "conversation_id": "nope",
        "messages": [{"role": "user", "content": WIFI}]})
    assert v1.status_code == 404
    assert v1.get_json()["error"]["code"] == "conversation_not_found"
    assert v1.get_json()["error"]["type"] == "not_found_error"  # OpenAI's shape
    listed = client.get("/api/conversations?user_id=ann").get_json()
    assert listed == {"conversations": []}


def test_the_api_streams_and_stores_one_turn(client: Any) -> None:
    response = client.post("/api/question", json={"question": WIFI, "user_id": "ann",
                                                   "stream": True})
    events = [block.split("\n") for block in response.get_data(as_text=True).strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[-2:] == ["sources", "done"] and set(names[:-2]) == {"token"}
    done = json.loads(events[-1][1].removeprefix("data: "))
    conversation = client.get(f"/api/conversations/{done['conversation_id']}?user_id=ann")
    assert [t["answer"] for t in conversation.get_json()["turns"]] == ["marigold-42."]


def test_v1_continues_a_resent_chat_in_one_conversation(client: Any) -> None:
    messages: list[dict[str, str]] = [{"role": "user", "content": WIFI}]
    first = client.post("/v1/chat/completions", json={"user": "ann", "messages": messages})
    body = first.get_json()
    messages += [{"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And the network?"}]
    second = client.post("/v1/chat/completions", json={"user": "ann", "messages": messages})
    assert second.get_json()["conversation_id"] == body["conversation_id"]
    conversation = client.get(f"/api/conversations/{body['conversation_id']}?user_id=ann")
    assert [t["question"] for t in conversation.get_json()["turns"]] == [WIFI, "And the network?"]


def test_v1_continues_a_streamed_chat_whose_first_answer_was_withheld(tmp_path: Path) -> None:
    """Streamed, a withheld answer reaches the client as the model's words and a note, which it
    sends back as the first answer; the conversation had been named after the answer stored
    (why it was withheld), so the chat's next turn began a second conversation."""
    services = fake_services(tmp_path, ["The password is marigold-97531.", "marigold-42."] * 3)
    client = create_app(services.settings, services).test_client()
    messages: list[dict[str, str]] = [{"role": "user", "content": WIFI}]
    first = client.post("/v1/chat/completions", json={"user": "ann", "messages": messages,
                                                       "stream": True})
    chunks = [json.loads(line[6:]) for line in first.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    read = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    ended = [c for c in chunks if c.get("conversation_id")][0]
    assert ended["refused"] and ended["draft"] and "97531" in read  # withheld, as streamed
    messages += [{"role": "assistant", "content": read},
                 {"role": "user", "content": "And the network?"}]
    second = client.post("/v1/chat/completions", json={"user": "ann", "messages": messages})
    assert second.get_json()["conversation_id"] == ended["conversation_id"]
    assert len(client.get("/api/conversations?user_id=ann").get_json()["conversations"]) == 1


def test_v1_takes_nulls_refuses_what_it_cannot_do_and_errs_in_openai_shape(
        tmp_path: Path) -> None:
    """Nulls OpenAI allows were 400; tool_choice "required" and a JSON response_format were
    silently ignored; the guard's errors on /v1 (no key, another site, too many requests)
    came in Hearth's shape; a 405 had no Allow header."""
    services = fake_services(tmp_path, ["marigold-42."] * 10, auth=True)
    client = create_app(services.settings, services).test_client()
    key = {"Authorization": "Bearer " + services.keys.create("ann")[0]}
    ask = {"messages": [{"role": "user", "content": WIFI}]}
    nulls = client.post("/v1/chat/completions", headers=key, json={
        **ask, "stream": None, "n": None, "logprobs": None, "top_logprobs": None,
        "stream_options": None, "user": None, "tool_choice": None, "response_format": None})
    assert nulls.status_code == 200, nulls.get_json()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for extra, param in [({"n": True}, "n"), ({"tools": tools, "tool_choice": "required"},
                                               "tool_choice"),
                         ({"tool_choice": {"type": "function", "function": {"name": "f"}}},
                          "tool_choice"),
                         ({"response_format": {"type": "json_object"}}, "response_format")]:
        refused = client.post("/v1/chat/completions", headers=key, json={**ask, **extra})
        error = refused.get_json()["error"]
        assert refused.status_code == 400 and error["param"] == param, error
        assert error["type"] == "invalid_request_error"
    for extra in ({"tools": tools, "tool_choice": "auto"}, {"response_format": {"type": "text"}}):
        assert client.post("/v1/chat/completions", headers=key,
                           json={**ask, **extra}).status_code == 200
    # The guard's refusals, in the shape an OpenAI client reads.
    unkeyed = client.get("/v1/models")
    assert unkeyed.status_code == 401
    assert unkeyed.get_json()["error"]["type"] == "authentication_error"
    elsewhere = client.post("/v1/chat/completions", json=ask,
                            headers={**key, "Origin": "http://evil.example"})
    assert elsewhere.status_code == 403
    assert elsewhere.get_json()["error"]["type"] == "permission_error"
    assert set(client.get("/api/conversations", headers=key).get_json()) == {"conversations"}
    assert set(client.get("/api/conversations").get_json()["error"]) == {"code", "message"}
    document = client.get("/api/openapi.json").get_json()
    assert document["paths"]["/v1/models"]["get"]["responses"]["401"]["content"][
        "application/json"]["schema"]["$ref"].endswith("/OpenAIErrorOut")
    # A method a route does not take says which it does.
    for path in ("/api/question", "/v1/chat/completions"):
        wrong = client.put(path, headers=key)
        assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]


def test_the_api_answers_unstored_when_the_conversation_goes_meanwhile(tmp_path: Path) -> None:
    """The route asserted the answer was stored: a conversation deleted while its question was
    answered gave a 500, streamed or not, where the answer is to be given, unstored."""
    services = fake_services(tmp_path, ["marigold-42."] * 10)
    client = create_app(services.settings, services).test_client()
    first = client.post("/api/question", json={"question": WIFI, "user_id": "ann"}).get_json()
    assistant = services.assistant
    real_answer, real_stream = assistant.answer, assistant.stream

    def deleting(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            services.history.delete(first["conversation_id"])
            return real(*args, **kwargs)
        return call

    assistant.answer, assistant.stream = deleting(real_answer), deleting(real_stream)  # type: ignore[method-assign]
    follow = {"question": "And again?", "user_id": "ann",
              "conversation_id": first["conversation_id"]}
    plain = client.post("/api/question", json=follow)
    assert plain.status_code == 200 and plain.get_json()["conversation_id"] is None
    assert plain.get_json()["answer"] == "marigold-42."
    services.history.add_turn(first["conversation_id"], "ann", Turn(question=WIFI, answer="a"))
    streamed = client.post("/api/question", json={**follow, "stream": True})
    done = [data for event, data in parse_sse(streamed.get_data()) if event == "done"]
    assert done and done[0]["conversation_id"] is None
    assert client.get("/api/conversations?user_id=ann").get_json()["conversations"] == []


def test_health_names_the_version(client: Any) -> None:
    from hearth import __version__

    assert client.get("/healthz").get_json() == {"status": "ok", "version": __version__}


def test_turns_from_an_older_or_newer_writer_load(tmp_path: Path) -> None:
    # A stored turn missing fields a later version added, or carrying one this version lacks.
    old = Turn.from_dict({"question": "q", "answer": "a"})
    assert old.sources == [] and old.model == ""
    assert Turn.from_dict({"question": "q", "answer": "a", "feedback": "helpful"}).answer == "a"


def test_every_face_returns_the_evidence_and_the_verdict(client: Any) -> None:
    api = client.post("/api/question", json={"question": WIFI, "user_id": "ann"}).get_json()
    assert api["grounded"] is True and api["unsupported"] == []
    assert "marigold-42" in api["evidence"][0]["text"]
    v1 = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": WIFI}]}).get_json()
    assert v1["grounded"] is True and v1["evidence"] == api["evidence"]
    turn = client.get(f"/api/conversations/{api['conversation_id']}").get_json()["turns"][0]
    assert turn["evidence"] == api["evidence"] and turn["grounded"] is True


def test_every_face_returns_the_models_confidence_and_the_turn_keeps_it(tmp_path: Path) -> None:
    """Fast tier: the backend's log-probabilities are scripted (tests/test_llm.py reads real
    ones from llama.cpp, tests/test_api.py shows them through the API)."""
    services = fake_services(tmp_path, ["marigold-42."] * 10, logprobs=[-0.1, -0.3])
    client = create_app(services.settings, services).test_client()
    sure = round(math.exp(-0.2), 6)
    api = client.post("/api/question", json={"question": WIFI, "user_id": "ann"}).get_json()
    assert round(api["confidence"], 6) == sure
    v1 = client.post("/v1/chat/completions", json={
        "user": "ann", "messages": [{"role": "user", "content": WIFI}]}).get_json()
    assert round(v1["confidence"], 6) == sure
    streamed = client.post("/v1/chat/completions", json={
        "stream": True, "messages": [{"role": "user", "content": WIFI}]}).get_data(as_text=True)
    chunks = [json.loads(line.removeprefix("data: ")) for line in streamed.splitlines()
              if line.startswith("data: {")]
    assert round(chunks[-1]["confidence"], 6) == sure  # with finish_reason and the extensions
    turns = client.get(f"/api/conversations/{api['conversation_id']}?user_id=ann").get_json()
    assert [round(t["confidence"], 6) for t in turns["turns"]] == [sure]
    # A backend that does not report it: null, on the answer and the stored turn.
    quiet = fake_services(tmp_path / "quiet", ["marigold-42."])
    answer = create_app(quiet.settings, quiet).test_client().post(
        "/api/question", json={"question": WIFI, "user_id": "ann"}).get_json()
    assert answer["confidence"] is None
    assert quiet.history.get(answer["conversation_id"]).turns[0].confidence is None


def test_an_empty_generation_is_an_error_and_stores_nothing(tmp_path: Path) -> None:
    chat = chat_with(tmp_path, "   ")
    with pytest.raises(LLMError, match="empty answer"):
        chat.answer(Ask(WIFI, user_id="ann"))
    assert turns_of(chat, "ann") == [] and chat.services.gate.running == 0
