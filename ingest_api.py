"""Ingestion over HTTP: ``POST /api/ingest`` starts a background job, ``GET`` reports it.

    POST /api/ingest      {"web": URL, "options": {...}} or {"files": DIR, "options": {...}}
                          -> 202 {"id": ..., "state": "queued", "url": "/api/ingest/<id>"}
    GET  /api/ingest/<id> -> {"id", "kind", "target", "state", "progress", "summary", "error"}
    GET  /api/ingest      -> {"jobs": [...]} (most recent first)

The endpoints are off unless ``HEARTH_INGEST_API`` is set, and with API keys on they are for
admin keys only. What a job may reach is bounded by ``ingest.safety`` (see ``ingest.jobs``).
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from pydantic import BaseModel

from hearth.errors import HearthError
from hearth.ingest.jobs import IngestRequest, prepare
from hearth.web import (
    ErrorOut,
    JobOut,
    Route,
    body_bytes,
    error_response,
    is_json,
    jobs,
    parse_json,
    principal,
    public_message,
    services,
    settings,
)

ingest_blueprint = Blueprint("ingest", __name__)


class IngestStartedOut(BaseModel):
    id: str
    state: str
    url: str


class JobListOut(BaseModel):
    jobs: list[JobOut]


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


@ingest_blueprint.before_request
def _allowed() -> Response | None:
    who = principal()
    if who is not None and not who.admin:
        return error_response(403, "forbidden", "ingestion is for admin keys only "
                              "(`hearth keys create --user NAME --admin`)")
    if not settings().ingest_api:
        return error_response(403, "ingest_api_disabled",
                              "the ingestion API is off: set HEARTH_INGEST_API=true to turn it "
                              "on, or use `hearth ingest` on the server")
    return None


@ingest_blueprint.post("/api/ingest")
def start_ingest() -> Response:
    if not is_json(request.mimetype):
        return error_response(415, "unsupported_media_type", "send the body as JSON, with the "
                              "header Content-Type: application/json")
    raw = parse_json(body_bytes() or b"null")
    if not isinstance(raw, dict):
        return error_response(400, "invalid_json", "send a JSON object: {\"web\": URL} or "
                              "{\"files\": FOLDER}")
    try:
        kind, target, options = prepare(settings(), raw)
        services().access.get(options["collection"])  # 404 collection_not_found
    except HearthError as exc:  # invalid_request, not_a_folder, address/folder_not_allowed
        return error_response(exc.status, exc.code, public_message(exc))
    job = jobs().submit(kind, target, options)
    return _json(IngestStartedOut(id=job.id, state=job.state, url=f"/api/ingest/{job.id}"), 202)


@ingest_blueprint.get("/api/ingest/<job_id>")
def ingest_status(job_id: str) -> Response:
    job = jobs().get(job_id)
    if job is None:
        return error_response(404, "job_not_found", f"no ingestion job {job_id[:40]!r} (the "
                              "latest 100 jobs are kept)")
    return _json(JobOut(**job.to_dict()))


@ingest_blueprint.get("/api/ingest")
def list_jobs() -> Response:
    return _json(JobListOut(jobs=[JobOut(**job.to_dict()) for job in jobs().all()]))


def routes() -> list[Route]:
    return [
        Route("/api/ingest", "POST", start_ingest, IngestRequest,
              {202: IngestStartedOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut,
               413: ErrorOut, 415: ErrorOut},
              "Start ingesting a site or a server folder into a collection (default: default) "
              "in the background (HEARTH_INGEST_API; admins only when API keys are on)."),
        Route("/api/ingest", "GET", list_jobs, None, {200: JobListOut, 403: ErrorOut},
              "The ingestion jobs, newest first."),
        Route("/api/ingest/<job_id>", "GET", ingest_status, None,
              {200: JobOut, 403: ErrorOut, 404: ErrorOut}, "One job's progress and summary."),
    ]
