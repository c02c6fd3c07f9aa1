"""The HTTP face of Hearth: the app factory, and the ``/api`` routes with their schemas.

``create_app`` is the one place that knows every face: ``/api`` (here), ``/v1``
(``openai_compat``), the ingestion jobs (``ingest_api``) and the page (``webui``); each is a
blueprint over the shared web layer (``web``), and each asks through the chat service
(``chat``). Every response body is a pydantic model below, and ``/api/openapi.json`` is built
from the faces' route tables, so the document cannot drift from what the routes send. Every
error is JSON, ``{"error": {"code", "message"}}``, with a stable code; never a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, Field, StrictBool, field_validator
from werkzeug.exceptions import HTTPException

from hearth import __version__
from hearth.access import NAME as COLLECTION_NAME
from hearth.chat import Ask, Reply
from hearth.collections_api import collections_blueprint
from hearth.collections_api import routes as collections_routes
from hearth.config import Settings, load_settings
from hearth.conversations import CONVERSATION_ID, USER_ID
from hearth.errors import HearthError
from hearth.ingest_api import ingest_blueprint
from hearth.ingest_api import routes as ingest_routes
from hearth.model import Answer, Token
from hearth.monitoring import instrument, readiness_seen
from hearth.openai_compat import openai_blueprint
from hearth.openai_compat import routes as openai_routes
from hearth.services import Services, build_services
from hearth.web import (
    UNEXPECTED,
    ErrorOut,
    EvidenceOut,
    FeedbackIn,
    FeedbackOut,
    GroundingOut,
    Route,
    SourceOut,
    acting_as,
    build_openapi,
    chat,
    client_gone,
    error_response,
    event_stream,
    guard,
    http_error,
    may_see_details,
    ok,
    principal,
    public_message,
    read_json,
    reads_everything,
    services,
    shutting_down,
    sse,
    until_shutdown,
    user_key,
    wants_stream,
    with_retry_after,
)
from hearth.webui import webui_blueprint

log = logging.getLogger("hearth.api")


# Request and response schemas.
class QuestionIn(BaseModel):
    question: str = Field(min_length=1, description="what the user asks")
    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID,
                         description="whose conversation this is")
    conversation_id: str | None = Field(
        None, pattern=CONVERSATION_ID,
        description="continue this conversation; omit to start a new one",
    )
    stream: StrictBool = Field(False, description="stream Server-Sent Events instead of one "
                                                  "JSON body")
    collections: list[Annotated[str, Field(pattern=COLLECTION_NAME)]] | None = Field(
        None, min_length=1, max_length=64,
        description="read only these collections (each one the user may read, else 403 "
                    "collection_forbidden); omit to read what the conversation read so far, "
                    "or for a new one every collection the user may read")

    @field_validator("question", "user_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class AnswerOut(GroundingOut):
    answer: str
    sources: list[SourceOut]
    conversation_id: str | None = Field(description=(
        "the conversation the turn is stored in; null when it was deleted (or its user's "
        "history erased) while the question was answered: the answer is not stored"))
    usage: Usage
    refused: bool = Field(description="true when the documents do not hold the answer")
    model: str
    timings: dict[str, float] = Field(description="seconds spent in each step")


class TurnOut(GroundingOut):
    question: str
    answer: str
    sources: list[SourceOut]
    model: str
    timings: dict[str, float]
    usage: dict[str, int]
    standalone_question: str
    created_at: float
    collections: list[str] = Field(
        description="the collections the question read; a follow-up reads the same ones")
    feedback: dict[str, Any] | None = Field(
        None, description="the user's mark on the answer: rating (helpful or wrong), comment, at")


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


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str = Field(description="Hearth's version")


class CheckOut(BaseModel):
    ok: bool
    error: str | None = None


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, CheckOut]


api_blueprint = Blueprint("api", __name__)


def answer_out(answer: Answer, conversation_id: str | None) -> AnswerOut:
    return AnswerOut(
        answer=answer.answer, sources=[SourceOut(**s.to_dict()) for s in answer.sources],
        conversation_id=conversation_id, usage=Usage(**answer.usage), refused=answer.refused,
        model=answer.model, timings=answer.timings,
        evidence=[EvidenceOut(**e.to_dict()) for e in answer.evidence],
        grounded=answer.grounded, unsupported=answer.unsupported, draft=answer.draft,
        confidence=answer.confidence,
    )


@api_blueprint.post("/api/question")
def ask() -> Response:
    body: QuestionIn = read_json(QuestionIn)
    user_id = acting_as(body.user_id)
    question = Ask(question=body.question, user_id=user_id, conversation_id=body.conversation_id,
                   collections=body.collections, everything=reads_everything(user_id),
                   gone=client_gone(), stopping=shutting_down())
    if not wants_stream(body.stream):
        reply = chat().answer(question)
        return ok(answer_out(reply.answer, reply.conversation_id))
    stream = chat().stream(question)

    def events() -> Iterator[str]:
        try:
            for event in until_shutdown(stream):
                if isinstance(event, Token):
                    yield sse({"text": event.text}, "token")
                    continue
                assert isinstance(event, Reply)
                out = answer_out(event.answer, event.conversation_id)
                yield sse([s.model_dump() for s in out.sources], "sources")
                yield sse(out.model_dump(exclude={"sources"}), "done")
        except HearthError as exc:
            yield sse({"code": exc.code, "message": public_message(exc)}, "error")
        except Exception:
            # The status line has gone: the stream still ends with an event, not a cut.
            log.exception("unexpected error while streaming an answer")
            yield sse({"code": "internal_error", "message": UNEXPECTED}, "error")
        finally:
            stream.close()

    return event_stream(events())


def query_user() -> str | None:
    """The user the query names (``?user_id=``), read as every route reads it: stripped."""
    return request.args.get("user_id", "").strip() or None


@api_blueprint.get("/api/conversations")
def list_conversations() -> Response:
    user_id = acting_as(query_user())
    return ok(ConversationListOut(conversations=[
        ConversationSummaryOut(**c.summary()) for c in chat().conversations(user_id)
    ]))


@api_blueprint.get("/api/conversations/<conversation_id>")
def get_conversation(conversation_id: str) -> Response:
    conversation = chat().conversation(conversation_id, principal(), query_user())
    return ok(ConversationOut.model_validate(conversation.to_dict()))


@api_blueprint.delete("/api/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> Response:
    deleted = chat().delete_conversation(conversation_id, principal(), query_user())
    return ok(DeletedOut(deleted=int(deleted)))


class ApiFeedbackIn(FeedbackIn):
    user_id: str | None = Field(None, min_length=1, max_length=128, pattern=USER_ID,
                                description="whose conversation it is (with a key: the key's "
                                            "user)")


@api_blueprint.post("/api/conversations/<conversation_id>/feedback")
def give_feedback(conversation_id: str) -> Response:
    body: ApiFeedbackIn = read_json(ApiFeedbackIn)
    position, turn = chat().feedback(conversation_id, body.turn, acting_as(body.user_id),
                                     body.rating, body.comment)
    assert turn.feedback is not None
    return ok(FeedbackOut(conversation_id=conversation_id, turn=position,
                          rating=turn.feedback["rating"], comment=turn.feedback["comment"]))


@api_blueprint.delete("/api/users/<user_id>/history")
def delete_user_history(user_id: str) -> Response:
    return ok(DeletedOut(deleted=chat().erase_history(acting_as(user_id))))


@api_blueprint.get("/healthz")
def healthz() -> Response:
    return ok(HealthOut(status="ok", version=__version__))


@api_blueprint.get("/readyz")
def readyz() -> Response:
    checks = services().readiness()
    readiness_seen(current_app, checks)
    ready = all(c["ok"] for c in checks.values())
    if not may_see_details():
        # Why a backend is down names its internal address: for administrators only.
        checks = {name: {"ok": c["ok"]} if c["ok"] else
                  {"ok": False, "error": "unavailable (an admin key shows why)"}
                  for name, c in checks.items()}
    return ok(ReadyOut(ready=ready, checks={k: CheckOut(**v) for k, v in checks.items()}),
              200 if ready else 503)


@api_blueprint.get("/api/openapi.json")
def openapi_json() -> Response:
    return Response(json.dumps(openapi_document()), mimetype="application/json")


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

# The routes that ask the model: one question limit per user, over all of them.
QUESTION_ENDPOINTS = ("api.ask", "openai.chat_completions")

USER_QUERY = {"name": "user_id", "in": "query", "schema": {"type": "string"}}


def routes() -> list[Route]:
    return [
        Route("/api/question", "POST", ask, QuestionIn,
              {200: AnswerOut, 400: ErrorOut, 404: ErrorOut, 413: ErrorOut, 415: ErrorOut,
               503: ErrorOut, 504: ErrorOut},
              "Ask a question; with stream=true or Accept: text/event-stream, the answer streams "
              "as SSE events token, sources, done (or error).", stream=SSE_EVENT),
        Route("/api/conversations", "GET", list_conversations, None,
              {200: ConversationListOut, 400: ErrorOut, 503: ErrorOut},
              "A user's conversations, newest first (query parameter user_id).",
              query=[{**USER_QUERY, "required": True}]),
        Route("/api/conversations/<conversation_id>", "GET", get_conversation, None,
              {200: ConversationOut, 404: ErrorOut, 503: ErrorOut},
              "One conversation with its turns.", query=[{**USER_QUERY, "required": False}]),
        Route("/api/conversations/<conversation_id>", "DELETE", delete_conversation, None,
              {200: DeletedOut, 404: ErrorOut, 503: ErrorOut}, "Delete one conversation.",
              query=[{**USER_QUERY, "required": False}]),
        Route("/api/conversations/<conversation_id>/feedback", "POST", give_feedback,
              ApiFeedbackIn, {200: FeedbackOut, 400: ErrorOut, 404: ErrorOut, 413: ErrorOut,
                              415: ErrorOut, 503: ErrorOut},
              "Mark an answer helpful or wrong (turn: its position, from 0; the last if "
              "omitted); marking it again replaces the mark."),
        Route("/api/users/<user_id>/history", "DELETE", delete_user_history, None,
              {200: DeletedOut, 503: ErrorOut},
              "Erase a user's conversation history (every conversation and turn)."),
        Route("/healthz", "GET", healthz, None, {200: HealthOut},
              "The process is alive, and its version."),
        Route("/readyz", "GET", readyz, None, {200: ReadyOut, 503: ReadyOut},
              "The LLM, the vector store and the history store are reachable, each named."),
        Route("/api/openapi.json", "GET", openapi_json, None, {200: None}, "This document."),
    ]


def all_routes() -> list[Route]:
    """Every face's route table."""
    return [*routes(), *openai_routes(), *ingest_routes(), *collections_routes()]


