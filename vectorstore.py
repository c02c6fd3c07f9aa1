"""The vector store: Chroma, embedded under the data directory or a server by URL.

Each of Hearth's collections (``access``) is a Chroma collection of its own, so that a
question over the collections a user may read queries those and nothing else: no filter after
a top-k, and no metadata filter (which Chroma evaluates over the whole index: 130 ms at 100k
chunks against 3 ms for a plain query). The public collection ``default`` is the Chroma
collection Hearth used before collections existed (``HEARTH_CHROMA_COLLECTION``), so an index
from then is the default collection as it stands. Hits from several collections are merged by
similarity, which is comparable across them: one embedding model, one cosine space.

Every write goes through ``writer`` (LangChain's indexing API, uploads' deletions) or ``drop``,
and each one is made to the keyword index (``keywords``) in the same call: the two stay in
step, whatever adds or removes chunks.

Embedded, Chroma keeps each collection's vector index in the memory of the process that opened
it, and never sees what another process writes (`hearth ingest` beside a running `hearth
serve`): its questions would miss every new document until a restart. So every process that
writes says so in a marker file beside the index (``changed``), and a process that finds the
marker changed since it last looked reopens the index first (``refresh``: a read of a small
file per question).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from hearth import chroma_files
from hearth.access import DEFAULT
from hearth.config import RetrievalMode, Settings
from hearth.errors import HearthError, Unavailable
from hearth.keywords import KeywordHit, KeywordIndex, KeywordIndexError, keywords_path
from hearth.mongo import redact
from hearth.private import private_dir

log = logging.getLogger(__name__)
T = TypeVar("T")


class IndexBusy(HearthError):
    """Another writer of the embedded index held it past the request's bound."""

    code = "index_busy"
    status = 503
    retry_after = 30


class VectorStoreError(Unavailable):
    code = "vector_store_unavailable"


SPACE = {"hnsw:space": "cosine"}
# Chunks read from Chroma at a time when the keyword index copies a collection in.
BACKFILL_PAGE = 2000
GENERATION = "hearth-generation"  # beside the embedded index: changed by each writing process
WRITE_LOCK = "hearth-write.lock"  # beside it: held by the one process writing it (``writing``)
CHROMA_FILE = "chroma.sqlite3"  # Chroma's own, in the embedded index's folder
# How long the scrub of Chroma's file waits for a reader of it (another process's search).
SCRUB_WAIT_S = 30.0
# How many requests of one process may wait for the write lock at once (``writing``).
REQUESTS_WAITING = 2
# How long a write waits for another writer of the embedded index: None, as long as that one
# writes (an ingest, a job); an API request sets a bound (web.py), then fails with IndexBusy
# rather than hold its client for the length of another process's ingest.
WRITE_WAIT_S: ContextVar[float | None] = ContextVar("hearth_write_wait_s", default=None)


def chroma_name(settings: Settings, collection: str) -> str:
    """The Chroma collection that holds a Hearth collection's chunks."""
    base = settings.chroma_collection
    return base if collection == DEFAULT else f"{base}--{collection}"


