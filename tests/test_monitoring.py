"""Request ids, JSON logs, /metrics and traces (docs/monitoring.md).

Fast tier: the real app over a scripted fake model and a fake index (tests/fakes.py), with the
real SQLite stores and gate; requests through Flask's test client, and, where the server's own
part matters (the access log, the metrics' own port, the OTLP exporter), real HTTP on
127.0.0.1: Hearth's waitress server, prometheus-client's listener, and an OTLP/HTTP receiver
that decodes what OpenTelemetry's exporter sends.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hearth import logs
from hearth.api import create_app
from hearth.chat import Ask
from hearth.monitoring import serve_metrics
from hearth.server import access_log, build_server
from hearth.services import Services
from tests.conftest import free_port
from tests.fakes import fake_services

WIFI = "What is the guest Wi-Fi password?"
ANSWER = "The password is marigold-42."
SECRET_USER = "ann-7f3c"  # must never appear in /metrics


def app_for(tmp_path: Path, replies: list[str] | None = None, **overrides: Any
            ) -> tuple[Any, Services]:
    services = fake_services(tmp_path, replies or [ANSWER] * 20, **overrides)
    return create_app(services.settings, services), services


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


# -- request ids ----------------------------------------------------------------------------------

def test_every_response_has_a_request_id_and_a_clients_plain_one_is_kept(tmp_path: Path) -> None:
    client = app_for(tmp_path)[0].test_client()
    first, second = client.get("/healthz"), client.get("/nowhere")
    ids = {first.headers["X-Request-Id"], second.headers["X-Request-Id"]}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)
    assert second.status_code == 404
    assert client.get("/healthz", headers={"X-Request-Id": "nginx-4b1d.7"}) \
        .headers["X-Request-Id"] == "nginx-4b1d.7"
    # Not plain: a newline (log forging) or a long one is replaced, never echoed.
    for bad in ("a b", "x" * 200, "id\"}"):
        assert client.get("/healthz", headers={"X-Request-Id": bad}).headers["X-Request-Id"] != bad


def test_metrics_are_off_unless_turned_on(tmp_path: Path) -> None:
    client = app_for(tmp_path)[0].test_client()
    response = client.get("/metrics")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


# -- /metrics -------------------------------------------------------------------------------------

def test_metrics_count_requests_questions_and_steps_without_user_data(tmp_path: Path) -> None:
    app, services = app_for(tmp_path, metrics=True)
    client = app.test_client()
    asked = {"question": WIFI, "user_id": SECRET_USER}
    assert client.post("/api/question", json=asked).status_code == 200
    streamed = client.post("/api/question", json={**asked, "stream": True})
    assert "event: done" in streamed.get_data(as_text=True)
    refused = client.post("/api/question", json={"question": "Who won the 1954 world cup?",
                                                 "user_id": SECRET_USER})
    assert refused.get_json()["refused"] is True
    conversation = client.post("/api/question", json=asked).get_json()["conversation_id"]
    assert client.get(f"/api/conversations/{conversation}?user_id={SECRET_USER}").status_code == 200
    assert client.get(f"/api/users/{SECRET_USER}/anything").status_code == 404

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    for private in (SECRET_USER, "Wi-Fi", "marigold", conversation):
        assert private not in text, private
    found = samples(text)
    post = {"route": "/api/question", "method": "POST", "status": "200"}
    assert value(found, "hearth_http_requests_total", **post) == 4
    assert value(found, "hearth_http_requests_total", route="/api/conversations/<conversation_id>",
                 method="GET", status="200") == 1
    assert value(found, "hearth_http_requests_total", route="(unmatched)", method="GET",
                 status="404") == 1
    assert value(found, "hearth_questions_total", outcome="answered", mode="whole") == 2
    assert value(found, "hearth_questions_total", outcome="answered", mode="stream") == 1
    assert value(found, "hearth_questions_total", outcome="refused", mode="whole") == 1
    # The model ran for three answers, not for the refusal (no passage was relevant).
    assert value(found, "hearth_time_to_first_token_seconds_count") == 3
    assert value(found, "hearth_generation_duration_seconds_count") == 3
    assert value(found, "hearth_retrieval_duration_seconds_count") == 4
    # The refused question found nothing relevant and never queued for the model.
    assert value(found, "hearth_queue_wait_seconds_count") == 3
    assert value(found, "hearth_tokens_total", kind="completion") > 0
    assert value(found, "hearth_history_store_duration_seconds_count", operation="add_turn") == 4
    assert value(found, "hearth_queue_length") == 0
    for backend in ("llm", "vector_store", "history_store"):
        assert value(found, "hearth_backend_up", backend=backend) == 1
    assert value(found, "hearth_http_request_duration_seconds_count", route="/api/question",
                 method="POST") == 4


def test_busy_errors_and_a_client_that_leaves_are_outcomes(tmp_path: Path) -> None:
    app, services = app_for(tmp_path, metrics=True, max_queued_generations=0)
    client = app.test_client()
    services.gate.acquire()  # the model is busy
    try:
        assert client.post("/api/question", json={"question": WIFI, "user_id": "ann"}) \
            .status_code == 503
    finally:
        services.gate.release()
    too_long = client.post("/api/question", json={"question": "x" * 5000, "user_id": "ann"})
    assert too_long.get_json()["error"]["code"] == "question_too_long"
    stream = app.extensions["hearth.chat"].stream(Ask(question=WIFI))
    next(stream)  # the first token; then the client goes
    stream.close()
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "hearth_questions_total", outcome="busy", mode="whole") == 1
    assert value(found, "hearth_questions_total", outcome="question_too_long", mode="whole") == 1
    assert value(found, "hearth_questions_total", outcome="cancelled", mode="stream") == 1
    assert value(found, "hearth_http_requests_total", route="/api/question", method="POST",
                 status="503") == 1


def test_a_model_that_fails_mid_stream_is_counted_by_its_error_code(tmp_path: Path) -> None:
    app, _ = app_for(tmp_path, metrics=True, fail_after=3)
    client = app.test_client()
    body = client.post("/api/question", json={"question": WIFI, "user_id": "ann",
                                              "stream": True}).get_data(as_text=True)
    assert "event: error" in body
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "hearth_questions_total", outcome="llm_unavailable", mode="stream") == 1


def test_with_keys_on_metrics_are_for_admins_and_the_machine_itself(tmp_path: Path) -> None:
    app, services = app_for(tmp_path, metrics=True, auth=True)
    client = app.test_client()
    admin, _ = services.keys.create("root", admin=True)
    user, _ = services.keys.create("ann")
    far = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", environ_base=far).status_code == 403
    assert client.get("/metrics", environ_base=far,
                      headers={"Authorization": f"Bearer {user}"}).status_code == 403
    assert client.get("/metrics", environ_base=far,
                      headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert client.get("/metrics").status_code == 200  # loopback: a scraper on the machine


def test_each_app_counts_its_own_requests(tmp_path: Path) -> None:
    """Workers behind a proxy each have their own registry: their sums are what was sent."""
    apps = [app_for(tmp_path / str(n), metrics=True)[0] for n in range(2)]
    for n, app in enumerate(apps):
        for _ in range(n + 1):
            app.test_client().get("/healthz")
    counts = [value(samples(app.test_client().get("/metrics").get_data(as_text=True)),
                    "hearth_http_requests_total", route="/healthz", method="GET", status="200")
              for app in apps]
    assert counts == [1, 2]


def test_ingestion_jobs_are_counted(tmp_path: Path, embeddings: Any) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# Printers\n\nThe printer on floor two is called Hopper.\n")
    (folder / "b.txt").write_text("The coffee machine is descaled every Friday.\n")
    app, services = app_for(tmp_path, metrics=True, ingest_api=True, ingest_roots=[tmp_path])
    # Real tier: ingestion embeds with the real model into a real (embedded) Chroma.
    services._built["embeddings"] = embeddings  # type: ignore[attr-defined]
    services._built.pop("vectorstore")  # type: ignore[attr-defined]
    client = app.test_client()
    started = client.post("/api/ingest", json={"files": str(folder)})
    assert started.status_code == 202, started.get_json()
    job = app.extensions["hearth.ingest_jobs"]
    job._pool.shutdown(wait=True)  # the job has finished and been observed
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "hearth_ingest_jobs_total", state="done") == 1, \
        client.get(started.get_json()["url"]).get_json()
    assert value(found, "hearth_ingested_documents_total", result="added") == 2
    assert value(found, "hearth_ingested_documents_total", result="kept") == 0
    assert value(found, "hearth_ingested_chunks_total", result="added") >= 2


# -- real HTTP on 127.0.0.1 -----------------------------------------------------------------------

@pytest.fixture
def waitress(tmp_path: Path) -> Iterator[Any]:
    """Start the app on Hearth's own server (build_server, with the access log) in a thread."""
    servers: list[Any] = []

    def start(app: Any, settings: Any) -> str:
        server = build_server(settings)
        server.app = access_log(app)
        servers.append(server)
        threading.Thread(target=server.run, daemon=True).start()
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    for server in servers:
        server.task_dispatcher.shutdown()
        server.close()


