"""Hearth's errors: each says what went wrong in words a user can act on, and carries the
stable ``code`` and HTTP ``status`` that every face (the API, ``/v1``, the CLI) reports it with.
"""

from __future__ import annotations


class HearthError(Exception):
    code = "internal_error"
    status = 500


class Unavailable(HearthError):
    """A backend (model, vector store, database) cannot be used now."""

    code = "unavailable"
    status = 503


def backend_codes() -> set[str]:
    """The codes of every backend that is down (``Unavailable`` and its kinds, as defined so
    far): why one is down names internal addresses and paths, for administrators only."""
    found: set[str] = set()
    pending: list[type[HearthError]] = [Unavailable]
    while pending:
        kind = pending.pop()
        found.add(kind.code)
        pending.extend(kind.__subclasses__())
    return found


def unexplained(code: str) -> str:
    """What those who may not see why read of a backend that is down."""
    return (f"{code}: a service Hearth needs cannot be used now; an administrator's key shows "
            "why at /readyz, and the server's log says it")


class ShuttingDown(HearthError):
    """The server is stopping (SIGTERM) and this request's grace period is over."""

    code = "shutting_down"
    status = 503


class SchemaError(HearthError):
    """A store was written by a newer Hearth, or cannot be migrated."""

    code = "store_schema"
    status = 503