class VectorStore:
    """Chroma collections in cosine space, one per Hearth collection, written through
    LangChain's ``Chroma`` (the indexing API) and searched directly."""

    def __init__(self, settings: Settings, embeddings: Embeddings) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        # Where it is, for messages: without a password in the URL (one is a secret).
        self.where = (redact(settings.chroma_url) if settings.chroma_url
                      else str(settings.chroma_path.resolve()))
        try:
            if settings.chroma_url:
                url = urlparse(settings.chroma_url)
                timeout = httpx.Timeout(settings.chroma_timeout_s,
                                        connect=min(settings.backend_timeout_s,
                                                    settings.chroma_timeout_s))
                # Chroma's client waits forever by default, opening included: a server that
                # accepts and never answers must not hang Hearth, so ask it first, within the
                # backend timeout (a readiness probe's bound), not a long call's.
                heartbeat(settings)
                client = chromadb.HttpClient(
                    host=url.hostname or "127.0.0.1",
                    port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https",
                    settings=chroma_settings,
                )
                client._server._session.timeout = timeout  # type: ignore[attr-defined]
            else:
                private_dir(settings.chroma_path)
                client = chromadb.PersistentClient(
                    path=str(settings.chroma_path), settings=chroma_settings
                )
            self.client = client
            self.settings = settings
            self.embeddings = embeddings
            self._chroma_settings = chroma_settings
            self._marker: Path | None = (None if settings.chroma_url
                                         else settings.chroma_path / GENERATION)
            self._generation = self._read_generation()
            self._reopening = threading.Lock()
            self._write_lock = threading.RLock()
            # Requests (a bounded wait) that may wait for the lock at once; the others are
            # told it is busy at once, not kept: each waiting one holds a server thread.
            self._waiting = threading.BoundedSemaphore(REQUESTS_WAITING)
            self._write_depth = 0
            self._write_file: Any = None
            self._writers: dict[str, Any] = {}
            self._readers: dict[str, Any] = {}
            self._keywords: KeywordIndex | None = None
            # The default collection, opened (created in a new index) now: the benchmarks and
            # the evaluation toolkit read it directly.
            self.langchain = self.writer(DEFAULT)
            self.collection = self.langchain._collection
        except VectorStoreError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"cannot open the vector store at {self.where}: "
                                   f"{unsecret(settings, str(exc))}") from exc

    @property
    def keywords(self) -> KeywordIndex:
        """The keyword index beside this store (opened on first use)."""
        if self._keywords is None:
            self._keywords = KeywordIndex(keywords_path(self.settings))
        return self._keywords

    @property
    def mirrors_keywords(self) -> bool:
        """Whether writes go to the keyword index as well: hybrid retrieval and passages
        widened by their neighbours read it. With dense retrieval alone, only where one exists
        already (it must lose the words of what is deleted), so that a shared volume where
        SQLite's locks do not hold (NFS) carries none (docs/scaling.md); switched on later,
        it is filled from the vector store (``whole_keywords``)."""
        s = self.settings
        return (s.retrieval != RetrievalMode.dense or bool(s.context_neighbours)
                or bool(s.context_continuation_tokens) or self._keywords is not None
                or keywords_path(s).exists())

    # -- other processes' writes (embedded) -----------------------------------------------------

    def _read_generation(self) -> str:
        if self._marker is None:
            return ""
        try:
            return self._marker.read_text()
        except FileNotFoundError:
            return ""

    def changed(self) -> None:
        """Say that this process has written to the embedded index, so that every other
        process reopens it before its next search (a Chroma server needs none of this)."""
        if self._marker is None:
            return
        token = uuid.uuid4().hex
        partial = self._marker.with_name(f".{GENERATION}.{token}")
        partial.write_text(token)
        os.replace(partial, self._marker)
        self._generation = token

    def refresh(self) -> None:
        """Reopen the embedded index if another process has written to it since this one
        last looked (``changed``); a no-op otherwise, and for a Chroma server."""
        if self._marker is None or self._read_generation() == self._generation:
            return
        import chromadb

        with self._reopening:
            current = self._read_generation()
            if current == self._generation:
                return  # another thread of this process reopened it meanwhile
            old: Any = self.client
            old.close()  # its in-memory index is stale: the next client reads the disk
            self.client = chromadb.PersistentClient(path=str(self.settings.chroma_path),
                                                    settings=self._chroma_settings)
            self._writers.clear()
            self._readers.clear()
            self.langchain = self.writer(DEFAULT)
            self.collection = self.langchain._collection
            self._generation = current

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the embedded index for writing, against every other process: Chroma's embedded
        index breaks for good when two processes write it at once (two ingests, or one beside
        a server's job: each saves its own in-memory index over the other's, and every search
        fails after). An advisory lock (``flock``) on a file beside the index, reentrant in
        this process; a writer that has to wait says so. The index is reopened first if
        another process wrote it meanwhile. A Chroma server orders writes itself: no lock."""
        if self._marker is None:
            yield
            return
        wait = WRITE_WAIT_S.get()
        deadline = None if wait is None else time.monotonic() + wait
        if not self._write_lock.acquire(blocking=False):  # held: by another thread, or busy
            if wait is not None and not self._waiting.acquire(blocking=False):
                raise IndexBusy(self._busy)
            try:
                if not self._write_lock.acquire(timeout=-1 if wait is None else wait):
                    raise IndexBusy(self._busy)
            finally:
                if wait is not None:
                    self._waiting.release()
        try:
            if self._write_depth == 0:
                self._write_file = self._locked(deadline)
            self._write_depth += 1
            try:
                if self._write_depth == 1:
                    self.refresh()
                yield
            finally:
                self._write_depth -= 1
                if self._write_depth == 0:
                    fcntl.flock(self._write_file.fileno(), fcntl.LOCK_UN)
                    self._write_file.close()
                    self._write_file = None
        finally:
            self._write_lock.release()

    @property
    def _busy(self) -> str:
        return "the index is being written by another ingest: try again once it is done"

    def _locked(self, deadline: float | None) -> Any:
        """The write lock's file, locked: waiting for another process as long as it writes,
        or until ``deadline`` (then IndexBusy)."""
        assert self._marker is not None
        held = open(self._marker.with_name(WRITE_LOCK), "a")  # noqa: SIM115
        try:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return held
        except BlockingIOError:
            log.warning("another process is writing the index at %s: waiting until it is done",
                        self.where)
        try:
            if deadline is None:
                fcntl.flock(held.fileno(), fcntl.LOCK_EX)
                return held
            while time.monotonic() < deadline:
                time.sleep(0.2)
                try:
                    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return held
                except BlockingIOError:
                    continue
        except BaseException:
            held.close()
            raise
        held.close()
        raise IndexBusy(self._busy)

    def writer(self, collection: str) -> Any:
        """LangChain's ``Chroma`` over a collection, for the indexing API; created if new.
        What it adds and deletes, the keyword index adds and deletes too. One kept from before
        another process deleted the collection (and perhaps made it again) is made anew."""
        try:
            kept = self._writers.get(collection)
            if kept is not None and self._alive(kept._collection):
                return kept
            self._forget_handles(collection)
            # Always pass the embedding function: Chroma's default downloads a model.
            made = self._writers[collection] = _mirrored_chroma()(
                self, collection,
                client=self.client, collection_name=chroma_name(self.settings, collection),
                embedding_function=self.embeddings, collection_metadata=SPACE)
            return made
        except Exception as exc:  # a server that does not answer, among others
            raise VectorStoreError(
                f"cannot open collection {collection!r} in the vector store at "
                f"{self.where}: {exc}") from exc

    def _forget_handles(self, collection: str) -> None:
        self._writers.pop(collection, None)
        self._readers.pop(collection, None)

    @staticmethod
    def _alive(chroma: Any) -> bool:
        """Whether a kept Chroma collection handle still names a collection: not one deleted
        since by another process (an API worker, the CLI, over the same Chroma server)."""
        from chromadb.errors import NotFoundError

        try:
            chroma.count()
        except NotFoundError:
            return False
        return True

    def _fresh(self, collection: str, use: Callable[[Any], T]) -> T | None:
        """``use`` on the collection's Chroma handle; None where the collection does not exist.
        A handle kept from before another process deleted the collection (and perhaps made it
        again) fails: it is dropped, and the collection looked up once more."""
        from chromadb.errors import NotFoundError

        for last in (False, True):
            chroma = self._existing(collection)
            if chroma is None:
                return None
            try:
                return use(chroma)
            except NotFoundError:
                self._forget_handles(collection)
                if last:
                    return None  # deleted again meanwhile: empty now
        return None

    def _existing(self, collection: str) -> Any | None:
        """The Chroma collection, or None when nothing was ever indexed into it. Found once,
        it is kept (a Chroma server is asked once, not on every question)."""
        if collection in self._writers:
            return self._writers[collection]._collection
        if collection in self._readers:
            return self._readers[collection]
        from chromadb.errors import NotFoundError

        try:
            found = self.client.get_collection(chroma_name(self.settings, collection))
        except NotFoundError:
            return None
        self._readers[collection] = found
        return found

    def search(self, query: str, k: int, collections: Sequence[str] = (DEFAULT,),
               where: dict[str, Any] | None = None,
               vector: Sequence[float] | None = None) -> list[tuple[Document, float, str]]:
        """The k nearest chunks of ``collections`` with their cosine similarity and chunk id,
        best first; each chunk's ``collection`` is in its metadata. ``vector``: the query's
        embedding, when the caller has it already."""
        if not collections:
            return []
        try:
            self.refresh()
        except Exception as exc:
            raise VectorStoreError(f"cannot reopen the vector store at {self.where}: {exc}") \
                from exc
        generation = self._generation
        try:
            return self._search(query, k, collections, where, vector)
        except VectorStoreError:
            if self._generation == generation:
                raise
            # Reopened by another thread while this search ran on the closed client: again.
            return self._search(query, k, collections, where, vector)

    def _search(self, query: str, k: int, collections: Sequence[str],
                where: dict[str, Any] | None, vector: Sequence[float] | None
                ) -> list[tuple[Document, float, str]]:
        try:
            found = [(name, c) for name in collections
                     if (c := self._existing(name)) is not None]
            if not found:
                return []
            if vector is None:
                vector = self.embeddings.embed_query(query)

            def query_one(item: tuple[str, Any]) -> list[tuple[Document, float, str]]:
                name = item[0]
                result = self._fresh(name, lambda chroma: chroma.query(
                    query_embeddings=[vector], n_results=k, where=where,
                    include=["documents", "metadatas", "distances"]))
                if result is None:  # deleted since (another worker, the CLI): empty now
                    return []
                return [(Document(page_content=text or "",
                                  metadata={**(meta or {}), "collection": name}),
                         1.0 - float(distance), chunk_id)
                        for chunk_id, text, meta, distance in zip(
                            result["ids"][0], result["documents"][0],
                            result["metadatas"][0], result["distances"][0], strict=True)]

            if len(found) == 1:
                hits = query_one(found[0])
            else:
                # Chroma's queries release the GIL: the collections are searched at once.
                with ThreadPoolExecutor(min(len(found), 8)) as pool:
                    hits = [hit for part in pool.map(query_one, found) for hit in part]
        except Unavailable:
            raise  # the embeddings' server, down: not the vector store
        except Exception as exc:
            raise VectorStoreError(f"cannot search the vector store at {self.where}: {exc}") from exc
        hits.sort(key=lambda hit: -hit[1])
        return hits[:k]

    def similarities(self, vector: Sequence[float],
                     chunks: Sequence[tuple[str, str]]) -> dict[str, float]:
        """The cosine similarity of ``vector`` to each chunk named (collection, chunk id), from
        the embeddings Chroma holds: a chunk found by its words alone gets the score that the
        relevance gate and the fusion compare."""
        import numpy as np

        query = np.asarray(vector, dtype=np.float64)
        query = query / (np.linalg.norm(query) or 1.0)
        by_collection: dict[str, list[str]] = {}
        for name, chunk_id in chunks:
            by_collection.setdefault(name, []).append(chunk_id)
        scores: dict[str, float] = {}
        try:
            for name, ids in by_collection.items():
                found = self._fresh(name, partial(_embeddings_of, ids=ids))
                if found is None:
                    continue
                for chunk_id, embedding in zip(found["ids"], found["embeddings"], strict=True):
                    e = np.asarray(embedding, dtype=np.float64)
                    scores[chunk_id] = float(e @ query / (np.linalg.norm(e) or 1.0))
        except Exception as exc:
            raise VectorStoreError(f"cannot read the vector store at {self.where}: {exc}") from exc
        return scores

    def whole_keywords(self, collection: str) -> None:
        """Make the keyword index hold every chunk of ``collection``: one indexed before the
        keyword index existed is copied in from Chroma, once."""
        keywords = self.keywords
        if keywords.is_whole(collection):
            return
        chroma = self._fresh(collection, lambda c: (c.count(), c)[1])  # a kept one, checked
        if chroma is None:  # nothing to copy; searching a name must not record it (erasure)
            return

        def pages() -> Iterator[tuple[list[str], list[str], list[dict[str, Any]]]]:
            offset = 0
            while True:
                found = chroma.get(limit=BACKFILL_PAGE, offset=offset,
                                   include=["documents", "metadatas"])
                if not found["ids"]:
                    return
                yield (list(found["ids"]), [t or "" for t in found["documents"]],
                       [dict(m or {}) for m in found["metadatas"]])
                offset += len(found["ids"])

        try:
            copied = keywords.backfill(collection, pages)
        except KeywordIndexError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"cannot read collection {collection!r} from the vector "
                                   f"store at {self.where}: {exc}") from exc
        if copied:
            log.info("keyword index: %d chunks of collection %r copied in from the vector "
                     "store", copied, collection)

    def keyword_search(self, query: str, k: int, collections: Sequence[str] = (DEFAULT,),
                       headings_weight: float | None = None) -> list[tuple[Document, float, str]]:
        """The k chunks of ``collections`` that best match the query's words (BM25), best
        first, in ``search``'s form (the score is BM25's, not a similarity)."""
        try:
            self.refresh()  # a collection another process created is seen before it is copied
        except Exception as exc:
            raise VectorStoreError(f"cannot reopen the vector store at {self.where}: {exc}") \
                from exc
        for name in collections:
            self.whole_keywords(name)
        hits: list[KeywordHit] = self.keywords.search(
            query, k, collections,
            **({} if headings_weight is None else {"headings_weight": headings_weight}))
        return [(Document(page_content=h.text, metadata={**h.metadata,
                                                          "collection": h.collection}),
                 h.score, h.chunk_id) for h in hits]

    def scrub(self) -> None:
        """Leave no text of deleted chunks on disk where Hearth can see to it: the keyword
        index (``KeywordIndex.scrub``) and the embedded index's SQLite file (``chroma_files``),
        but for Chroma's log of its latest writes. A Chroma server's files are its own."""
        if self.mirrors_keywords:
            self.keywords.scrub()
        if self._marker is not None:
            with self.writing():  # no other Hearth process writes it meanwhile
                scrub_chroma(self.settings.chroma_path / CHROMA_FILE)

    def drop(self, collection: str) -> None:
        """Delete a collection's chunks, all at once."""
        with self.writing():
            self._drop(collection)

    def _drop(self, collection: str) -> None:
        try:
            if self._existing(collection) is not None:
                self.client.delete_collection(chroma_name(self.settings, collection))
                self.changed()
            if self.mirrors_keywords:
                self.keywords.drop(collection)
        except KeywordIndexError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"cannot delete collection {collection!r} from the vector "
                                   f"store at {self.where}: {exc}") from exc
        finally:
            self._writers.pop(collection, None)
            self._readers.pop(collection, None)
        if collection == DEFAULT:
            self.langchain = self.writer(DEFAULT)
            self.collection = self.langchain._collection

    def count(self, collections: Sequence[str] = (DEFAULT,)) -> int:
        try:
            self.refresh()
            return sum(self._fresh(name, lambda c: int(c.count())) or 0 for name in collections)
        except Exception as exc:
            raise VectorStoreError(f"cannot read the vector store at {self.where}: {exc}") from exc

    def ping(self) -> None:
        if self.settings.chroma_url:  # a hung server: down within the backend timeout
            try:
                heartbeat(self.settings)
            except Exception as exc:
                raise VectorStoreError(f"the vector store at {self.where} does not answer: "
                                       f"{unsecret(self.settings, repr(exc))}") from exc
        self.count()


