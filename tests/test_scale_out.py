"""Hearth scaled out, for real, on loopback: HAProxy (Debian's) in front of three `hearth serve`
processes that share a MongoDB wire server (secantusdb, the stand-in for MongoDB), a Chroma
server (`chroma run`) and llama.cpp's own OpenAI-compatible server with two parallel slots
(SmolLM2, the stand-in for the served model). The stack is deploy/scale-out/stack.py, the
recipe of docs/scaling.md.

What holds across workers: a user's question rate limit, a key revoked through one worker, an
ingestion job started through one and followed through another, the metrics of each worker
adding up to the requests sent; and a worker killed mid-answer loses no stored turn, stores no
half answer, and the proxy sends the next questions to the others.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.real, pytest.mark.slow]


def _stack_module() -> Any:
    spec = importlib.util.spec_from_file_location("scale_out_stack",
                                                  ROOT / "deploy" / "scale-out" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


DOCS = {
    "lighthouse.md": "# The lighthouse of Port Ellery\n\nThe keeper of the Port Ellery "
                     "lighthouse is Marta Quill. She lights the lamp at dusk, winds the clock "
                     "at noon, logs every passing ship in a green ledger, and repaints the "
                     "tower white each spring. The lamp can be seen 23 nautical miles away.\n",
    "ferry.md": "# The Ellery ferry\n\nThe ferry to Port Ellery leaves the mainland at 7:40 "
                "and at 16:10; the crossing takes 55 minutes. Bicycles travel free.\n",
}
UNRELATED = "zqxv wplkr gnarf?"  # retrieval finds nothing: refused at once, without the model


class Sent:
    """An HTTP client that counts the API requests it sends (for the metrics' sums)."""

    def __init__(self) -> None:
        self.client = httpx.Client(timeout=180)
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with self._lock:
            self.count += 1
        return self.client.request(method, url, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("scale-out")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    settings = {"HEARTH_INGEST_API": "true", "HEARTH_INGEST_ROOTS": str(docs),
                "HEARTH_MAX_NEW_TOKENS": "160"}
    module = _stack_module()
    with module.Stack(root / "stack", workers=3, slots=2, ctx_per_slot=2048,
                      settings=settings) as running:
        running.docs = docs
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def requests_counted(stack: Any) -> dict[str, float]:
    """Each worker's API requests (probes and /metrics left out), by worker name."""
    totals = {}
    for i, worker in enumerate(stack.api):
        text = httpx.get(worker.metrics_url, timeout=10).text
        totals[f"w{i}"] = sum(
            s.value for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "hearth_http_requests_total"
            and s.labels["route"] not in ("/healthz", "/readyz", "/metrics"))
    return totals


def refusals_counted(stack: Any) -> dict[str, float]:
    out = {}
    for i, worker in enumerate(stack.api):
        text = httpx.get(worker.metrics_url, timeout=10).text
        out[f"w{i}"] = sum(s.value for family in text_string_to_metric_families(text)
                           for s in family.samples
                           if s.name == "hearth_http_requests_total"
                           and s.labels["status"] == "429")
    return out


def test_three_workers_behind_a_proxy_hold_limits_keys_jobs_and_turns(stack: Any) -> None:
    send = Sent()
    proxy = stack.url
    w0, w1, w2 = (w.url for w in stack.api)
    root = bearer(stack.admin_key())

    # A key made through the proxy; an ingestion job started through worker 0, followed
    # through worker 1 and through the proxy.
    made = send("POST", f"{proxy}/api/keys", json={"user_id": "ann"}, headers=root)
    assert made.status_code == 201, made.text
    ann = bearer(made.json()["key"])
    started = send("POST", f"{w0}/api/ingest", json={"files": str(stack.docs)}, headers=root)
    assert started.status_code == 202, started.text
    job_path = started.json()["url"]
    job: dict[str, Any] = {}
    for _ in range(600):
        job = send("GET", f"{w1}{job_path}", headers=root).json()
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.2)
    assert job["state"] == "done" and job["summary"]["added"] == 2, job
    assert send("GET", f"{proxy}{job_path}", headers=root).json()["state"] == "done"

    # Ann's 30 questions a minute, spread over the workers; the 31st, 32nd and 33rd are
    # refused, each by another worker.
    def ask(question: str, headers: dict[str, str], stream: bool = False) -> httpx.Response:
        return send("POST", f"{proxy}/api/question", headers=headers,
                    json={"question": question, "user_id": "ann", "stream": stream})

    with ThreadPoolExecutor(3) as pool:
        asked = list(pool.map(lambda _: ask(UNRELATED, ann), range(30)))
    assert [r.status_code for r in asked] == [200] * 30, [r.text for r in asked
                                                          if r.status_code != 200][:2]
    assert {r.headers["X-Served-By"] for r in asked} == {"w0", "w1", "w2"}
    refused = [ask(UNRELATED, ann) for _ in range(3)]
    assert [r.status_code for r in refused] == [429] * 3
    assert all(r.json()["error"]["code"] == "rate_limited" for r in refused)
    assert {r.headers["X-Served-By"] for r in refused} == {"w0", "w1", "w2"}
    assert refusals_counted(stack) == {"w0": 1, "w1": 1, "w2": 1}

    # A key revoked through worker 2 is refused by workers 0 and 1 at once.
    bob_made = send("POST", f"{w0}/api/keys", json={"user_id": "bob"}, headers=root).json()
    bob = bearer(bob_made["key"])
    assert [send("GET", f"{w}/api/conversations", headers=bob).status_code
            for w in (w0, w1, w2)] == [200] * 3
    assert send("DELETE", f"{w2}/api/keys/{bob_made['id']}", headers=root).status_code == 200
    assert [send("GET", f"{w}/api/conversations", headers=bob).status_code
            for w in (w0, w1)] == [401, 401]

    # Every request sent is counted by exactly one worker.
    counted = requests_counted(stack)
    assert sum(counted.values()) == send.count, counted
    assert all(n > 0 for n in counted.values()), counted

    # Carl asks once (a stored turn), then a worker is killed while streaming his second answer.
    carl = bearer(send("POST", f"{proxy}/api/keys", json={"user_id": "carl"},
                       headers=root).json()["key"])
    first = send("POST", f"{proxy}/api/question", headers=carl,
                 json={"question": "Who keeps the Port Ellery lighthouse?", "user_id": "carl"})
    assert first.status_code == 200, first.text
    # llama.cpp's server reports each drawn token's log-probability: the answer's confidence.
    assert 0 < first.json()["confidence"] <= 1, first.text
    killed_question = "Tell me everything the keeper of the lighthouse does, in detail."
    tokens, ended, killed = 0, False, None
    with send.client.stream("POST", f"{proxy}/api/question", headers=carl, json={
            "question": killed_question, "user_id": "carl", "stream": True}) as response:
        assert response.status_code == 200
        served_by = response.headers["X-Served-By"]
        try:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    tokens += 1
                    if killed is None:
                        killed = stack.api[int(served_by[1:])]
                        killed.part.kill(signal.SIGKILL)
                elif line.startswith("event: done"):
                    ended = True
        except httpx.HTTPError:
            pass  # the connection broke with the worker
    assert killed is not None and tokens >= 1 and not ended
    killed.part.proc.wait(10)

    # The proxy sends the next questions to the others; nothing of the half answer is stored.
    after = [send("POST", f"{proxy}/api/question", headers=carl,
                  json={"question": UNRELATED, "user_id": "carl"}) for _ in range(6)]
    assert [r.status_code for r in after] == [200] * 6, [r.text for r in after]
    assert served_by not in {r.headers["X-Served-By"] for r in after}
    conversations = send("GET", f"{proxy}/api/conversations", headers=carl).json()
    turns = [t for c in conversations["conversations"]
             for t in send("GET", f"{proxy}/api/conversations/{c['id']}",
                           headers=carl).json()["turns"]]
    questions = [t["question"] for t in turns]
    assert questions.count("Who keeps the Port Ellery lighthouse?") == 1
    assert killed_question not in questions
    assert len(questions) == 7, json.dumps(questions)
