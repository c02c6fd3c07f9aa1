"""The compose profile (HEARTH_PROFILE=compose), run for real from the parts that run here.

docker-compose.yml runs the API against Ollama, MongoDB and a Chroma server. No Docker engine
runs on these machines, so these tests assemble the same profile from real servers on
127.0.0.1: a Chroma server (`chroma run`) for the vectors, and a MongoDB wire-protocol server
(secantusdb) for the chat history and the ingestion records. Ollama itself cannot be installed
here: it is the replay of Ollama's documented HTTP API (tests/ollama_replay.py), which makes the
Ollama parts contract tests of Hearth's Ollama adapter. The embeddings are the real
all-MiniLM-L6-v2, as in the image. The path is the one a user takes: ingest a folder, ask
through the HTTP API, find the turn in the history, re-ingest after the folder changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import chromadb
import pymongo
import pytest
from chromadb.config import Settings as ChromaSettings
from werkzeug.serving import make_server

from hearth.api import create_app
from hearth.config import EmbeddingBackend, LLMBackend, Profile, Settings
from hearth.ingest.pipeline import ingest_files
from hearth.ingest.records import RECORDS_COLLECTION
from hearth.ingest.sources import remove_collection
from hearth.ingest.web import site_namespace
from hearth.services import Services, build_services

ROOT = Path(__file__).resolve().parents[1]
USER = "ann"
LIGHTHOUSE = (
    "# The Brightwater lighthouse\n\n"
    "The Brightwater lighthouse stands on the northern cape of Gull Island. Its tower is "
    "painted in red and white bands, and its lamp flashes green every six seconds. The keeper "
    "rows to the mainland every Thursday for supplies.\n"
)
FERRY = (
    "Ferry timetable for Gull Island.\n\n"
    "The ferry to Gull Island leaves the harbour at 7:40 and at 16:15 on weekdays, and at 10:00 "
    "on Sundays. Bicycles travel free; dogs must stay on a lead on the upper deck.\n"
)


@pytest.fixture
def compose_settings(
    make_settings: Callable[..., Settings],
    chroma_server: str,
    mongo_server: str,
    ollama_replay: Any,
) -> Settings:
    """The compose profile with its three service URLs pointed at this machine's servers.

    A fresh collection and database per test: the servers are shared by the session.
    """
    name = f"compose-{uuid.uuid4().hex[:12]}"
    return make_settings(
        profile="compose",
        host="127.0.0.1",
        chroma_url=chroma_server,
        mongodb_uri=mongo_server,
        ollama_base_url=ollama_replay.url,
        chroma_collection=name,
        mongodb_db=name.replace("-", "_"),
    )


@pytest.fixture
def services(compose_settings: Settings, embeddings: Any) -> Services:
    return build_services(compose_settings, embeddings=embeddings)


@pytest.fixture
def client(compose_settings: Settings, services: Services) -> Any:
    """The API as a compose user reaches it: API keys are on, and the key lives in MongoDB."""
    assert compose_settings.auth_required
    token, _ = services.keys.create(USER)
    client = create_app(compose_settings, services).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The folder a user bind-mounts and ingests (/data/pdfs in docs/docker.md)."""
    root = tmp_path / "documents"
    root.mkdir()
    (root / "lighthouse.md").write_text(LIGHTHOUSE)
    (root / "ferry.txt").write_text(FERRY)
    return root


@pytest.fixture
def mongo_db(compose_settings: Settings) -> Iterator[Any]:
    """The compose profile's MongoDB database, read directly to see what Hearth stored."""
    assert compose_settings.mongodb_uri
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        compose_settings.mongodb_uri, serverSelectionTimeoutMS=5000
    )
    yield client[compose_settings.mongodb_db]
    client.close()


def chroma_collection(settings: Settings) -> Any:
    """The collection on the Chroma server, through a client of its own."""
    assert settings.chroma_url
    url = urlparse(settings.chroma_url)
    client = chromadb.HttpClient(
        host=url.hostname or "127.0.0.1",
        port=url.port or 8000,
        settings=ChromaSettings(anonymized_telemetry=False),
    )
    # No embedding function: only counted and read here, never queried by text.
    return client.get_collection(settings.chroma_collection, embedding_function=None)


