"""Hearth's log lines: each names the request it belongs to, as text or as one JSON object.

The web layer sets ``request_id`` for the request a thread is serving (``-`` outside one: the
model loading, an ingestion job); every line logged meanwhile, the access line included, carries
it, as the ``X-Request-Id`` response header does. ``HEARTH_LOG_FORMAT=json`` writes one JSON
object a line for log collectors (Loki, Elasticsearch, Cloud Logging).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from contextvars import ContextVar
from datetime import UTC, datetime

request_id: ContextVar[str] = ContextVar("hearth_request_id", default="-")

# The path's segment that names a user (/api/users/NAME/history): never logged nor traced.
# Slashes doubled too: Werkzeug merges them (by redirecting), and the path is seen before that.
USER_SEGMENT = re.compile(r"^(/+api/+users/+)[^/]+")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def logged_path(path: str) -> str:
    """The path as the logs and traces write it: percent-encoded again past printable ASCII,
    so that a request cannot write a line of its own (``%0a``) or a terminal's control codes,
    and without the user a route names."""
    quoted = urllib.parse.quote(path.encode("latin-1", "replace"), safe="/:@!$&'()*+,;=-._~")
    return USER_SEGMENT.sub(r"\1-", quoted)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id``; on a handler, so that every logger's lines get it. A record
    that names its request already (the server's, about a response) keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", "-") == "-":
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, request_id, message, and
    the traceback as ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: int = logging.INFO, log_format: str = "text") -> None:
    """Log to stderr in ``log_format`` (text or json), every line with its request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # bitsandbytes (hearth[tune]) warns, on import and so in every command, that its fast CPU
    # kernel is missing: that kernel comes from the hub at run time, and Hearth leaves it out on
    # purpose (docs/transformers.md). `hearth -v` shows the warning.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(
        logging.ERROR if level > logging.DEBUG else logging.NOTSET)
