"""The OpenAI-compatible API, over real HTTP on 127.0.0.1, with the clients people already use.

The official ``openai`` package and LangChain's ``ChatOpenAI`` talk to Hearth served by a real
WSGI server, over a real Chroma index and llama.cpp: the default Qwen 0.5B model where the answer
must be correct, SmolLM2 (fast, poor answers) where only the plumbing is checked.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from flask import Flask
from werkzeug.serving import make_server

from hearth import api
from hearth.api import create_app
from hearth.config import load_settings
from hearth.conversations import Turn
from hearth.ingest.pipeline import ingest_files
from hearth.llm import Drawn
from hearth.openai_compat import (
    OpenAIChatChunk,
    OpenAIMessage,
    content_logprobs,
    split_messages,
)
from hearth.services import Services, build_services
from tests.conftest import MODELS, QWEN, closed_port_url, free_port

GUIDE = """# Acme office handbook

## Guest Wi-Fi

Visitors use the guest Wi-Fi network called AcmeGuest. The password of the guest Wi-Fi is
marigold-42. Ask the front desk if it does not work.

## Printing

To install the printer driver, run setup.exe from the driver folder and restart the computer.
"""


def make_app(services: Services) -> Flask:
    return create_app(services.settings, services)


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """The app on a real HTTP server on 127.0.0.1, in a thread; yields its base URL."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(10)


def client_for(url: str) -> openai.OpenAI:
    # The key is sent as "Authorization: Bearer ..."; with keys off Hearth ignores it.
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def index_guide(services: Services, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "office.md").write_text(GUIDE)
    assert ingest_files(services, folder).added == 1


