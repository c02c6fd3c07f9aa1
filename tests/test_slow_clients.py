"""Slow and idle clients cannot stall `hearth serve` (docs/security.md, "Slow and idle clients").

Two servers, both real processes on 127.0.0.1 over real sockets:

- `hearth serve` itself with SmolLM2 and 4 threads: hundreds of connections that send a partial
  request line, drip their headers, stop in the middle of a body or send nothing stay open
  (the deadlines are set long here), and /healthz, a history read and a question are answered
  all the same. Before waitress (gunicorn's gthread worker) 16 such connections were enough to
  make /healthz time out.
- The same server code (`hearth.server.build_server`) serving a stub Flask app with short
  deadlines (2 s), to see each deadline close its connection, and a stream of megabytes that
  the client never reads give its thread back: Hearth's own answers are too small to fill the
  socket buffers, so they never block a thread on a client that does not read.

The timeouts are generous (CI is a busy 2-core machine): they assert behaviour, not speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, MODELS, SMOLLM, Server, free_port, http_ok, wait_until

pytestmark = pytest.mark.real  # real servers and a real model

# The kinds of slow client, as the first bytes each sends before it stops.
PARTIAL_LINE = b"GET /healt"
PARTIAL_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: hearth\r\nUser-Agent: slow"
PARTIAL_BODY = (b"POST /api/question HTTP/1.1\r\nHost: hearth\r\nContent-Type: application/json\r\n"
                b"Content-Length: 60000\r\n\r\n{\"question\": \"")
IDLE = b""
SLOW_KINDS = {"partial request line": PARTIAL_LINE, "partial headers": PARTIAL_HEADERS,
              "partial body": PARTIAL_BODY, "idle": IDLE}
PER_KIND = 50  # 200 slow connections in all, against 4 threads

STUB = """
import logging
import sys
from flask import Flask, Response, request
from hearth.config import load_settings
from hearth.server import build_server

logging.basicConfig(level=logging.INFO)
app = Flask("stub")

@app.get("/healthz")
def healthz():
    return {"status": "ok"}

@app.post("/echo")
def echo():
    return {"bytes": len(request.get_data())}

@app.get("/stream")
def stream():
    def chunks():
        sent = 0
        try:
            while sent < 10_000:  # 640 MB: far more than any socket buffer holds
                yield "data: " + "x" * 65536 + "\\n\\n"
                sent += 1
        finally:
            print(f"stream closed after {sent} chunks", flush=True)
    return Response(chunks(), mimetype="text/event-stream")

settings = load_settings(_env_file=None, port=int(sys.argv[1]), threads=2, header_timeout_s=2,
                         body_timeout_s=2, idle_timeout_s=2, send_timeout_s=2)
build_server(settings).serve(app)
"""


def connect(port: int, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reading what it sends)."""
    sock.settimeout(within)
    with contextlib.suppress(ConnectionResetError):
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
    return True


