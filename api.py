"""The HTTP face of Hearth: a Flask app factory, the routes, their schemas and their errors.

Every response body is described by a pydantic model below, and ``/api/openapi.json`` is built
from those same models, so the document cannot drift from what the routes send. Every error is
JSON, ``{"error": {"code", "message"}}``, with a stable code; never a stack trace.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from flask import Flask, Response, current_app, g, request, stream_with_context
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import HTTPException

from auth import Principal
from config import Settings, load_settings
from history import ConversationNotFound, HistoryError, HistoryStore
from llm import LLMError
from model import Answer, QuestionTooLong, Token
from services import Services, build_services
from throttle import Busy, build_limiter, user_key
from vectorstore import VectorStoreError

log = logging.getLogger("hearth.api")

BACKEND_ERRORS = (LLMError, HistoryError, VectorStoreError, QuestionTooLong)


# Request and response schemas.
class QuestionIn(BaseModel):
    question: str = Field(min_length=1, description="what the user asks")
    user_id: str = Field(min_length=1, max_length=128, description="whose conversation this is")
    conversation_id: str | None = Field(
        None, min_length=1, max_length=64,
        description="continue this conversation; omit to start a new one",
    )
    stream: bool = Field(False, description="stream Server-Sent Events instead of one JSON body")

    @field_validator("question", "user_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class SourceOut(BaseModel):
    source: str = Field(description="URL or file path of the document")
    title: str | None
    page: int | None = Field(description="page number, for PDFs")
    section: str | None
    snippet: str = Field(description="the text of the document that the answer drew on")
    chunk_id: str
    score: float = Field(description="cosine similarity of the chunk to the question")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class AnswerOut(BaseModel):
    answer: str
    sources: list[SourceOut]
    conversation_id: str
    usage: Usage
    refused: bool = Field(description="true when the documents do not hold the answer")
    model: str
    timings: dict[str, float] = Field(description="seconds spent in each step")


class TurnOut(BaseModel):
    question: str
    answer: str
    sources: list[SourceOut]
    model: str
    timings: dict[str, float]
    usage: dict[str, int]
    standalone_question: str
    created_at: float


class ConversationSummaryOut(BaseModel):
    id: str
    user_id: str
    title: str
    created_at: float
    updated_at: float
    turn_count: int


class ConversationOut(ConversationSummaryOut):
    turns: list[TurnOut]


class ConversationListOut(BaseModel):
    conversations: list[ConversationSummaryOut]


class DeletedOut(BaseModel):
    deleted: int


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class HealthOut(BaseModel):
    status: Literal["ok"]


class CheckOut(BaseModel):
    ok: bool
    error: str | None = None


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, CheckOut]


class IngestIn(BaseModel):
    web: str | None = Field(None, description="a site to crawl from this URL")
    files: str | None = Field(None, description="a folder on the server, under HEARTH_INGEST_ROOTS")
    options: dict[str, Any] = Field({}, description="crawl: max_depth, max_pages, include, "
                                    "exclude, use_sitemap; files: pdf_char_margin")


class IngestStartedOut(BaseModel):
    id: str
    state: str
    url: str


class JobOut(BaseModel):
    id: str
    kind: Literal["web", "files"]
    target: str
    state: Literal["queued", "running", "done", "failed"]
    progress: dict[str, Any]
    summary: dict[str, Any] | None
    error: dict[str, str] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class JobListOut(BaseModel):
    jobs: list[JobOut]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> Response:
    body = ErrorOut(error=ErrorBody(code=code, message=message)).model_dump_json()
    return Response(body, status=status, mimetype="application/json")


def ok(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def services() -> Services:
    return current_app.extensions["hearth"]  # type: ignore[no-any-return]


def read_json(schema: type[BaseModel]) -> Any:
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
        field = ".".join(str(p) for p in first["loc"]) or "body"
        code = "missing_field" if first["type"] == "missing" else "invalid_field"
        raise ApiError(400, code, f"{field}: {first['msg']}") from None


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def answer_out(answer: Answer, conversation_id: str) -> AnswerOut:
    return AnswerOut(
        answer=answer.answer, sources=[SourceOut(**s.to_dict()) for s in answer.sources],
        conversation_id=conversation_id, usage=Usage(**answer.usage), refused=answer.refused,
        model=answer.model, timings=answer.timings,
    )


def principal() -> Principal | None:
    """The API key's holder, or None when keys are off (the user_id is then trusted)."""
    return getattr(g, "principal", None)


