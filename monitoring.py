"""What an operator watches: a request id on every response and log line, Prometheus metrics,
and OpenTelemetry traces when a collector is named (docs/monitoring.md).

- Every response carries ``X-Request-Id`` (the client's own, when it sends a sane one, as
  nginx's ``$request_id``; else a new one), and every log line written while it is served
  names it (``logs.request_id``).
- ``HEARTH_METRICS=true`` counts and times requests (by route template, never a raw path),
  questions by outcome, the answer's steps, the generation queue, the history store, ingestion
  jobs and each backend's health, in a registry of this process's own: several workers behind
  a proxy each count their own requests, and their sums are what was sent. ``/metrics`` is on
  the API's port (an admin key, or a client on loopback, when keys are on), or with
  ``HEARTH_METRICS_PORT`` on a listener of its own. No label holds a user's text, id or key.
- ``HEARTH_OTLP_ENDPOINT`` sends traces (a span per request, one per question) to that OTLP/HTTP
  collector; without it nothing is traced and nothing leaves the machine.

The faces are not changed for any of this: the chat service is wrapped (``ObservedChat``), and
the gate, the history store and the ingestion jobs take observers.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hearth import __version__, logs
from hearth.chat import Ask, Chat, Reply, ReplyStream
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.model import Answer, Token
from hearth.services import Services
from hearth.web import error_response, may_see_details

log = logging.getLogger("hearth.monitoring")

REQUEST_ID_HEADER = "X-Request-Id"
# A client's id is kept when it is this plain (nginx's $request_id, a UUID): it goes into logs.
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED = "(unmatched)"  # the route of a 404 or 405: never the raw path, which may be anything
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
BACKEND_CHECK_MAX_AGE_S = 15.0  # a scrape reuses a readiness check this recent (/readyz's too)

EXTENSION = "hearth.metrics"
TRACER_EXTENSION = "hearth.tracer_provider"


class Metrics:
    """Every metric Hearth exports, in a registry of this app's own (never the global one)."""

    def __init__(self) -> None:
        # No *_created series (each counter's start time): they double the exposition, and
        # Prometheus reads a restart from the counters themselves. A process-wide switch.
        disable_created_metrics()
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "hearth_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "hearth_http_request_duration_seconds",
            "Time to the response's start (a stream's headers), by route template and method",
            ["route", "method"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.questions = Counter(
            "hearth_questions", "Questions by outcome: answered, refused, cancelled (the client "
            "left mid-stream), busy, or the error's code; and by mode (whole or stream)",
            ["outcome", "mode"], registry=r)
        self.first_token = Histogram(
            "hearth_time_to_first_token_seconds", "From the question reaching the chat service "
            "to the model's first token: queue, condensing and retrieval included",
            registry=r, buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120))
        self.generation = Histogram(
            "hearth_generation_duration_seconds", "The model's time for one answer (prompt and "
            "tokens)", registry=r, buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300))
        self.tokens = Counter("hearth_tokens", "Tokens of answers the model generated, by kind "
                              "(prompt, completion)", ["kind"], registry=r)
        self.retrieval = Histogram(
            "hearth_retrieval_duration_seconds", "Retrieval of one question's passages "
            "(embedding the question and the vector store's search)", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.queue_wait = Histogram(
            "hearth_queue_wait_seconds", "Time a question waited for a free model, served or not",
            registry=r, buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.queue_length = Gauge("hearth_queue_length", "Questions waiting for a free model",
                                  registry=r)
        self.generating = Gauge("hearth_generations_running", "Answers being generated now",
                                registry=r)
        self.history = Histogram(
            "hearth_history_store_duration_seconds", "Calls to the history store, by operation",
            ["operation"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
        self.ingest_jobs = Counter("hearth_ingest_jobs", "Ingestion jobs of the API, by how "
                                   "they ended (done, failed)", ["state"], registry=r)
        self.ingested_documents = Counter(
            "hearth_ingested_documents", "Documents (pages, files) that ingestion jobs read, by "
            "result (added, updated, unchanged, deleted, skipped; kept: skipped for now, kept as "
            "indexed before)", ["result"], registry=r)
        self.ingested_chunks = Counter(
            "hearth_ingested_chunks", "Chunks of ingestion jobs, by result (added, unchanged, "
            "deleted)", ["result"], registry=r)
        Gauge("hearth_build_info", "Hearth's version", ["version"], registry=r) \
            .labels(__version__).set(1)
        self.backends: BackendHealth | None = None

    # -- what the wrapped parts report -----------------------------------------------------------

    def watch(self, services: Services) -> None:
        """Observe the gate, the history store and the backends of ``services``."""
        gate = services.gate
        gate.waited.append(self.queue_wait.observe)
        self.queue_length.set_function(lambda: gate.waiting)
        self.generating.set_function(lambda: gate.running)
        services.wrap("history", lambda store: Timed(store, self.history))
        self.backends = BackendHealth(services.readiness)
        self.registry.register(self.backends)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def question_failed(self, mode: str, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, HearthError) else "internal_error"
        self.questions.labels(code, mode).inc()

    def question_answered(self, mode: str, answer: Answer, first_token_s: float | None) -> None:
        self.questions.labels("refused" if answer.refused else "answered", mode).inc()
        timings = answer.timings
        if "retrieve_s" in timings:
            self.retrieval.observe(timings["retrieve_s"])
        if "generate_s" in timings:  # the model ran (no relevant passage: it did not)
            self.generation.observe(timings["generate_s"])
            if first_token_s is not None:
                self.first_token.observe(first_token_s)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind).inc(answer.usage.get(f"{kind}_tokens", 0))

    def job_finished(self, job: Any) -> None:
        self.ingest_jobs.labels(job.state).inc()
        summary = job.summary
        if summary is None:
            return
        for result in ("added", "updated", "unchanged", "deleted", "kept"):
            self.ingested_documents.labels(result).inc(getattr(summary, result))
        self.ingested_documents.labels("skipped").inc(len(summary.skipped))
        for result in ("added", "unchanged", "deleted"):
            self.ingested_chunks.labels(result).inc(getattr(summary, f"chunks_{result}"))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)  # type: ignore[no-any-return]


class BackendHealth(Collector):  # type: ignore[misc]
    """``hearth_backend_up``: 1 per backend that /readyz's check finds reachable, else 0.
    A scrape reuses a check younger than BACKEND_CHECK_MAX_AGE_S (a backend that is down may
    take HEARTH_BACKEND_TIMEOUT_S to say so), and /readyz's own checks refresh it."""

    def __init__(self, readiness: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.readiness = readiness
        self._lock = threading.Lock()
        self._checks: dict[str, bool] = {}
        self._at = float("-inf")

    def seen(self, checks: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self._checks = {name: bool(c.get("ok")) for name, c in checks.items()}
            self._at = time.monotonic()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("hearth_backend_up", "1 when the backend (llm, vector_store, "
                                 "history_store, ...) is reachable, as /readyz checks it; else 0",
                                 labels=["backend"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        if time.monotonic() - self._at > BACKEND_CHECK_MAX_AGE_S:
            self.seen(self.readiness())
        family = self._family()
        with self._lock:
            for name, up in sorted(self._checks.items()):
                family.add_metric([name], 1.0 if up else 0.0)
        yield family


class Timed:
    """A component whose public methods are timed into ``histogram``, by method name."""

    def __init__(self, inner: Any, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value
        child = self._histogram.labels(name)

        @functools.wraps(value)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                child.observe(time.perf_counter() - started)

        return timed


# -- the chat service, observed -------------------------------------------------------------------

class ObservedChat(Chat):
    """The chat service, counting each question's outcome and timings, and tracing it."""

    def __init__(self, services: Services, metrics: Metrics | None, tracer: Any = None) -> None:
        super().__init__(services)
        self.metrics = metrics
        self.tracer = tracer

    def _span(self, mode: str) -> Any:
        if self.tracer is None:
            return None
        span = self.tracer.start_span("hearth.question")
        span.set_attribute("hearth.mode", mode)
        return span

    def _failed(self, mode: str, span: Any, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.question_failed(mode, exc)
        if span is not None:
            span.set_attribute("hearth.outcome", getattr(exc, "code", "internal_error"))
            span.end()

    def _answered(self, mode: str, span: Any, answer: Answer, first_token_s: float | None) -> None:
        if self.metrics is not None:
            self.metrics.question_answered(mode, answer, first_token_s)
        if span is not None:
            span.set_attribute("hearth.outcome", "refused" if answer.refused else "answered")
            for name, seconds in answer.timings.items():
                span.set_attribute(f"hearth.{name}", seconds)
            for kind, count in answer.usage.items():
                span.set_attribute(f"hearth.{kind}", count)
            span.end()

    def answer(self, ask: Ask) -> Reply:
        started, span = time.perf_counter(), self._span("whole")
        try:
            reply = super().answer(ask)
        except BaseException as exc:
            self._failed("whole", span, exc)
            raise
        timings = reply.answer.timings
        first = None
        if "first_token_s" in timings and "total_s" in timings:
            # What the whole answer took here, less the model's time after its first token.
            first = time.perf_counter() - started - (timings["total_s"] - timings["first_token_s"])
        self._answered("whole", span, reply.answer, first)
        return reply

    def stream(self, ask: Ask) -> ReplyStream:
        started, span = time.perf_counter(), self._span("stream")
        try:
            inner = super().stream(ask)
        except BaseException as exc:
            self._failed("stream", span, exc)
            raise
        return ReplyStream(self._observe(inner, started, span), inner.close)

    def _observe(self, inner: ReplyStream, started: float,
                 span: Any) -> Generator[Token | Reply, None, None]:
        first, finished = None, False
        try:
            for event in inner:
                if first is None and isinstance(event, Token):
                    first = time.perf_counter() - started
                if isinstance(event, Reply):
                    finished = True
                    self._answered("stream", span, event.answer, first)
                yield event
        except GeneratorExit:
            if not finished:
                self._failed("stream", span, Cancelled())
            raise
        except BaseException as exc:
            if not finished:
                self._failed("stream", span, exc)
            raise


class Cancelled(HearthError):
    """Not raised: the outcome of a stream whose client left before the answer's end."""

    code = "cancelled"


# -- the app's hooks ------------------------------------------------------------------------------

def route_template() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def new_request_id(given: str) -> str:
    """The request's id: the client's (``X-Request-Id``) when it is plain enough to log, else
    a new one."""
    return given if CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def start_request() -> None:
    g.request_id = new_request_id(request.headers.get(REQUEST_ID_HEADER, ""))
    g.request_started = time.perf_counter()
    logs.request_id.set(g.request_id)


def request_id_header(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "-")
    return response


def end_request(_: BaseException | None) -> None:
    logs.request_id.set("-")


def metrics_view(metrics: Metrics) -> Response:
    """/metrics on the API's port: with keys on, for an admin key or a client on loopback."""
    if not may_see_details():
        return error_response(403, "forbidden", "/metrics needs an admin API key (`hearth keys "
                              "create --user NAME --admin`), a client on this machine, or a "
                              "port of its own (HEARTH_METRICS_PORT)")
    return Response(metrics.exposition(), mimetype=None,
                    headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def instrument(app: Flask, settings: Settings, services: Services) -> Chat:
    """Request ids always; metrics and traces as configured. Called before ``web.guard`` so that
    its refusals have an id and are counted. Returns the chat service the faces should use."""
    app.before_request(start_request)
    metrics = Metrics() if settings.metrics else None
    if metrics is not None:
        metrics.watch(services)
        app.extensions[EXTENSION] = metrics
        app.extensions["hearth.job_observers"] = [metrics.job_finished]  # web.jobs() adds them

        @app.after_request
        def _count(response: Response) -> Response:
            started = g.get("request_started")
            if started is not None:
                metrics.request_done(route_template(), request.method, response.status_code,
                                     time.perf_counter() - started)
            return response

        if settings.metrics_port == 0:
            app.add_url_rule("/metrics", "metrics", lambda: metrics_view(metrics),
                             methods=["GET"])
    app.after_request(request_id_header)  # registered last, so it runs first: every response
    app.teardown_request(end_request)
    tracer = tracing(app, settings)
    if metrics is None and tracer is None:
        return Chat(services)
    return ObservedChat(services, metrics, tracer)


def readiness_seen(app: Flask, checks: dict[str, dict[str, Any]]) -> None:
    """/readyz's checks, kept for the next scrape's hearth_backend_up."""
    metrics: Metrics | None = app.extensions.get(EXTENSION)
    if metrics is not None and metrics.backends is not None:
        metrics.backends.seen(checks)


def serve_metrics(app: Flask, settings: Settings) -> Any:
    """With HEARTH_METRICS_PORT, the metrics' own listener (a thread), serving only them;
    None otherwise. Raises OSError when the port cannot be bound."""
    metrics: Metrics | None = app.extensions.get(EXTENSION)
    if metrics is None or not settings.metrics_port:
        return None
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host,
                                  registry=metrics.registry)
    log.info("metrics at http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return server


# -- traces ---------------------------------------------------------------------------------------

class TracingUnavailable(HearthError):
    code = "tracing_unavailable"


def tracing(app: Flask, settings: Settings) -> Any:
    """With HEARTH_OTLP_ENDPOINT, a span per request (Flask's instrumentation) and a tracer for
    the chat service's spans, exported in batches over OTLP/HTTP; None without it."""
    if not settings.otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.instrumentation.wsgi import get_default_span_name
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"HEARTH_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc.name}): "
            "install Hearth's `otel` extra, or leave HEARTH_OTLP_ENDPOINT empty") from None
    endpoint = settings.otlp_endpoint.rstrip("/")
    provider = TracerProvider(resource=Resource.create({
        "service.name": settings.otel_service_name, "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces")))

    def response_hook(span: Any, status: str, headers: list[tuple[str, str]]) -> None:
        # The query may name a user (?user_id=), and so may the path (/api/users/NAME): the
        # span keeps the path as the access log writes it, whichever attribute names carry it
        # (OTEL_SEMCONV_STABILITY_OPT_IN picks old, new or both). Set here, as the response
        # starts, since the instrumentation sets its own after a request hook.
        if span.is_recording() and has_request_context():
            path = logs.logged_path(request.path)
            url = request.root_url.rstrip("/") + path
            span.set_attributes({"http.target": path, "url.path": path,
                                 "http.url": url, "url.full": url})
            if "url.query" in (getattr(span, "attributes", None) or {}):
                span.set_attribute("url.query", "")
            if request.url_rule is None:  # no route (404, 405): the span is named by its path
                span.update_name(get_default_span_name({**request.environ, "PATH_INFO": path}))
            span.set_attribute("hearth.request_id", g.get("request_id", "-"))

    FlaskInstrumentor.instrument_app(app, response_hook=response_hook, tracer_provider=provider,
                                     excluded_urls="healthz,readyz,metrics")
    app.extensions[TRACER_EXTENSION] = provider
    log.info("tracing: spans go to %s", endpoint)
    return provider.get_tracer("hearth", __version__)