@contextlib.contextmanager
def held_open(port: int, per_kind: int) -> Iterator[list[socket.socket]]:
    socks = [connect(port, first) for first in SLOW_KINDS.values() for _ in range(per_kind)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def started(argv: list[str], root: Path, env: dict[str, str], url: str,
            timeout: float) -> Server:
    server = Server(argv, root / "log", env=env, cwd=root)
    wait_until(lambda: http_ok(f"{url}/healthz"), argv[-1], timeout=timeout, proc=server.proc)
    return server


class TestHundredsOfSlowClients:
    """`hearth serve` answers while 200 slow or idle connections are open (4 threads)."""

    @pytest.fixture(scope="class")
    def served(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
        root = tmp_path_factory.mktemp("slow-clients")
        (root / "guide").mkdir()
        (root / "guide" / "printing.md").write_text(
            "# Printing\n\nTo install the printer driver, run setup.exe from the driver folder.\n")
        port = free_port()
        env = {**os.environ, "HEARTH_DATA_DIR": str(root / "data"),
               "HEARTH_MODELS_DIR": str(MODELS), "HEARTH_DOCS_DIR": str(root / "guide"),
               "HEARTH_LLAMACPP_MODEL": SMOLLM, "HEARTH_PORT": str(port),
               "HEARTH_THREADS": "4", "HEARTH_MAX_NEW_TOKENS": "64",
               # Long deadlines: the slow connections must stay open while the test asks.
               "HEARTH_HEADER_TIMEOUT_S": "300", "HEARTH_BODY_TIMEOUT_S": "300",
               "HEARTH_IDLE_TIMEOUT_S": "300"}
        url = f"http://127.0.0.1:{port}"
        server = started([str(BIN / "hearth"), "serve"], root, env, url, timeout=180)
        try:
            yield url, root
        finally:
            server.stop()
            print((root / "log").read_text()[-3000:])

    def test_healthz_and_history_answer_while_they_are_open(self, served: tuple[str, Path]
                                                             ) -> None:
        url, _ = served
        port = int(url.rsplit(":", 1)[1])
        with held_open(port, PER_KIND) as socks:
            time.sleep(1)  # every one of them is accepted and read from
            for _ in range(3):
                assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            listed = httpx.get(f"{url}/api/conversations", params={"user_id": "ann"}, timeout=5)
            assert listed.status_code == 200
            assert not any(closed_by_server(s, 0.01) for s in socks[::10])  # still held

    def test_a_question_is_answered_while_they_are_open(self, served: tuple[str, Path]) -> None:
        url, _ = served
        port = int(url.rsplit(":", 1)[1])
        with held_open(port, PER_KIND):
            response = httpx.post(f"{url}/api/question", timeout=120, json={
                "question": "How do I install the printer driver?", "user_id": "bob"})
        assert response.status_code == 200, response.text
        assert response.json()["answer"]

    def test_a_stream_nobody_reads_does_not_hold_the_server(self, served: tuple[str, Path]
                                                            ) -> None:
        url, root = served
        port = int(url.rsplit(":", 1)[1])
        body = b'{"question": "How do I install the printer driver?", "user_id": "carol", ' \
               b'"stream": true}'
        head = (f"POST /api/question HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        unread = [connect(port, head.encode() + body) for _ in range(2)]
        try:
            for _ in range(3):
                assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            # The answers are small: they end (and are stored) although nobody reads them.
            wait_until(lambda: len(httpx.get(f"{url}/api/conversations", timeout=5, params={
                "user_id": "carol"}).json()["conversations"]) == 2, "both answers", timeout=120)
        finally:
            for sock in unread:
                sock.close()


class TestDeadlines:
    """Each deadline closes its connection; a response nobody reads gives its thread back."""

    @pytest.fixture(scope="class")
    def stub(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
        root = tmp_path_factory.mktemp("deadlines")
        port = free_port()
        server = started([sys.executable, "-c", STUB, str(port)], root, dict(os.environ),
                         f"http://127.0.0.1:{port}", timeout=60)
        try:
            yield port, root / "log"
        finally:
            server.stop()
            print((root / "log").read_text()[-3000:])

    @pytest.mark.parametrize("kind", list(SLOW_KINDS))
    def test_a_slow_request_is_closed_at_its_deadline(self, stub: tuple[int, Path],
                                                      kind: str) -> None:
        port, _ = stub
        with connect(port, SLOW_KINDS[kind]) as sock:
            assert closed_by_server(sock, within=20)

    def test_headers_dripped_a_byte_at_a_time_are_closed_all_the_same(
            self, stub: tuple[int, Path]) -> None:
        port, _ = stub
        started_at = time.monotonic()
        with connect(port, b"GET /healthz HTTP/1.1\r\n") as sock:
            with contextlib.suppress(OSError):  # a send fails once the server has closed
                for _ in range(60):  # 30 s of drip, each byte well within the idle timeout
                    sock.sendall(b"X")
                    time.sleep(0.5)
            assert closed_by_server(sock, within=5)
        assert time.monotonic() - started_at < 25  # the header deadline, not the drip's end

    def test_a_body_over_the_limit_is_refused_before_it_is_read(self, stub: tuple[int, Path]
                                                                ) -> None:
        port, _ = stub
        with connect(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 900000000\r\n"
                           b"\r\n") as sock:
            sock.settimeout(20)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(4096):
                    answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413")
        assert b"Content-Type: application/json" in head  # the API's error shape, not text
        assert json.loads(body)["error"]["code"] == "body_too_large"

    def test_headers_past_the_limit_get_a_json_431(self, stub: tuple[int, Path]) -> None:
        port, _ = stub
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=20,
                             headers={"X-Padding": "a" * 70_000})
        assert response.status_code == 431
        assert response.json()["error"]["code"] == "request_header_fields_too_large"

    def test_a_whole_body_is_still_read(self, stub: tuple[int, Path]) -> None:
        port, _ = stub
        response = httpx.post(f"http://127.0.0.1:{port}/echo", content=b"x" * 50_000, timeout=20)
        assert response.json() == {"bytes": 50_000}

    def test_a_stream_nobody_reads_gives_its_thread_back(self, stub: tuple[int, Path]) -> None:
        port, log = stub
        before = log.read_text().count("stream closed")
        unread = [connect(port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(2)]
        try:
            # Both threads are held until the send deadline closes the streams; then the app's
            # iterators are closed and /healthz is answered.
            wait_until(lambda: log.read_text().count("stream closed") == before + 2,
                       "the unread streams to be closed", timeout=30)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            assert all(closed_by_server(s, within=5) for s in unread)
        finally:
            for sock in unread:
                sock.close()
        assert "stopped reading its response" in log.read_text()