def acting_user(requested: str | None) -> str:
    """The user a request acts for: its key's user; an admin may act for anyone."""
    who = principal()
    if who is None:
        if not requested:
            raise ApiError(400, "missing_field", "user_id: the query parameter is required")
        return requested
    if requested and requested != who.user_id and not who.admin:
        raise ApiError(403, "forbidden", f"this API key may act only for user {who.user_id!r}")
    return requested or who.user_id


def visible(conversation: Any) -> bool:
    """Whether this request may see the conversation (owners, admins, or keys off)."""
    who = principal()
    if who is not None and not who.admin and conversation.user_id != who.user_id:
        return False
    user_id = request.args.get("user_id")
    return user_id is None or conversation.user_id == user_id


def owned_turns(store: HistoryStore, conversation_id: str | None, user_id: str) -> list[Any]:
    if conversation_id is None:
        return []
    conversation = store.get(conversation_id)
    if conversation is None or conversation.user_id != user_id:
        raise ApiError(404, "conversation_not_found",
                       f"no conversation {conversation_id!r} for user {user_id!r}")
    return conversation.turns


def ask() -> Response:
    body: QuestionIn = read_json(QuestionIn)
    body.user_id = acting_user(body.user_id)
    settings: Settings = services().settings
    if len(body.question) > settings.max_question_chars:
        raise ApiError(413, "question_too_long",
                       f"the question has {len(body.question)} characters; the limit is "
                       f"{settings.max_question_chars}")
    store = services().history
    store.ping()  # a history store that is down fails now, before the model spends any time
    turns = owned_turns(store, body.conversation_id, body.user_id)
    conversation_id = body.conversation_id or uuid.uuid4().hex
    gate = services().gate
    wants_stream = body.stream or "text/event-stream" in request.headers.get("Accept", "")
    if not wants_stream:
        with gate.slot():
            answer = services().assistant.answer(body.question, turns)
        store.add_turn(conversation_id, body.user_id, answer.turn(body.question))
        return ok(answer_out(answer, conversation_id))
    gate.acquire()  # released when the stream ends, however it ends
    events = services().assistant.stream(body.question, turns)
    try:
        # The first event is pulled before the response starts, so a model that is down is
        # a 503 with a JSON body rather than a stream that opens and fails.
        first = next(events)
    except BaseException:
        gate.release()
        raise

    def generate() -> Iterator[str]:
        event: Token | Answer = first
        sent = 0
        try:
            while isinstance(event, Token):
                yield sse("token", {"text": event.text})
                sent += 1
                event = next(events)
            store.add_turn(conversation_id, body.user_id, event.turn(body.question))
            out = answer_out(event, conversation_id)
            yield sse("sources", [s.model_dump() for s in out.sources])
            yield sse("done", out.model_dump(exclude={"sources"}))
        except BACKEND_ERRORS as exc:
            yield sse("error", {"code": exc.code, "message": str(exc)})
        except ConversationNotFound:
            yield sse("error", {"code": "conversation_not_found",
                                "message": f"no conversation {conversation_id!r}"})
        except GeneratorExit:
            log.info("the client left after %d tokens: generation stopped, nothing stored", sent)
            raise
        finally:
            events.close()  # a client gone mid-stream stops the generation
            gate.release()

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def list_conversations() -> Response:
    user_id = acting_user(request.args.get("user_id", "").strip() or None)
    items = services().history.list(user_id)
    return ok(ConversationListOut(conversations=[
        ConversationSummaryOut(**c.summary()) for c in items
    ]))


