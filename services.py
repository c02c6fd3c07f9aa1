"""The components Hearth runs on, each built once, on first use, from the settings.

The chat service, the CLI and the tests reach the LLM, the embeddings, the vector store and the history
store through one ``Services`` object: nothing is built at import time, and a component that
cannot be built (a model not fetched, a database down) fails only the requests that need it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.embeddings import Embeddings

from hearth.access import Access, build_access
from hearth.auth import Keys, build_keys
from hearth.config import RerankerChoice, RetrievalMode, Settings
from hearth.embeddings import build_embeddings
from hearth.errors import HearthError
from hearth.history import HistoryStore, build_history
from hearth.llm import LLM, build_llm
from hearth.model import Assistant
from hearth.rerank import E5Reranker, rerank_path
from hearth.throttle import Gate
from hearth.vectorstore import VectorStore

T = TypeVar("T")

log = logging.getLogger("hearth.services")


class Services:
    def __init__(self, settings: Settings, **ready: Any) -> None:
        """``ready`` holds components already built (an embedding model shared by tests)."""
        self.settings = settings
        self._built: dict[str, Any] = dict(ready)
        self._wrappers: dict[str, Callable[[Any], Any]] = {}
        self._lock = threading.RLock()

    def _once(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._built:
                built = build()
                wrap = self._wrappers.get(name)
                self._built[name] = wrap(built) if wrap else built
            return self._built[name]  # type: ignore[no-any-return]

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
            "vector_store": lambda: self.vectorstore.ping(),
            "history_store": lambda: self.history.ping(),
        }
        if self.settings.retrieval is RetrievalMode.hybrid:  # every question reads it too
            checks["keyword_index"] = lambda: self.vectorstore.keywords.ping()
        if self.settings.reranker is not RerankerChoice.none:  # HEARTH_RERANKER: its model loads
            checks["reranker"] = lambda: self.reranker.ping()  # type: ignore[union-attr]
        report: dict[str, dict[str, Any]] = {}
        for name, check in checks.items():
            try:
                check()
                report[name] = {"ok": True}
            except HearthError as exc:
                report[name] = {"ok": False, "error": str(exc)}
            except Exception as exc:  # a backend failing in a way no one foresaw: not ready,
                log.exception("readiness of %s", name)  # not a 500 on /readyz and /metrics
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return report


def build_services(settings: Settings, **ready: Any) -> Services:
    return Services(settings, **ready)
