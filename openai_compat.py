"""An OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Tools that speak the OpenAI chat API (the ``openai`` SDKs, LangChain's ``ChatOpenAI``, Open WebUI,
editor plugins) can ask Hearth questions by pointing their base URL at ``http://HOST:PORT/v1``.

How a request maps onto Hearth: the last message, which must be the user's, is the question;
the earlier user/assistant pairs are the conversation so far; system messages are ignored
(Hearth answers from your documents with its own instructions). The ``user`` field names whose
history the turn is stored in; without it nothing is stored, as with OpenAI's own API. With API
keys on, the key's user is the user (an admin's key may name another in ``user``). The
conversation is ``conversation_id`` when the body gives one, else derived from the user and the
conversation's first exchange, so that a client resending the whole chat on every turn
continues one conversation instead of starting a new one each time. The sources, the
conversation id and whether Hearth refused come back as extra top-level fields, which clients
that do not know them ignore. Errors have OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, whose ``code`` and ``message`` are Hearth's usual ones.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any, Literal, cast

from flask import Blueprint, Response, stream_with_context
from pydantic import BaseModel, Field
from werkzeug.exceptions import HTTPException

from api import BACKEND_ERRORS, ApiError, SourceOut, acting_user, principal, read_json, services
from history import ConversationNotFound, HistoryStore, Turn
from model import Answer, Token
from throttle import Busy

MODEL_ID = "hearth"


# Request schemas. Fields OpenAI defines that Hearth does not use (temperature, top_p, max_tokens,
# tools...) are accepted and ignored: the settings decide how the model runs.
class OpenAITextPart(BaseModel):
    type: str = Field(description="only text parts are read; others are ignored")
    text: str | None = None


class OpenAIMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[OpenAITextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content if p.type == "text" and p.text)
        return self.content or ""


class OpenAIStreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIChatRequest(BaseModel):
    model: str = Field(MODEL_ID, description="accepted and ignored: Hearth answers with its model")
    messages: list[OpenAIMessage] = Field(
        min_length=1, description="the last one, the user's, is the question; earlier ones the "
                                  "conversation")
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice is generated")
    user: str | None = Field(None, max_length=128,
                             description="the user id whose history the turn is stored in; "
                                         "omit it to store nothing")
    conversation_id: str | None = Field(
        None, min_length=1, max_length=64,
        description="Hearth extension: store the turn in this conversation of the user")


# Response schemas.
class OpenAIUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIAnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class OpenAIChoice(BaseModel):
    index: int = 0
    message: OpenAIAnswerMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class HearthExtras(BaseModel):
    sources: list[SourceOut] = Field(description="Hearth extension: the passages the answer drew on")
    conversation_id: str | None = Field(
        description="Hearth extension: where the turn was stored (null without a user)")
    refused: bool = Field(description="Hearth extension: true when the documents do not hold "
                                      "the answer")


class OpenAIChatCompletion(HearthExtras):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[OpenAIChoice]
    usage: OpenAIUsage


class OpenAIDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class OpenAIChunkChoice(BaseModel):
    index: int = 0
    delta: OpenAIDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class OpenAIChatChunk(BaseModel):
    """One ``data:`` event of a stream. The chunk that carries ``finish_reason`` also carries
    the Hearth extensions (sources, conversation_id, refused); the stream ends with
    ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[OpenAIChunkChoice]
    usage: OpenAIUsage | None = None
    sources: list[SourceOut] | None = None
    conversation_id: str | None = None
    refused: bool | None = None


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error")
    param: str | None = None
    code: str = Field(description="Hearth's stable error code")


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorBody


openai_blueprint = Blueprint("openai", __name__, url_prefix="/v1")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, code: str, message: str, param: str | None = None) -> Response:
    body = OpenAIErrorOut(error=OpenAIErrorBody(
        message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code))
    return Response(body.model_dump_json(), status=status, mimetype="application/json")


@openai_blueprint.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    param = exc.message.split(":", 1)[0] if exc.code in ("missing_field", "invalid_field") else None
    return openai_error(exc.status, exc.code, exc.message, param)


