"""Faults, with nothing lost: a model killed mid-answer or too slow, a database that stops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from hearth.api import create_app
from hearth.history import MongoHistory
from tests.conftest import MongoServer, start_llama_server
from tests.ollama_replay import OllamaReplay
from tests.stall_proxy import StallProxy
from tests.test_api import index, parse_sse


@pytest.fixture
def doomed_llama_server(tmp_path: Path) -> Any:
    """A llama.cpp server of this test's own, which the test kills mid-answer."""
    server, url = start_llama_server(tmp_path)
    yield server, url
    server.stop()


def test_llm_killed_mid_answer_sends_an_error_and_stores_nothing(
    make_services: Any, doomed_llama_server: Any
) -> None:
    server, url = doomed_llama_server
    services = make_services(llm_backend="openai", openai_base_url=url, openai_model="smollm2",
                             max_new_tokens=400)
    index(services)
    client = create_app(services.settings, services).test_client()
    response = client.post("/api/question", buffered=False, json={
        "question": "Tell me all about ingesting a folder of PDFs.", "user_id": "ann",
        "stream": True})
    assert response.status_code == 200
    chunks = response.response
    first = next(chunks)
    assert b"event: token" in first
    server.proc.kill()  # the model server dies while it is answering
    events = parse_sse(first + b"".join(chunks))
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "llm_unavailable"
    assert "done" not in [kind for kind, _ in events]
    assert client.get("/api/conversations?user_id=ann").get_json()["conversations"] == []
    # The queue slot was given back: the next question is refused cleanly, not stuck.
    down = client.post("/api/question", json={"question": "How do I ingest PDFs?",
                                               "user_id": "ann"})
    assert down.status_code == 503


def test_a_slow_model_is_a_504_and_nothing_is_stored(make_services: Any) -> None:
    with OllamaReplay(delay=3.0) as slow:
        services = make_services(llm_backend="ollama", ollama_base_url=slow.url,
                                 llm_timeout_s=0.5)
        index(services)
        client = create_app(services.settings, services).test_client()
        response = client.post("/api/question", json={"question": "How do I ingest PDFs?",
                                                      "user_id": "ann"})
        assert response.status_code == 504
        assert response.get_json()["error"]["code"] == "llm_timeout"
        assert client.get("/api/conversations?user_id=ann").get_json()["conversations"] == []


def test_history_store_stopped_is_503_and_nothing_is_half_saved(
    make_services: Any, mongo: MongoServer, mongo_server: str
) -> None:
    services = make_services(mongodb_uri=mongo_server, mongodb_db="faults",
                             backend_timeout_s=1.0)
    index(services)
    client = create_app(services.settings, services).test_client()
    first = client.post("/api/question", json={"question": "How do I ingest PDFs?",
                                               "user_id": "ann"}).get_json()
    cid = first["conversation_id"]
    mongo.stop()
    try:
        for stream in (False, True):
            response = client.post("/api/question", json={
                "question": "And Word files?", "user_id": "ann", "conversation_id": cid,
                "stream": stream})
            assert response.status_code == 503
            assert response.get_json()["error"]["code"] == "history_unavailable"
        assert client.get("/readyz").get_json()["checks"]["history_store"]["ok"] is False
    finally:
        mongo.start()
    turns = client.get(f"/api/conversations/{cid}").get_json()["turns"]
    assert [t["question"] for t in turns] == ["How do I ingest PDFs?"]
    assert turns[0]["answer"] == first["answer"]


def test_history_lost_between_answer_and_save_reports_an_error(
    make_services: Any, mongo: MongoServer, mongo_server: str
) -> None:
    """The store dies while the model answers: the stream ends in an error, no turn is kept."""
    services = make_services(mongodb_uri=mongo_server, mongodb_db="faults2",
                             backend_timeout_s=1.0)
    index(services)
    client = create_app(services.settings, services).test_client()
    response = client.post("/api/question", buffered=False, json={
        "question": "How do I ingest PDFs?", "user_id": "bob", "stream": True})
    chunks = response.response
    first = next(chunks)
    mongo.stop()
    try:
        events = parse_sse(first + b"".join(chunks))
        assert events[-1][0] == "error"
        assert events[-1][1]["code"] == "history_unavailable"
    finally:
        mongo.start()
    assert client.get("/api/conversations?user_id=bob").get_json()["conversations"] == []


