"""What an outside review broke, as classes of attack (the security issue's findings 2, 5, 6, 7;
slow clients are in test_slow_clients.py, ingestion in test_ingest_bounds.py and
test_ingest_safety.py). Fast tier: a scripted fake model and a fake index behind the real app,
the real SQLite stores; one test uses a real HTTP server on 127.0.0.1. Every request goes to
the app itself; addresses other than loopback appear only as the WSGI environ's REMOTE_ADDR."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from hearth.api import create_app
from hearth.chat import Ask
from hearth.services import Services
from tests.fakes import fake_services

WIFI = "What is the guest Wi-Fi password?"
ANSWER = "marigold-42."


def app_for(tmp_path: Path, **overrides: Any) -> tuple[Any, Services]:
    services = fake_services(tmp_path, [ANSWER] * 50, **overrides)
    return create_app(services.settings, services).test_client(), services


@pytest.fixture
def client(tmp_path: Path) -> Any:
    return app_for(tmp_path, ingest_api=True, ingest_roots=[tmp_path])[0]


def ask(client: Any, body: Any = None, **kwargs: Any) -> Any:
    return client.post("/api/question", json=body or {"question": WIFI, "user_id": "ann"},
                       **kwargs)


# -- 2. other web sites cannot drive a keyless Hearth -------------------------------------------

@pytest.mark.parametrize("path", ["/api/question", "/v1/chat/completions", "/api/ingest"])
@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_a_body_that_is_not_json_is_415(client: Any, path: str, content_type: str | None) -> None:
    body = json.dumps({"question": WIFI, "user_id": "ann",
                       "messages": [{"role": "user", "content": WIFI}], "user": "ann"})
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(path, data=body, headers=headers)
    assert response.status_code == 415, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert client.get("/api/conversations?user_id=ann").get_json() == {"conversations": []}


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1.evil.example",
                                    "http://localhost:9999", "null"])
def test_a_foreign_origin_cannot_change_anything(client: Any, origin: str) -> None:
    kept = ask(client).get_json()["conversation_id"]
    for response in (
        ask(client, headers={"Origin": origin}),
        client.delete(f"/api/conversations/{kept}?user_id=ann", headers={"Origin": origin}),
        client.delete("/api/users/ann/history", headers={"Origin": origin}),
        client.post("/v1/chat/completions", headers={"Origin": origin}, json={
            "user": "ann", "messages": [{"role": "user", "content": WIFI}]}),
    ):
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "origin_not_allowed"
    listed = client.get("/api/conversations?user_id=ann").get_json()["conversations"]
    assert [c["id"] for c in listed] == [kept]  # nothing added, nothing deleted


def test_the_page_itself_and_listed_origins_may(tmp_path: Path) -> None:
    client, _ = app_for(tmp_path, allowed_origins=["https://notes.example:8443"])
    assert ask(client, headers={"Origin": "http://localhost"}).status_code == 200
    assert ask(client, headers={"Origin": "https://notes.example:8443"}).status_code == 200
    assert ask(client).status_code == 200  # curl, the CLI, OpenAI clients send no Origin


def test_the_page_behind_a_proxy_that_ends_tls_may(tmp_path: Path) -> None:
    """Behind an Ingress that ends TLS the page is https://NAME while Hearth hears http from
    the proxy: the trusted proxy's X-Forwarded-Proto and X-Forwarded-Host say which origin is
    Hearth's own. From any other address the headers count for nothing."""
    client, _ = app_for(tmp_path, trusted_proxies=["10.0.0.0/8"],
                        allowed_hosts=["hearth.example.org", "hearth"])
    page = {"Origin": "https://hearth.example.org", "X-Forwarded-Proto": "https"}
    proxy = {"REMOTE_ADDR": "10.1.2.3"}
    named = ask(client, headers={**page, "Host": "hearth.example.org"}, environ_base=proxy)
    assert named.status_code == 200, named.get_json()
    renamed = ask(client, headers={**page, "Host": "hearth", "X-Forwarded-Host": "hearth.example.org"},
                  environ_base=proxy)
    assert renamed.status_code == 200, renamed.get_json()
    for headers, environ in (
            ({**page, "Host": "hearth.example.org"}, {"REMOTE_ADDR": "192.0.2.7"}),  # not the proxy
            ({**page, "Host": "hearth", "X-Forwarded-Host": "evil.example"}, proxy),
            ({"Origin": "https://evil.example", "X-Forwarded-Proto": "https",
              "Host": "hearth.example.org"}, proxy)):
        response = ask(client, headers=headers, environ_base=environ)
        assert response.status_code == 403, (headers, environ)
        assert response.get_json()["error"]["code"] == "origin_not_allowed"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io",
                                  "rebind.attacker.test:8000"])
