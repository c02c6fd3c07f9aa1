"""`hearth serve` as a user runs it: a waitress process on 127.0.0.1, over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, MODELS, SMOLLM, Server, free_port, http_ok, wait_until

pytestmark = pytest.mark.real  # real servers, models or a browser

GUIDE = """# Printing

## Installing the printer driver

To install the printer driver, run setup.exe from the driver folder and restart the computer.
The driver supports colour printing and duplex printing on every model of the Acme line.
"""


@pytest.fixture(scope="module")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def served(served_root: Path, metrics_port: int) -> Iterator[str]:
    root = served_root
    (root / "guide").mkdir()
    (root / "guide" / "printing.md").write_text(GUIDE)
    port = free_port()
    env = {**os.environ, "HEARTH_DATA_DIR": str(root / "data"), "HEARTH_MODELS_DIR": str(MODELS),
           "HEARTH_DOCS_DIR": str(root / "guide"), "HEARTH_LLAMACPP_MODEL": SMOLLM,
           "HEARTH_PORT": str(port), "HEARTH_MAX_NEW_TOKENS": "1000", "HEARTH_THREADS": "4",
           # As an operator runs it: metrics on a port of their own, logs for a collector.
           "HEARTH_METRICS": "true", "HEARTH_METRICS_PORT": str(metrics_port),
           "HEARTH_LOG_FORMAT": "json"}
    server = Server([str(BIN / "hearth"), "serve"], root / "log", env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), "hearth serve", timeout=180,
                   proc=server.proc)
        yield url
    finally:
        server.stop()
        print((root / "log").read_text()[-3000:])


def test_first_run_indexes_the_guide_and_answers_from_it(served: str) -> None:
    assert httpx.get(f"{served}/readyz", timeout=30).json()["ready"] is True
    response = httpx.post(f"{served}/api/question", timeout=120, json={
        "question": "How do I install the printer driver?", "user_id": "ann"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sources"][0]["source"].endswith("printing.md")
    assert "setup.exe" in body["sources"][0]["snippet"]


def test_streams_over_http(served: str) -> None:
    events = []
    with httpx.stream("POST", f"{served}/api/question", timeout=120, json={
            "question": "How do I install the printer driver?", "user_id": "bob",
            "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
    assert events[0] == "token" and events[-2:] == ["sources", "done"]


def test_a_client_gone_mid_stream_leaves_no_half_turn(served: str, served_root: Path) -> None:
    with httpx.stream("POST", f"{served}/api/question", timeout=120, json={
            "question": "Tell me everything about installing the printer driver.",
            "user_id": "carol", "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("event: token"):
                break  # the user closes the page after the first token
    left = "the client left after"
    wait_until(lambda: left in (served_root / "log").read_text(), "the server to notice",
               timeout=10)
    line = next(x for x in (served_root / "log").read_text().splitlines() if left in x)
    assert int(line.split(left)[1].split()[0]) < 100, line  # of the 1,000 it was allowed
    assert json.loads(line)["request_id"] == response.headers["x-request-id"], line
    listed = httpx.get(f"{served}/api/conversations", params={"user_id": "carol"}).json()
    assert listed["conversations"] == []
    # The generation was stopped and the model is free: the next question is answered.
    response = httpx.post(f"{served}/api/question", timeout=120, json={
        "question": "How do I install the printer driver?", "user_id": "carol"})
    assert response.status_code == 200
    listed = httpx.get(f"{served}/api/conversations", params={"user_id": "carol"}).json()
    assert len(listed["conversations"]) == 1


def test_binds_to_loopback_only(served: str) -> None:
    port = served.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                               text=True).stdout
    local_addresses = {line.split()[3] for line in listening.splitlines()}
    assert local_addresses == {f"127.0.0.1:{port}"}


def test_errors_over_http_are_json(served: str) -> None:
    response = httpx.post(f"{served}/api/question", content=b"{oops",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert json.loads(response.text)["error"]["code"] == "invalid_json"


def test_a_port_in_use_is_a_clear_error_not_a_trace(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path / "data"),
               "HEARTH_MODELS_DIR": str(MODELS), "HEARTH_LLAMACPP_MODEL": SMOLLM}
        result = subprocess.run([str(BIN / "hearth"), "serve", "--port", str(port)], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"Hearth cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    assert "--port or HEARTH_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data" / "chroma").exists()  # nothing was started, nor indexed


def test_an_address_not_on_this_machine_is_a_clear_error(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: binding it fails, and nothing is sent.
    env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path / "data")}
    port = free_port()
    result = subprocess.run([str(BIN / "hearth"), "serve", "--host", "192.0.2.1", "--port",
                             str(port)], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert (f"Hearth cannot listen on 192.0.2.1:{port} (Cannot assign requested address): "
            "check --host and --port") in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_models_verify_command() -> None:
    result = subprocess.run([str(BIN / "hearth"), "models", "verify", SMOLLM],
                            capture_output=True, text=True,
                            env={**os.environ, "HEARTH_MODELS_DIR": str(MODELS)})
    assert result.returncode == 0 and f"{SMOLLM}: ok" in result.stdout


def test_invalid_setting_stops_the_command_naming_it(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "hearth"), "models", "list"], capture_output=True,
                            text=True, cwd=tmp_path, env={**os.environ, "HEARTH_TOP_K": "lots"})
    assert result.returncode != 0
    assert "HEARTH_TOP_K" in result.stderr and "Traceback" not in result.stderr


def test_metrics_and_logs_follow_a_question(served: str, served_root: Path,
                                            metrics_port: int) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, str], float]:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
        return {(s.name, json.dumps(s.labels, sort_keys=True)): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def delta(name: str, **labels: str) -> float:
        key = (name, json.dumps(labels, sort_keys=True))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert httpx.get(f"{served}/metrics").status_code == 404  # not on the API's port
    before = scrape()
    response = httpx.post(f"{served}/api/question", timeout=120, json={
        "question": "How do I install the printer driver?", "user_id": "dora"})
    assert response.status_code == 200
    after = scrape()
    assert delta("hearth_http_requests_total", route="/api/question", method="POST",
                 status="200") == 1
    outcome = "refused" if response.json()["refused"] else "answered"
    assert delta("hearth_questions_total", outcome=outcome, mode="whole") == 1
    assert delta("hearth_retrieval_duration_seconds_count") == 1
    assert after[("hearth_backend_up", json.dumps({"backend": "llm"}))] == 1
    assert "dora" not in json.dumps(list(after))

    request_id = response.headers["X-Request-Id"]
    lines = [json.loads(x) for x in (served_root / "log").read_text().splitlines()
             if x.startswith("{")]
    assert any(x["logger"] == "hearth.access" and x["request_id"] == request_id
               and "/api/question" in x["message"] for x in lines)
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{metrics_port}"], capture_output=True,
                               text=True).stdout
    assert {line.split()[3] for line in listening.splitlines()} == {f"127.0.0.1:{metrics_port}"}
