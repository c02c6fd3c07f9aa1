"""Who may ask and read: API keys, roles, ownership; and the limits on how much."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hearth.api import create_app
from hearth.throttle import Busy, Gate
from tests.conftest import BIN
from tests.test_api import index


@pytest.fixture
def secured(make_services: Any) -> Any:
    services = make_services(auth=True, question_rate_limit="1000/minute")
    index(services)
    app = create_app(services.settings, services)
    keys = {name: services.keys.create(name, admin=(name == "root"))[0]
            for name in ("ann", "bob", "root")}
    return app.test_client(), keys, services


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_keys_are_required_and_checked(secured: Any) -> None:
    client, keys, _ = secured
    body = {"question": "How do I ingest PDFs?", "user_id": "ann"}
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("hearth_forged"), bearer("nope")):
        response = client.post("/api/question", json=body, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
    assert client.post("/api/question", json=body, headers=bearer(keys["ann"])).status_code == 200
    # Liveness and the API description stay open.
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/openapi.json").status_code == 200


def test_a_key_acts_only_for_its_user(secured: Any) -> None:
    client, keys, _ = secured
    answer = client.post("/api/question", headers=bearer(keys["ann"]), json={
        "question": "How do I ingest PDFs?", "user_id": "ann"}).get_json()
    cid = answer["conversation_id"]
    as_bob = bearer(keys["bob"])
    assert client.post("/api/question", headers=as_bob, json={
        "question": "Hi", "user_id": "ann"}).status_code == 403
    assert client.post("/api/question", headers=as_bob, json={
        "question": "And?", "user_id": "bob", "conversation_id": cid}).status_code == 404
    assert client.get(f"/api/conversations/{cid}", headers=as_bob).status_code == 404
    assert client.delete(f"/api/conversations/{cid}", headers=as_bob).status_code == 404
    assert client.get("/api/conversations?user_id=ann", headers=as_bob).status_code == 403
    assert client.delete("/api/users/ann/history", headers=as_bob).status_code == 403
    # Bob's own list is empty; Ann still has her conversation, whole.
    assert client.get("/api/conversations", headers=as_bob).get_json()["conversations"] == []
    mine = client.get("/api/conversations", headers=bearer(keys["ann"])).get_json()
    assert [c["id"] for c in mine["conversations"]] == [cid]


def test_an_admin_may_act_for_others(secured: Any) -> None:
    client, keys, _ = secured
    response = client.post("/api/question", headers=bearer(keys["root"]), json={
        "question": "How do I ingest PDFs?", "user_id": "ann"})
    assert response.status_code == 200
    cid = response.get_json()["conversation_id"]
    listed = client.get("/api/conversations", headers=bearer(keys["ann"])).get_json()
    assert [c["id"] for c in listed["conversations"]] == [cid]
    assert client.delete("/api/users/ann/history", headers=bearer(keys["root"])).get_json() == {
        "deleted": 1}


def test_a_revoked_key_is_refused(secured: Any) -> None:
    client, _, services = secured
    token, key = services.keys.create("dan")
    assert client.get("/api/conversations", headers=bearer(token)).status_code == 200
    assert services.keys.revoke(key.id)
    response = client.get("/api/conversations", headers=bearer(token))
    assert response.status_code == 401
    assert "revoked" in response.get_json()["error"]["message"]


def test_keys_are_stored_hashed(secured: Any) -> None:
    _, keys, services = secured
    stored = (services.settings.data_dir / "keys.sqlite3").read_bytes()
    assert keys["ann"].encode() not in stored
    assert keys["ann"][7:15].encode() in stored  # the id, which is safe to show


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path / "data")}

    def hearth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "hearth"), "keys", *args], capture_output=True,
                              text=True, env=env)

    created = hearth("create", "--user", "ann", "--admin")
    assert created.returncode == 0
    token = created.stdout.strip()
    assert token.startswith("hearth_") and len(token) > 40
    listed = hearth("list").stdout
    assert token[7:15] in listed and "ann" in listed and "admin" in listed and "active" in listed
    assert token not in listed
    assert hearth("revoke", token[7:15]).returncode == 0
    assert "revoked" in hearth("list").stdout
    assert hearth("revoke", "unknown").returncode != 0


def test_auth_is_on_whenever_hearth_listens_beyond_loopback(make_settings: Any) -> None:
    assert make_settings(host="0.0.0.0").auth_required
    assert make_settings(profile="compose").auth_required
    assert not make_settings().auth_required


def test_rate_limit_answers_429_with_retry_after(make_services: Any) -> None:
    services = make_services(question_rate_limit="2/minute", rate_limit="5/minute")
    client = create_app(services.settings, services).test_client()
    asks = [client.post("/api/question", json={"question": "Anything?", "user_id": "ann"})
            for _ in range(3)]
    assert [r.status_code for r in asks] == [200, 200, 429]
    assert asks[2].get_json()["error"]["code"] == "rate_limited"
    assert int(asks[2].headers["Retry-After"]) > 0
    # Another user has a budget of their own.
    assert client.post("/api/question", json={"question": "Anything?",
                                              "user_id": "bob"}).status_code == 200
    reads = [client.get("/api/conversations?user_id=carl").status_code for _ in range(6)]
    assert reads == [200] * 5 + [429]
    assert client.get("/healthz").status_code == 200


def test_a_users_limits_count_over_every_route(make_services: Any) -> None:
    """Each limit is one count per user: it was one per route, so a user could ask 30
    questions a minute on /api/question and 30 more on /v1, make 300 requests on each route,
    and was held to the question limit when listing /v1/models."""
    services = make_services(question_rate_limit="2/minute", rate_limit="6/minute")
    client = create_app(services.settings, services).test_client()
    chat = {"model": "hearth", "user": "ann", "messages": [{"role": "user", "content": "Hi?"}]}
    asked = [client.post("/api/question", json={"question": "Hi?", "user_id": "ann"}),
             client.post("/v1/chat/completions", json=chat),
             client.post("/v1/chat/completions", json=chat)]
    assert [r.status_code for r in asked] == [200, 200, 429]
    assert asked[2].get_json()["error"]["type"] == "rate_limit_error"
    # Listing models is not a question; the general limit counts the questions too.
    assert client.get("/v1/models?user_id=ann").status_code == 200
    spread = [client.get(path).status_code for path in (
        "/api/conversations?user_id=ann", "/api/collections?user_id=ann",
        "/v1/models?user_id=ann")]
    assert spread == [200, 200, 429]
    # A body over the size limit is refused as such, and does not reset anyone's count
    # (flask-limiter took the error for its store's and counted afresh in memory).
    services = make_services(question_rate_limit="2/minute", max_body_bytes=2048)
    client = create_app(services.settings, services).test_client()
    ask = {"question": "Hi?", "user_id": "bob"}
    assert [client.post("/api/question", json=ask).status_code for _ in range(2)] == [200, 200]
    huge = client.post("/api/question", json={**ask, "question": "x" * 4000})
    assert huge.status_code == 413
    assert client.post("/api/question", json=ask).status_code == 429


def test_a_full_queue_answers_503_with_retry_after(make_services: Any) -> None:
    services = make_services(max_queued_generations=0)
    index(services)  # a question nothing answers is refused without waiting for the model
    client = create_app(services.settings, services).test_client()
    services.gate.acquire("bob")  # the model is busy with someone else's question
    question = {"question": "How do I ingest PDFs?", "user_id": "ann"}
    try:
        response = client.post("/api/question", json=question)
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "busy"
        # flask-limiter keeps the later of the gate's hint and its own window's reset.
        assert int(response.headers["Retry-After"]) >= 5
    finally:
        services.gate.release("bob")
    ok = client.post("/api/question", json=question)
    assert ok.status_code == 200


def test_the_queue_is_first_come_first_served_and_bounded() -> None:
    gate = Gate(concurrent=1, queued=3, timeout_s=10)
    order: list[int] = []
    gate.acquire()
    threads = []
    for n in range(3):
        thread = threading.Thread(target=lambda n=n: (gate.acquire(), order.append(n),
                                                      gate.release()))
        thread.start()
        threads.append(thread)
        time.sleep(0.1)  # arrive in order
    with pytest.raises(Busy):
        gate.acquire()  # the fourth waiter does not fit
    gate.release()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2]
    slow = Gate(concurrent=1, queued=1, timeout_s=0.2)
    slow.acquire()
    with pytest.raises(Busy, match="no model was free"):
        slow.acquire()


def waiting_threads(gate: Gate, users: list[str], order: list[str]) -> list[threading.Thread]:
    """One thread per question, each arriving after the one before, recording when it gets
    the model (and releasing it at once)."""
    threads = []
    for user in users:
        thread = threading.Thread(target=lambda user=user: (
            gate.acquire(user), order.append(user), gate.release(user)))
        thread.start()
        threads.append(thread)
        time.sleep(0.1)  # arrive in order
    return threads


def test_the_queue_is_served_round_robin_by_user() -> None:
    gate = Gate(concurrent=1, queued=8, timeout_s=10, per_user=4)
    gate.acquire("zed")
    order: list[str] = []
    threads = waiting_threads(gate, ["ann", "ann", "ann", "bob", "cat", "ann"], order)
    gate.release("zed")
    for thread in threads:
        thread.join()
    # Ann's four questions do not keep Bob and Cat waiting four answers.
    assert order == ["ann", "bob", "cat", "ann", "ann", "ann"]


def test_one_user_cannot_hold_every_place() -> None:
    gate = Gate(concurrent=1, queued=8, timeout_s=10, per_user=2)
    gate.acquire("ann")
    order: list[str] = []
    threads = waiting_threads(gate, ["ann"], order)
    with pytest.raises(Busy, match="you already have 2 questions"):
        gate.acquire("ann")
    threads += waiting_threads(gate, ["bob"], order)  # others still get in
    gate.release("ann")
    for thread in threads:
        thread.join()
    assert order == ["bob", "ann"]


def test_a_freed_place_goes_to_the_user_turned_away() -> None:
    """Ann's answer ends and she asks again at once; Bob, turned away while the queue was full,
    comes back after his Retry-After: the place is his, not Ann's."""
    gate = Gate(concurrent=1, queued=1, timeout_s=10)
    gate.acquire("ann")
    order: list[str] = []
    threads = waiting_threads(gate, ["cat"], order)
    with pytest.raises(Busy) as refused:
        gate.acquire("bob")
    assert refused.value.retry_after > 0
    gate.release("ann")
    for thread in threads:
        thread.join()
    gate.acquire("dan")  # the model is busy again; one place is left in the queue
    with pytest.raises(Busy):
        gate.acquire("ann")  # kept for Bob
    threads = waiting_threads(gate, ["bob"], order)
    gate.release("dan")
    for thread in threads:
        thread.join()
    assert order == ["cat", "bob"]