@openai_blueprint.errorhandler(ConversationNotFound)
def _not_found(exc: ConversationNotFound) -> Response:
    return openai_error(404, "conversation_not_found", f"no conversation {exc}")


@openai_blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = {413: "body_too_large", 405: "method_not_allowed", 429: "rate_limited"}.get(
        exc.code or 500, "http_error")
    return openai_error(exc.code or 500, code, exc.description or exc.name)


def _backend_error(exc: Any) -> Response:
    return openai_error(exc.status, exc.code, str(exc))


for _error in BACKEND_ERRORS:
    openai_blueprint.register_error_handler(_error, _backend_error)


@openai_blueprint.errorhandler(Busy)
def _busy(exc: Busy) -> Response:
    response = openai_error(exc.status, exc.code, str(exc))
    response.headers["Retry-After"] = str(exc.retry_after)  # OpenAI's clients wait and retry
    return response


def split_messages(messages: list[OpenAIMessage]) -> tuple[str, list[Turn]]:
    """The question (the last message) and the turns before it, each a question and its answer.

    A user message with no assistant reply after it is joined to the next user message; an
    assistant message with no question before it (a greeting) is dropped, as are system and
    tool messages.
    """
    *earlier, last = messages
    if last.role != "user" or not last.text().strip():
        raise ApiError(400, "invalid_field",
                       "messages: the last message must be the user's question, with text")
    turns: list[Turn] = []
    pending: list[str] = []
    for message in earlier:
        if message.role == "user" and message.text().strip():
            pending.append(message.text().strip())
        elif message.role == "assistant" and pending:
            turns.append(Turn(question="\n".join(pending), answer=message.text().strip()))
            pending = []
    question = "\n".join([*pending, last.text().strip()])
    return question, turns


def derived_conversation_id(user_id: str, first: Turn) -> str:
    """The same id for every request of one chat: its user and its first exchange name it."""
    digest = hashlib.sha256(
        json.dumps([user_id, first.question, first.answer]).encode()).hexdigest()
    return f"oai-{digest[:32]}"


def conversation_for(body: OpenAIChatRequest, user: str | None, turns: list[Turn],
                     answer: Turn) -> str | None:
    if user is None:
        return None
    if body.conversation_id:
        return body.conversation_id
    return derived_conversation_id(user, turns[0] if turns else answer)


def request_user(body: OpenAIChatRequest) -> str | None:
    """The ``user`` field; with API keys on, the key's user (an admin's key may name another)."""
    if body.user is None and principal() is None:
        return None
    return acting_user(body.user)


def check_owner(store: HistoryStore, conversation_id: str, user_id: str | None) -> None:
    """A conversation named in the request is the user's own, or not there yet."""
    if user_id is None:
        raise ApiError(400, "missing_field", "user: a conversation_id needs the user it belongs to")
    conversation = store.get(conversation_id)
    if conversation is not None and conversation.user_id != user_id:
        raise ApiError(404, "conversation_not_found",
                       f"no conversation {conversation_id!r} for user {user_id!r}")


