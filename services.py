"""The components Hearth runs on, each built once, on first use, from the settings.

The chat service, the CLI and the tests reach the LLM, the embeddings, the vector store and the history
store through one ``Services`` object: nothing is built at import time, and a component that
cannot be built (a model not fetched, a database down) fails only the requests that need it.

A backend that hangs (accepts, never answers) must not stall the rest: each component is built
under a lock of its own, read without one once built, and one that failed is reported as down
for RETRY_BUILD_AFTER_S without another try. A readiness check (``readiness``) never waits for
another thread: a component being built, or a backend another probe is checking, is reported as
it stands, so probes cannot pile up on a hung backend and take every server thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from langchain_core.embeddings import Embeddings

from hearth.access import Access, build_access
from hearth.auth import Keys, build_keys
from hearth.config import RerankerChoice, RetrievalMode, Settings
from hearth.embeddings import build_embeddings
from hearth.embeddings import ping as ping_embeddings
from hearth.errors import HearthError, Unavailable
from hearth.history import HistoryStore, build_history
from hearth.llm import LLM, build_llm
from hearth.model import Assistant
from hearth.rerank import E5Reranker, rerank_path
from hearth.throttle import Gate
from hearth.vectorstore import VectorStore

T = TypeVar("T")

log = logging.getLogger("hearth.services")

# How long a component that could not be built is reported as down without trying again: each
# request and probe that needs a hung backend would otherwise wait out its timeout in turn.
RETRY_BUILD_AFTER_S = 5.0
# Set while ``readiness`` runs: a component another thread is building is reported, not awaited.
PROBING: ContextVar[bool] = ContextVar("hearth_probing", default=False)


class Services:
    def __init__(self, settings: Settings, **ready: Any) -> None:
        """``ready`` holds components already built (an embedding model shared by tests)."""
        self.settings = settings
        self._built: dict[str, Any] = dict(ready)
        self._wrappers: dict[str, Callable[[Any], Any]] = {}
        self._lock = threading.Lock()  # the dictionaries below and ``_built``'s writes: no I/O
        self._building: dict[str, threading.RLock] = {}  # one per component
        self._failed: dict[str, tuple[float, Exception, Any]] = {}  # when, why, and where
        self._checking: dict[str, threading.Lock] = {}  # one per readiness check
        self._checked: dict[str, dict[str, Any]] = {}  # each check's last result

    def _once(self, name: str, build: Callable[[], T]) -> T:
        """The component, built on first use; one that fails is tried again only after
        RETRY_BUILD_AFTER_S (its error raised again meanwhile)."""
        built = self._built.get(name)  # once built it never changes but by ``wrap``
        if built is not None:
            return built  # type: ignore[no-any-return]
        with self._lock:
            building = self._building.setdefault(name, threading.RLock())
        if not building.acquire(blocking=not PROBING.get()):
            raise Unavailable(f"{name} is being opened for another request: not ready yet")
        try:
            if name in self._built:  # by the thread this one waited for
                return self._built[name]  # type: ignore[no-any-return]
            failed = self._failed.get(name)
            if failed is not None and time.monotonic() - failed[0] < RETRY_BUILD_AFTER_S:
                raise failed[1].with_traceback(failed[2])  # not a traceback grown by each raise
            try:
                made = build()
            except Exception as exc:
                self._failed[name] = (time.monotonic(), exc, exc.__traceback__)
                raise
            self._failed.pop(name, None)
            with self._lock:
                wrap = self._wrappers.pop(name, None)
                self._built[name] = wrap(made) if wrap else made
                return self._built[name]  # type: ignore[no-any-return]
        finally:
            building.release()

    def wrap(self, name: str, wrapper: Callable[[Any], Any]) -> None:
        """Put ``wrapper(component)`` in the component's place, now if it is built, else when
        it is: the metrics time the history store's calls this way."""
        with self._lock:
            if name in self._built:
                self._built[name] = wrapper(self._built[name])
            else:
                self._wrappers[name] = wrapper

    @property
    def llm(self) -> LLM:
        return self._once("llm", lambda: build_llm(self.settings))

    @property
    def embeddings(self) -> Embeddings:
        return self._once("embeddings", lambda: build_embeddings(self.settings))

    @property
    def vectorstore(self) -> VectorStore:
        return self._once("vectorstore", lambda: VectorStore(self.settings, self.embeddings))

    @property
    def history(self) -> HistoryStore:
        return self._once("history", lambda: build_history(self.settings))

    @property
    def keys(self) -> Keys:
        return self._once("keys", lambda: build_keys(self.settings))

    @property
    def access(self) -> Access:
        return self._once("access", lambda: build_access(self.settings))

    @property
    def gate(self) -> Gate:
        s = self.settings
        return self._once("gate", lambda: Gate(s.max_concurrent_generations,
                                               s.max_queued_generations, s.queue_timeout_s,
                                               s.max_queued_per_user))

    @property
    def assistant(self) -> Assistant:
        return self._once("assistant", lambda: Assistant(self.llm, self.vectorstore, self.settings,
                                                         self.reranker))

    @property
    def reranker(self) -> E5Reranker | None:
        """The second reading of the first chunks (``HEARTH_RERANKER``), or None."""
        if self.settings.reranker is RerankerChoice.none:
            return None
        return self._once("reranker", lambda: E5Reranker(rerank_path(self.settings)))

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Each backend by name: reachable or not, and why."""
        checks: dict[str, Callable[[], Any]] = {
            "llm": lambda: self.llm.ping(),
            "embeddings": lambda: ping_embeddings(self.embeddings),  # every question embeds
            "vector_store": lambda: self.vectorstore.ping(),
            "history_store": lambda: self.history.ping(),
        }
        if self.settings.retrieval is RetrievalMode.hybrid:  # every question reads it too
            checks["keyword_index"] = lambda: self.vectorstore.keywords.ping()
        if self.settings.reranker is not RerankerChoice.none:  # HEARTH_RERANKER: its model loads
            checks["reranker"] = lambda: self.reranker.ping()  # type: ignore[union-attr]
        report: dict[str, dict[str, Any]] = {}
        probing = PROBING.set(True)
        try:
            for name, check in checks.items():
                with self._lock:
                    checking = self._checking.setdefault(name, threading.Lock())
                if not checking.acquire(blocking=False):
                    # Another probe is waiting for this backend now: its last result, not a second
                    # wait (a hung backend would hold a server thread for each probe).
                    report[name] = self._checked.get(
                        name, {"ok": False, "error": "being checked for another probe"})
                    continue
                try:
                    report[name] = self._checked[name] = self._check(name, check)
                finally:
                    checking.release()
        finally:
            PROBING.reset(probing)
        return report

    @staticmethod
    def _check(name: str, check: Callable[[], Any]) -> dict[str, Any]:
        try:
            check()
            return {"ok": True}
        except HearthError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a backend failing in a way no one foresaw: not ready,
            log.exception("readiness of %s", name)  # not a 500 on /readyz and /metrics
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def build_services(settings: Settings, **ready: Any) -> Services:
    return Services(settings, **ready)