def test_an_unreadable_vector_store_names_its_path(make_services: Any, tmp_path: Path) -> None:
    data = tmp_path / "damaged"
    (data / "chroma").mkdir(parents=True)
    (data / "chroma" / "chroma.sqlite3").write_bytes(b"garbage" * 1000)
    services = make_services(data_dir=data)
    client = create_app(services.settings, services).test_client()
    response = client.post("/api/question", json={"question": "Anything?", "user_id": "ann"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "vector_store_unavailable"
    assert str(data / "chroma") in response.get_json()["error"]["message"]
    ready = client.get("/readyz").get_json()["checks"]["vector_store"]
    assert ready["ok"] is False and str(data / "chroma") in ready["error"]


def test_a_damaged_keyword_index_is_not_ready_and_says_what_to_do(make_services: Any,
                                                                  tmp_path: Path) -> None:
    """/readyz and `hearth doctor` said ready while every question failed on it."""
    data = tmp_path / "damaged"
    data.mkdir()
    (data / "keywords.sqlite3").write_bytes(b"garbage" * 1000)
    services = make_services(data_dir=data)
    client = create_app(services.settings, services).test_client()
    response = client.post("/api/question", json={"question": "Anything?", "user_id": "ann"})
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "keyword_index_unavailable" and "delete the file" in error["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    check = ready.get_json()["checks"]["keyword_index"]
    assert check["ok"] is False and str(data / "keywords.sqlite3") in check["error"]
    assert (data / "keywords.sqlite3").read_bytes() == b"garbage" * 1000  # left as it was
    dense = make_services(data_dir=data, retrieval="dense")  # never read: not checked
    assert "keyword_index" not in dense.readiness()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_ingestion_records_are_a_clear_error_not_a_traceback(
        make_services: Any, tmp_path: Path, damage: str) -> None:
    """`hearth sources list` and `hearth ingest files` printed sqlite3's traceback, and an API
    job failed with internal_error, naming no file."""
    from click.testing import CliRunner

    from hearth.cli import main

    services = make_services(data_dir=tmp_path / "data")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nThe kettle is descaled monthly.\n")
    env = {"HEARTH_DATA_DIR": str(services.settings.data_dir)}
    assert CliRunner().invoke(main, ["ingest", "files", str(folder)], env=env).exit_code == 0
    records = services.settings.data_dir / "ingest-records.sqlite3"
    whole = records.read_bytes()
    records.write_bytes(b"garbage" * 1000 if damage == "garbage" else whole[:len(whole) // 3])
    for command in (["sources", "list"], ["ingest", "files", str(folder)]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert str(records) in result.output and "cannot be used" in result.output, result.output
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit), result.exception


def test_mongodb_down_is_one_line_for_the_source_and_collection_commands(tmp_path: Path) -> None:
    """`hearth sources list`, `collections list` and `sources remove` printed pymongo's
    ServerSelectionTimeoutError traceback when MongoDB was down (`keys list` gave one line)."""
    from click.testing import CliRunner

    from hearth.cli import main
    from tests.conftest import closed_port_url

    env = {"HEARTH_DATA_DIR": str(tmp_path / "data"), "HEARTH_BACKEND_TIMEOUT_S": "0.3",
           "HEARTH_MONGODB_URI": closed_port_url("mongodb") + "/?directConnection=true"}
    for command in (["sources", "list"], ["collections", "list"],
                    ["sources", "remove", "/x", "--yes"]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 1, (command, result.output)
        assert result.output.startswith("Error: the ingestion records (MongoDB) cannot be read: ")
        assert len(result.output.splitlines()) == 1, result.output
        assert isinstance(result.exception, SystemExit), result.exception


def test_a_model_in_process_past_its_time_is_stopped_and_nothing_is_stored(
    make_services: Any
) -> None:
    """llama.cpp in process has no socket to time out: the answer's deadline stops it."""
    services = make_services(llm_timeout_s=0.05, max_new_tokens=1000, temperature=0.0)
    index(services)
    client = create_app(services.settings, services).test_client()
    question = {"question": "Tell me all about ingesting a folder of PDFs, step by step.",
                "user_id": "ann"}
    response = client.post("/api/question", json=question)
    assert response.status_code == 504, response.get_json()
    assert response.get_json()["error"]["code"] == "llm_timeout"
    assert "HEARTH_LLM_TIMEOUT_S" in response.get_json()["error"]["message"]
    started = time.monotonic()  # warm now (the first call also set up the engine)
    assert client.post("/api/question", json=question).status_code == 504
    assert time.monotonic() - started < 3  # not the 1,000 tokens it was allowed
    # Streamed, the tokens already sent are followed by the error; the model and its queue
    # slot were given back, so the same question runs (and is stopped) again at once.
    # On a busy machine the deadline can pass before the first token: then nothing was sent
    # and the error is the plain 504, as above.
    streamed = client.post("/api/question", json={**question, "stream": True})
    if streamed.mimetype == "text/event-stream":
        events = parse_sse(streamed.data)
        assert "token" in [kind for kind, _ in events]
        assert events[-1][0] == "error" and events[-1][1]["code"] == "llm_timeout"
    else:
        assert streamed.status_code == 504, streamed.get_json()
        assert streamed.get_json()["error"]["code"] == "llm_timeout"
    assert client.get("/api/conversations?user_id=ann").get_json()["conversations"] == []


def test_a_chroma_server_that_hangs_is_a_503_in_bounded_time(
    make_services: Any, chroma_server: str
) -> None:
    """Chroma's client waits forever by default; Hearth's calls to it are time-limited."""
    target = urlparse(chroma_server)
    with StallProxy(target.hostname or "127.0.0.1", target.port or 8000) as proxy:
        settings = {"chroma_url": proxy.url(), "chroma_collection": "hangs",
                    "chroma_timeout_s": 1.0, "backend_timeout_s": 1.0}
        services = make_services(**settings)
        index(services)
        client = create_app(services.settings, services).test_client()
        question = {"question": "How do I ingest PDFs?", "user_id": "ann"}
        assert client.post("/api/question", json=question).status_code == 200
        proxy.stall()  # the server now reads every request and answers none
        fresh = make_services(**settings)  # one that opens the store after the stall
        for opened in (client, create_app(fresh.settings, fresh).test_client()):
            started = time.monotonic()  # searching an open store, then opening a new one
            response = opened.post("/api/question", json=question)
            assert response.status_code == 503, response.get_json()
            assert response.get_json()["error"]["code"] == "vector_store_unavailable"
            assert time.monotonic() - started < 10
        conversations = client.get("/api/conversations?user_id=ann").get_json()["conversations"]
        assert len(conversations) == 1  # the answered question; nothing of the failed ones


def test_a_hung_chroma_server_holds_up_nothing_that_does_not_need_it(
    make_services: Any, chroma_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Chroma server that accepts and never answers froze the whole API: one lock for every
    component, held while the store was opened (for HEARTH_CHROMA_TIMEOUT_S) and taken by every
    request; each probe tried again, so probes took all the server's threads and /healthz went
    unanswered (Kubernetes restarted the pod). Hearth's own server on 127.0.0.1, four threads."""
    import threading

    import httpx

    from hearth import services as services_module
    from hearth.server import build_server
    from tests.conftest import free_port

    monkeypatch.setattr(services_module, "RETRY_BUILD_AFTER_S", 1.0, raising=False)
    target = urlparse(chroma_server)
    with StallProxy(target.hostname or "127.0.0.1", target.port or 8000) as proxy:
        proxy.stall()  # hung from the start
        services = make_services(chroma_url=proxy.url(), chroma_collection="hung",
                                 chroma_timeout_s=30.0, backend_timeout_s=3.0,
                                 port=free_port(), threads=4)
        server = build_server(services.settings)
        server.app = create_app(services.settings, services)
        threading.Thread(target=server.run, daemon=True).start()
        url = f"http://127.0.0.1:{services.settings.port}"

        def timed(path: str) -> tuple[int, float, Any]:
            started = time.monotonic()
            try:
                response = httpx.get(url + path, timeout=15)
            except httpx.TimeoutException:
                return 0, time.monotonic() - started, None
            return response.status_code, time.monotonic() - started, response.json()

        try:
            first: list[tuple[int, float, Any]] = []
            probe = threading.Thread(target=lambda: first.append(timed("/readyz")))
            probe.start()
            time.sleep(0.5)  # the probe is opening the store
            listed = timed("/api/conversations?user_id=ann")  # needs no Chroma
            assert listed[0] == 200 and listed[1] < 2.0, listed[:2]
            assert probe.is_alive()  # answered while the store was still being opened
            probe.join()
            status, took, body = first[0]
            assert status == 503 and took < 6.0, (status, took)  # about the backend timeout
            assert body["checks"]["vector_store"]["ok"] is False
            assert body["checks"]["history_store"]["ok"] is True

            time.sleep(1.0)  # the failure is no longer remembered: the next probe asks again
            asked = proxy.accepted
            probes: list[tuple[int, float, Any]] = []
            many = [threading.Thread(target=lambda: probes.append(timed("/readyz")))
                    for _ in range(12)]  # three times the server's threads
            for thread in many:
                thread.start()
            time.sleep(0.3)
            health = timed("/healthz")
            assert health[0] == 200 and health[1] < 1.0, health[:2]
            for thread in many:
                thread.join()
            assert [p[0] for p in probes] == [503] * 12
            assert max(p[1] for p in probes) < 6.0, [round(p[1], 1) for p in probes]
            assert proxy.accepted - asked == 1  # one of them asked Chroma; the rest were told
        finally:
            server.task_dispatcher.shutdown()
            server.close()


def test_a_mongodb_that_hangs_is_a_503_in_bounded_time(
    make_services: Any, mongo: MongoServer, mongo_server: str
) -> None:
    with StallProxy("127.0.0.1", mongo.port) as proxy:
        services = make_services(
            mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
            mongodb_db="hangs", backend_timeout_s=0.5)
        index(services)
        client = create_app(services.settings, services).test_client()
        first = client.post("/api/question", json={"question": "How do I ingest PDFs?",
                                                   "user_id": "ann"}).get_json()
        proxy.stall()
        started = time.monotonic()
        response = client.post("/api/question", json={
            "question": "And Word files?", "user_id": "ann",
            "conversation_id": first["conversation_id"]})
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["error"]["code"] == "history_unavailable"
        assert time.monotonic() - started < 10
    stored = MongoHistory(mongo_server, "hangs").get(first["conversation_id"])
    assert stored is not None
    assert [t.question for t in stored.turns] == ["How do I ingest PDFs?"]


def test_a_client_that_leaves_while_queued_gives_up_its_place(tmp_path: Path) -> None:
    """A streamed question whose client hung up while it waited for the model kept its places
    (its user was refused meanwhile) and the model started on it when its turn came. Now its
    places are given up within a moment, and the model never hears it. Hearth's own server
    (waitress) on 127.0.0.1, the real gate; the model is the fake, slowed to keep the gate busy."""
    import json
    import socket
    import threading

    import httpx

    from hearth.server import build_server
    from tests.conftest import free_port, wait_until
    from tests.fakes import fake_services

    services = fake_services(tmp_path, ["The password is marigold-42. " * 3] * 5,
                             port=free_port(), max_concurrent_generations=1,
                             max_queued_per_user=1, queue_timeout_s=60)
    services.llm.chat_model.sleep = 0.05  # type: ignore[attr-defined]  # ~4 s an answer
    server = build_server(services.settings)
    server.app = create_app(services.settings, services)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{services.settings.port}"
    gate, question = services.gate, "What is the guest Wi-Fi password?"
    try:
        first = threading.Thread(target=lambda: httpx.post(f"{url}/api/question", json={
            "question": question, "user_id": "ann"}, timeout=60))
        first.start()
        wait_until(lambda: gate.running == 1, "ann being answered", 10)
        body = json.dumps({"question": question, "user_id": "bob", "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", services.settings.port)) as bob:
            bob.sendall(b"POST /api/question HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                        b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_until(lambda: gate.waiting == 1, "bob waiting", 10)
        # Hung up: within a moment bob's places are free, ann still being answered.
        wait_until(lambda: gate.waiting == 0 and "bob" not in gate._held, "bob gone", 5)
        assert gate.running == 1
        first.join(60)
        time.sleep(1.0)
        assert len(services.llm.prompts) == 1  # type: ignore[attr-defined]  # ann's alone
        again = httpx.post(f"{url}/api/question", json={"question": question, "user_id": "bob"},
                           timeout=60)
        assert again.status_code == 200, again.text
    finally:
        server.task_dispatcher.shutdown()
        server.close()


def test_a_backend_down_is_explained_only_to_those_who_may_see_its_address(
        make_services: Any, tmp_path: Path) -> None:
    """The Chroma URL, its password included, went to any key holder in every 503 of a
    question (only /readyz kept the details for administrators)."""
    from tests.conftest import closed_port_url

    port = urlparse(closed_port_url()).port
    services = make_services(auth=True, chroma_url=f"http://chroma-user:s3cret-pw@127.0.0.1:{port}/",
                             data_dir=tmp_path / "data")
    client = create_app(services.settings, services).test_client()
    ann = {"Authorization": "Bearer " + services.keys.create("ann")[0]}
    root = {"Authorization": "Bearer " + services.keys.create("root", admin=True)[0]}
    remote = {"REMOTE_ADDR": "203.0.113.9"}  # another machine (no request leaves this one)
    question = {"question": "Anything?", "user_id": "ann"}
    seen = client.post("/api/question", json=question, headers=ann, environ_base=remote)
    assert seen.status_code == 503
    error = seen.get_json()["error"]
    assert error["code"] == "vector_store_unavailable" and "/readyz" in error["message"]
    assert "127.0.0.1" not in error["message"] and "s3cret" not in error["message"]
    v1 = client.post("/v1/chat/completions", headers=ann, environ_base=remote,
                     json={"messages": [{"role": "user", "content": "Anything?"}]})
    assert v1.status_code == 503 and "127.0.0.1" not in v1.get_data(as_text=True)
    # An administrator, or the machine itself, is told where: never the password.
    for headers, environ in ((root, remote), (ann, {"REMOTE_ADDR": "127.0.0.1"})):
        told = client.post("/api/question", json={**question, "user_id": "ann"},
                           headers=headers, environ_base=environ).get_json()["error"]["message"]
        assert f"127.0.0.1:{port}" in told and "s3cret" not in told, told


@pytest.mark.parametrize("retrieval", ["hybrid", "dense"])
def test_ollama_embeddings_down_is_a_503_with_its_code(
    make_settings: Any, ollama_replay: OllamaReplay, smollm: Any, retrieval: str
) -> None:
    """With hybrid retrieval the question's embedding was asked for outside the vector store's
    errors: Ollama's ConnectionError came through as a 500 (a traceback from the CLI)."""
    from hearth.services import build_services
    from tests.conftest import closed_port_url

    ollama_replay.models.append("nomic-embed-text")
    options = {"embedding_backend": "ollama", "retrieval": retrieval}
    up = build_services(make_settings(ollama_base_url=ollama_replay.url, **options), llm=smollm)
    index(up)  # embedded by the replay
    assert up.readiness()["embeddings"] == {"ok": True}
    down = build_services(make_settings(ollama_base_url=closed_port_url(), **options), llm=smollm)
    client = create_app(down.settings, down).test_client()
    for stream in (False, True):  # the passages are found before a stream starts
        response = client.post("/api/question", json={
            "question": "How do I ingest PDFs?", "user_id": "ann", "stream": stream})
        assert response.status_code == 503, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["code"] == "embeddings_unavailable"
        assert "Ollama is not reachable" in error["message"], error
    assert client.get("/api/conversations?user_id=ann").get_json()["conversations"] == []


def test_readiness_asks_ollama_for_the_embedding_model_in_bounded_time(
    make_settings: Any, ollama_replay: OllamaReplay
) -> None:
    """/readyz and `hearth doctor` said ready with Ollama's embeddings down: no check asked."""
    from hearth.services import build_services

    def embeddings_check(url: str) -> dict[str, Any]:
        services = build_services(make_settings(
            embedding_backend="ollama", ollama_base_url=url, backend_timeout_s=1.0,
            llm_backend="openai", openai_base_url=url))  # no model loaded for this
        return services.readiness()["embeddings"]

    not_pulled = embeddings_check(ollama_replay.url)
    assert not not_pulled["ok"] and "ollama pull nomic-embed-text" in not_pulled["error"]
    ollama_replay.models.append("nomic-embed-text")
    assert embeddings_check(ollama_replay.url) == {"ok": True}
    port = int(ollama_replay.url.rsplit(":", 1)[1])
    with StallProxy("127.0.0.1", port) as proxy:
        proxy.stall()  # an Ollama that takes the request and never answers
        started = time.monotonic()
        hung = embeddings_check(proxy.url())
        assert time.monotonic() - started < 10  # the backend timeout, not Ollama's 180 s
    assert not hung["ok"] and "Ollama is not reachable" in hung["error"], hung