@pytest.fixture(scope="module")
def qwen_url(tmp_path_factory: pytest.TempPathFactory, embeddings: Any) -> Iterator[str]:
    """Hearth with the default model (Qwen 0.5B) over the handbook, served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("openai-qwen")
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("HEARTH_")]:
            env.delenv(name)
        services = build_services(
            load_settings(_env_file=None, data_dir=root / "data", models_dir=MODELS,
                          llamacpp_model=QWEN, max_new_tokens=64),
            embeddings=embeddings,
        )
    index_guide(services, root / "guide")
    with serving(make_app(services)) as url:
        yield url


@pytest.fixture
def smol(make_services: Callable[..., Services], tmp_path: Path) -> Services:
    """Hearth with SmolLM2 over the handbook: for the plumbing, not the answers."""
    services = make_services()
    index_guide(services, tmp_path / "guide")
    return services


@pytest.fixture
def smol_url(smol: Services) -> Iterator[str]:
    with serving(make_app(smol)) as url:
        yield url


QUESTION = "What is the password of the guest Wi-Fi?"


@pytest.mark.slow
def test_the_openai_client_gets_a_correct_answer_with_and_without_streaming(qwen_url: str) -> None:
    client = client_for(qwen_url)
    completion = client.chat.completions.create(
        model="hearth", messages=[{"role": "user", "content": QUESTION}], user="ann")
    answer = completion.choices[0].message.content or ""
    assert "marigold-42" in answer, answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    extra = completion.model_extra or {}
    assert extra["refused"] is False
    assert extra["sources"][0]["source"].endswith("office.md")
    assert "marigold-42" in extra["sources"][0]["snippet"]

    pieces: list[str] = []
    final: dict[str, Any] = {}
    usage = None
    for chunk in client.chat.completions.create(
            model="hearth", messages=[{"role": "user", "content": "Tell me the guest Wi-Fi password."}],
            user="ann", stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                final = {"finish_reason": chunk.choices[0].finish_reason, **(chunk.model_extra or {})}
        if chunk.usage:
            usage = chunk.usage
    streamed = "".join(pieces)
    assert "marigold-42" in streamed, streamed
    assert len([p for p in pieces if p]) > 3  # it came in pieces, as it was generated
    assert final["finish_reason"] == "stop"
    assert final["sources"][0]["source"].endswith("office.md")
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    # Both turns are in ann's history, as two conversations, newest first.
    listed = httpx.get(f"{qwen_url}/api/conversations", params={"user_id": "ann"}).json()
    assert [c["title"] for c in listed["conversations"]] == [
        "Tell me the guest Wi-Fi password.", QUESTION]
    assert listed["conversations"][1]["id"] == extra["conversation_id"]
    assert listed["conversations"][0]["id"] == final["conversation_id"]


@pytest.mark.slow
def test_the_openai_client_gets_each_tokens_log_probability(qwen_url: str) -> None:
    """``logprobs`` and ``top_logprobs`` as OpenAI's clients read them: the tokens that wrote
    the answer, each with its log-probability under the model and the likeliest tokens at
    its place (llama.cpp in process records them as it draws)."""
    client = client_for(qwen_url)
    completion = client.chat.completions.create(
        model="hearth", messages=[{"role": "user", "content": QUESTION}],
        logprobs=True, top_logprobs=3)
    choice = completion.choices[0]
    answer = choice.message.content or ""
    assert "marigold-42" in answer and choice.finish_reason == "stop", answer
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == answer  # every token of the answer, no other
    assert b"".join(bytes(t.bytes or []) for t in tokens) == answer.encode()
    for token in tokens:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        ranked = [t.logprob for t in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True) and ranked[0] >= token.logprob - 1e-9
    # Sampled at a low temperature, the model mostly drew its likeliest token, whose
    # log-probability is then the drawn one's.
    likeliest = [t for t in tokens if t.top_logprobs[0].token == t.token]
    assert len(likeliest) >= len(tokens) // 2
    assert all(t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in likeliest)
    assert min(t.logprob for t in tokens) < max(t.logprob for t in tokens)  # read, not made up

    # Streamed: the chunk that finishes the answer carries the tokens of all it streamed.
    pieces: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(
            model="hearth", messages=[{"role": "user", "content": QUESTION}], stream=True,
            logprobs=True):
        pieces.append(chunk.choices[0].delta.content or "")
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0]
    assert finish is not None and finish.logprobs is not None and finish.logprobs.content
    assert "".join(t.token for t in finish.logprobs.content) == "".join(pieces).strip()
    assert all(t.top_logprobs == [] for t in finish.logprobs.content)

    # Not asked, none.
    plain = client.chat.completions.create(model="hearth",
                                           messages=[{"role": "user", "content": QUESTION}])
    assert plain.choices[0].logprobs is None


def test_logprobs_are_the_tokens_that_wrote_the_content() -> None:
    """Which drawn tokens ``choices[].logprobs`` lists (fast tier: tokens made up here, the
    selection is the logic under test): those the content begins with, whitespace before the
    answer left out, the alternatives cut to the number asked; none for content that is not
    the model's words."""
    def drawn(*pieces: bytes) -> list[Drawn]:
        return [Drawn(p, -0.1 * n, [(p, -0.1 * n), (b" x", -3.0)]) for n, p in enumerate(pieces)]

    tokens = drawn(b"\n", b"The", b" answer", b" is", b" 42", b".", b" The", b" answer")
    # The answer as Hearth keeps it: stripped, cut where it began to repeat, a note added.
    out = content_logprobs(tokens, "The answer is 42.\n\n(The model was unsure.)", 1)
    assert out is not None and out.content is not None
    assert [t.token for t in out.content] == ["The", " answer", " is", " 42", "."]
    assert [len(t.top_logprobs) for t in out.content] == [1] * 5
    assert out.content[3].logprob == pytest.approx(-0.4) and out.content[3].bytes == list(b" 42")
    # A character of several tokens: each token keeps its own bytes.
    euro = "€".encode()
    split = content_logprobs(drawn(b"Costs", b" ", euro[:1], euro[1:], b"5"), "Costs €5", 2)
    assert split is not None and split.content is not None
    assert [bytes(t.bytes or []) for t in split.content] == [b"Costs", b" ", euro[:1], euro[1:], b"5"]
    assert b"".join(bytes(t.bytes or []) for t in split.content).decode() == "Costs €5"
    assert len(split.content[0].top_logprobs) == 2
    # Words that are not the model's (a refusal before it, a withheld answer), or no tokens.
    assert content_logprobs(tokens, "I could not find this in the documents.", 0) is None
    assert content_logprobs([], "The answer is 42.", 0) is None


