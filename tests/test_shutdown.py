"""SIGTERM while an answer streams: what Kubernetes and Docker send a container they stop.

A real server process (Hearth's waitress server and app, ``hearth.server.build_server``) over
the fast tier's scripted model (tests/fakes.py), which streams its answer slowly here, a
character at a time; real SIGTERM, real HTTP on 127.0.0.1. The server stops accepting at once,
lets the stream finish within HEARTH_SHUTDOWN_GRACE_S, and ends one that runs past it with an
error event rather than a cut.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, Server, free_port, http_ok, wait_until

pytestmark = pytest.mark.real  # a real server process

APP = """
import sys
from pathlib import Path

from hearth.api import create_app
from hearth.server import build_server
from tests.fakes import fake_services

port, grace, characters, pause = (int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]),
                                  float(sys.argv[5]))
services = fake_services(Path(sys.argv[4]), ["marigold " * (characters // 9)] * 4, port=port,
                         shutdown_grace_s=grace, metrics=True)
services.llm.chat_model.sleep = pause  # a character each ``pause`` seconds
build_server(services.settings).serve(create_app(services.settings, services))
"""

QUESTION = {"question": "What is the guest Wi-Fi password?", "user_id": "ann", "stream": True}


def started(tmp_path: Path, grace_s: float, characters: int, pause: float = 0.05
            ) -> tuple[Server, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO.parent), str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = Server([sys.executable, "-c", APP, str(port), str(grace_s), str(characters),
                     str(tmp_path), str(pause)], tmp_path / "log", env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/healthz"), "the server", timeout=60, proc=server.proc)
    return server, url


def events_of(url: str, first_token: threading.Event) -> Iterator[tuple[str, float]]:
    """Each event the stream sends, with when it came; ``first_token`` is set on the first."""
    with httpx.stream("POST", f"{url}/api/question", json=QUESTION, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                first_token.set()
                yield line.removeprefix("event: "), time.monotonic()
            elif line.startswith("data: ") and '"code"' in line:
                yield json.loads(line.removeprefix("data: "))["code"], time.monotonic()


def stream_through_sigterm(server: Server, url: str) -> tuple[list[str], float]:
    """A stream's events (an error's code after ``error``), SIGTERM sent after its first, and
    how long after SIGTERM the stream ended."""
    first_token = threading.Event()
    received: list[tuple[str, float]] = []
    reader = threading.Thread(target=lambda: received.extend(events_of(url, first_token)))
    reader.start()
    assert first_token.wait(30)
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    reader.join(60)
    assert received, "no event"
    return [e for e, _ in received], received[-1][1] - sent


def test_a_stream_in_flight_finishes_after_sigterm_and_no_new_one_starts(tmp_path: Path) -> None:
    server, url = started(tmp_path, grace_s=30, characters=90)  # about 5 s of answer
    try:
        events, took = stream_through_sigterm(server, url)
        assert events[-1] == "done" and "error" not in events, events
        assert took > 3  # it went on streaming (waitress alone stopped the loop at once)
        with pytest.raises(httpx.ConnectError):  # no longer listening
            httpx.get(f"{url}/healthz", timeout=5)
        assert server.proc.wait(15) == 0  # gone once the stream is, not at the grace's end
    finally:
        server.stop()
        print((tmp_path / "log").read_text()[-3000:])


def test_a_stream_past_the_grace_period_ends_with_an_error_event(tmp_path: Path) -> None:
    server, url = started(tmp_path, grace_s=1, characters=600)  # about 30 s of answer
    try:
        events, took = stream_through_sigterm(server, url)
        assert events[-2:] == ["error", "shutting_down"], events
        assert "done" not in events and took < 10
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
        print((tmp_path / "log").read_text()[-3000:])


def queued_reply(url: str, path: str, body: dict[str, object]) -> tuple[int, str]:
    """A streamed question that waits for the model: its status and what it read, or how the
    connection ended."""
    try:
        with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as response:
            return response.status_code, response.read().decode()
    except httpx.HTTPError as exc:
        return 0, repr(exc)


def test_a_stream_queued_past_the_grace_period_is_answered_shutting_down(tmp_path: Path) -> None:
    """One answer at a time: the streams waiting for the model at SIGTERM never start; past
    the grace period each is told so at once, in its API's error shape, rather than taking the
    model in turn (here 3 s to a first token each) until the process exits and cuts them."""
    server, url = started(tmp_path, grace_s=1, characters=60, pause=3)
    try:
        waiting: dict[str, tuple[int, str]] = {}
        openai = {"model": "hearth", "stream": True, "user": "bob",
                  "messages": [{"role": "user", "content": QUESTION["question"]}]}
        asked = {"cy": ("/api/question", {**QUESTION, "user_id": "cy"}),
                 "di": ("/api/question", {**QUESTION, "user_id": "di"}),
                 "bob": ("/v1/chat/completions", openai)}
        queued = [threading.Thread(target=lambda who=who, path=path, body=body: waiting.update(
                      {who: queued_reply(url, path, body)}))
                  for who, (path, body) in asked.items()]
        events: list[tuple[str, float]] = []
        first_token = threading.Event()
        running = threading.Thread(target=lambda: events.extend(events_of(url, first_token)))
        running.start()
        assert first_token.wait(30)
        for thread in queued:
            thread.start()
        wait_until(lambda: "hearth_queue_length 3.0" in httpx.get(f"{url}/metrics").text,
                   "three questions waiting for the model", timeout=30)
        server.proc.send_signal(signal.SIGTERM)
        for thread in [running, *queued]:
            thread.join(30)
        assert [e for e, _ in events][-2:] == ["error", "shutting_down"]
        for who in ("cy", "di"):
            status, text = waiting[who]
            assert status == 503 and json.loads(text)["error"]["code"] == "shutting_down", text
        status, text = waiting["bob"]
        error = json.loads(text)["error"] if status else {}
        assert status == 503 and error["code"] == "shutting_down", text
        assert error["type"] and error["message"]
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
        print((tmp_path / "log").read_text()[-3000:])