def openapi_document() -> dict[str, Any]:
    return build_openapi(all_routes())


def register_errors(app: Flask) -> None:
    @app.errorhandler(HearthError)
    def _hearth_error(exc: HearthError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc)
        return with_retry_after(error_response(exc.status, exc.code, public_message(exc)), exc)

    # error_response answers in the shape the client reads: OpenAI's under /v1 (a path no
    # route of it matched, a method it does not take), Hearth's elsewhere.
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return http_error(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(500, "internal_error", UNEXPECTED)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    settings = settings or load_settings()
    hearth = services or build_services(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["hearth"] = hearth
    # First, so that even the guard's refusals carry a request id and are counted.
    app.extensions["hearth.chat"] = instrument(app, settings, hearth)
    limiter = guard(app, settings, hearth)
    for blueprint in (api_blueprint, openai_blueprint, webui_blueprint, ingest_blueprint,
                      collections_blueprint):
        app.register_blueprint(blueprint)
    # Questions, on every face, count against one limit of their own (and the general one).
    questions = limiter.shared_limit(settings.question_rate_limit, scope="questions",
                                     key_func=user_key)
    for endpoint in QUESTION_ENDPOINTS:
        app.view_functions[endpoint] = questions(app.view_functions[endpoint])
    register_errors(app)
    return app