@contextmanager
def captured_log(log_format: str) -> Iterator[io.StringIO]:
    """Hearth's log, configured as `hearth serve` does in ``log_format``, written into the
    stream yielded; the root logger as it was afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.configure(logging.INFO, log_format)
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_request_the_server_refuses_itself_has_an_id_and_an_access_line(
        tmp_path: Path, waitress: Any) -> None:
    """Headers past the server's limit (431) and a body past its bound (413) are refused by
    waitress before the app runs: they carry a request id all the same, the client's when it
    gave a sane one, and write their access line with it."""
    app, services = app_for(tmp_path, port=free_port())
    url = waitress(app, services.settings)
    with captured_log("json") as stream:
        huge = httpx.get(f"{url}/healthz", headers={"X-Padding": "a" * 70_000}, timeout=30)
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"POST /api/users/ann-the-user/history?user_id=ann HTTP/1.1\r\n"
                           b"Host: 127.0.0.1\r\nX-Request-Id: big-body-1\r\n"
                           b"Content-Length: 900000000\r\n\r\n")
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
    assert huge.status_code == 431 and huge.headers.get("X-Request-Id")
    head = answer.partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 413") and "X-Request-Id: big-body-1" in head, head
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = {x["request_id"]: x["message"] for x in lines if x["logger"] == "hearth.access"}
    assert access.get(huge.headers["X-Request-Id"], "").endswith('"GET /healthz" 431'), lines
    assert access.get("big-body-1", "").endswith('"POST /api/users/-/history" 413'), lines


def test_json_log_lines_carry_the_request_id(tmp_path: Path, waitress: Any) -> None:
    app, services = app_for(tmp_path, port=free_port())
    url = waitress(app, services.settings)
    with captured_log("json") as stream:
        response = httpx.post(f"{url}/api/question", json={"question": WIFI, "user_id": "ann"},
                              timeout=30)
        logging.getLogger("hearth.test").info("outside any request")
    request_id = response.headers["X-Request-Id"]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [x for x in lines if x["logger"] == "hearth.access"]
    assert access and access[0]["request_id"] == request_id
    assert '"POST /api/question" 200' in access[0]["message"]
    assert {"time", "level", "logger", "request_id", "message"} <= set(access[0])
    assert lines[-1]["request_id"] == "-" and lines[-1]["message"] == "outside any request"


def test_a_request_cannot_write_a_line_of_its_own_into_the_access_log(
        tmp_path: Path, waitress: Any) -> None:
    """The path is written percent-encoded again: a %0a in it cannot start a forged line, and
    a user named in a route's path is not written at all."""
    app, services = app_for(tmp_path, port=free_port())
    url = waitress(app, services.settings)
    forged = "2026-01-01 00:00:00,000 INFO hearth.access [-]: 203.0.113.9 \"DELETE /api/users/ann\" 200"
    with captured_log("text") as stream:
        httpx.get(f"{url}/nope%0a{forged.replace(' ', '%20')}%0d%1b[31m", timeout=30)
        httpx.get(f"{url}/api/users/ann-the-user/history", timeout=30)
    lines = [line for line in stream.getvalue().splitlines() if line.split(" ")[3] == "hearth.access"]
    assert len(lines) == 2, lines  # one per request, each on one line
    assert "/nope%0A2026-01-01%2000:00:00,000%20INFO" in lines[0] and "\x1b" not in lines[0]
    assert '"GET /api/users/-/history"' in lines[1] and "ann-the-user" not in lines[1]