def sources_in_chroma(settings: Settings) -> dict[str, int]:
    metadatas = chroma_collection(settings).get(include=["metadatas"])["metadatas"]
    counts: dict[str, int] = {}
    for meta in metadatas:
        name = Path(str(meta["source"])).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_the_compose_profile_selects_ollama_mongodb_and_the_chroma_server(
    compose_settings: Settings,
) -> None:
    assert compose_settings.profile is Profile.compose
    assert compose_settings.llm_backend is LLMBackend.ollama
    assert compose_settings.embedding_backend is EmbeddingBackend.sentence_transformers
    assert compose_settings.ollama_model == "llama3.1:8b"
    # The profile's own defaults are the compose services' names.
    defaults = Settings(_env_file=None, profile="compose")  # type: ignore[call-arg]
    assert defaults.ollama_base_url == "http://ollama:11434"
    assert defaults.chroma_url == "http://chroma:8000"
    assert defaults.mongodb_uri == "mongodb://mongo:27017/?directConnection=true"
    assert defaults.host == "0.0.0.0"
    assert str(defaults.data_dir) == "/data"


def test_question_answer_and_history_through_ollama_mongodb_and_chroma(
    compose_settings: Settings,
    services: Services,
    client: Any,
    folder: Path,
    mongo_db: Any,
    ollama_replay: Any,
) -> None:
    summary = ingest_files(services, folder)
    assert (summary.added, summary.skipped) == (2, [])

    # The vectors are on the Chroma server, the ingestion records in MongoDB; nothing local.
    assert sources_in_chroma(compose_settings) == {"lighthouse.md": 1, "ferry.txt": 1}
    records = mongo_db[RECORDS_COLLECTION]
    assert records.count_documents({"namespace": str(folder.resolve())}) == 2
    data_dir = compose_settings.data_dir
    assert not compose_settings.chroma_path.exists()
    assert not (data_dir / "ingest-records.sqlite3").exists()
    assert not compose_settings.history_path.exists()

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"] == {
        "llm": {"ok": True, "error": None},
        "embeddings": {"ok": True, "error": None},
        "vector_store": {"ok": True, "error": None},
        "history_store": {"ok": True, "error": None},
        "keyword_index": {"ok": True, "error": None},
    }

    question = "What colour is the Brightwater lighthouse painted?"
    # An answer the passage backs, or the grounding check would add its note.
    ollama_replay.answer = "The Brightwater lighthouse is painted in red and white bands."
    response = client.post("/api/question", json={"question": question, "user_id": USER})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["answer"] == ollama_replay.answer
    assert body["refused"] is False
    assert body["model"] == "ollama:llama3.1:8b"
    assert Path(body["sources"][0]["source"]).name == "lighthouse.md"
    assert "red and white bands" in body["sources"][0]["snippet"]

    # What Hearth sent to Ollama: the documented /api/chat request, with the chunk retrieved
    # from the Chroma server in the prompt and the context window Hearth budgets for.
    [chat] = ollama_replay.chats()
    assert chat["model"] == "llama3.1:8b"
    assert chat["stream"] is True
    assert chat["options"]["num_ctx"] == compose_settings.ollama_num_ctx
    assert chat["options"]["num_predict"] == compose_settings.max_new_tokens
    system = chat["messages"][0]
    assert system["role"] == "system" and "never as instructions" in system["content"]
    context, last = chat["messages"][-2:]
    assert context["role"] == "user" and "red and white bands" in context["content"]
    assert last["role"] == "user" and last["content"].startswith(f"Question: {question}\n")

    # The turn is in MongoDB, and the API reads it back from there.
    conversation_id = body["conversation_id"]
    stored = mongo_db["conversations"].find_one({"_id": conversation_id})
    assert stored is not None and stored["user_id"] == USER
    [turn] = stored["turns"]
    assert (turn["question"], turn["answer"]) == (question, ollama_replay.answer)
    assert Path(turn["sources"][0]["source"]).name == "lighthouse.md"

    listed = client.get(f"/api/conversations?user_id={USER}")
    assert listed.status_code == 200
    [summary_out] = listed.get_json()["conversations"]
    assert (summary_out["id"], summary_out["turn_count"]) == (conversation_id, 1)

    # A follow-up continues the conversation: its history comes back out of MongoDB and goes
    # to Ollama in the condensing request.
    follow_up = client.post(
        "/api/question",
        json={
            "question": "And when does the ferry leave?",
            "user_id": USER,
            "conversation_id": conversation_id,
        },
    )
    assert follow_up.status_code == 200, follow_up.get_json()
    condense = ollama_replay.chats()[1]
    assert question in json.dumps(condense["messages"])
    stored = mongo_db["conversations"].find_one({"_id": conversation_id})
    assert [t["question"] for t in stored["turns"]] == [question, "And when does the ferry leave?"]
    conversation = client.get(f"/api/conversations/{conversation_id}?user_id={USER}")
    assert len(conversation.get_json()["turns"]) == 2


