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


class SchemaError(HearthError):
    """A store was written by a newer Hearth, or cannot be migrated."""

    code = "store_schema"
    status = 503