def test_a_question_the_gate_would_refuse_is_refused_before_any_work() -> None:
    gate = Gate(concurrent=1, queued=0, timeout_s=10)
    gate.check("ann")  # the model is free: no refusal, and no place taken
    assert gate.running == 0 and gate.waiting == 0
    gate.acquire("bob")
    with pytest.raises(Busy) as refused:
        gate.check("ann")
    assert refused.value.retry_after > 0
    gate.release("bob")
    gate.check("ann")  # free again
    gate.acquire("ann")  # checking took no place: Ann's question still gets the model
    assert gate.running == 1
    gate.release("ann")


# Questions each of 8 threads asks in one conversation: every answer is the real model's, and
# the conversation's history grows with each, so 25 took over three minutes of the suite.
ASKED = 10


def test_concurrent_questions_of_one_user_are_all_stored_in_order(make_services: Any) -> None:
    services = make_services(question_rate_limit="1000/minute", rate_limit="1000/minute",
                             max_queued_generations=16, max_queued_per_user=8)
    client = create_app(services.settings, services).test_client()
    first = client.post("/api/question", json={"question": "0:start", "user_id": "ann"})
    cid = first.get_json()["conversation_id"]
    errors: list[int] = []

    app = client.application
    clients = [app.test_client() for _ in range(8)]  # built first: one app, a client a thread

    def ask(thread: int) -> None:
        local = clients[thread]
        for n in range(ASKED):
            r = local.post("/api/question", json={"question": f"{thread}:{n}", "user_id": "ann",
                                                  "conversation_id": cid})
            if r.status_code != 200:
                errors.append(r.status_code)

    threads = [threading.Thread(target=ask, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    questions = [t["question"] for t in client.get(f"/api/conversations/{cid}").get_json()["turns"]]
    assert len(questions) == 8 * ASKED + 1
    for thread in range(8):
        assert [q for q in questions if q.startswith(f"{thread}:") and q != "0:start"] == [
            f"{thread}:{n}" for n in range(ASKED)]


def test_ingestion_is_for_admins_and_stays_inside_its_roots(make_services: Any,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "shared-docs"
    (root / "team").mkdir(parents=True)
    (root / "team" / "notes.md").write_text("# Notes\n\nThe office opens at nine.\n")
    (tmp_path / "private").mkdir()
    (root / "team" / "escape").symlink_to(tmp_path / "private")
    (tmp_path / "private" / "vault.md").write_text("# Vault\n\nThe vault code is 4321.\n")
    (root / "team" / "vault.md").symlink_to(tmp_path / "private" / "vault.md")
    services = make_services(auth=True, ingest_api=True, ingest_roots=[root])
    client = create_app(services.settings, services).test_client()
    ann = bearer(services.keys.create("ann")[0])
    root_key = bearer(services.keys.create("root", admin=True)[0])
    assert client.post("/api/ingest", json={"files": str(root / "team")},
                       headers=ann).status_code == 403
    for folder in (root / ".." / "private", root / "team" / "escape", Path("/etc")):
        refused = client.post("/api/ingest", json={"files": str(folder)}, headers=root_key)
        assert refused.status_code == 403
        assert refused.get_json()["error"]["code"] == "folder_not_allowed"
    for url in ("http://127.0.0.1:9/", "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.7/"):
        refused = client.post("/api/ingest", json={"web": url}, headers=root_key)
        assert refused.status_code == 403, refused.get_json()
        assert refused.get_json()["error"]["code"] == "address_not_allowed"
    started = client.post("/api/ingest", json={"files": str(root / "team")}, headers=root_key)
    assert started.status_code == 202
    job_url = started.get_json()["url"]
    for _ in range(600):
        job = client.get(job_url, headers=root_key).get_json()
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    assert job["summary"]["added"] == 1
    # A linked file inside the root whose target is outside it is reported, never read.
    assert [s["name"] for s in job["summary"]["skipped"]] == ["vault.md"], job["summary"]
    assert "outside the folder" in job["summary"]["skipped"][0]["reason"]
    assert all("4321" not in doc.page_content for doc, _, _ in services.vectorstore.search("vault code", 4))


def test_no_key_id_starts_with_a_dash() -> None:
    from hearth.auth import key_id, new_token

    # One in 64 random ids would start with "-", which `hearth keys revoke ID` reads as an
    # option: a thousand keys make one likely (1 - (63/64)**1000 > 0.99999).
    assert not any(key_id(new_token()).startswith("-") for _ in range(1000))