def test_a_host_hearth_does_not_serve_is_refused(client: Any, host: str) -> None:
    ask(client)
    for response in (client.get("/api/conversations?user_id=ann", headers={"Host": host}),
                     client.get("/v1/models", headers={"Host": host}),
                     client.get("/", headers={"Host": host}),
                     ask(client, headers={"Host": host})):
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "host_not_allowed"
    # Probes answer whatever the Host: a pod's address, a load balancer's name.
    assert client.get("/healthz", headers={"Host": host}).status_code == 200
    assert client.get("/readyz", headers={"Host": host}).status_code == 200


def test_the_address_hearth_listens_on_is_served(tmp_path: Path) -> None:
    client, _ = app_for(tmp_path, host="192.0.2.10", auth=True)  # a documentation address
    response = client.get("/api/conversations", headers={"Host": "192.0.2.10:8000"})
    assert response.status_code == 401  # past the Host check: it asks for a key


def test_loopback_names_and_listed_hosts_are_served(tmp_path: Path) -> None:
    client, _ = app_for(tmp_path, allowed_hosts=["127.0.0.1", "localhost", "::1", "hearth.lan"])
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "hearth.lan", "HEARTH.LAN:80"):
        response = client.get("/api/conversations?user_id=ann", headers={"Host": host})
        assert response.status_code == 200, host


# -- 5. conversation ids -----------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["a/b", "../x", "a\nb", "a\x00b", "a b", "x" * 65, "", "-lead"])
def test_an_id_with_a_slash_or_control_character_is_refused(client: Any, bad: str) -> None:
    api = ask(client, {"question": WIFI, "user_id": "ann", "conversation_id": bad})
    v1 = client.post("/v1/chat/completions", json={
        "user": "ann", "conversation_id": bad, "messages": [{"role": "user", "content": WIFI}]})
    assert (api.status_code, v1.status_code) == (400, 400)
    assert api.get_json()["error"]["code"] == "invalid_field"


@pytest.mark.parametrize("bad", ["ann/bob", "a\tb", "\x7f"])
def test_a_user_id_with_a_slash_or_control_character_is_refused(client: Any, bad: str) -> None:
    assert ask(client, {"question": WIFI, "user_id": bad}).status_code == 400


def keyed(tmp_path: Path) -> tuple[Any, dict[str, dict[str, str]]]:
    client, services = app_for(tmp_path, auth=True)
    headers = {}
    for user in ("ann", "bob"):
        token, _ = services.keys.create(user)
        headers[user] = {"Authorization": f"Bearer {token}"}
    return client, headers


def test_a_foreign_conversation_is_indistinguishable_from_a_missing_one(tmp_path: Path) -> None:
    client, keys = keyed(tmp_path)
    anns = ask(client, {"question": WIFI, "user_id": "ann"}, headers=keys["ann"])
    conversation_id = anns.get_json()["conversation_id"]
    missing = "0" * len(conversation_id)

    def as_bob(cid: str) -> list[tuple[int, str]]:
        replies = [
            client.get(f"/api/conversations/{cid}", headers=keys["bob"]),
            client.delete(f"/api/conversations/{cid}", headers=keys["bob"]),
            ask(client, {"question": WIFI, "user_id": "bob", "conversation_id": cid},
                headers=keys["bob"]),
            client.post("/v1/chat/completions", headers=keys["bob"], json={
                "conversation_id": cid, "messages": [{"role": "user", "content": WIFI}]}),
        ]
        return [(r.status_code, r.get_data(as_text=True).replace(cid, "ID")) for r in replies]

    assert as_bob(conversation_id) == as_bob(missing)
    assert all(status == 404 for status, _ in as_bob(conversation_id))