def test_waitress_names_no_user_when_a_client_leaves_and_names_the_request(
        tmp_path: Path, waitress: Any) -> None:
    """waitress logs a client that left mid-request with the path it served: written as the
    access log writes it, with the request's id, though the app's teardown has run by then."""
    app, services = app_for(tmp_path, port=free_port(), backend_timeout_s=10)
    url = waitress(app, services.settings)
    services.history.list("ann")  # the file and its tables exist
    with captured_log("json") as stream:
        # Another process writing the history: the erasure waits for its lock.
        writer = sqlite3.connect(services.settings.history_path, isolation_level=None)
        writer.execute("BEGIN EXCLUSIVE")
        client = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        client.sendall(f"DELETE /api/users/{SECRET_USER}/history HTTP/1.1\r\n"
                       "Host: 127.0.0.1\r\nX-Request-Id: left-early-1\r\n\r\n".encode())
        time.sleep(1)
        client.close()  # the client gives up
        time.sleep(0.5)
        writer.execute("COMMIT")
        writer.close()
        deadline = time.monotonic() + 10
        while "Client disconnected" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    left = [x for x in lines if x["logger"] == "waitress"]
    assert [x["message"] for x in left] == [
        "Client disconnected while serving /api/users/-/history"], lines
    assert left[0]["request_id"] == "left-early-1"
    assert SECRET_USER not in stream.getvalue()


