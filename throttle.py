"""The gate in front of the model, which keeps many users from exhausting it.

Generations pass through a gate: at most ``max_concurrent_generations`` run at once and at
most ``max_queued_generations`` wait, first come first served; past that, or after
``queue_timeout_s`` in the queue, the answer is 503 with Retry-After rather than an
ever-growing backlog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hearth.errors import HearthError


class Busy(HearthError):
    code = "busy"
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Gate:
    def __init__(self, concurrent: int, queued: int, timeout_s: float) -> None:
        self.concurrent, self.queued, self.timeout_s = concurrent, queued, timeout_s
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)
        self._waiting: list[object] = []  # tickets, in arrival order
        self.running = 0
        # Told how long each question that queued waited, served or not (the metrics).
        self.waited: list[Callable[[float], None]] = []

    @property
    def waiting(self) -> int:
        """Questions in the queue now."""
        return len(self._waiting)

    def acquire(self) -> None:
        """Wait for a slot in arrival order, or raise Busy."""
        ticket = object()
        with self._lock:
            if self.running >= self.concurrent and len(self._waiting) >= self.queued:
                raise Busy(f"the model is busy: {self.running} answering, {len(self._waiting)} "
                           "waiting; try again shortly", retry_after=5)
            self._waiting.append(ticket)
            queued = time.perf_counter()
            free = self._turns.wait_for(
                lambda: self._waiting[0] is ticket and self.running < self.concurrent,
                timeout=self.timeout_s,
            )
            self._waiting.remove(ticket)
            if free:
                self.running += 1
            self._turns.notify_all()
        for observe in self.waited:
            observe(time.perf_counter() - queued)
        if not free:
            raise Busy(f"no model was free within {self.timeout_s:.0f} s; try again shortly",
                       retry_after=int(self.timeout_s // 2) or 1)

    def release(self) -> None:
        with self._lock:
            self.running -= 1
            self._turns.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

