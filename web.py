"""What every HTTP face of Hearth shares: errors and their JSON, request parsing, who is acting,
rate limits, Server-Sent Events, and the route tables the OpenAPI document is built from.

Each face (``/api`` in ``api.py``, ``/v1`` in ``openai_compat.py``, ingestion jobs in
``ingest_api.py``, the page in ``webui``) is a blueprint that builds on this module; only
``api.create_app`` knows them all.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import (
    Flask,
    Response,
    current_app,
    g,
    has_request_context,
    request,
    stream_with_context,
)
from flask_limiter import Limiter
from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import HTTPException

from hearth import __version__, logs
from hearth.auth import Principal, acting_user
from hearth.chat import Chat
from hearth.config import Settings
from hearth.errors import HearthError, ShuttingDown, Unavailable, backend_codes, unexplained
from hearth.ingest.jobs import Jobs
from hearth.services import Services
from hearth.vectorstore import WRITE_WAIT_S

log = logging.getLogger("hearth.api")
T = TypeVar("T")


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
    """An error in the shape its client reads: OpenAI's under /v1, Hearth's elsewhere."""
    if has_request_context() and is_openai_path(request.path):
        return openai_error(status, code, message)
    body = ErrorOut(error=ErrorBody(code=code, message=message)).model_dump_json()
    return Response(body, status=status, mimetype="application/json")


def http_error(exc: HTTPException) -> Response:
    """Werkzeug's HTTP error (404, 405, 413...) as JSON, with its headers (a 405's Allow)."""
    code = HTTP_CODES.get(exc.code or 500, "http_error")
    response = error_response(exc.code or 500, code, exc.description or exc.name)
    for name in ("Allow", "Retry-After"):
        if name in (headers := exc.get_response().headers):
            response.headers[name] = headers[name]
    return response


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error")
    param: str | None = None
    code: str = Field(description="Hearth's stable error code")


class OpenAIErrorOut(BaseModel):
    error: OpenAIErrorBody


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, code: str, message: str, param: str | None = None) -> Response:
    body = OpenAIErrorOut(error=OpenAIErrorBody(
        message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code))
    return Response(body.model_dump_json(), status=status, mimetype="application/json")


# What a client reads of an error Hearth did not foresee: the details go to the log only.
UNEXPECTED = "Hearth failed unexpectedly; the details are in its log"

HTTP_CODES = {413: "body_too_large", 404: "not_found", 405: "method_not_allowed",
              429: "rate_limited"}


def with_retry_after(response: Response, exc: Exception) -> Response:
    """An error that says when to try again (503 busy) says so in Retry-After."""
    value = getattr(exc, "retry_after", None)
    if value is not None:
        g.retry_after = response.headers["Retry-After"] = str(int(value))
    return response


# -- responses and requests ----------------------------------------------------------------------

def ok(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))


def body_bytes() -> bytes:
    """The request body, or a 413 past HEARTH_MAX_BODY_BYTES, chunked uploads included (a
    length-limited stream would cut those short silently)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None:
        return request.get_data(cache=False)  # Werkzeug answers 413 past the limit
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"the request body is over {limit} bytes")
    return bytes(raw)


def parse_json(raw: bytes) -> Any:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body nests too deeply") from None
    try:
        # JSON lets a string hold half of a UTF-16 pair ("\ud800"), which is no text at all: it
        # would pass some fields' checks and fail only when the turn is saved, the answer
        # already drawn (a 500, or a stream cut short). The body is at most 64 KB.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_json", "the request body holds a lone UTF-16 surrogate "
                       "(such as \\ud800), which is not text") from None
    return body


def read_json(schema: type[BaseModel]) -> Any:
    """The request body as ``schema``, or a 4xx that names the field and what is wrong.

    Only ``application/json`` is read: a web page on another site can send a ``text/plain``
    body without asking the browser's leave (no CORS preflight), never a JSON one.
    """
    if not is_json(request.mimetype):
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON, with the header Content-Type: application/json")
    raw = body_bytes()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty: send a JSON object")
    body = parse_json(raw)
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
    """``"stream": true``, or an Accept header that names text/event-stream with q > 0."""
    return asked or any(kind == "text/event-stream" and quality > 0
                        for kind, quality in request.accept_mimetypes)