def test_metrics_on_a_port_of_their_own(tmp_path: Path, waitress: Any) -> None:
    port = free_port()
    app, services = app_for(tmp_path, port=free_port(), metrics=True, metrics_port=port)
    url = waitress(app, services.settings)
    listener = serve_metrics(app, services.settings)
    try:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404  # not on the API's
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        listener.shutdown()
        listener.server_close()
    found = samples(text)
    assert value(found, "hearth_http_requests_total", route="/healthz", method="GET",
                 status="200") == 1


class OtlpReceiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector's trace endpoint: keeps each export's spans, decoded."""

    spans: list[Any] = []

    def do_POST(self) -> None:  # noqa: N802 - the handler's name
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                type(self).spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("semconv", ["default", "http/dup"])
def test_traces_go_to_the_named_collector_without_user_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, semconv: str) -> None:
    """Neither the query nor a path that names a user (/api/users/NAME) reaches the collector,
    under the old attribute names (http.target, http.url) or the new (url.path, url.query)."""
    pytest.importorskip("opentelemetry.instrumentation.flask")
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability as Stability,
    )
    from opentelemetry.instrumentation._semconv import _OpenTelemetryStabilitySignalType, _StabilityMode

    if semconv != "default":  # what OTEL_SEMCONV_STABILITY_OPT_IN=http/dup sets, once a process
        Stability._initialize()
        monkeypatch.setitem(Stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING,
                            _OpenTelemetryStabilitySignalType.HTTP, _StabilityMode.HTTP_DUP)
    collector = ThreadingHTTPServer(("127.0.0.1", 0), OtlpReceiver)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    OtlpReceiver.spans = []
    try:
        app, _ = app_for(tmp_path, otlp_endpoint=f"http://127.0.0.1:{collector.server_port}")
        client = app.test_client()
        response = client.post("/api/question", json={"question": WIFI, "user_id": SECRET_USER})
        assert response.status_code == 200
        client.get(f"/api/conversations?user_id={SECRET_USER}")
        assert client.delete(f"/api/users/{SECRET_USER}/history").status_code == 200
        assert client.get(f"/api/users/{SECRET_USER}/history").status_code == 405  # no route
        assert client.get(f"/api/users//{SECRET_USER}/nowhere").status_code in (308, 404)
        app.extensions["hearth.tracer_provider"].force_flush()
    finally:
        collector.shutdown()
    names = {span.name for span in OtlpReceiver.spans}
    assert "hearth.question" in names and "POST /api/question" in names, names
    assert "DELETE /api/users/<user_id>/history" in names and "GET /api/users/-/history" in names
    erased = next(s for s in OtlpReceiver.spans if s.name == "DELETE /api/users/<user_id>/history")
    paths = {a.key: a.value.string_value for a in erased.attributes
             if a.key in ("http.target", "url.path", "http.url")}
    assert paths["http.target"] == "/api/users/-/history", paths
    if semconv != "default":
        assert paths["url.path"] == "/api/users/-/history", paths
    exported = " ".join(f"{span.name} {span.attributes}" for span in OtlpReceiver.spans)
    assert SECRET_USER not in exported and "marigold" not in exported
    assert response.headers["X-Request-Id"] in exported
    assert "answered" in exported


class NotOllama(BaseHTTPRequestHandler):
    """Something else on Ollama's port: a proxy's login page, or a server whose /api/tags is
    not Ollama's list."""

    body = b"<html><body>Sign in to continue</body></html>"

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("body", [b"<html>Sign in</html>", b"[1, 2]", b'{"models": null}'])
def test_a_backend_that_answers_oddly_is_not_ready_and_the_metrics_still_scrape(
        tmp_path: Path, body: bytes) -> None:
    """An odd answer from a backend (here /api/tags that is not Ollama's) made /readyz and
    the whole /metrics scrape a 500: it is now that backend's "not ready", with why."""
    from hearth.services import build_services
    from tests.fakes import PASSAGES, FakeIndex

    handler = type("Odd", (NotOllama,), {"body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = fake_services(tmp_path).settings
        settings = base.model_copy(update={
            "llm_backend": "ollama", "metrics": True,
            "ollama_base_url": f"http://127.0.0.1:{server.server_address[1]}"})
        services = build_services(settings, vectorstore=FakeIndex(PASSAGES), embeddings=None)
        client = create_app(settings, services).test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.get_data(as_text=True)
        llm = ready.get_json()["checks"]["llm"]
        assert llm["ok"] is False and "does not answer as Ollama does" in llm["error"], llm
        scraped = client.get("/metrics")
        assert scraped.status_code == 200
        found = samples(scraped.get_data(as_text=True))
        assert value(found, "hearth_backend_up", backend="llm") == 0
        assert value(found, "hearth_backend_up", backend="history_store") == 1
    finally:
        server.shutdown()