@pytest.mark.slow
def test_langchain_chat_openai_works_against_hearth(qwen_url: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{qwen_url}/v1", api_key="not-needed",  # type: ignore[arg-type]
                      model="hearth", max_retries=0, timeout=300)
    message = chat.invoke(QUESTION)
    assert "marigold-42" in str(message.content), message.content
    assert message.usage_metadata and message.usage_metadata["output_tokens"] > 0

    chunks = list(chat.stream(QUESTION))
    assert len(chunks) > 3
    assert "marigold-42" in "".join(str(c.content) for c in chunks)


def test_a_chat_resent_whole_continues_one_conversation(smol: Services, smol_url: str) -> None:
    client = client_for(smol_url)
    system = {"role": "system", "content": "You are a helpful assistant."}
    first = client.chat.completions.create(
        model="hearth", user="ann", messages=[system, {"role": "user", "content": QUESTION}])
    conversation_id = (first.model_extra or {})["conversation_id"]
    assert conversation_id
    answer = first.choices[0].message.content or ""
    second = client.chat.completions.create(model="hearth", user="ann", messages=[
        system, {"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer},
        {"role": "user", "content": "And how do I install the printer driver?"}])
    assert (second.model_extra or {})["conversation_id"] == conversation_id

    conversation = smol.history.get(conversation_id)
    assert conversation is not None and conversation.user_id == "ann"
    assert [t.question for t in conversation.turns] == [
        QUESTION, "And how do I install the printer driver?"]
    assert conversation.turns[0].answer == answer.strip()
    # Another user asking the same never lands in ann's conversation.
    other = client.chat.completions.create(
        model="hearth", user="bob", messages=[system, {"role": "user", "content": QUESTION}])
    assert (other.model_extra or {})["conversation_id"] != conversation_id


def test_a_named_conversation_belongs_to_its_user(smol: Services, smol_url: str) -> None:
    client = client_for(smol_url)
    messages = [{"role": "user", "content": QUESTION}]
    done = client.chat.completions.create(model="hearth", user="ann", messages=messages)  # type: ignore[arg-type]
    conversation_id = (done.model_extra or {})["conversation_id"]
    assert smol.history.get(conversation_id).user_id == "ann"  # type: ignore[union-attr]
    again = client.chat.completions.create(model="hearth", user="ann", messages=messages,  # type: ignore[arg-type]
                                           extra_body={"conversation_id": conversation_id})
    assert (again.model_extra or {})["conversation_id"] == conversation_id
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="hearth", user="bob", messages=messages,  # type: ignore[arg-type]
                                       extra_body={"conversation_id": conversation_id})
    assert raised.value.code == "conversation_not_found"
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="hearth", messages=messages,  # type: ignore[arg-type]
                                       extra_body={"conversation_id": conversation_id})
    assert raised.value.code == "missing_field" and "user" in raised.value.message
    # As on /api: a conversation that does not exist is not created by naming it.
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="hearth", user="ann", messages=messages,  # type: ignore[arg-type]
                                       extra_body={"conversation_id": "ann-wifi"})
    assert raised.value.code == "conversation_not_found"
    assert smol.history.get("ann-wifi") is None
    assert len(smol.history.get(conversation_id).turns) == 2  # type: ignore[union-attr]


