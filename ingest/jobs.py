"""Ingestion over HTTP: ``POST /api/ingest`` starts a background job, ``GET`` reports it.

Jobs run one at a time on a single worker thread (ingestion is CPU-bound, and two runs on one
source must not interleave); their state lives in memory on the app, so it is lost on restart
(the index itself is not: a restarted ingestion converges). The endpoints are off unless
``HEARTH_INGEST_API`` is set: who may call them is settled with authentication. What they may
reach is bounded by ``ingest.safety``: folders under ``HEARTH_INGEST_ROOTS`` only, and no
private, loopback or metadata address for a crawl unless ``HEARTH_INGEST_ALLOW_HOSTS`` lists it.

    POST /api/ingest      {"web": URL, "options": {...}} or {"files": DIR, "options": {...}}
                          -> 202 {"id": ..., "state": "queued", "url": "/api/ingest/<id>"}
    GET  /api/ingest/<id> -> {"id", "kind", "target", "state", "progress", "summary", "error"}
    GET  /api/ingest      -> {"jobs": [...]} (most recent first)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flask import Blueprint, Response, current_app, json, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ingest.pipeline import IngestError, Progress, Summary

log = logging.getLogger(__name__)
ingest_blueprint = Blueprint("ingest", __name__)
KEPT_JOBS = 100
EXTENSION = "hearth_ingest_jobs"


class CrawlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_depth: int | None = Field(None, ge=0, le=50)
    max_pages: int | None = Field(None, ge=1, le=100_000)
    include: list[str] = []
    exclude: list[str] = []
    use_sitemap: bool = True


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pdf_char_margin: float | None = Field(None, gt=0)


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    web: str | None = Field(None, min_length=1, max_length=2000)
    files: str | None = Field(None, min_length=1, max_length=4000)
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_source(self) -> IngestRequest:
        if (self.web is None) == (self.files is None):
            raise ValueError('give exactly one of "web" (a URL) or "files" (a folder)')
        return self


@dataclass
class Job:
    id: str
    kind: Literal["web", "files"]
    target: str
    options: dict[str, Any]
    state: str = "queued"  # queued, running, done, failed
    progress: Progress = field(default_factory=Progress)
    summary: Summary | None = None
    error: dict[str, str] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "target": self.target, "state": self.state,
            "progress": self.progress.to_dict(),
            "summary": self.summary.to_dict() if self.summary else None,
            "error": self.error, "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
        }


def _iso(ts: float | None) -> str | None:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).isoformat() if ts else None


class Jobs:
    """The app's ingestion jobs: one worker thread, the latest ``KEPT_JOBS`` remembered."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")

    def submit(self, kind: Literal["web", "files"], target: str,
               options: dict[str, Any]) -> Job:
        job = Job(id=uuid.uuid4().hex, kind=kind, target=target, options=options)
        with self._lock:
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-KEPT_JOBS]:
                if self._jobs[old].state in ("done", "failed"):
                    del self._jobs[old]
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def _run(self, job: Job) -> None:
        from ingest.pipeline import ingest_files, ingest_web

        job.state, job.started_at = "running", time.time()
        try:
            if job.kind == "web":
                job.summary = ingest_web(self.services, job.target, progress=job.progress,
                                         **job.options)
            else:
                job.summary = ingest_files(self.services, Path(job.target),
                                           progress=job.progress, **job.options)
            job.state = "done"
        except IngestError as exc:
            job.state, job.error = "failed", {"code": "ingest_failed", "message": str(exc)}
        except Exception as exc:
            log.exception("ingestion job %s failed", job.id)
            job.state = "failed"
            job.error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            job.finished_at = time.time()


_create_lock = threading.Lock()


def jobs_of(app: Any) -> Jobs:
    with _create_lock:
        if EXTENSION not in app.extensions:
            app.extensions[EXTENSION] = Jobs(app.extensions["hearth"])
        return app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return Response(body, status=status, mimetype="application/json")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


@ingest_blueprint.before_request
def _enabled() -> Response | None:
    settings = current_app.extensions["hearth"].settings
    if not getattr(settings, "ingest_api", False):
        return _error(403, "ingest_api_disabled",
                      "the ingestion API is off: set HEARTH_INGEST_API=true to turn it on, "
                      "or use `hearth ingest` on the server")
    return None


@ingest_blueprint.post("/api/ingest")
def start_ingest() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, "invalid_json", "send a JSON object: {\"web\": URL} or "
                      "{\"files\": FOLDER}")
    from ingest.safety import GuardedTransport, UnsafeTarget, check_folder

    settings = current_app.extensions["hearth"].settings
    try:
        req = IngestRequest.model_validate(body)
        if req.web is not None:
            from ingest.web import site_namespace

            kind: Literal["web", "files"] = "web"
            target = site_namespace(req.web)
            options = CrawlOptions.model_validate(req.options).model_dump(exclude_none=True)
            for name, setting in (("max_depth", "crawl_max_depth"),
                                  ("max_pages", "crawl_max_pages"),
                                  ("concurrency", "crawl_concurrency"),
                                  ("timeout_s", "crawl_timeout_s")):
                if name not in options and hasattr(settings, setting):
                    options[name] = getattr(settings, setting)
            # Every request of an API-started crawl, each redirect hop included, is checked:
            # no private, loopback or cloud-metadata address unless allow-listed.
            guard = GuardedTransport(list(getattr(settings, "ingest_allow_hosts", None) or []))
            _check_start(guard, target)
            options["transport"] = guard
        else:
            kind = "files"
            roots = [Path(r) for r in getattr(settings, "ingest_roots", None) or []]
            folder = check_folder(Path(str(req.files)), roots)
            if not folder.is_dir():
                return _error(400, "not_a_folder", f"no folder at {folder} on the server")
            target = str(folder)
            options = FileOptions.model_validate(req.options).model_dump(exclude_none=True)
    except UnsafeTarget as exc:
        code = "address_not_allowed" if req.web is not None else "folder_not_allowed"
        return _error(403, code, str(exc))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors())
        return _error(400, "invalid_request", problems)
    except IngestError as exc:
        return _error(400, "invalid_request", str(exc))
    job = jobs_of(current_app).submit(kind, target, options)
    return _json({"id": job.id, "state": job.state, "url": f"/api/ingest/{job.id}"}, 202)


def _check_start(guard: Any, url: str) -> None:
    """Refuse a start address the crawl could not fetch anyway, before starting a job."""
    from urllib.parse import urlsplit

    import httpx

    from ingest.safety import check_host

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with contextlib.suppress(httpx.ConnectError):  # unresolvable: the job reports it
        check_host(parts.hostname or "", port, guard.allow)


@ingest_blueprint.get("/api/ingest/<job_id>")
def ingest_status(job_id: str) -> Response:
    job = jobs_of(current_app).get(job_id)
    if job is None:
        return _error(404, "job_not_found", f"no ingestion job {job_id} (jobs are kept in "
                      "memory: a restarted server forgets them)")
    return _json(job.to_dict())


@ingest_blueprint.get("/api/ingest")
def list_jobs() -> Response:
    return _json({"jobs": [job.to_dict() for job in jobs_of(current_app).all()]})