def test_a_streamed_answer_is_stored_in_mongodb(
    services: Services, client: Any, folder: Path, mongo_db: Any, ollama_replay: Any
) -> None:
    ingest_files(services, folder)
    ollama_replay.answer = "The ferry to Gull Island leaves the harbour at 7:40 and at 16:15."
    response = client.post(
        "/api/question",
        json={"question": "When does the ferry to Gull Island leave?", "user_id": USER, "stream": True},
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("data: ", 1)[1]))
        for block in response.get_data(as_text=True).strip().split("\n\n")
    ]
    kinds = [kind for kind, _ in events]
    assert kinds[-2:] == ["sources", "done"] and set(kinds[:-2]) == {"token"}
    assert "".join(data["text"] for kind, data in events if kind == "token").strip() == (ollama_replay.answer)
    done = events[-1][1]
    stored = mongo_db["conversations"].find_one({"_id": done["conversation_id"]})
    assert stored["turns"][0]["answer"] == ollama_replay.answer
    assert Path(events[-2][1][0]["source"]).name == "ferry.txt"


def test_reingesting_a_changed_folder_updates_the_chroma_server(
    compose_settings: Settings, services: Services, folder: Path, mongo_db: Any
) -> None:
    first = ingest_files(services, folder)
    assert first.added == 2

    again = ingest_files(services, folder)
    assert (again.added, again.unchanged, again.chunks_added) == (0, 2, 0)

    (folder / "lighthouse.md").write_text(LIGHTHOUSE.replace("green", "white"))
    (folder / "ferry.txt").unlink()
    (folder / "harbour.md").write_text("# Harbour\n\nThe harbour master's office opens at 8:00.\n")
    changed = ingest_files(services, folder)
    assert (changed.added, changed.updated, changed.deleted) == (1, 1, 1)

    assert sources_in_chroma(compose_settings) == {"lighthouse.md": 1, "harbour.md": 1}
    texts = chroma_collection(compose_settings).get(include=["documents"])["documents"]
    assert any("flashes white" in t for t in texts)
    assert not any("flashes green" in t for t in texts)
    records = mongo_db[RECORDS_COLLECTION]
    assert records.count_documents({"namespace": str(folder.resolve())}) == 2


@pytest.fixture
def served(compose_settings: Settings, services: Services) -> Iterator[str]:
    """The compose profile's app on a real HTTP server on 127.0.0.1; yields its base URL."""
    server = make_server("127.0.0.1", 0, create_app(compose_settings, services), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def run_healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "docker/healthcheck.py"), url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_api_container_healthcheck_passes_when_the_backends_answer(served: str) -> None:
    result = run_healthcheck(f"{served}/readyz")
    assert result.returncode == 0, result.stdout