def scrub_chroma(path: Path) -> None:
    """Scrub Chroma's embedded file of deleted text, in a process of its own (``chroma_files``
    says why); VectorStoreError where it cannot be done now."""
    if not path.is_file():
        return
    done = subprocess.run([sys.executable, "-I", chroma_files.__file__, str(path),
                           str(SCRUB_WAIT_S)], capture_output=True, text=True, check=False)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise VectorStoreError(
            f"the chunks are deleted, but the index's file {path} still holds their text in its "
            f"free pages ({why}): the next removal scrubs it (docs/security.md, Erasing)")


def unsecret(settings: Settings, why: str) -> str:
    """``why`` without the password of HEARTH_CHROMA_URL (an HTTP error names the URL)."""
    if settings.chroma_url and (password := urlparse(settings.chroma_url).password):
        return why.replace(password, "***")
    return why


def heartbeat(settings: Settings) -> None:
    """Raise unless the Chroma server at HEARTH_CHROMA_URL answers within the backend timeout."""
    assert settings.chroma_url
    httpx.get(f"{settings.chroma_url.rstrip('/')}/api/v2/heartbeat",
              timeout=min(settings.backend_timeout_s, settings.chroma_timeout_s)
              ).raise_for_status()


def _embeddings_of(chroma: Any, ids: list[str]) -> Any:
    return chroma.get(ids=ids, include=["embeddings"])


