"""MongoDB clients for the stores that live there (history, API keys, ingestion records).

Every client is time-limited: finding the server and connecting take at most ``timeout_s``, one
operation at most ``op_timeout_s``, so a database that stops answering fails a request instead
of hanging it.
"""

from __future__ import annotations

from typing import Any


def mongo_client(uri: str, timeout_s: float, op_timeout_s: float | None = None) -> Any:
    """A MongoDB client on which no call waits forever (``op_timeout_s``: twice ``timeout_s``
    unless given; bulk writes of an ingest get longer)."""
    import pymongo

    ms = int(timeout_s * 1000)
    return pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
        socketTimeoutMS=int((op_timeout_s or 2 * timeout_s) * 1000), appname="hearth",
    )


def redact(uri: str) -> str:
    """A MongoDB URI (or any URL) without its user and password, for messages and logs."""
    if "@" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