# The WSGI environ's key for the server's "stopping" event (a threading.Event): set once the
# requests in flight at SIGTERM have had their grace period (``server.DeadlineServer.stop``).
STOPPING = "hearth.stopping"


def until_shutdown(events: Iterable[T]) -> Iterator[T]:
    """``events`` until the server says it is stopping; then ``ShuttingDown``, which a stream
    ends with as its error event, rather than being cut when the process exits."""
    stopping = request.environ.get(STOPPING)
    for event in events:
        if stopping is not None and stopping.is_set():
            raise ShuttingDown("the server is shutting down and this answer ran past its grace "
                               "period: ask again in a moment")
        yield event


def sse(data: Any, event: str | None = None) -> str:
    """One Server-Sent Event; ``data`` that is not a string is sent as JSON."""
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def event_stream(events: Iterator[str]) -> Response:
    def as_this_request() -> Iterator[str]:
        # The request's teardown has run by the time the stream is read: its log lines (the
        # model's, a client gone) name the request again, and nothing after it does.
        logs.request_id.set(g.get("request_id", "-"))
        try:
            yield from events
        finally:
            logs.request_id.set("-")

    return Response(stream_with_context(as_this_request()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- the app's components ------------------------------------------------------------------------

def services() -> Services:
    return current_app.extensions["hearth"]  # type: ignore[no-any-return]


def chat() -> Chat:
    return current_app.extensions["hearth.chat"]  # type: ignore[no-any-return]


def settings() -> Settings:
    return services().settings


_jobs_lock = threading.Lock()


def jobs() -> Jobs:
    """The app's ingestion job runner (API ingests and uploads), made on first use."""
    app: Any = current_app
    with _jobs_lock:
        if "hearth.ingest_jobs" not in app.extensions:
            runner = app.extensions["hearth.ingest_jobs"] = Jobs(services())
            # Told of each job that ends (the metrics, when they are on: monitoring.py).
            runner.finished += app.extensions.get("hearth.job_observers", [])
        return app.extensions["hearth.ingest_jobs"]  # type: ignore[no-any-return]


# -- who is acting -------------------------------------------------------------------------------

def principal() -> Principal | None:
    """The API key's holder, or None when keys are off (the named user is then trusted)."""
    return getattr(g, "principal", None)


def client_gone() -> Callable[[], bool] | None:
    """Whether this request's client has left, as waitress tells it (with the request look-
    ahead it is given, ``server.adjustments``); None under another server."""
    check = request.environ.get("waitress.client_disconnected")
    return check if callable(check) else None


def shutting_down() -> Callable[[], bool] | None:
    """Whether the server has stopped waiting for this request (its grace period after SIGTERM
    is over): a question still waiting for the model is refused then, not left to be cut."""
    stopping = request.environ.get(STOPPING)
    return stopping.is_set if stopping is not None else None


def acting_as(requested: str | None) -> str:
    """The user this request acts for (``auth.acting_user`` with the request's key)."""
    return acting_user(principal(), requested)


def reads_everything(user_id: str | None) -> bool:
    """Whether a question acting for ``user_id`` reads every collection: an administrator's
    key acting for its own user (an administrator acting for another user reads as they do)."""
    holder = principal()
    return holder is not None and holder.admin and holder.user_id == user_id


def public_message(exc: HearthError) -> str:
    """What a client reads of an error: a backend that is down is named by its code, and why
    (its internal address) only to those who may see the backends' details."""
    if isinstance(exc, Unavailable) and exc.status == 503 and not may_see_details():
        return unexplained(exc.code)
    return str(exc)


def public_error(error: dict[str, str] | None) -> dict[str, str] | None:
    """A job's recorded error as the request may see it (``public_message``'s rule)."""
    if error and error.get("code") in backend_codes() and not may_see_details():
        return {**error, "message": unexplained(error["code"])}
    return error


def may_see_details() -> bool:
    """Whether this request may see the internals of the backends (their addresses): anyone
    with keys off (one person on loopback); with keys on, an admin key, or the machine itself
    (a health check inside the container, which sends no key)."""
    hearth = services()
    if not hearth.settings.auth_required:
        return True
    if on_this_machine(hearth.settings):
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    try:
        who = hearth.keys.authenticate(token.strip())
    except HearthError:
        return False
    return who is not None and who.admin


def on_this_machine(settings: Settings) -> bool:
    """Whether the request comes from this machine: the connection from loopback, and the
    client it is forwarded for too. X-Forwarded-For alone never makes a client local: any
    trusted proxy passes on whatever its client wrote there (``127.0.0.1``)."""
    try:
        return (ipaddress.ip_address(request.remote_addr or "").is_loopback
                and ipaddress.ip_address(client_address(settings)).is_loopback)
    except ValueError:
        return False


def guarded(path: str) -> bool:
    """Routes that need an API key when keys are on."""
    return path.startswith(("/api/", "/v1/")) and path != "/api/openapi.json"


PROBES = ("/healthz", "/readyz")
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether a Host header (name[:port]) names one of ``allowed`` (names, any port)."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower().rstrip(".")
    return name in {a.strip("[]").lower() for a in allowed}


def check_origin(settings: Settings) -> Response | None:
    """Refuse what another web site may drive: a Host that Hearth does not serve (a DNS
    rebinding page reaching 127.0.0.1 under its own name), and a state-changing request
    whose Origin is not Hearth's own (a page elsewhere posting to it)."""
    if request.path in PROBES:
        return None  # probes that use a pod's address keep working
    served = [*settings.allowed_hosts]
    if settings.host not in ("0.0.0.0", "::"):
        served.append(settings.host)  # the address `hearth serve --host` was given
    if not host_allowed(request.host, served):
        return error_response(400, "host_not_allowed",
                              f"this server does not answer for the host {request.host!r}: "
                              "add it to HEARTH_ALLOWED_HOSTS if you mean to reach Hearth by it")
    origin = request.headers.get("Origin")
    if (origin is not None and request.method in STATE_CHANGING
            and origin.lower() != own_origin(settings) and origin not in settings.allowed_origins):
        return error_response(403, "origin_not_allowed",
                              f"requests from the web page at {origin!r} are not allowed: "
                              "add it to HEARTH_ALLOWED_ORIGINS if you trust it")
    return None


def own_origin(settings: Settings) -> str:
    """The origin Hearth's own page is served from, as the browser sees it: behind a trusted
    proxy that ends TLS (an Ingress), the scheme and host the proxy was reached by
    (X-Forwarded-Proto, X-Forwarded-Host: the first, the client's), not those of the hop."""
    scheme, host = request.scheme, request.host
    if is_trusted(request.remote_addr or "", settings):
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if forwarded in ("http", "https"):
            scheme = forwarded
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or host
    return f"{scheme}://{host}".lower()


def is_trusted(address: str, settings: Settings) -> bool:
    """Whether ``address`` is one of HEARTH_TRUSTED_PROXIES."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)


def client_address(settings: Settings) -> str:
    """The client's address: the connection's, or, when it comes from a trusted proxy, the
    nearest address in X-Forwarded-For that is not itself a trusted proxy."""
    remote = request.remote_addr or ""
    if not is_trusted(remote, settings):
        return remote
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, settings):
            return hop
    return remote


LIMITS_RETRY_S = 30  # after the rate-limit store fails, count in memory this long


def too_many(limiter: Limiter, rate: str, scope: str, who: str, message: str) -> Response | None:
    """A 429 once ``who`` has used up ``rate`` in ``scope``, counting this request: in the
    shared store when it answers, else in this process's memory (said once in the log)."""
    item = parse_rate(rate)
    fallback: RateLimiter = current_app.extensions["hearth.limits_fallback"]
    counters = limiter.limiter
    if time.monotonic() < current_app.extensions.get("hearth.limits_down_until", 0.0):
        counters = fallback  # the store failed a moment ago: do not wait on it every request
    try:
        allowed = counters.hit(item, scope, who)
    except Exception as exc:  # the storage's own errors: MongoDB away, say
        log.warning("rate-limit store unreachable, counting in memory for %d s: %s",
                    LIMITS_RETRY_S, exc)
        current_app.extensions["hearth.limits_down_until"] = time.monotonic() + LIMITS_RETRY_S
        counters = fallback
        allowed = counters.hit(item, scope, who)
    if allowed:
        return None
    reset, _ = counters.get_window_stats(item, scope, who)
    response = error_response(429, "rate_limited", message)
    response.headers["Retry-After"] = str(max(1, int(reset - time.time()) + 1))
    g.retry_after = response.headers["Retry-After"]
    return response


def authenticate(settings: Settings, hearth: Services, limiter: Limiter) -> Response | None:
    g.principal = None
    if not settings.auth_required or not guarded(request.path):
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error_response(401, "unauthorized", "an API key is required: send the header "
                              "'Authorization: Bearer <key>' (`hearth keys create --user NAME`)")
    g.principal = hearth.keys.authenticate(token.strip())
    if g.principal is None:
        # Bad keys are counted per address, so that keys cannot be guessed at speed.
        return too_many(limiter, settings.auth_failure_rate_limit, "bad-key",
                        client_address(settings),
                        "too many requests with a bad API key from this address: wait") \
            or error_response(401, "unauthorized", "this API key is not valid or was revoked")
    return None


def limit_client(settings: Settings, limiter: Limiter) -> Response | None:
    """One client address, whatever users it names, gets ``HEARTH_CLIENT_RATE_LIMIT``."""
    if not guarded(request.path):
        return None
    return too_many(limiter, settings.client_rate_limit, "client", client_address(settings),
                    "too many requests from this address: wait and try again")


def named_user() -> str | None:
    """The user a JSON body or the query names, read without failing on any body."""
    named: Any = None
    if is_json(request.mimetype) and request.content_length:
        try:
            body = json.loads(request.get_data(cache=True))
        # HTTPException: a body over the limit (413, answered as such by the view), a client
        # gone. Raised here, flask-limiter would take its store for dead and count in memory.
        except (ValueError, UnicodeDecodeError, RecursionError, HTTPException):
            body = None
        if isinstance(body, dict):
            named = body.get("user_id") or body.get("user")  # "user": the /v1 field
    named = named or request.args.get("user_id")
    return named if isinstance(named, str) else None


def user_key() -> str:
    """Whom a request counts against for rate limits: the user it acts for, else its address."""
    who = principal()
    if who is not None:
        return f"user:{who.user_id}"  # an admin acting for others spends the admin's limit
    try:
        return f"user:{acting_user(None, named_user())}"
    except HearthError:
        return f"addr:{request.remote_addr}"


def limits_storage(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Where rate-limit counters live: MongoDB when Hearth has one, so that every API worker
    counts against the same limits (a moving window: the MongoDB test server breaks the
    sliding-window counter), else this process's memory."""
    if not settings.mongodb_uri:
        return "memory://", {}
    # A counter answers in milliseconds: a store slower than a quarter of the backend timeout
    # is treated as away (counted in memory) rather than let it delay every request.
    ms = max(50, int(settings.backend_timeout_s * 250))
    return settings.mongodb_uri, {
        "database_name": settings.mongodb_db, "counter_collection_name": "rate_limit_counters",
        "window_collection_name": "rate_limit_windows", "serverSelectionTimeoutMS": 4 * ms,
        "connectTimeoutMS": 4 * ms, "socketTimeoutMS": ms, "appname": "hearth"}


# A request that writes the embedded index (a removal) waits this long for another process
# writing it (an ingest), then answers index_busy: its client is not held for the ingest.
REQUEST_WRITE_WAIT_S = 20.0


def bounded_writes() -> None:
    WRITE_WAIT_S.set(REQUEST_WRITE_WAIT_S)  # this request's thread; jobs' threads wait on


def guard(app: Flask, settings: Settings, hearth: Services) -> Limiter:
    """Who may call at all, in order: the Host and Origin checks, the API key (bad keys
    counted per address), the per-address limit, then flask-limiter's per-user limits."""
    uri, options = limits_storage(settings)
    limiter = Limiter(
        key_func=user_key, storage_uri=uri, storage_options=options, strategy="moving-window",
        # One count per user over every route (flask-limiter's default limits count each
        # route apart: 300 a minute on each of them).
        application_limits=[settings.rate_limit], headers_enabled=True,
        # With the store away, count in memory (per process) rather than fail every request.
        in_memory_fallback_enabled=True,
        # Health checks are for machines that poll: never limit them.
        application_limits_exempt_when=lambda: request.path in PROBES,
    )
    app.extensions["hearth.limits_fallback"] = MovingWindowRateLimiter(MemoryStorage())
    app.before_request(bounded_writes)
    app.before_request(lambda: check_origin(settings))
    app.before_request(lambda: authenticate(settings, hearth, limiter))
    app.before_request(lambda: limit_client(settings, limiter))

    @app.after_request
    def _retry_after(response: Response) -> Response:
        # Registered before the limiter's own hook, so it runs after it: the limiter adds its
        # Retry-After to every response; only a refusal should carry one, and a 503 busy its own.
        ours = g.get("retry_after")
        if ours is not None:
            response.headers["Retry-After"] = ours
        elif response.status_code != 429:
            response.headers.pop("Retry-After", None)
        return response

    limiter.init_app(app)
    return limiter


# -- schemas every face shares ----------------------------------------------------------------

class SourceOut(BaseModel):
    source: str = Field(description="URL or file path of the document")
    title: str | None
    page: int | None = Field(description="page number, for PDFs")
    section: str | None
    snippet: str = Field(description="the text of the document that the answer drew on")
    chunk_id: str
    score: float = Field(description="cosine similarity of the chunk to the question")
    collection: str = Field("default", description="the collection the document belongs to")


class JobOut(BaseModel):
    id: str
    kind: Literal["web", "files"]
    target: str
    collection: str
    state: Literal["queued", "running", "done", "failed"]
    progress: dict[str, Any]
    summary: dict[str, Any] | None
    error: dict[str, str] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class FeedbackIn(BaseModel):
    rating: Literal["helpful", "wrong"] = Field(description="what the user thinks of the answer")
    comment: str = Field("", max_length=2000, description="what was wrong, or right")
    turn: int | None = Field(None, ge=0, le=100_000,
                             description="the answer's position in the conversation, from 0; "
                                         "omit for the last")


class FeedbackOut(BaseModel):
    conversation_id: str
    turn: int
    rating: Literal["helpful", "wrong"]
    comment: str


class EvidenceOut(BaseModel):
    source: int = Field(description="index of the source (in sources) the sentence is from")
    text: str = Field(description="a sentence of that source's snippet that supports the answer")
    start: int = Field(description="where the sentence starts in the snippet (characters)")
    end: int
    score: float


class GroundingOut(BaseModel):
    """What backs an answer: evidence sentences, and the grounding check's verdict."""

    evidence: list[EvidenceOut] = Field(
        description="the sentences of the sources that support the answer, best first")
    grounded: bool = Field(description="false when the answer names things (numbers, code, "
                                       "commands) that no source contains, or strays from them")
    unsupported: list[str] = Field(description="the answer's spans that no source contains")
    draft: str = Field("", description="the model's answer when Hearth withheld it for naming "
                       "things no source contains (`answer` then says so, `refused` is true); "
                       "unverified: empty otherwise")
    confidence: float | None = Field(
        None, ge=0, le=1,
        description="how sure the model was of its words: the geometric mean of the "
                    "probabilities it gave each word (token) it wrote, 0 to 1, higher is surer; "
                    "not the chance that the answer is right. Null where the backend does not "
                    "report it (Ollama, Transformers) or no model wrote the answer")


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
    body: dict[str, Any] | None = None  # a request body that is not JSON: its content map


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    requests = {r.request for r in routes if r.request is not None}
    models = {m for r in routes for m in [r.request, *r.responses.values()] if m is not None}
    models |= {ErrorOut, OpenAIErrorOut}  # a guarded route may answer 401, 403, 429 with one
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
        elif route.body is not None:
            operation["requestBody"] = {"required": True, "content": route.body}
        for status, model in route.responses.items():
            content: dict[str, Any] = {"application/json": {"schema": (
                {"type": "object"} if model is None
                else {"$ref": f"#/components/schemas/{model.__name__}"})}}
            if route.stream is not None and status == 200:
                content["text/event-stream"] = {"schema": route.stream}
            operation["responses"][str(status)] = {"description": str(status), "content": content}
        if guarded(route.path):
            # With API keys on: no key or a bad one, another user's data, too many requests.
            shape = "OpenAIErrorOut" if is_openai_path(route.path) else "ErrorOut"
            for status in (401, 403, 429):
                operation["responses"].setdefault(str(status), {
                    "description": str(status), "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{shape}"}}}})
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
