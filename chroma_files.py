"""Chroma's embedded SQLite file, scrubbed of what was deleted from it, in a process of its own.

Chroma writes ``chroma.sqlite3`` with a copy of SQLite of its own (built into its Rust
library), without ``secure_delete``: a deleted chunk's text stays in the file's free pages and
in the spare room of the pages it shared, and its trigrams, with their places (enough to spell
it again), in the full-text index's segments until they merge. Merging them (FTS5's
``optimize``, which changes nothing a query sees) and then ``VACUUM`` (what ``chroma vacuum``
runs) write the file again with none of it. What stays is Chroma's log of its latest writes
(``embeddings_queue``), text included, which it keeps until its vector index is next saved:
its to drop, not ours (docs/security.md).

Not in Hearth's own process: two copies of SQLite in one process do not see each other's locks
(closing a connection of one drops the other's locks on the file: SQLite's "How To Corrupt"),
and Chroma's is open there. A process of its own locks the file as any other would. It imports
nothing of Hearth's: ``python -I chroma_files.py FILE TIMEOUT_S``.
"""

from __future__ import annotations

import sqlite3
import sys

# Chroma's full-text index of its documents (FTS5, trigrams).
FULL_TEXT = "embedding_fulltext_search"


def scrub(path: str, timeout_s: float) -> None:
    db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        db.execute("PRAGMA secure_delete=ON")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (FULL_TEXT,)).fetchone():
            db.execute(f"INSERT INTO {FULL_TEXT} ({FULL_TEXT}) VALUES ('optimize')")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a no-op unless the file is in WAL mode
    finally:
        db.close()


if __name__ == "__main__":
    try:
        scrub(sys.argv[1], float(sys.argv[2]))
    except sqlite3.Error as exc:
        sys.exit(f"{exc.__class__.__name__}: {exc}")
