"""The HTTP server behind ``hearth serve``: waitress, with deadlines for slow and idle clients.

Why waitress, and not gunicorn's threads (docs/security.md, "Slow and idle clients"): its one
event loop reads every request's headers and body itself, and hands a worker thread only a
complete request. A connection that sends slowly, or nothing, costs a socket and a few
kilobytes, never one of the ``threads``; so hundreds of them cannot keep ``/healthz`` or anyone's
question waiting. What waitress lacks is added here: a deadline for a request's headers and one
for its body (however slowly the bytes trickle in, which its idle timeout does not catch), and
one for a response the client stops reading, which would otherwise hold its thread for good.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

from hearth import logs
from hearth.config import Settings
from hearth.monitoring import REQUEST_ID_HEADER, new_request_id
from hearth.web import STOPPING

log = logging.getLogger("hearth.server")
access = logging.getLogger("hearth.access")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# A response's bytes the server holds for a client that reads slowly; past this the app's
# thread waits (and the send deadline runs). Memory, not speed: a stream needs a few kilobytes.
OUTBUF_HIGH_WATERMARK = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
# How much of a request line is kept for the access line of a request the server refuses.
MAX_REQUEST_LINE = 8 * 1024
# The server refuses a larger body before reading it; a smaller one past HEARTH_MAX_BODY_BYTES
# is read (within the body deadline) and refused by the app, with its JSON error.
BODY_LIMIT_FACTOR = 4
# How often the deadlines are checked, in seconds: a deadline is met within this much.
CHECK_EVERY_S = 1
# After SIGTERM's grace period, how long a stream has to send its last event (that the server
# is shutting down) before the process exits anyway.
LAST_WORDS_S = 5


@dataclass(frozen=True)
class Deadlines:
    header_s: float
    body_s: float
    send_s: float


class TimedRequestParser(HTTPRequestParser):  # type: ignore[misc]
    """A request being read, with when its first byte came and when its headers ended."""

    def __init__(self, adj: Adjustments) -> None:
        super().__init__(adj)
        self.started_at = time.time()  # waitress's own clock (last_activity) is time.time()
        self.headers_at: float | None = None
        # The request line as sent: waitress refuses headers past its limit (431) before it
        # parses them, and names the request ``GET /`` then.
        self.request_line: bytes | None = None

    def received(self, data: bytes) -> int:
        if self.request_line is None and self.body_rcv is None:
            head = (self.header_plus[:MAX_REQUEST_LINE] + data[:MAX_REQUEST_LINE]).lstrip()
            end = head.find(b"\r\n")
            if end >= 0 or len(head) >= MAX_REQUEST_LINE:
                self.request_line = head[:end] if end >= 0 else head
        consumed: int = super().received(data)
        if self.headers_finished and self.headers_at is None:
            self.headers_at = time.time()
        return consumed


# What waitress itself refuses, before the app sees the request, in the app's JSON error shape.
SERVER_ERROR_CODES = {400: "bad_request", 413: "body_too_large",
                      431: "request_header_fields_too_large", 501: "not_implemented"}


class JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """A request waitress refuses itself (headers too large, a body past the server's bound,
    a malformed request): answered as ``{"error": {"code", "message"}}`` like every other
    error, not waitress's plain text, with its request id and access line as every other
    response has: the app never sees it."""

    def execute(self) -> None:
        error = self.request.error
        code = SERVER_ERROR_CODES.get(error.code, "bad_request")
        message = f"{error.reason.lower()}: {error.body}".rstrip(": ")
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        request_id = new_request_id(self.request.headers.get("X_REQUEST_ID", ""))
        method, path = requested(self.request.request_line)
        token = logs.request_id.set(request_id)
        try:
            log_access(self.channel.addr[0], method, path, str(error.code))
        finally:
            logs.request_id.reset(token)
        sending.set(request_id)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.response_headers.append((REQUEST_ID_HEADER, request_id))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def requested(line: bytes | None) -> tuple[str, str]:
    """The method and path (without the query) of a request line, as far as it was sent."""
    parts = (line or b"").decode("latin-1").split(" ")
    method = parts[0] or "-"
    path = parts[1].split("?", 1)[0] if len(parts) > 1 else "-"
    return method, path


# The request id of the response a worker thread is sending. The app's teardown has cleared
# ``logs.request_id`` by the time waitress finds the client gone; its line still names the request.
sending: ContextVar[str] = ContextVar("hearth_sending", default="-")


class WaitressLogFilter(logging.Filter):
    """waitress's own lines about a request ("Client disconnected while serving PATH"): the
    path as the access log writes it (no user it names, no line of its own from a ``%0a``),
    and the request's id."""

    SERVING = re.compile(r"^(.* while serving )(.*)$", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.SERVING.match(record.getMessage())
        if found:
            record.msg, record.args = found[1] + logs.logged_path(found[2]), ()
        if logs.request_id.get() == "-":
            record.request_id = sending.get()
        return True


class DeadlineChannel(HTTPChannel):  # type: ignore[misc]
    """One client connection, which knows when it has run out of time."""

    parser_class = TimedRequestParser
    error_task_class = JsonErrorTask

    def service(self) -> None:
        """Serve one request on a worker thread; nothing after it names it."""
        try:
            super().service()
        finally:
            sending.set("-")

    def overdue(self, now: float, deadlines: Deadlines) -> str | None:
        """Why this connection must close now, or None while it is in time."""
        request = self.request  # the request being read; complete ones are in self.requests
        if request is not None and not request.completed:
            if request.headers_at is None and now - request.started_at > deadlines.header_s:
                return "too slow sending its request's headers"
            if request.headers_at is not None and now - request.headers_at > deadlines.body_s:
                return "too slow sending its request's body"
        # Output waiting and nothing sent for this long: the client stopped reading. Closing
        # wakes a thread blocked on the full buffer, and the app's iterator is closed.
        if self.total_outbufs_len and now - self.last_activity > deadlines.send_s:
            return "stopped reading its response"
        return None


class DeadlineServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's server, whose periodic sweep also closes connections past a deadline.

    It binds when built and serves the app given to ``serve``: a port in use fails before
    anything slow (the model) loads, and connections wait in the listen queue meanwhile.
    """

    channel_class = DeadlineChannel

    def __init__(self, adj: Adjustments, deadlines: Deadlines, grace_s: float = 0.0) -> None:
        self.deadlines = deadlines
        self.grace_s = grace_s
        self.stop_at: float | None = None  # set by stop(): when the requests in flight are cut
        self.stopping = threading.Event()  # set then: streams end with an error event
        self.refusing = False  # whether the listener is shut: new connections refused
        self.app: WSGIApp | None = None
        super().__init__(self._call_app, adj=adj)

    def _call_app(self, environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterable[bytes]:
        assert self.app is not None  # no request is read before serve() runs the loop
        environ[STOPPING] = self.stopping
        return self.app(environ, start_response)

    def serve(self, app: WSGIApp) -> None:
        """Serve ``app`` until SIGTERM (``stop``: the requests in flight finish first) or SIGINT
        (they get a few seconds)."""
        self.app = access_log(app)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stop())
        log.info("serving on http://%s:%s with %d threads", self.effective_host,
                 self.effective_port, self.adj.threads)
        self.run()  # returns on SystemExit or KeyboardInterrupt, after stopping the threads
        log.info("stopped")

    def stop(self) -> None:
        """Refuse new connections, and leave once the requests in flight are done: they get
        ``grace_s`` (HEARTH_SHUTDOWN_GRACE_S), then a stream still running ends with an error
        event (``web.until_shutdown``) within LAST_WORDS_S. What SIGTERM does: Kubernetes and
        Docker send it to a container they stop, and kill it a while later."""
        if self.stop_at is not None:
            return
        self.stop_at = time.time() + self.grace_s
        self.accepting = False  # the loop polls the listener no more; drain() shuts it
        log.info("stopping: no new connections; the requests in flight get %g s to finish",
                 self.grace_s)

    def drain(self, now: float) -> None:
        """After ``stop``: close the connections idle between requests, and leave (SystemExit,
        which ``run`` handles) once no request is left or the last words' time is over."""
        assert self.stop_at is not None
        if not self.refusing:
            # Shut here, not in stop(): a listener shut while the loop polls it reads as closed,
            # and waitress would close the whole server. Unpolled, it just stops listening.
            self.refusing = True
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
        running = 0
        for channel in list(self.active_channels.values()):
            if channel.requests or channel.total_outbufs_len:
                running += 1
            else:
                channel.will_close = True  # a keep-alive connection: no new request on it
        if running and now >= self.stop_at and not self.stopping.is_set():
            log.warning("%d request(s) still running after %g s: their streams end now",
                        running, self.grace_s)
            self.stopping.set()
        if not running or now >= self.stop_at + LAST_WORDS_S:
            if running:
                log.warning("%d request(s) still running: cut", running)
            raise SystemExit(0)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # connections idle between requests (adj.channel_timeout)
        if self.stop_at is not None:
            self.drain(now)
        for channel in list(self.active_channels.values()):
            late = channel.overdue(now, self.deadlines)
            if late and not channel.will_close:
                log.info("closing the connection of %s: %s", channel.addr[0], late)
                channel.will_close = True
                # Shut too, so that the loop sees a hang-up at once: a socket whose send buffer
                # is full never polls writable, and will_close alone waits for that.
                with contextlib.suppress(OSError):
                    channel.socket.shutdown(socket.SHUT_RDWR)


def adjustments(settings: Settings) -> Adjustments:
    """waitress's settings from Hearth's."""
    return Adjustments(
        host=settings.host, port=settings.port, threads=settings.threads,
        connection_limit=settings.max_connections, channel_timeout=settings.idle_timeout_s,
        cleanup_interval=CHECK_EVERY_S, max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=max(BODY_LIMIT_FACTOR * settings.max_body_bytes,
                                  settings.upload_max_request_bytes + settings.max_body_bytes
                                  if settings.uploads else 0),
        outbuf_high_watermark=OUTBUF_HIGH_WATERMARK,
        asyncore_use_poll=True,  # select() stops at 1,024 file descriptors
        # Read on while a request runs, so that a client that hangs up is seen at once
        # (environ["waitress.client_disconnected"]): a question waiting for the model is
        # then dropped, not answered to no one.
        channel_request_lookahead=1,
        # X-Forwarded-For reaches the app, which trusts it from HEARTH_TRUSTED_PROXIES only.
        clear_untrusted_proxy_headers=False,
        ident="hearth",
    )


def build_server(settings: Settings) -> DeadlineServer:
    """The server, bound and listening; ``.serve(app)`` serves."""
    allow_open_files(settings.max_connections + 256)  # the model, stores and logs need some too
    deadlines = Deadlines(settings.header_timeout_s, settings.body_timeout_s,
                          settings.send_timeout_s)
    waitress_log = logging.getLogger("waitress")
    if not any(isinstance(f, WaitressLogFilter) for f in waitress_log.filters):
        waitress_log.addFilter(WaitressLogFilter())
    return DeadlineServer(adjustments(settings), deadlines, settings.shutdown_grace_s)


def allow_open_files(wanted: int) -> None:
    """Raise this process's open-file limit towards ``wanted``: each connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning("open files are limited to %d: fewer than HEARTH_MAX_CONNECTIONS "
                    "connections can be open at once", target)


def access_log(app: WSGIApp) -> WSGIApp:
    """One line per response as it starts: method, path (never the query, which may name a
    user, nor a user named in the path) and status. The app's iterator is passed through
    untouched, so that the server can close it when the client leaves."""

    def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            log_access(environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD", ""),
                       environ.get("PATH_INFO", ""), status.split(" ", 1)[0])
            sending.set(logs.request_id.get())
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return logged


def log_access(address: str, method: str, path: str, status: str) -> None:
    """A response's access line, under the request's id (``logs.request_id``)."""
    access.info('%s "%s %s" %s', address, logs.logged_path(method), logs.logged_path(path), status)
