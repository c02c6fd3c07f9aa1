"""The keyword index: BM25 over every chunk, beside the vector store, in SQLite FTS5.

Dense retrieval finds passages that mean what the question means; it misses the ones that
share its rare words: an identifier (``R_registerRoutines``), a number (``999999999``), an
option (``--user``). This index finds those. It is one SQLite file under the data directory
(``keywords.sqlite3``): every process that reads the data directory, every API worker of one
host among them, sees the same index.

It is kept in step with the vector store by the vector store itself (``vectorstore``): every
chunk added to or deleted from a Chroma collection is added to or deleted from this index in
the same call, under the chunk's id, so ingesting again, removing a source, deleting an upload
or a collection leaves no stale or duplicate entry. A collection indexed before this index
existed is copied in from Chroma the first time it is searched or written (``backfill``).

Each chunk is matched on its heading path (title › section › subsection) and its text, the
headings weighted more; a query is restricted to the collections the question may read in
the query itself (a join on the chunk's collection before ranking), never filtered after a
top-k. Terms of the question that look like identifiers or numbers count more
(``query_terms``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.errors import Unavailable
from hearth.migrations import Migration, damaged, migrate_sqlite, use_wal
from hearth.private import private_dir, private_file


class KeywordIndexError(Unavailable):
    code = "keyword_index_unavailable"

    @classmethod
    def of(cls, message: str, exc: BaseException) -> KeywordIndexError:
        if damaged(exc):
            message += (" (the keyword index is made from the vector store: stop Hearth, "
                        "delete the file, and start it again to have it made anew)")
        return cls(message)


STORE = "keywords"
# Weights of the FTS5 columns in bm25(): the heading path, then the chunk's text.
HEADINGS_WEIGHT = 2.0
BODY_WEIGHT = 1.0
# A term that looks like an identifier or a number counts this many times in the query.
IDENTIFIER_WEIGHT = 3
MAX_QUERY_TERMS = 32
# Words too common to say anything about a passage (and slow: long posting lists).
STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
    "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
    "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "him",
    "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more",
    "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other",
    "our", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that",
    "the", "their", "them", "then", "there", "these", "they", "this", "those", "through", "to",
    "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where",
    "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
    "want", "wants", "need", "get", "got", "make", "use", "using", "way", "ways", "thing",
    "something", "anything", "there's", "i'm", "it's", "don", "doesn", "isn", "didn", "won",
})


def _v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL, "
               "collection TEXT NOT NULL, source TEXT NOT NULL, position INTEGER, "
               "page INTEGER, headings TEXT NOT NULL, body TEXT NOT NULL, "
               "metadata TEXT NOT NULL, UNIQUE (collection, chunk_id))")
    db.execute("CREATE INDEX chunks_by_place ON chunks (collection, source, page, position)")
    # Identifiers keep their underscores; dots, slashes and dashes split them, so that
    # ``contextlib.chdir`` is found by ``chdir``. Porter stemming matches a user's "splitting"
    # to a page's "split".
    db.execute("CREATE VIRTUAL TABLE chunks_fts USING fts5(headings, body, content='chunks', "
               "content_rowid='id', tokenize=\"porter unicode61 tokenchars '_'\")")
    db.execute("CREATE TRIGGER chunks_added AFTER INSERT ON chunks BEGIN "
               "INSERT INTO chunks_fts (rowid, headings, body) "
               "VALUES (new.id, new.headings, new.body); END")
    db.execute("CREATE TRIGGER chunks_deleted AFTER DELETE ON chunks BEGIN "
               "INSERT INTO chunks_fts (chunks_fts, rowid, headings, body) "
               "VALUES ('delete', old.id, old.headings, old.body); END")
    # A collection is listed once the index holds all of its chunks (copied from the vector
    # store, or indexed here from its first chunk on).
    db.execute("CREATE TABLE collections (name TEXT PRIMARY KEY)")


MIGRATIONS = [Migration(1, "chunks and their FTS5 index; the collections held whole", _v1)]


def keywords_path(settings: Settings) -> Path:
    return settings.data_dir / "keywords.sqlite3"


@dataclass
class KeywordHit:
    chunk_id: str
    collection: str
    text: str
    metadata: dict[str, Any]
    score: float  # BM25, higher is better (FTS5's rank negated)


_TOKEN = re.compile(r"[\w.+#%/-]*\w[\w.+#%/-]*|%\w", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)
# Text the user quoted ('rast', `flush`): copied from somewhere, so meant word for word.
_QUOTED = re.compile(r"(?:^|(?<=\s))['\"`‘“]([^'\"`’”\n]{1,60})['\"`’”]")


def is_identifier(token: str) -> bool:
    """A token a user copies rather than paraphrases: digits, an underscore, a dotted or
    slashed name, camelCase, a leading dash (an option) or percent (a format code)."""
    return bool(re.search(r"\d|_|\w[./]\w|[a-z][A-Z]|^-|^%", token))


def query_terms(question: str) -> list[tuple[str, int]]:
    """The question's terms for an FTS5 query, each with its weight: words that are not stop
    words once, identifiers, numbers and quoted words ``IDENTIFIER_WEIGHT`` times (their parts as a phrase,
    so that ``os.chdir`` counts most where the two words are together)."""
    terms: dict[str, int] = {}
    quoted = {w.lower() for span in _QUOTED.findall(question) for w in _WORD.findall(span)}
    for raw in _TOKEN.findall(question):
        token = raw.rstrip(".-/").lstrip("./")
        words = [w.lower() for w in _WORD.findall(token)]
        if not words:
            continue
        if is_identifier(token) or (len(words) == 1 and words[0] in quoted):
            phrase = " ".join(words)
            terms[phrase] = max(terms.get(phrase, 0), IDENTIFIER_WEIGHT)
            for word in words:
                if word not in STOPWORDS:
                    terms.setdefault(word, 1)
            continue
        for word in words:
            if word not in STOPWORDS and len(word) > 1:
                terms.setdefault(word, 1)
    return sorted(terms.items(), key=lambda t: -t[1])[:MAX_QUERY_TERMS]


def fts_query(terms: Sequence[tuple[str, int]]) -> str:
    """An FTS5 OR query in which a term of weight n appears n times (FTS5's bm25 sums over the
    query's phrases, so a repeated phrase counts again)."""
    phrases = []
    for term, weight in terms:
        quoted = '"' + term.replace('"', '""') + '"'
        phrases += [quoted] * weight
    return " OR ".join(phrases)


def _headings(metadata: dict[str, Any]) -> str:
    title = str(metadata.get("title") or "")
    path = str(metadata.get("headings") or metadata.get("section") or "")
    return path if title and path.startswith(title) else " › ".join(p for p in (title, path) if p)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class KeywordIndex:
    """The keyword index in its SQLite file; safe to share between threads (one connection,
    one lock) and between processes (SQLite's own locking, WAL)."""

    def __init__(self, path: Path) -> None:
        import json

        self._json = json
        self.path = path
        self._lock = threading.Lock()
        try:
            private_dir(path.parent)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=30.0)
            use_wal(self._db)
            # Deleted text is overwritten, not left in free pages (``scrub``).
            self._db.execute("PRAGMA secure_delete=ON")
            migrate_sqlite(self._db, path, STORE, MIGRATIONS)
            private_file(path)
        except (OSError, sqlite3.Error) as exc:
            raise KeywordIndexError.of(f"cannot open the keyword index at {path}: {exc}",
                                       exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool = False) -> Any:
        with self._lock:
            try:
                if not write:
                    return fn(self._db)
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                    self._db.execute("COMMIT")
                    return result
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise KeywordIndexError.of(f"the keyword index at {self.path} failed: {exc}",
                                           exc) from exc

    # -- writing -------------------------------------------------------------------------------

    def _insert(self, db: sqlite3.Connection, collection: str, ids: Sequence[str],
                texts: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        db.executemany("DELETE FROM chunks WHERE collection = ? AND chunk_id = ?",
                       [(collection, i) for i in ids])
        db.executemany(
            "INSERT INTO chunks (chunk_id, collection, source, position, page, headings, body, "
            "metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, collection, str(m.get("source") or ""), _int(m.get("chunk")),
              _int(m.get("page")) or 0, _headings(m), t, self._json.dumps(m))
             for i, t, m in zip(ids, texts, metadatas, strict=True)])

    def add(self, collection: str, ids: Sequence[str], texts: Sequence[str],
            metadatas: Sequence[dict[str, Any]]) -> None:
        """Index chunks under their ids; a chunk already indexed under its id is replaced."""
        self._run(lambda db: self._insert(db, collection, ids, texts, metadatas), write=True)

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        self._run(lambda db: db.executemany(
            "DELETE FROM chunks WHERE collection = ? AND chunk_id = ?",
            [(collection, i) for i in ids]), write=True)

    def drop(self, collection: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM chunks WHERE collection = ?", (collection,))
            db.execute("DELETE FROM collections WHERE name = ?", (collection,))
        self._run(write, write=True)

    def scrub(self) -> None:
        """Leave nothing of deleted chunks in the file (after an erasure, a removal): FTS5
        keeps a deleted row's words, with their places, in its index segments until they are
        merged, which ``optimize`` does for all of them; the pages freed are overwritten
        (secure_delete), and the write-ahead log is copied over and truncated."""
        self._run(lambda db: db.execute(
            "INSERT INTO chunks_fts (chunks_fts) VALUES ('optimize')"), write=True)
        self._run(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))

    def ping(self) -> None:
        """Raise KeywordIndexError unless the index can be read (a damaged file opens)."""
        self._run(lambda db: db.execute("SELECT rowid FROM chunks_fts LIMIT 1").fetchall())

    def is_whole(self, collection: str) -> bool:
        return bool(self._run(lambda db: db.execute(
            "SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone()))

    def backfill(self, collection: str,
                 pages: Callable[[], Iterator[tuple[list[str], list[str],
                                                    list[dict[str, Any]]]]]) -> int:
        """Make the index hold the whole of ``collection``, copied from the vector store
        (``pages`` yields its chunks as ids, texts, metadatas), unless it does already; returns
        the chunks copied. Done in one transaction: another process waits, then finds it done."""
        def write(db: sqlite3.Connection) -> int:
            if db.execute("SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone():
                return 0
            db.execute("DELETE FROM chunks WHERE collection = ?", (collection,))
            copied = 0
            for ids, texts, metadatas in pages():
                self._insert(db, collection, ids, texts, metadatas)
                copied += len(ids)
            db.execute("INSERT INTO collections (name) VALUES (?)", (collection,))
            return copied
        return int(self._run(write, write=True))

    # -- reading -------------------------------------------------------------------------------

    def search(self, question: str, k: int, collections: Sequence[str],
               headings_weight: float = HEADINGS_WEIGHT) -> list[KeywordHit]:
        """The k chunks of ``collections`` that best match the question's terms (BM25), best
        first; none when it has no term worth searching for."""
        terms = query_terms(question)
        if not terms or not collections or k < 1:
            return []
        marks = ",".join("?" * len(collections))
        sql = (f"SELECT c.chunk_id, c.collection, c.body, c.metadata, "
               f"bm25(chunks_fts, ?, ?) AS rank FROM chunks_fts JOIN chunks c "
               f"ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? "
               f"AND c.collection IN ({marks}) ORDER BY rank LIMIT ?")
        params = [headings_weight, BODY_WEIGHT, fts_query(terms), *collections, k]
        rows = self._run(lambda db: db.execute(sql, params).fetchall())
        return [KeywordHit(r[0], r[1], r[2], self._json.loads(r[3]), -float(r[4])) for r in rows]

    def neighbours(self, collection: str, source: str, page: int, position: int,
                   before: int, after: int) -> list[tuple[int, str]]:
        """(position, text) of the chunks around ``position`` in the same document and page,
        in document order, the chunk itself included."""
        return [(int(r[0]), str(r[1])) for r in self._run(lambda db: db.execute(
            "SELECT position, body FROM chunks WHERE collection = ? AND source = ? AND page = ? "
            "AND position BETWEEN ? AND ? ORDER BY position",
            (collection, source, page, position - before, position + after)).fetchall())]

    def following(self, collection: str, source: str, position: int) -> str | None:
        """The text of the chunk after ``position`` in the same document, on any page (a PDF
        page's last line goes on at the top of the next), or None at its end."""
        row = self._run(lambda db: db.execute(
            "SELECT body FROM chunks WHERE collection = ? AND source = ? AND position = ?",
            (collection, source, position + 1)).fetchone())
        return str(row[0]) if row else None

    def ids(self, collection: str) -> set[str]:
        """The ids of the chunks indexed in ``collection`` (to check it against Chroma's)."""
        return {str(r[0]) for r in self._run(lambda db: db.execute(
            "SELECT chunk_id FROM chunks WHERE collection = ?", (collection,)).fetchall())}

    def count(self, collection: str) -> int:
        return int(self._run(lambda db: db.execute(
            "SELECT COUNT(*) FROM chunks WHERE collection = ?", (collection,)).fetchone()[0]))