@cache
def _mirrored_chroma() -> type:
    """LangChain's ``Chroma``, with every chunk it adds or deletes added to or deleted from
    the keyword index: after Chroma, so that a failure leaves the indexing API's records
    unwritten and the next run does both again."""
    from langchain_chroma import Chroma

    class MirroredChroma(Chroma):  # type: ignore[misc]
        def __init__(self, store: VectorStore, collection: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._hearth_store = store
            self._hearth_collection = collection

        def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None,
                      ids: list[str] | None = None, **kwargs: Any) -> list[str]:
            texts = list(texts)
            store = self._hearth_store
            if not store.mirrors_keywords:
                return list(super().add_texts(texts, metadatas=metadatas, ids=ids, **kwargs))
            store.whole_keywords(self._hearth_collection)
            added = super().add_texts(texts, metadatas=metadatas, ids=ids, **kwargs)
            store.keywords.add(self._hearth_collection, added, texts,
                               metadatas or [{} for _ in texts])
            return list(added)

        def delete(self, ids: list[str] | None = None, **kwargs: Any) -> None:
            store = self._hearth_store
            if not store.mirrors_keywords:
                super().delete(ids=ids, **kwargs)
                return
            store.whole_keywords(self._hearth_collection)
            super().delete(ids=ids, **kwargs)
            if ids:
                store.keywords.delete(self._hearth_collection, ids)

    return MirroredChroma
