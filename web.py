"""What every HTTP face of Hearth shares: errors and their JSON, request parsing, who is acting,
rate limits, Server-Sent Events, and the route tables the OpenAPI document is built from.

Each face (``/api`` in ``api.py``, ``/v1`` in ``openai_compat.py``, ingestion jobs in
``ingest_api.py``, the page in ``webui``) is a blueprint that builds on this module; only
``api.create_app`` knows them all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, request, stream_with_context
from flask_limiter import Limiter
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema

from hearth import __version__
from hearth.auth import Principal, acting_user
from hearth.chat import Chat
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.services import Services

log = logging.getLogger("hearth.api")


# -- errors --------------------------------------------------------------------------------------

class ApiError(HearthError):
    """An error of the request itself, with its own status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


def error_response(status: int, code: str, message: str) -> Response:
    body = ErrorOut(error=ErrorBody(code=code, message=message)).model_dump_json()
    return Response(body, status=status, mimetype="application/json")


HTTP_CODES = {413: "body_too_large", 404: "not_found", 405: "method_not_allowed",
              429: "rate_limited"}


def retry_after(exc: Exception) -> int | None:
    value = getattr(exc, "retry_after", None)
    return int(value) if value is not None else None


# -- responses and requests ----------------------------------------------------------------------

def ok(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def read_json(schema: type[BaseModel]) -> Any:
    """The request body as ``schema``, or a 400 that names the field and what is wrong."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        code = "missing_field" if first["type"] == "missing" else "invalid_field"
        raise ApiError(400, code, f"{where}: {first['msg']}") from None


def wants_stream(asked: bool) -> bool:
    return asked or "text/event-stream" in request.headers.get("Accept", "")


def sse(data: Any, event: str | None = None) -> str:
    """One Server-Sent Event; ``data`` that is not a string is sent as JSON."""
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def event_stream(events: Iterator[str]) -> Response:
    return Response(stream_with_context(events), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- the app's components ------------------------------------------------------------------------

def services() -> Services:
    return current_app.extensions["hearth"]  # type: ignore[no-any-return]


def chat() -> Chat:
    return current_app.extensions["hearth.chat"]  # type: ignore[no-any-return]


def settings() -> Settings:
    return services().settings


# -- who is acting -------------------------------------------------------------------------------

def principal() -> Principal | None:
    """The API key's holder, or None when keys are off (the named user is then trusted)."""
    return getattr(g, "principal", None)


def acting_as(requested: str | None) -> str:
    """The user this request acts for (``auth.acting_user`` with the request's key)."""
    return acting_user(principal(), requested)


def guarded(path: str) -> bool:
    """Routes that need an API key when keys are on."""
    return path.startswith(("/api/", "/v1/")) and path != "/api/openapi.json"


def authenticate(settings: Settings, hearth: Services) -> Response | None:
    g.principal = None
    if not settings.auth_required or not guarded(request.path):
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error_response(401, "unauthorized", "an API key is required: send the header "
                              "'Authorization: Bearer <key>' (`hearth keys create --user NAME`)")
    g.principal = hearth.keys.authenticate(token.strip())
    if g.principal is None:
        return error_response(401, "unauthorized", "this API key is not valid or was revoked")
    return None


def user_key() -> str:
    """Whom a request counts against for rate limits: the user it acts for, else its address."""
    who = principal()
    if who is not None:
        return f"user:{who.user_id}"  # an admin acting for others spends the admin's limit
    body = request.get_json(silent=True) if request.is_json else None
    named = (body.get("user_id") or body.get("user")) if isinstance(body, dict) else None
    named = named or request.args.get("user_id")  # "user": the OpenAI-compatible API's field
    try:
        return f"user:{acting_user(None, named if isinstance(named, str) else None)}"
    except HearthError:
        return f"addr:{request.remote_addr}"


def build_limiter(app: Flask, settings: Settings) -> Limiter:
    """Per-user request rates (429 with Retry-After), from flask-limiter."""
    return Limiter(
        key_func=user_key, app=app, storage_uri="memory://",
        default_limits=[settings.rate_limit], headers_enabled=True,
        # Health checks are for machines that poll: never limit them.
        default_limits_exempt_when=lambda: request.path in ("/healthz", "/readyz"),
    )


# -- schemas every face shares ----------------------------------------------------------------

class SourceOut(BaseModel):
    source: str = Field(description="URL or file path of the document")
    title: str | None
    page: int | None = Field(description="page number, for PDFs")
    section: str | None
    snippet: str = Field(description="the text of the document that the answer drew on")
    chunk_id: str
    score: float = Field(description="cosine similarity of the chunk to the question")


# -- route tables and the OpenAPI document -------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """One operation of a face, as the OpenAPI document describes it."""

    path: str
    method: str
    view: Callable[..., Any]
    request: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | None]  # None: a JSON object of no fixed shape
    summary: str
    stream: dict[str, Any] | None = None  # the text/event-stream schema of a 200, if it streams
    query: list[dict[str, Any]] = field(default_factory=list)  # query parameters


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    requests = {r.request for r in routes if r.request is not None}
    models = {m for r in routes for m in [r.request, *r.responses.values()] if m is not None}
    models.add(ErrorOut)  # every guarded route may answer 401, 403 and 429 with it
    _, defs = models_json_schema(
        [(m, "validation" if m in requests else "serialization")
         for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = route.path.replace("<", "{").replace(">", "}")
        params = [p.strip("<>") for p in route.path.split("/") if p.startswith("<")]
        operation: dict[str, Any] = {
            "summary": route.summary, "responses": {},
            "parameters": [{"name": p, "in": "path", "required": True,
                            "schema": {"type": "string"}} for p in params] + route.query,
        }
        if route.request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.request.__name__}"}}}}
        for status, model in route.responses.items():
            content: dict[str, Any] = {"application/json": {"schema": (
                {"type": "object"} if model is None
                else {"$ref": f"#/components/schemas/{model.__name__}"})}}
            if route.stream is not None and status == 200:
                content["text/event-stream"] = {"schema": route.stream}
            operation["responses"][str(status)] = {"description": str(status), "content": content}
        if guarded(route.path):
            # With API keys on: no key or a bad one, another user's data, too many requests.
            for status in (401, 403, 429):
                operation["responses"].setdefault(str(status), {
                    "description": str(status), "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorOut"}}}})
            operation["security"] = [{"apiKey": []}, {}]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hearth", "version": __version__,
                 "description": "Ask questions over your own documents, privately."},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "`hearth keys create --user NAME`"}},
        },
    }
