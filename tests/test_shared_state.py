"""What several API workers share (issue: beyond one process): rate-limit counters and
ingestion jobs live in MongoDB when Hearth has one, so two apps over one real MongoDB wire
server (secantusdb) agree; without one, jobs live in the data folder and survive a restart.
The scale-out test (tests/test_scale_out.py) does the same through real processes behind a
real reverse proxy."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hearth.api import create_app
from hearth.ingest.jobs import STALE_S, Job, Jobs, MongoJobs, SQLiteJobs
from tests.conftest import closed_port_url


def _wait_done(client: Any, url: str) -> dict[str, Any]:
    for _ in range(900):
        job = client.get(url).get_json()
        if job["state"] in ("done", "failed"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job not done: {job}")


def test_rate_limits_hold_across_workers_sharing_mongodb(make_services: Any,
                                                         mongo_server: str) -> None:
    db = f"limits-{uuid.uuid4().hex[:8]}"
    workers = [create_app(s.settings, s).test_client() for s in (
        make_services(mongodb_uri=mongo_server, mongodb_db=db, rate_limit="3/minute")
        for _ in range(2))]
    reads = [workers[i % 2].get("/api/conversations?user_id=ann").status_code
             for i in range(4)]
    assert reads == [200, 200, 200, 429]  # the fourth is refused on the other worker
    refused = workers[0].get("/api/conversations?user_id=ann")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert workers[1].get("/api/conversations?user_id=bob").status_code == 200


def test_rate_limits_fall_back_to_memory_when_mongodb_is_away(make_services: Any) -> None:
    # Nothing listens there: the limits are counted per process, and requests still answer.
    dead = closed_port_url("mongodb") + "?directConnection=true"
    services = make_services(mongodb_uri=dead, backend_timeout_s=0.3, rate_limit="2/minute")
    client = create_app(services.settings, services).test_client()
    codes = [client.get("/api/openapi.json").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_a_job_started_on_one_worker_is_followed_on_another(make_services: Any,
                                                            mongo_server: str,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.md").write_text("# Notes\n\nThe office opens at nine.\n")
    db = f"jobs-{uuid.uuid4().hex[:8]}"
    one, two = (make_services(mongodb_uri=mongo_server, mongodb_db=db, ingest_api=True,
                              ingest_roots=[root], data_dir=tmp_path / f"data{i}")
                for i in range(2))
    first, second = (create_app(s.settings, s).test_client() for s in (one, two))
    started = first.post("/api/ingest", json={"files": str(root)})
    assert started.status_code == 202
    job = _wait_done(second, started.get_json()["url"])
    assert job["state"] == "done" and job["summary"]["added"] == 1, job
    listed = second.get("/api/ingest").get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert second.get("/api/ingest/" + "0" * 32).status_code == 404


def test_jobs_survive_a_restart_in_the_embedded_profile(make_services: Any,
                                                        tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.md").write_text("# Notes\n\nThe office opens at nine.\n")
    services = make_services(ingest_api=True, ingest_roots=[root])
    client = create_app(services.settings, services).test_client()
    started = client.post("/api/ingest", json={"files": str(root)}).get_json()
    assert _wait_done(client, started["url"])["state"] == "done"
    # A new server over the same data folder (a restart) still answers for the job.
    again = create_app(services.settings, services).test_client()
    assert again.get(started["url"]).get_json()["state"] == "done"
    assert (services.settings.data_dir / "jobs.sqlite3").is_file()


def test_a_job_whose_worker_stopped_is_reported_failed(make_services: Any, mongo_server: str,
                                                       tmp_path: Path) -> None:
    services = make_services()
    stores = [SQLiteJobs(tmp_path / "jobs.sqlite3"),
              MongoJobs(mongo_server, f"stale-{uuid.uuid4().hex[:8]}", 2.0)]
    for store in stores:
        record = {"id": "a" * 32, "kind": "files", "target": "/srv/docs",
                  "collection": "default", "state": "running", "progress": {},
                  "summary": None, "error": None, "created_at": None, "started_at": None,
                  "finished_at": None}
        now = time.time()
        store.save(record, now - 100, now - STALE_S - 1)  # its server went quiet
        store.save({**record, "id": "b" * 32}, now - 50, now)  # this one's is alive
        jobs = Jobs(services, store)
        lost = jobs.get("a" * 32)
        assert lost is not None and lost.state == "failed"
        assert lost.to_dict()["error"]["code"] == "worker_lost"
        alive = jobs.get("b" * 32)
        assert alive is not None and alive.state == "running"
        assert [j.id for j in jobs.all()] == ["b" * 32, "a" * 32]  # newest first


def test_an_erased_users_jobs_are_forgotten_running_or_ended(make_services: Any,
                                                            mongo_server: str,
                                                            tmp_path: Path) -> None:
    """Erasing a user drops the records of their uploads' jobs and of every job into their own
    collection (file names, the collection's name): in both stores, and for a job still
    running here, which is then neither listed nor recorded when it ends."""
    services = make_services()
    stores = [SQLiteJobs(tmp_path / "jobs.sqlite3"),
              MongoJobs(mongo_server, f"forget-{uuid.uuid4().hex[:8]}", 2.0)]
    for store in stores:
        now = time.time()
        for n, (job_id, collection) in enumerate([("a" * 32, "u-ann"), ("b" * 32, "team"),
                                                  ("c" * 32, "team")]):
            store.save({"id": job_id, "collection": collection, "state": "done",
                        "target": f"/srv/{job_id}"}, now + n, now)
        jobs = Jobs(services, store)
        running = Job(id="d" * 32, kind="files", target=str(tmp_path),
                      options={"collection": "u-ann"}, state="running")
        jobs._jobs[running.id] = running  # as ``submit`` holds a job it runs
        assert jobs.forget(["b" * 32], ["u-ann"]) == 2
        assert [j.id for j in jobs.all()] == ["c" * 32]
        assert jobs.get("a" * 32) is None and jobs.get("b" * 32) is None
        assert jobs.get(running.id) is None
        running.state = "done"
        jobs._finish(running)  # its end is not recorded
        assert store.get(running.id) is None and jobs.get(running.id) is None
    assert b"u-ann" not in b"".join(p.read_bytes() for p in tmp_path.glob("jobs.sqlite3*"))


def test_a_key_revoked_through_one_worker_is_refused_by_the_others(make_services: Any,
                                                                   mongo_server: str) -> None:
    db = f"keys-{uuid.uuid4().hex[:8]}"
    one, two = (make_services(auth=True, mongodb_uri=mongo_server, mongodb_db=db)
                for _ in range(2))
    first, second = (create_app(s.settings, s).test_client() for s in (one, two))
    root = {"Authorization": "Bearer " + one.keys.create("root", admin=True)[0]}
    made = first.post("/api/keys", json={"user_id": "ann"}, headers=root)
    assert made.status_code == 201, made.get_json()
    ann = {"Authorization": "Bearer " + made.get_json()["key"]}
    assert second.get("/api/conversations", headers=ann).status_code == 200
    # Ann sees her own keys only, and may not make keys.
    listed = second.get("/api/keys", headers=ann).get_json()["keys"]
    assert [k["user_id"] for k in listed] == ["ann"]
    assert second.post("/api/keys", json={"user_id": "ann", "admin": True},
                       headers=ann).status_code == 403
    root_id = next(k["id"] for k in first.get("/api/keys", headers=root).get_json()["keys"]
                   if k["user_id"] == "root")
    assert second.delete(f"/api/keys/{root_id}", headers=ann).status_code == 404
    revoked = second.delete(f"/api/keys/{made.get_json()['id']}", headers=root)
    assert revoked.status_code == 200 and revoked.get_json()["revoked"]["revoked_at"]
    refused = first.get("/api/conversations", headers=ann)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
    bad = first.post("/api/keys", json={"user_id": "a/b"}, headers=root)
    assert bad.status_code == 400


def test_keys_are_not_managed_over_http_without_api_keys(make_services: Any) -> None:
    services = make_services()
    client = create_app(services.settings, services).test_client()
    refused = client.post("/api/keys", json={"user_id": "ann"})
    assert refused.status_code == 403 and "hearth keys" in refused.get_json()["error"]["message"]


def test_a_job_is_seen_ended_only_once_what_follows_its_end_is_done(make_services: Any,
                                                                    tmp_path: Path) -> None:
    """An upload's documents are marked indexed when its job ends (``on_done``): a client that
    reads the job done must find them so. Under load, the job was read done before."""
    services = make_services()
    jobs = Jobs(services, SQLiteJobs(tmp_path / "jobs.sqlite3"))
    seen: list[tuple[str, str]] = []
    called = threading.Event()

    def after(ended: Any) -> None:
        outside = jobs.get(ended.id)
        seen.append((ended.state, outside.state if outside else "missing"))
        called.set()

    # A collection that does not exist: the job fails at once, without reading anything.
    job = jobs.submit("files", str(tmp_path), {"collection": "no-such-collection"}, on_done=after)
    assert called.wait(60)
    deadline = time.monotonic() + 30
    while (state := jobs.get(job.id)) is not None and state.state == "running" \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [("failed", "running")]
    ended = jobs.get(job.id)
    assert ended is not None and ended.state == "failed" and ended.to_dict()["error"]["message"]
