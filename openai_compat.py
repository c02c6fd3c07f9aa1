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
that do not know them ignore. ``logprobs`` and ``top_logprobs`` are honoured where the backend
records them (llama.cpp and Transformers in process, Ollama, OpenAI-compatible servers).
Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, whose ``code``
and ``message`` are Hearth's usual ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, model_validator
from werkzeug.exceptions import HTTPException

from hearth.chat import Ask, Reply
from hearth.conversations import CONVERSATION_ID, USER_ID, Turn
from hearth.errors import HearthError
from hearth.llm import Drawn
from hearth.model import Answer, Token
from hearth.web import (
    ERROR_TYPES,
    UNEXPECTED,
    ApiError,
    EvidenceOut,
    FeedbackIn,
    FeedbackOut,
    OpenAIErrorBody,
    OpenAIErrorOut,
    Route,
    SourceOut,
    acting_as,
    chat,
    client_address,
    client_gone,
    event_stream,
    http_error,
    openai_error,
    principal,
    public_message,
    read_json,
    reads_everything,
    settings,
    shutting_down,
    sse,
    until_shutdown,
    with_retry_after,
)

log = logging.getLogger("hearth.api")

MODEL_ID = "hearth"


# Request schemas. Fields OpenAI defines that Hearth does not use (temperature, top_p, max_tokens,
# tools...) are accepted and ignored: the settings decide how the model runs. What it cannot do
# as asked (call a tool, answer in JSON) is refused.
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
    include_usage: StrictBool = False


# Fields OpenAI lets a client send as null, meaning the default.
NULLABLE = frozenset({"stream", "stream_options", "n", "logprobs", "top_logprobs", "user",
                      "conversation_id", "model", "tool_choice", "response_format"})


class OpenAIChatRequest(BaseModel):
    model: str = Field(MODEL_ID, max_length=200, description=(
        "hearth/<collection> reads that collection only (403 collection_forbidden if the user "
        "may not read it); hearth, or any other name, reads every collection the user may "
        "read. Hearth answers with its own LLM either way."))
    messages: list[OpenAIMessage] = Field(
        min_length=1, description="the last one, the user's, is the question; earlier ones the "
                                  "conversation")
    stream: StrictBool = False
    stream_options: OpenAIStreamOptions | None = None
    n: StrictInt = Field(1, ge=1, le=1, description="only one choice is generated")
    logprobs: StrictBool = Field(False, description=(
        "return each token of the answer with its log-probability under the model's own "
        "distribution (before temperature and sampling), where the backend records them "
        "(llama.cpp and Transformers in process, Ollama 0.12.11 and later, OpenAI-compatible "
        "servers); null "
        "otherwise, and where the content is not the model's "
        "words (a refusal before the model, an answer withheld)"))
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20, description=(
        "with logprobs: how many of the likeliest tokens at each place to return too"))
    user: str | None = Field(None, max_length=128, pattern=USER_ID,
                             description="the user id whose history the turn is stored in; "
                                         "omit it to store nothing")
    conversation_id: str | None = Field(
        None, pattern=CONVERSATION_ID,
        description="Hearth extension: store the turn in this conversation of the user")
    tool_choice: Any = Field(None, description=(
        "Hearth answers from your documents and calls no tools: `tools` are accepted and never "
        "called (as `auto` may choose); `required` or a named function is refused"))
    response_format: Any = Field(None, description=(
        "answers are text: `text` is accepted, `json_object` and `json_schema` are refused"))

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        """OpenAI takes null for what it makes optional, as clients generated from its
        specification send it: the default, here too."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in NULLABLE}
        return data


# Response schemas.
class OpenAIUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIAnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class OpenAITopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="the token's UTF-8 bytes (a character may take "
                                                "several tokens)")


class OpenAITokenLogprob(OpenAITopLogprob):
    top_logprobs: list[OpenAITopLogprob] = Field(
        description="the likeliest tokens at this place, likeliest first (top_logprobs)")


class OpenAILogprobs(BaseModel):
    content: list[OpenAITokenLogprob] | None
    refusal: list[OpenAITokenLogprob] | None = None


class OpenAIChoice(BaseModel):
    index: int = 0
    message: OpenAIAnswerMessage
    finish_reason: Literal["stop", "length"]
    logprobs: OpenAILogprobs | None = None


class HearthExtras(BaseModel):
    sources: list[SourceOut] = Field(description="Hearth extension: the passages the answer drew on")
    conversation_id: str | None = Field(
        description="Hearth extension: where the turn was stored (null without a user)")
    refused: bool = Field(description="Hearth extension: true when the documents do not hold "
                                      "the answer")
    evidence: list[EvidenceOut] = Field(
        description="Hearth extension: the sentences of the sources that support the answer")
    grounded: bool = Field(description="Hearth extension: false when the answer names things "
                                       "no source contains")
    unsupported: list[str] = Field(description="Hearth extension: those spans")
    draft: str = Field("", description="Hearth extension: the model's unverified answer when "
                       "Hearth withheld it (the content then says why)")
    confidence: float | None = Field(
        None, ge=0, le=1,
        description="Hearth extension: how sure the model was of its words (the geometric "
                    "mean of its tokens' probabilities, 0 to 1; not the chance that the answer "
                    "is right); null where the backend does not report it")


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
    logprobs: OpenAILogprobs | None = Field(
        default=None, description="with logprobs: the whole answer's, on the chunk that finishes it")


class OpenAIChatChunk(BaseModel):
    """One ``data:`` event of a stream. The chunk that carries ``finish_reason`` also carries
    the Hearth extensions (sources, conversation_id, refused, evidence, grounded,
    unsupported, draft, confidence) and, when asked, the log-probabilities of every token
    streamed (read only once the answer is checked); the stream ends with
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
    evidence: list[EvidenceOut] | None = None
    grounded: bool | None = None
    unsupported: list[str] | None = None
    draft: str | None = None
    confidence: float | None = None


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