def usage_of(answer: Answer) -> OpenAIUsage:
    prompt, completion = (answer.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens"))
    return OpenAIUsage(prompt_tokens=prompt, completion_tokens=completion,
                       total_tokens=prompt + completion)


def finish_reason(answer: Answer) -> Literal["stop", "length"]:
    limit = services().settings.max_new_tokens
    return "length" if answer.usage.get("completion_tokens", 0) >= limit else "stop"


def sources_of(answer: Answer) -> list[SourceOut]:
    return [SourceOut(**s.to_dict()) for s in answer.sources]


@openai_blueprint.post("/chat/completions")
def chat_completions() -> Response:
    body: OpenAIChatRequest = read_json(OpenAIChatRequest)
    user = request_user(body)
    question, turns = split_messages(body.messages)
    limit = services().settings.max_question_chars
    if len(question) > limit:
        raise ApiError(413, "question_too_long",
                       f"the question has {len(question)} characters; the limit is {limit}")
    store = services().history
    if user is not None:
        store.ping()  # a history store that is down fails now, before the model spends any time
    if body.conversation_id:
        check_owner(store, body.conversation_id, user)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def remember(answer: Answer) -> str | None:
        turn = answer.turn(question)
        conversation_id = conversation_for(body, user, turns, turn)
        if conversation_id is not None and user is not None:
            store.add_turn(conversation_id, user, turn)
        return conversation_id

    gate = services().gate
    if not body.stream:
        with gate.slot():
            answer = services().assistant.answer(question, turns)
        conversation_id = remember(answer)
        out = OpenAIChatCompletion(
            id=completion_id, created=created, model=answer.model,
            choices=[OpenAIChoice(message=OpenAIAnswerMessage(content=answer.answer),
                                  finish_reason=finish_reason(answer))],
            usage=usage_of(answer), sources=sources_of(answer),
            conversation_id=conversation_id, refused=answer.refused,
        )
        return Response(out.model_dump_json(), mimetype="application/json")

    gate.acquire()  # released when the stream ends, however it ends
    try:
        events = cast(Generator[Token | Answer, None, None],
                      services().assistant.stream(question, turns))
        # The first event is pulled before the response starts, so a model that is down is
        # a 503 with a JSON body rather than a stream that opens and fails.
        first = next(events)
        model_name = services().llm.name
    except BaseException:
        gate.release()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(**fields: Any) -> str:
        data = OpenAIChatChunk(id=completion_id, created=created, model=model_name, **fields)
        return f"data: {json.dumps(chunk_json(data))}\n\n"

    def generate() -> Iterator[str]:
        event: Token | Answer = first
        try:
            yield chunk(choices=[OpenAIChunkChoice(delta=OpenAIDelta(role="assistant", content=""))])
            while isinstance(event, Token):
                yield chunk(choices=[OpenAIChunkChoice(delta=OpenAIDelta(content=event.text))])
                event = next(events)
            conversation_id = remember(event)
            yield chunk(choices=[OpenAIChunkChoice(delta=OpenAIDelta(),
                                                   finish_reason=finish_reason(event))],
                        sources=sources_of(event), conversation_id=conversation_id,
                        refused=event.refused)
            if include_usage:
                yield chunk(choices=[], usage=usage_of(event))
            yield "data: [DONE]\n\n"
        except BACKEND_ERRORS as exc:
            # OpenAI's clients raise an APIError on a chunk that holds an error.
            yield error_event(exc.status, exc.code, str(exc))
        except ConversationNotFound as exc:
            yield error_event(404, "conversation_not_found", f"no conversation {exc}")
        finally:
            events.close()  # a client gone mid-stream stops the generation
            gate.release()

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def chunk_json(chunk: OpenAIChatChunk) -> dict[str, Any]:
    """As OpenAI sends it: absent, not null, the fields a chunk does not carry."""
    data = {k: v for k, v in chunk.model_dump(mode="json").items() if v is not None}
    for choice in data["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return data


def error_event(status: int, code: str, message: str) -> str:
    body = OpenAIErrorBody(message=message, type=ERROR_TYPES.get(status, "server_error"), code=code)
    return f"data: {OpenAIErrorOut(error=body).model_dump_json()}\n\n"


@openai_blueprint.get("/models")
def list_models() -> Response:
    out = OpenAIModelList(data=[OpenAIModel(id=MODEL_ID, created=int(time.time()), owned_by="hearth")])
    return Response(out.model_dump_json(), mimetype="application/json")


# (path, method, view, request schema, {status: response schema}, summary), as api.ROUTES.
ROUTES: list[tuple[str, str, Any, type[BaseModel] | None, dict[int, type[BaseModel]], str]] = [
    ("/v1/chat/completions", "POST", chat_completions, OpenAIChatRequest,
     {200: OpenAIChatCompletion, 400: OpenAIErrorOut, 404: OpenAIErrorOut, 413: OpenAIErrorOut,
      429: OpenAIErrorOut, 503: OpenAIErrorOut, 504: OpenAIErrorOut},
     "OpenAI-compatible chat completion over your documents. With stream=true, OpenAI's SSE "
     "chunks (OpenAIChatChunk) ending with data: [DONE]. Extra top-level fields: sources, "
     "conversation_id, refused."),
    ("/v1/models", "GET", list_models, None, {200: OpenAIModelList},
     "OpenAI-compatible model list: one model, hearth."),
]