def get_conversation(conversation_id: str) -> Response:
    conversation = services().history.get(conversation_id)
    if conversation is None or not visible(conversation):
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return ok(ConversationOut.model_validate(conversation.to_dict()))


def delete_conversation(conversation_id: str) -> Response:
    store = services().history
    conversation = store.get(conversation_id)
    if conversation is None or not visible(conversation):
        raise ApiError(404, "conversation_not_found", f"no conversation {conversation_id!r}")
    return ok(DeletedOut(deleted=int(store.delete(conversation_id))))


def delete_user_history(user_id: str) -> Response:
    return ok(DeletedOut(deleted=services().history.delete_user(acting_user(user_id))))


def healthz() -> Response:
    return ok(HealthOut(status="ok"))


def readyz() -> Response:
    checks = services().readiness()
    ready = all(c["ok"] for c in checks.values())
    return ok(ReadyOut(ready=ready, checks={k: CheckOut(**v) for k, v in checks.items()}),
              200 if ready else 503)


def openapi_json() -> Response:
    return Response(json.dumps(openapi_document()), mimetype="application/json")


# (path, method, view, request schema, {status: response schema}, summary)
ROUTES: list[tuple[str, str, Any, type[BaseModel] | None, dict[int, type[BaseModel]], str]] = [
    ("/api/question", "POST", ask, QuestionIn,
     {200: AnswerOut, 400: ErrorOut, 404: ErrorOut, 413: ErrorOut, 503: ErrorOut, 504: ErrorOut},
     "Ask a question; with stream=true or Accept: text/event-stream, the answer streams as SSE "
     "events token, sources, done (or error)."),
    ("/api/conversations", "GET", list_conversations, None,
     {200: ConversationListOut, 400: ErrorOut, 503: ErrorOut},
     "A user's conversations, newest first (query parameter user_id)."),
    ("/api/conversations/<conversation_id>", "GET", get_conversation, None,
     {200: ConversationOut, 404: ErrorOut, 503: ErrorOut}, "One conversation with its turns."),
    ("/api/conversations/<conversation_id>", "DELETE", delete_conversation, None,
     {200: DeletedOut, 404: ErrorOut, 503: ErrorOut}, "Delete one conversation."),
    ("/api/users/<user_id>/history", "DELETE", delete_user_history, None,
     {200: DeletedOut, 503: ErrorOut}, "Erase everything Hearth remembers about a user."),
    ("/healthz", "GET", healthz, None, {200: HealthOut}, "The process is alive."),
    ("/readyz", "GET", readyz, None, {200: ReadyOut, 503: ReadyOut},
     "The LLM, the vector store and the history store are reachable, each named."),
    ("/api/openapi.json", "GET", openapi_json, None, {200: BaseModel}, "This document."),
]


# One Server-Sent Event of a streamed answer; ``data`` is JSON: {"text"} for a token, the
# sources list, the AnswerOut fields but sources for done, {"code", "message"} for an error.
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["token", "sources", "done", "error"]},
        "data": {"type": "string", "description": "a JSON document"},
    },
}


# One chunk of a streamed /v1 completion, as OpenAI sends them; the last data is [DONE].
OPENAI_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a chat.completion.chunk as JSON, "
                                                         "or [DONE]"}},
}


def ingest_routes() -> list[tuple[str, str, Any, type[BaseModel] | None,
                                   dict[int, type[BaseModel]], str]]:
    from ingest.jobs import ingest_status, list_jobs, start_ingest

    return [
        ("/api/ingest", "POST", start_ingest, IngestIn,
         {202: IngestStartedOut, 400: ErrorOut, 403: ErrorOut},
         "Start ingesting a site or a server folder in the background (HEARTH_INGEST_API; "
         "admins only when API keys are on)."),
        ("/api/ingest", "GET", list_jobs, None, {200: JobListOut, 403: ErrorOut},
         "The ingestion jobs, newest first."),
        ("/api/ingest/<job_id>", "GET", ingest_status, None,
         {200: JobOut, 403: ErrorOut, 404: ErrorOut}, "One job's progress and summary."),
    ]