openai_blueprint = Blueprint("openai", __name__, url_prefix="/v1")

@openai_blueprint.errorhandler(HearthError)
def _hearth_error(exc: HearthError) -> Response:
    message = public_message(exc)
    param = None
    if exc.code in ("missing_field", "invalid_field"):
        param = message.split(":", 1)[0]
        if param == "user_id":  # the rule every face shares names Hearth's field; here: user
            param, message = "user", "user" + message.removeprefix("user_id")
    # With Retry-After on a 503 busy, OpenAI's clients wait and retry.
    return with_retry_after(openai_error(exc.status, exc.code, message, param), exc)


@openai_blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return http_error(exc)


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
    digest = hashlib.sha256(json.dumps(
        [user_id, first.question.strip(), first.answer.strip()]).encode()).hexdigest()
    return f"oai-{digest[:32]}"


def request_user(body: OpenAIChatRequest) -> str | None:
    """The ``user`` field; with API keys on, the key's user (an admin's key may name another)."""
    if body.user is None and principal() is None:
        return None
    return acting_as(body.user)


def collections_of(model: str) -> list[str] | None:
    """The collection a model name picks (``hearth/<collection>``), or None for all."""
    prefix = f"{MODEL_ID}/"
    return [model[len(prefix):]] if model.startswith(prefix) else None


def ask_of(body: OpenAIChatRequest, read: list[str] | None = None) -> Ask:
    """The chat service's question: the last message, the turns before it, and where the turn
    is stored: the request's conversation_id (which must exist), else one named after the
    user and the chat's first exchange, so that a client resending the whole chat on every
    turn continues one conversation. ``read``: what a streamed answer sent the client, which
    it resends as the first answer (a withheld draft and its note, not the answer stored)."""
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "invalid_field", "top_logprobs: only with logprobs: true")
    if body.tool_choice not in (None, "auto", "none"):
        raise ApiError(400, "invalid_field", "tool_choice: Hearth answers from your documents "
                       "and calls no tools: leave tool_choice out, or auto or none")
    kind = body.response_format.get("type") if isinstance(body.response_format, dict) else None
    if body.response_format is not None and kind != "text":
        raise ApiError(400, "invalid_field", "response_format: Hearth answers in text only: "
                       "leave response_format out, or give {\"type\": \"text\"}")
    user = request_user(body)
    question, turns = split_messages(body.messages)
    reading: dict[str, Any] = {"collections": collections_of(body.model),
                               "everything": reads_everything(user),
                               "gone": client_gone(), "stopping": shutting_down()}
    alternatives = (body.top_logprobs or 0) if body.logprobs else 0
    if user is None or body.conversation_id is not None:
        return Ask(question=question, user_id=user, conversation_id=body.conversation_id,
                   turns=turns, queue_as=f"addr:{client_address(settings())}",
                   alternatives=alternatives, **reading)
    named = user
    new_id: str | Callable[[Turn], str] = (
        derived_conversation_id(named, turns[0]) if turns
        else lambda first: derived_conversation_id(
            named, first if read is None else replace(first, answer="".join(read))))
    return Ask(question=question, user_id=user, turns=turns, new_conversation_id=new_id,
               alternatives=alternatives, **reading)