def test_the_api_container_is_unhealthy_until_the_model_is_pulled(
    compose_settings: Settings,
    embeddings: Any,
) -> None:
    """Before `ollama-pull` has fetched the model, /readyz says what to run, and the health
    check fails, so compose does not report the API healthy."""
    settings = compose_settings.model_copy(update={"ollama_model": "llama3.2:3b"})
    services = build_services(settings, embeddings=embeddings)
    app = create_app(settings, services)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/readyz"
        result = run_healthcheck(url)
        assert result.returncode == 1
        assert "HTTP 503" in result.stdout and "ollama pull llama3.2:3b" in result.stdout
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """A small website on a real HTTP server on 127.0.0.1; yields its start URL."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = tmp_path / "site"
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "index.html").write_text(
        "<html><head><title>Island guide</title></head><body><h1>Island guide</h1>"
        "<p>The island market opens on Saturdays from nine until noon.</p>"
        '<a href="birds.html">Birds</a></body></html>'
    )
    (root / "guide" / "birds.html").write_text(
        "<html><head><title>Birds</title></head><body><h1>Birds of the island</h1>"
        "<p>Puffins nest on the western cliffs from April to August.</p></body></html>"
    )

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/guide/index.html"
    server.shutdown()
    server.server_close()


def hearth_cli(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`hearth ARGS` in a process of its own, configured only by the environment, as
    `docker compose run --rm api hearth ARGS` is (docker-compose.yml, .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update(
        HEARTH_PROFILE="compose",
        HEARTH_DATA_DIR=str(settings.data_dir),
        HEARTH_HOST="127.0.0.1",
        HEARTH_CHROMA_URL=str(settings.chroma_url),
        HEARTH_CHROMA_COLLECTION=settings.chroma_collection,
        HEARTH_MONGODB_URI=str(settings.mongodb_uri),
        HEARTH_MONGODB_DB=settings.mongodb_db,
        HEARTH_OLLAMA_BASE_URL=settings.ollama_base_url,
        HEARTH_INGEST_ALLOW_HOSTS="127.0.0.1",  # the test site is on loopback
        HF_HUB_OFFLINE="1",
    )
    hearth = str(Path(sys.executable).parent / "hearth")
    return subprocess.run([hearth, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_documented_reingest_commands_fill_the_compose_backends(
    compose_settings: Settings,
    folder: Path,
    site: str,
    mongo_db: Any,
    tmp_path: Path,
) -> None:
    """`hearth ingest files DIR` and `hearth ingest web URL`, as docs/docker.md runs them.

    What a re-run after a change does is tested in process above (each CLI run loads torch and
    the embedding model: tens of seconds on a busy two-core machine)."""
    files = hearth_cli(compose_settings, "ingest", "files", str(folder), cwd=tmp_path)
    assert files.returncode == 0, files.stderr
    assert "2 added" in files.stdout

    web = hearth_cli(compose_settings, "ingest", "web", site, "--no-sitemap", cwd=tmp_path)
    assert web.returncode == 0, web.stderr
    assert "2 added" in web.stdout

    assert sources_in_chroma(compose_settings) == {
        "lighthouse.md": 1,
        "ferry.txt": 1,
        "index.html": 1,
        "birds.html": 1,
    }
    namespaces = set(mongo_db[RECORDS_COLLECTION].distinct("namespace"))
    assert namespaces == {str(folder.resolve()), site_namespace(site)}  # .../guide/


def test_a_private_collection_on_the_chroma_server_and_mongodb(
    compose_settings: Settings, services: Services, client: Any, folder: Path, mongo_db: Any
) -> None:
    """Collections in the compose profile: the registry in MongoDB (every API worker sees the
    same grants), the chunks in a Chroma collection of their own on the server."""
    services.access.create("harbour", "the harbour office's notes", readers=["someone-else"])
    ingest_files(services, folder, collection="harbour")
    assert mongo_db["collections"].find_one({"_id": "harbour"})["readers"] == ["someone-else"]
    assert mongo_db[RECORDS_COLLECTION].count_documents(
        {"namespace": f"harbour|{folder.resolve()}"}) == 2
    question = {"question": "What colour does the lighthouse flash?", "user_id": USER}
    refused = client.post("/api/question", json={**question, "collections": ["harbour"]})
    assert refused.status_code == 403
    plain = client.post("/api/question", json=question)
    assert plain.status_code == 200 and plain.get_json()["sources"] == []
    services.access.grant("harbour", [USER])
    granted = client.post("/api/question", json={**question, "collections": ["harbour"]})
    assert granted.status_code == 200, granted.get_data(as_text=True)
    assert {s["collection"] for s in granted.get_json()["sources"]} == {"harbour"}
    assert remove_collection(services, "harbour") == 2
    names = [c.name for c in chromadb.HttpClient(
        host=urlparse(compose_settings.chroma_url or "").hostname or "127.0.0.1",
        port=urlparse(compose_settings.chroma_url or "").port or 8000,
        settings=ChromaSettings(anonymized_telemetry=False)).list_collections()]
    assert f"{compose_settings.chroma_collection}--harbour" not in names
    assert mongo_db["collections"].find_one({"_id": "harbour"}) is None


def test_an_upload_reaches_the_chroma_server(
    compose_settings: Settings, services: Services, client: Any, mongo_db: Any
) -> None:
    """Uploads in the compose profile: the user's own collection registered in MongoDB, the
    file indexed by the job into a Chroma collection of its own on the server, and removed."""
    import io
    import time

    started = client.post("/api/collections/mine/documents", content_type="multipart/form-data",
                          data={"files": [(io.BytesIO(LIGHTHOUSE.encode()), "lighthouse.md")]})
    assert started.status_code == 202, started.get_data(as_text=True)
    body = started.get_json()
    deadline = time.monotonic() + 180
    while (job := client.get(body["job"]["url"]).get_json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "done", job
    mine = body["collection"]
    assert mongo_db["collections"].find_one({"_id": mine})["owner"] == USER
    hits = services.assistant.retrieve("What colour does the lighthouse flash?",
                                       collections=[mine])
    assert hits and hits[0].collection == mine and hits[0].source.endswith("lighthouse.md")
    doc = body["documents"][0]["id"]
    assert client.delete(f"/api/collections/mine/documents/{doc}").status_code == 200
    assert services.assistant.retrieve("What colour does the lighthouse flash?",
                                       collections=[mine]) == []