def test_without_a_user_nothing_is_stored(smol: Services) -> None:
    client = make_app(smol).test_client()
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]},
        headers={"Authorization": "Bearer sk-anything"})  # ignored: keys are off
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["conversation_id"] is None and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["sources"][0]["source"].endswith("office.md")
    assert smol.history.list("ann") == [] and smol.history.list("") == []
    with sqlite3.connect(smol.settings.history_path) as db:
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone() == (0,)


def test_clients_without_a_user_queue_by_address_not_as_one(smol: Services) -> None:
    """An anonymous client's questions count against its own address at the model's gate: one
    client holding its places does not turn away another's."""
    smol.gate.per_user, smol.gate.concurrent = 1, 2
    client = make_app(smol).test_client()
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    smol.gate.acquire("addr:127.0.0.2")  # a client at .2 holds its one place
    try:
        busy = client.post("/v1/chat/completions", json=body,
                           environ_base={"REMOTE_ADDR": "127.0.0.2"})
        assert busy.status_code == 503, busy.get_json()
        answered = client.post("/v1/chat/completions", json=body,
                               environ_base={"REMOTE_ADDR": "127.0.0.3"})
    finally:
        smol.gate.release("addr:127.0.0.2")
    assert answered.status_code == 200, answered.get_json()


def sse_data(response: Any) -> list[str]:
    text = response.get_data(as_text=True)
    assert all(block.startswith("data: ") for block in text.strip().split("\n\n")), text
    return [block[6:] for block in text.strip().split("\n\n")]


def test_streaming_speaks_openai_sse_and_ends_with_done(smol: Services) -> None:
    client = make_app(smol).test_client()
    response = client.post("/v1/chat/completions", json={
        "model": "whatever", "stream": True, "stream_options": {"include_usage": True},
        "user": "ann", "messages": [{"role": "user", "content": QUESTION}]})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    schema = OpenAIChatChunk.model_json_schema()
    for chunk in chunks:
        jsonschema.validate(chunk, schema)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]]
    assert len(tokens) > 3 and all(c["choices"][0].get("finish_reason") is None for c in chunks[1:-2])
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0]["finish_reason"] in ("stop", "length")
    assert finish["sources"][0]["source"].endswith("office.md")
    assert finish["refused"] is False
    stored = smol.history.get(finish["conversation_id"])
    assert stored is not None and stored.turns[0].answer == "".join(tokens).strip()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0