def openapi_document() -> dict[str, Any]:
    from openai_compat import ROUTES as OPENAI_ROUTES
    from openai_compat import OpenAIChatRequest

    routes = [*ROUTES, *OPENAI_ROUTES, *ingest_routes()]
    requests = (QuestionIn, OpenAIChatRequest)
    models = {m for *_, req, resp, _ in routes for m in [req, *resp.values()]}
    models.discard(None)
    models.discard(BaseModel)
    _, defs = models_json_schema(
        [(m, "validation" if m in requests else "serialization") for m in models],  # type: ignore[misc]
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, _view, req, responses, summary in routes:
        path = rule.replace("<", "{").replace(">", "}")
        operation: dict[str, Any] = {"summary": summary, "responses": {}}
        params = [p.strip("<>") for p in rule.split("/") if p.startswith("<")]
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
        if path == "/api/conversations":
            operation["parameters"].append(
                {"name": "user_id", "in": "query", "required": True, "schema": {"type": "string"}})
        elif "conversation_id" in path:
            operation["parameters"].append(
                {"name": "user_id", "in": "query", "required": False,
                 "schema": {"type": "string"}})
        if req is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{req.__name__}"}}}}
        for status, model in responses.items():
            content: dict[str, Any] = {"application/json": {"schema": (
                {"type": "object"} if model is BaseModel
                else {"$ref": f"#/components/schemas/{model.__name__}"})}}
            if req in requests and status == 200:
                content["text/event-stream"] = {"schema": SSE_EVENT if req is QuestionIn
                                                else OPENAI_SSE_EVENT}
            operation["responses"][str(status)] = {"description": str(status), "content": content}
        if guarded(rule):
            # With API keys on: no key or a bad one, another user's data, too many requests.
            for status in (401, 403, 429):
                operation["responses"][str(status)] = {"description": str(status), "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
            operation["security"] = [{"apiKey": []}, {}]
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hearth", "version": "0.1.0",
                 "description": "Ask questions over your own documents, privately."},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "`hearth keys create --user NAME`"}},
        },
    }


def register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(LLMError)
    @app.errorhandler(HistoryError)
    @app.errorhandler(VectorStoreError)
    @app.errorhandler(QuestionTooLong)
    def _backend_error(exc: Any) -> Response:
        log.warning("%s: %s", exc.code, exc)
        return error_response(exc.status, exc.code, str(exc))

    @app.errorhandler(Busy)
    def _busy(exc: Busy) -> Response:
        response = error_response(exc.status, exc.code, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(ConversationNotFound)
    def _not_found(exc: ConversationNotFound) -> Response:
        return error_response(404, "conversation_not_found", f"no conversation {exc}")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = {413: "body_too_large", 404: "not_found", 405: "method_not_allowed",
                429: "rate_limited"}.get(exc.code or 500, "http_error")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(500, "internal_error",
                              "Hearth failed unexpectedly; the details are in its log")


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
    if request.path.startswith("/api/ingest") and not g.principal.admin:
        return error_response(403, "forbidden", "ingestion is for admin keys only "
                              "(`hearth keys create --user NAME --admin`)")
    return None


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    settings = settings or load_settings()
    hearth = services or build_services(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["hearth"] = hearth
    # Authentication runs before the rate limiter, which counts requests per key holder.
    app.before_request(lambda: authenticate(settings, hearth))
    limiter = build_limiter(app, settings)
    for rule, method, view, *_ in ROUTES:
        if view is ask:
            view = limiter.limit(settings.question_rate_limit, key_func=user_key)(view)
        app.add_url_rule(rule, f"{view.__name__}_{method.lower()}", view, methods=[method])
    # The other faces: imported here, since they build on this module's schemas.
    from ingest.jobs import ingest_blueprint
    from openai_compat import openai_blueprint
    from webui import webui_blueprint

    limiter.limit(settings.question_rate_limit, key_func=user_key)(openai_blueprint)
    app.register_blueprint(openai_blueprint)
    app.register_blueprint(webui_blueprint)
    app.register_blueprint(ingest_blueprint)
    register_errors(app)
    return app