def test_no_user_can_claim_another_users_conversation_first(tmp_path: Path) -> None:
    """An OpenAI client resending its chat continues one conversation, named after its user and
    first exchange. Bob, who can compute Ann's name for it, can neither create nor probe it."""
    client, keys = keyed(tmp_path)
    first = [{"role": "user", "content": WIFI}]
    digest = hashlib.sha256(json.dumps(["ann", WIFI, ANSWER]).encode()).hexdigest()
    anns_id = f"oai-{digest[:32]}"
    claim = client.post("/v1/chat/completions", headers=keys["bob"], json={
        "conversation_id": anns_id, "messages": first})
    assert claim.status_code == 404  # naming an id that does not exist creates nothing
    started = client.post("/v1/chat/completions", headers=keys["ann"], json={"messages": first})
    assert started.status_code == 200 and started.get_json()["conversation_id"] == anns_id
    resent = client.post("/v1/chat/completions", headers=keys["ann"], json={"messages": [
        *first, {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "And the network?"}]})
    assert resent.status_code == 200 and resent.get_json()["conversation_id"] == anns_id
    # Bob resending the same words gets a conversation of his own.
    bobs = client.post("/v1/chat/completions", headers=keys["bob"], json={"messages": first})
    assert bobs.get_json()["conversation_id"] not in (anns_id, None)


# -- 7. the smaller findings -------------------------------------------------------------------