def usage_of(answer: Answer) -> OpenAIUsage:
    prompt, completion = (answer.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens"))
    return OpenAIUsage(prompt_tokens=prompt, completion_tokens=completion,
                       total_tokens=prompt + completion)


def finish_reason(answer: Answer) -> Literal["stop", "length"]:
    limit = settings().max_new_tokens
    return "length" if answer.usage.get("completion_tokens", 0) >= limit else "stop"


def content_logprobs(tokens: Sequence[Drawn], content: str, top: int) -> OpenAILogprobs | None:
    """``choices[].logprobs`` of ``content``: the drawn tokens that wrote it, each with its
    log-probability and ``top`` alternatives. Hearth cuts an answer at its word budget and may
    add a note after the model's words, so the tokens are those the content begins with; None
    when it does not begin with the model's words (a refusal before the model, an answer
    withheld) or the backend records none."""
    drawn = b"".join(t.piece for t in tokens)
    lead = len(drawn) - len(drawn.lstrip())
    said = content.lstrip().encode()
    same = 0
    for a, b in zip(drawn[lead:], said, strict=False):
        if a != b:
            break
        same += 1
    if not same:
        return None
    out: list[OpenAITokenLogprob] = []
    end = at = 0
    for token in tokens:
        at, end = end, end + len(token.piece)
        if at >= lead + same:
            break
        if end <= lead:  # whitespace before the answer, which the content does not keep
            continue
        out.append(OpenAITokenLogprob(
            token=token.text, logprob=token.logprob, bytes=list(token.piece),
            top_logprobs=[OpenAITopLogprob(token=piece.decode("utf-8", "replace"), logprob=lp,
                                           bytes=list(piece)) for piece, lp in token.top[:top]]))
    return OpenAILogprobs(content=out)


def extras(answer: Answer) -> dict[str, Any]:
    """Hearth's extension fields of an answer: its sources, and what backs it."""
    return {"sources": [SourceOut(**s.to_dict()) for s in answer.sources],
            "refused": answer.refused, "grounded": answer.grounded,
            "evidence": [EvidenceOut(**e.to_dict()) for e in answer.evidence],
            "unsupported": answer.unsupported, "draft": answer.draft,
            "confidence": answer.confidence}


@openai_blueprint.post("/chat/completions")
def chat_completions() -> Response:
    body: OpenAIChatRequest = read_json(OpenAIChatRequest)
    streamed: list[str] = []  # what a streamed answer sent, as the client reads it
    ask = ask_of(body, streamed if body.stream else None)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    top = ask.alternatives

    def logprobs(answer: Answer, content: str) -> OpenAILogprobs | None:
        return content_logprobs(answer.tokens, content, top) if body.logprobs else None

    if not body.stream:
        reply = chat().answer(ask)
        answer = reply.answer
        out = OpenAIChatCompletion(
            id=completion_id, created=created, model=answer.model,
            choices=[OpenAIChoice(message=OpenAIAnswerMessage(content=answer.answer),
                                  finish_reason=finish_reason(answer),
                                  logprobs=logprobs(answer, "" if answer.draft
                                                    else answer.answer))],
            usage=usage_of(answer), conversation_id=reply.conversation_id, **extras(answer),
        )
        return Response(out.model_dump_json(), mimetype="application/json")

    stream = chat().stream(ask)
    model_name = chat().services.llm.name
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(**fields: Any) -> str:
        data = OpenAIChatChunk(id=completion_id, created=created, model=model_name, **fields)
        return sse(chunk_json(data))

    def events() -> Iterator[str]:
        try:
            yield chunk(choices=[OpenAIChunkChoice(delta=OpenAIDelta(role="assistant", content=""))])
            for event in until_shutdown(stream):
                if isinstance(event, Token):
                    streamed.append(event.text)
                    yield chunk(choices=[OpenAIChunkChoice(delta=OpenAIDelta(content=event.text))])
                    continue
                assert isinstance(event, Reply)
                answer = event.answer
                # What the client read: the model's words (a withheld draft's too), then a note.
                yield chunk(choices=[OpenAIChunkChoice(delta=OpenAIDelta(),
                                                       finish_reason=finish_reason(answer),
                                                       logprobs=logprobs(answer, "".join(streamed)))],
                            conversation_id=event.conversation_id, **extras(answer))
                if include_usage:
                    yield chunk(choices=[], usage=usage_of(answer))
            yield sse("[DONE]")
        except HearthError as exc:
            # OpenAI's clients raise an APIError on a chunk that holds an error.
            yield error_event(exc.status, exc.code, public_message(exc))
        except Exception:
            # The status line has gone: the stream still ends with an error chunk, not a cut.
            log.exception("unexpected error while streaming a completion")
            yield error_event(500, "internal_error", UNEXPECTED)
        finally:
            stream.close()

    return event_stream(events())


def chunk_json(chunk: OpenAIChatChunk) -> dict[str, Any]:
    """As OpenAI sends it: absent, not null, the fields a chunk does not carry."""
    data = {k: v for k, v in chunk.model_dump(mode="json").items() if v is not None}
    for choice in data["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return data


def error_event(status: int, code: str, message: str) -> str:
    body = OpenAIErrorBody(message=message, type=ERROR_TYPES.get(status, "server_error"), code=code)
    return sse(OpenAIErrorOut(error=body).model_dump_json())


class OpenAIFeedbackIn(FeedbackIn):
    conversation_id: str = Field(pattern=CONVERSATION_ID,
                                 description="the conversation_id of the completion")
    user: str | None = Field(None, min_length=1, max_length=128, pattern=USER_ID)


@openai_blueprint.post("/feedback")
def feedback() -> Response:
    """Hearth's extension: mark a completion's answer helpful or wrong."""
    body: OpenAIFeedbackIn = read_json(OpenAIFeedbackIn)
    position, turn = chat().feedback(body.conversation_id, body.turn, acting_as(body.user),
                                     body.rating, body.comment)
    assert turn.feedback is not None
    out = FeedbackOut(conversation_id=body.conversation_id, turn=position,
                      rating=turn.feedback["rating"], comment=turn.feedback["comment"])
    return Response(out.model_dump_json(), mimetype="application/json")


@openai_blueprint.get("/models")
def list_models() -> Response:
    """``hearth`` (every collection the key may read), then ``hearth/<collection>`` for each of
    them: a client such as Open WebUI shows each knowledge base as a model to pick."""
    holder = principal()
    user = holder.user_id if holder is not None else None
    readable = chat().services.access.readable(user, everything=reads_everything(user))
    out = OpenAIModelList(data=[
        OpenAIModel(id=MODEL_ID, created=0, owned_by="hearth"),
        *(OpenAIModel(id=f"{MODEL_ID}/{c.name}", created=int(c.created_at), owned_by="hearth")
          for c in readable)])
    return Response(out.model_dump_json(), mimetype="application/json")


# One chunk of a streamed /v1 completion, as OpenAI sends them; the last data is [DONE].
OPENAI_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a chat.completion.chunk as JSON, "
                                                         "or [DONE]"}},
}


def routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", "POST", chat_completions, OpenAIChatRequest,
              {200: OpenAIChatCompletion, 400: OpenAIErrorOut, 404: OpenAIErrorOut,
               413: OpenAIErrorOut, 415: OpenAIErrorOut, 429: OpenAIErrorOut, 503: OpenAIErrorOut,
               504: OpenAIErrorOut},
              "OpenAI-compatible chat completion over your documents. With stream=true, "
              "OpenAI's SSE chunks (OpenAIChatChunk) ending with data: [DONE]. Extra top-level "
              "fields: sources, conversation_id, refused.", stream=OPENAI_SSE_EVENT),
        Route("/v1/feedback", "POST", feedback, OpenAIFeedbackIn,
              {200: FeedbackOut, 400: OpenAIErrorOut, 404: OpenAIErrorOut, 413: OpenAIErrorOut,
               415: OpenAIErrorOut},
              "Hearth's extension: mark the answer of a completion (its conversation_id; turn "
              "from 0, the last if omitted) helpful or wrong."),
        Route("/v1/models", "GET", list_models, None, {200: OpenAIModelList},
              "OpenAI-compatible model list: hearth (every collection the key may read) and "
              "hearth/<collection> for each of them."),
    ]