def test_errors_have_openai_shape_and_hearth_codes(make_services: Callable[..., Services],
                                                   smol_url: str, tmp_path: Path) -> None:
    def post(body: Any, url: str = smol_url) -> httpx.Response:
        raw = {"content": body, "headers": {"Content-Type": "application/json"}}
        return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                          **(raw if isinstance(body, bytes) else {"json": body}))

    cases = [
        (b"{oops", 400, "invalid_json"),
        ({"messages": []}, 400, "invalid_field"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, 400, "invalid_field"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "invalid_field"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "invalid_field"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
         400, "invalid_field"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, "question_too_long"),
    ]
    for body, status, code in cases:
        response = post(body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == code and error["message"]
        assert error["type"] == "invalid_request_error"
    assert post({"messages": []}).json()["error"]["param"] == "messages"
    assert post(cases[4][0]).json()["error"]["param"] == "top_logprobs"

    # The official client turns them into its own exceptions, with Hearth's message.
    with pytest.raises(openai.BadRequestError, match="last message must be the user's question"):
        client_for(smol_url).chat.completions.create(
            model="hearth", messages=[{"role": "assistant", "content": "Hello"}])

    # A model that is down: the question retrieves passages, then the model cannot be reached.
    down = make_services(llm_backend="openai", openai_base_url=closed_port_url() + "/v1",
                         data_dir=tmp_path / "down")
    index_guide(down, tmp_path / "down-guide")
    with serving(make_app(down)) as url:
        for stream in (False, True):
            response = post({"messages": [{"role": "user", "content": QUESTION}],
                             "stream": stream}, url)
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"] == "application/json"
            error = response.json()["error"]
            assert error["code"] == "llm_unavailable" and error["type"] == "server_error"
            assert "not reachable" in error["message"] or "127.0.0.1" in error["message"]
        with pytest.raises(openai.InternalServerError):
            client_for(url).chat.completions.create(
                model="hearth", messages=[{"role": "user", "content": QUESTION}])


def test_models_lists_hearth(smol_url: str) -> None:
    # "hearth" reads every collection the key may read; then one model per collection.
    assert [m.id for m in client_for(smol_url).models.list()] == ["hearth", "hearth/default"]


def test_earlier_messages_become_the_conversation() -> None:
    def m(role: str, content: Any) -> OpenAIMessage:
        return OpenAIMessage(role=role, content=content)  # type: ignore[arg-type]

    question, turns = split_messages([
        m("system", "Be brief."), m("assistant", "Hello! Ask me anything."),
        m("user", "Where is the office?"), m("assistant", "In Lisbon."),
        m("user", "Is it open"), m("user", [{"type": "text", "text": "on Sundays?"}]),
        m("assistant", "No."), m("tool", "ignored"),
        m("user", "Thanks."), m("user", "And on Saturdays?"),
    ])
    assert [(t.question, t.answer) for t in turns] == [
        ("Where is the office?", "In Lisbon."), ("Is it open\non Sundays?", "No.")]
    assert all(isinstance(t, Turn) for t in turns)
    assert question == "Thanks.\nAnd on Saturdays?"


def test_the_routes_are_in_the_openapi_document(smol: Services) -> None:
    app = make_app(smol)
    spec = api.openapi_document()
    jsonschema.Draft202012Validator.check_schema({"$defs": spec["components"]["schemas"]})
    served = {(r.rule, m.lower()) for r in app.url_map.iter_rules() if r.endpoint.startswith("openai.")
              for m in r.methods - {"HEAD", "OPTIONS"}}
    assert served == {("/v1/chat/completions", "post"), ("/v1/models", "get"),
                      ("/v1/feedback", "post")}
    assert served <= {(p, m) for p, ops in spec["paths"].items() for m in ops}

    client = app.test_client()
    responses = [
        ("/v1/chat/completions", "post", client.post("/v1/chat/completions", json={
            "user": "ann", "messages": [{"role": "user", "content": QUESTION}]})),
        ("/v1/chat/completions", "post", client.post("/v1/chat/completions", json={"messages": []})),
        ("/v1/models", "get", client.get("/v1/models")),
    ]
    for path, method, response in responses:
        content = spec["paths"][path][method]["responses"][str(response.status_code)]["content"]
        schema = {**content["application/json"]["schema"], "components": spec["components"]}
        jsonschema.validate(response.get_json(), schema)


def test_with_api_keys_the_key_names_the_user(make_services: Callable[..., Services],
                                              tmp_path: Path) -> None:
    services = make_services(auth=True)
    index_guide(services, tmp_path / "guide")
    ann_key = services.keys.create("ann")[0]
    messages = [{"role": "user", "content": QUESTION}]
    with serving(make_app(services)) as url:
        done = openai.OpenAI(base_url=f"{url}/v1", api_key=ann_key, max_retries=0).chat.completions.create(
            model="hearth", messages=messages)  # type: ignore[arg-type]
        stored = services.history.get((done.model_extra or {})["conversation_id"])
        assert stored is not None and stored.user_id == "ann"  # the key's user, with no user field
        with pytest.raises(openai.PermissionDeniedError):  # a key acts only for its own user
            openai.OpenAI(base_url=f"{url}/v1", api_key=ann_key, max_retries=0).chat.completions.create(
                model="hearth", messages=messages, user="bob")  # type: ignore[arg-type]
        with pytest.raises(openai.AuthenticationError):
            client_for(url).chat.completions.create(model="hearth", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.AuthenticationError):
            client_for(url).models.list()