def test_bad_keys_are_rate_limited_per_address(tmp_path: Path) -> None:
    client, keys = keyed(tmp_path)
    client.application.extensions["hearth"].settings.auth_failure_rate_limit = "3/minute"
    bad = {"Authorization": "Bearer hearth_not-a-key"}
    codes = [client.get("/api/conversations", headers=bad).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    limited = client.get("/api/conversations", headers=bad)
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    # Another address is not blocked; a good key still works.
    other = client.get("/api/conversations", headers=bad,
                       environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert other.status_code == 401
    assert client.get("/api/conversations", headers=keys["ann"]).status_code == 200


def test_rotating_user_ids_do_not_escape_the_per_address_limit(tmp_path: Path) -> None:
    client, _ = app_for(tmp_path, client_rate_limit="4/minute")
    codes = [client.get(f"/api/conversations?user_id=u{n}").status_code for n in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]


def test_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    client, _ = app_for(tmp_path, client_rate_limit="2/minute", trusted_proxies=["127.0.0.1"])

    def through_proxy(client_ip: str, remote: str = "127.0.0.1") -> int:
        return int(client.get("/api/conversations?user_id=ann", environ_base={
            "REMOTE_ADDR": remote}, headers={"X-Forwarded-For": f"{client_ip}"}).status_code)

    assert [through_proxy("198.51.100.7") for _ in range(3)] == [200, 200, 429]
    assert through_proxy("198.51.100.8") == 200  # another client behind the same proxy
    # From an address that is not a trusted proxy the header is ignored: its own bucket.
    assert [through_proxy(f"198.51.100.{n}", remote="127.0.0.9") for n in range(3)] == [
        200, 200, 429]


def test_erasing_a_users_history_leaves_no_text_in_the_files(tmp_path: Path) -> None:
    _, services = app_for(tmp_path)
    from hearth.chat import Chat

    chat = Chat(services)
    secret = "What is the combination of the blue safe in room 4?"
    for _ in range(3):
        chat.answer(Ask(secret, user_id="ann"))
    assert chat.erase_history("ann") == 3
    for path in services.settings.data_dir.glob("history.sqlite3*"):
        assert b"blue safe" not in path.read_bytes(), path


def test_deleting_a_conversation_leaves_no_text_in_any_file(tmp_path: Path) -> None:
    client, services = app_for(tmp_path)
    secret = "Where did the kingfisher4242 hide the key to the boathouse?"
    kept = "Where does the heron5151 fish at dawn?"
    gone = ask(client, {"question": secret, "user_id": "ann"}).get_json()["conversation_id"]
    ask(client, {"question": kept, "user_id": "ann"})
    assert client.delete(f"/api/conversations/{gone}?user_id=ann").get_json() == {"deleted": 1}
    files = [p for p in services.settings.data_dir.rglob("*") if p.is_file()]
    assert [p for p in files if b"kingfisher4242" in p.read_bytes()] == []
    assert [p for p in files if b"heron5151" in p.read_bytes()]  # the other one is kept


def test_the_stores_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    _, services = app_for(tmp_path)
    services.history.ping()
    services.keys.list()
    data = services.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("history.sqlite3", "keys.sqlite3"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("path", ["/api/question", "/v1/chat/completions", "/api/ingest"])
def test_deeply_nested_json_is_400_not_500(client: Any, path: str) -> None:
    body = "[" * 5000 + "]" * 5000
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_json"
    nested = {"question": WIFI, "user_id": "ann", "x": json.loads("[" * 900 + "]" * 900)}
    assert ask(client, nested).status_code in (200, 400)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("where", ["question", "v1 string", "v1 part", "feedback"])
def test_a_lone_surrogate_is_400_before_anything_is_drawn(tmp_path: Path, where: str,
                                                           stream: bool) -> None:
    """JSON lets a string hold half of a UTF-16 pair; some fields took it, and the turn failed
    to save after the answer was drawn (a 500, or a stream cut without an error)."""
    client, services = app_for(tmp_path)
    text = WIFI + " \\ud800"  # the JSON escape, as a client sends it
    path, body = {
        "question": ("/api/question", f'{{"question": "{text}", "user_id": "ann"}}'),
        "v1 string": ("/v1/chat/completions",
                      f'{{"user": "ann", "messages": [{{"role": "user", "content": "{text}"}}]}}'),
        "v1 part": ("/v1/chat/completions", f'{{"user": "ann", "messages": [{{"role": "user", '
                    f'"content": [{{"type": "text", "text": "{text}"}}]}}]}}'),
        "feedback": (f"/api/conversations/{'a' * 32}/feedback",
                     f'{{"user_id": "ann", "rating": "wrong", "comment": "{text}"}}'),
    }[where]
    if stream:
        body = body[:-1] + ', "stream": true}'
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == "invalid_json" and "surrogate" in error["message"]
    assert services.history.list("ann") == []
    assert services.llm.prompts == []  # type: ignore[attr-defined]  # nothing was drawn


@pytest.mark.parametrize("path", ["/api/question", "/v1/chat/completions"])
def test_an_unforeseen_error_mid_stream_still_ends_it_with_an_error(
        tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the status line only an event can say what went wrong: the stream ends with one,
    never cut short, and nothing half-saved is left."""
    client, services = app_for(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(services.history, "add_turn", broken)
    response = client.post(path, json={
        "question": WIFI, "user_id": "ann", "user": "ann", "stream": True,
        "messages": [{"role": "user", "content": WIFI}]})
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "the disk went away" not in text  # the details are for the log
    last = text.strip().split("\n\n")[-1]
    if path == "/api/question":
        assert last.startswith("event: error\n")
        error = json.loads(last.split("data: ", 1)[1])
    else:
        error = json.loads(last.removeprefix("data: "))["error"]
    assert error["code"] == "internal_error" and "log" in error["message"]
    assert services.history.list("ann") == []


@pytest.mark.parametrize("uploads", [True, False])
def test_looking_at_ones_own_collection_does_not_create_it(tmp_path: Path, uploads: bool) -> None:
    """A GET is what any web page can make a browser send: listing one's uploads, a job's state
    or a refused upload must not add collections to the registry every question reads."""
    client, services = app_for(tmp_path, uploads=uploads)
    before = [c.name for c in services.access.all()]
    for n in range(20):
        listed = client.get(f"/api/collections/mine/documents?user_id=visitor-{n}")
        assert listed.status_code == 200 and listed.get_json() == {"documents": []}
    job = client.get(f"/api/collections/mine/jobs/{'a' * 32}?user_id=visitor-0")
    assert job.status_code in (404, 403), job.get_json()  # no such job; uploads off: 403
    refused = client.post("/api/collections/mine/documents?user_id=visitor-0", data="x",
                          content_type="text/plain")
    assert refused.status_code in (415, 403), refused.get_json()
    assert [c.name for c in services.access.all()] == before


@pytest.mark.parametrize("folder", ["docs\x00/x", "~no-such-user-here/docs"])
def test_a_folder_path_that_names_no_folder_is_400(client: Any, folder: str) -> None:
    response = client.post("/api/ingest", json={"files": folder})
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request" and "not a folder's path" in error["message"]


def test_readiness_details_are_for_admins_and_the_machine_itself(tmp_path: Path) -> None:
    client, services = app_for(tmp_path, auth=True, llm_backend="ollama",
                               ollama_base_url="http://127.0.0.1:9")
    services._built.pop("llm")  # type: ignore[attr-defined]  # the real adapter, down
    token, _ = services.keys.create("root", admin=True)
    far = {"REMOTE_ADDR": "203.0.113.9"}
    anonymous = client.get("/readyz", environ_base=far).get_json()
    assert anonymous["checks"]["llm"] == {"ok": False,
                                          "error": "unavailable (an admin key shows why)"}
    assert "127.0.0.1:9" not in json.dumps(anonymous)
    admin = client.get("/readyz", environ_base=far, headers={"Authorization": f"Bearer {token}"})
    assert "127.0.0.1:9" in admin.get_json()["checks"]["llm"]["error"]
    assert "127.0.0.1:9" in client.get("/readyz").get_json()["checks"]["llm"]["error"]


@pytest.mark.parametrize(("proxies", "remote", "forwarded", "local"), [
    ("10.0.0.0/8", "10.2.3.4", "127.0.0.1", False),  # another pod in the proxies' range
    ("10.0.0.0/8", "10.2.0.5", "127.0.0.1, 10.9.9.9", False),  # a LAN client wrote XFF
    ("127.0.0.1", "127.0.0.1", "203.0.113.9", False),  # a proxy here, for a client elsewhere
    ("127.0.0.1", "127.0.0.1", "::1", True),  # a proxy here, for a client on this machine
    ("10.0.0.0/8", "127.0.0.1", "", True),  # a health check on this machine, no proxy
])
def test_only_a_connection_from_this_machine_counts_as_the_machine(
        tmp_path: Path, proxies: str, remote: str, forwarded: str, local: bool) -> None:
    """X-Forwarded-For names the client; it never makes a connection from elsewhere local."""
    client, services = app_for(tmp_path, auth=True, metrics=True, trusted_proxies=[proxies],
                               llm_backend="ollama", ollama_base_url="http://127.0.0.1:9")
    services._built.pop("llm")  # type: ignore[attr-defined]  # the real adapter, down
    request = {"environ_base": {"REMOTE_ADDR": remote},
               "headers": {"X-Forwarded-For": forwarded} if forwarded else {}}
    metrics = client.get("/metrics", **request)
    assert metrics.status_code == (200 if local else 403)
    ready = client.get("/readyz", **request).get_json()
    assert ("127.0.0.1:9" in ready["checks"]["llm"]["error"]) is local


def test_retry_after_is_only_on_refusals_and_a_busy_answer_keeps_its_own(tmp_path: Path) -> None:
    client, services = app_for(tmp_path, max_queued_generations=0)
    assert "Retry-After" not in ask(client).headers
    holding = services.gate
    holding.acquire()  # the model is busy
    try:
        busy = ask(client)
    finally:
        holding.release()
    assert busy.status_code == 503 and busy.get_json()["error"]["code"] == "busy"
    # The gate's estimate of when a place comes up (1-5 s), not the limiter's window (60 s).
    assert 1 <= int(busy.headers["Retry-After"]) <= 5


@pytest.mark.parametrize("value", ["yes", "true", 1, "1", None])
def test_booleans_are_strict(client: Any, value: Any) -> None:
    response = ask(client, {"question": WIFI, "user_id": "ann", "stream": value})
    assert response.status_code == 400
    v1 = client.post("/v1/chat/completions", json={
        "stream": value, "messages": [{"role": "user", "content": WIFI}]})
    # OpenAI's API takes null for the default, and clients generated from it send it.
    assert v1.status_code == (200 if value is None else 400)


def test_a_key_is_made_only_for_a_user_id_other_routes_read_alike(tmp_path: Path) -> None:
    """"admin": "yes" made an administrator's key, and " ann" a key for a user no other route
    could name: the body is read as strictly as every other."""
    client, services = app_for(tmp_path, auth=True)
    token, _ = services.keys.create("root", admin=True)
    root = {"Authorization": f"Bearer {token}"}
    for body in ({"user_id": "ann", "admin": "yes"}, {"user_id": "ann", "admin": 1},
                 {"user_id": "   "}, {"user_id": ""}):
        response = client.post("/api/keys", json=body, headers=root)
        assert response.status_code == 400, (body, response.get_json())
    assert [k.user_id for k in services.keys.list()] == ["root"]
    made = client.post("/api/keys", json={"user_id": " ann ", "admin": False}, headers=root)
    assert made.status_code == 201 and made.get_json()["user_id"] == "ann"
    asked = ask(client, headers={"Authorization": f"Bearer {made.get_json()['key']}"})
    assert asked.status_code == 200, asked.get_json()


def test_a_conversations_routes_read_the_user_alike(client: Any) -> None:
    """The list stripped "?user_id= ann" and found the conversation; reading or deleting it
    with the same query said it did not exist."""
    made = ask(client).get_json()["conversation_id"]
    listed = client.get("/api/conversations?user_id=%20ann").get_json()["conversations"]
    assert [c["id"] for c in listed] == [made]
    read = client.get(f"/api/conversations/{made}?user_id=%20ann%20")
    assert read.status_code == 200 and read.get_json()["id"] == made
    assert client.get(f"/api/conversations/{made}?user_id=%20bob").status_code == 404
    deleted = client.delete(f"/api/conversations/{made}?user_id=ann%20")
    assert deleted.status_code == 200 and deleted.get_json() == {"deleted": 1}


def test_v1_errors_have_openai_shape_wherever_they_arise(client: Any) -> None:
    """A path under /v1 that no route matches, a method a route does not take, and the user
    rule every face shares all answer as OpenAI's clients read errors, naming /v1's field."""
    for response, status, kind in ((client.get("/v1/nope"), 404, "not_found_error"),
                                   (client.get("/v1/chat/completions"), 405, "invalid_request_error")):
        assert response.status_code == status
        error = response.get_json()["error"]
        assert error["type"] == kind and set(error) == {"message", "type", "param", "code"}, error
    assert client.get("/api/nope").get_json()["error"].keys() == {"code", "message"}
    blank = client.post("/v1/chat/completions", json={
        "user": " ", "messages": [{"role": "user", "content": WIFI}]})
    assert blank.status_code == 400, blank.get_json()
    error = blank.get_json()["error"]
    assert error["param"] == "user" and error["message"].startswith("user:"), error


@pytest.mark.parametrize(("accept", "streams"), [
    ("text/event-stream", True), ("text/event-stream;q=0", False), ("*/*", False),
    ("application/json, text/event-stream;q=0.5", True), ("text/event-stream; q=0.0", False)])
def test_accept_streams_only_when_it_asks_for_it(client: Any, accept: str, streams: bool) -> None:
    response = ask(client, headers={"Accept": accept})
    assert response.status_code == 200
    assert (response.mimetype == "text/event-stream") is streams


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    """The app on a real HTTP server on 127.0.0.1 (werkzeug's, threaded)."""
    services = fake_services(tmp_path, [ANSWER] * 10, max_body_bytes=2048)
    server = make_server("127.0.0.1", 0, create_app(services.settings, services), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", services
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.real
def test_a_chunked_body_over_the_limit_is_413_not_cut_short(
        served: tuple[str, Services]) -> None:
    url, services = served

    def chunks(size: int) -> Iterator[bytes]:
        body = json.dumps({"question": WIFI, "user_id": "ann", "pad": "x" * size}).encode()
        for start in range(0, len(body), 512):
            yield body[start:start + 512]

    headers = {"Content-Type": "application/json"}
    small = httpx.post(f"{url}/api/question", content=chunks(100), headers=headers, timeout=30)
    assert small.status_code == 200, small.text
    large = httpx.post(f"{url}/api/question", content=chunks(10_000), headers=headers, timeout=30)
    assert large.status_code == 413 and large.json()["error"]["code"] == "body_too_large"
    assert len(services.history.list("ann")) == 1  # only the small one was stored


def test_the_erase_route_says_it_erases_the_history() -> None:
    from hearth.api import openapi_document

    summary = openapi_document()["paths"]["/api/users/{user_id}/history"]["delete"]["summary"]
    assert "history" in summary and "everything" not in summary.lower()


def test_an_erasure_stopped_by_a_store_that_is_down_hides_its_details(tmp_path: Path) -> None:
    """DELETE /api/users/<id> with the history store down: the error told a remote caller the
    store's path, which a backend that is down says only to admins and the machine itself."""
    client, services = app_for(tmp_path, auth=True)
    token, _ = services.keys.create("ann")
    history = services.settings.data_dir / "history.sqlite3"
    services._built.pop("history", None)  # type: ignore[attr-defined]  # opened again: damaged
    history.write_bytes(b"not a database" * 100)
    far = {"REMOTE_ADDR": "203.0.113.9"}
    erased = client.delete("/api/users/ann", environ_base=far,
                           headers={"Authorization": f"Bearer {token}"})
    assert erased.status_code == 503, erased.get_json()
    assert str(history) not in json.dumps(erased.get_json())
    assert erased.get_json()["error"]["code"] == "history_unavailable"
    assert services.keys.authenticate(token) is None  # access ended all the same
