"""The gate in front of the model, which shares it fairly between users.

At most ``max_concurrent_generations`` generations run at once and at most
``max_queued_generations`` wait; past that, or after ``queue_timeout_s`` in the queue, the
answer is 503 with Retry-After rather than an ever-growing backlog. Within those bounds the
gate is fair between users, not only first come first served:

- **one user cannot hold every place**: each user has at most ``max_queued_per_user``
  questions waiting or being answered (past it: 503 for that user only);
- **the queue is served round-robin by user**: the next question to take the model is the
  waiting one whose user was served longest ago, so a user with ten questions queued does not
  delay a user with one by ten answers;
- **a place freed goes to who was turned away, not to who asks next**: a user refused because
  the queue was full is owed a place, in the order they were turned away, for a while (their
  Retry-After, which says about when their place comes up, and a grace period); while places
  are owed, a newcomer takes a place only if one is left beyond them. Without this, a place
  freed by an answer goes to the user whose answer just ended (asking again at once) while
  the refused wait out their Retry-After: at 64 users, 19 got every answer (Jain's index 0.23).

The chat service takes its place only when the model is needed (``Hold``): retrieval, history
reads and prompt building happen before, and a question that nothing relevant answers never
queues at all. But a question the gate would turn away is turned away first (``Hold.check``),
before it spends CPU on retrieval: on a machine where the model and the server share the cores,
the embeddings of questions refused anyway cost the model 5-10% of its answers.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hearth.errors import HearthError, ShuttingDown

# How long past its Retry-After a refused user's place stays owed: long enough for a person
# who reads the refusal, or does something else first, to ask again.
GRACE_S = 20.0
BUSY_RETRY_S = 5


class Busy(HearthError):
    code = "busy"
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(HearthError):
    """The client left while its question waited for the model: no one is there to answer."""

    code = "client_gone"
    status = 499


# How often a question waiting for the model looks whether its client is still there, and
# whether the server is shutting down.
GONE_CHECK_S = 0.5


@dataclass
class _Ticket:
    user: str
    number: int  # arrival order
    arrived: float = field(default_factory=time.monotonic)


class Gate:
    def __init__(self, concurrent: int, queued: int, timeout_s: float,
                 per_user: int | None = None) -> None:
        self.concurrent, self.queued, self.timeout_s = concurrent, queued, timeout_s
        self.per_user = per_user or concurrent + queued
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)
        self._waiting: list[_Ticket] = []
        self._held: dict[str, int] = {}  # user -> questions waiting or running
        self._served: dict[str, float] = {}  # user -> when they last took the model
        self._owed: dict[str, float] = {}  # user -> until when a place is kept for them
        self._numbers = itertools.count()
        self._started: dict[str, list[float]] = {}  # user -> when their running ones started
        self._service_s = float(BUSY_RETRY_S)  # how long a question holds the model, on average
        self.running = 0
        # Told how long each question that queued waited, served or not (the metrics).
        self.waited: list[Callable[[float], None]] = []

    @property
    def waiting(self) -> int:
        """Questions in the queue now."""
        return len(self._waiting)

    def _next(self) -> _Ticket | None:
        """The waiting question whose user was served longest ago (then the earliest)."""
        if not self._waiting:
            return None
        return min(self._waiting, key=lambda t: (self._served.get(t.user, 0.0), t.number))

    def _admissible(self, user: str, now: float) -> bool:
        """Whether ``user`` may take a place now. Places free are kept for the users turned
        away, longest-waiting first (up to half the queue, so that the queue still feeds the
        model if they do not come back); a newcomer gets one left beyond them."""
        for who, until in list(self._owed.items()):
            if until < now:
                del self._owed[who]
        if self.running < self.concurrent and not self._waiting:
            return True  # the model would idle: whoever asks takes it
        free = self.concurrent + self.queued - self.running - len(self._waiting)
        if user in self._owed:
            return list(self._owed).index(user) < free
        kept = min(len(self._owed), max(1, self.queued // 2)) if self.queued else 0
        return kept < free

    def _retry_after(self, user: str) -> int:
        """When a user turned away should come back: about when their place comes up."""
        ahead = list(self._owed).index(user) if user in self._owed else len(self._owed)
        turn = max(self._service_s, 0.5) * (ahead + 1) / self.concurrent
        return max(1, min(BUSY_RETRY_S, round(turn)))

    def _refuse_if_full(self, user: str, now: float) -> None:
        """Raise Busy if ``user`` may not take a place now (the lock held)."""
        if self._held.get(user, 0) >= self.per_user:
            raise Busy(f"you already have {self._held[user]} questions waiting or being "
                       "answered; ask again when one is answered", retry_after=BUSY_RETRY_S)
        if not self._admissible(user, now):
            self._owed.setdefault(user, 0.0)  # keeps its place in line if already there
            retry = self._retry_after(user)
            self._owed[user] = now + retry + GRACE_S
            raise Busy(f"the model is busy: {self.running} answering, {len(self._waiting)} "
                       "waiting; try again shortly", retry_after=retry)

    def check(self, user: str = "") -> None:
        """Raise Busy now if ``acquire`` would, taking no place: a question that would be
        turned away is refused before its retrieval spends the CPU that the model needs."""
        with self._lock:
            self._refuse_if_full(user, time.monotonic())

    def acquire(self, user: str = "", gone: Callable[[], bool] | None = None,
                stopping: Callable[[], bool] | None = None) -> None:
        """Wait for the model, fairly between users, or raise Busy; or ClientGone as soon as
        ``gone`` says the client has left (its places are given up then, not when its turn
        comes and the model would start on a question no one waits for); or ShuttingDown as
        soon as ``stopping`` says the server will not wait for it (the question would take the
        model in turn, and the process exit before it is answered)."""
        with self._lock:
            now = time.monotonic()
            self._refuse_if_full(user, now)
            self._owed.pop(user, None)
            ticket = _Ticket(user, next(self._numbers))
            self._waiting.append(ticket)
            self._held[user] = self._held.get(user, 0) + 1
            queued = time.perf_counter()
            deadline = time.monotonic() + self.timeout_s
            free = left = stopped = False
            polled = gone is not None or stopping is not None
            while not free:
                left = gone is not None and gone()
                stopped = stopping is not None and stopping()
                wait = deadline - time.monotonic()
                if left or stopped or wait <= 0:
                    break
                free = self._turns.wait_for(
                    lambda: self.running < self.concurrent and self._next() is ticket,
                    timeout=min(wait, GONE_CHECK_S) if polled else wait)
            self._waiting.remove(ticket)
            if free:
                self.running += 1
                self._served[user] = time.monotonic()
                self._started[user] = self._started.get(user, []) + [time.monotonic()]
            else:
                self._drop(user)
            self._turns.notify_all()
        for observe in self.waited:
            observe(time.perf_counter() - queued)
        if left:
            raise ClientGone("the client left while its question waited for the model")
        if stopped:
            raise ShuttingDown("the server is shutting down and this question was still waiting "
                               "for the model: ask again in a moment")
        if not free:
            raise Busy(f"no model was free within {self.timeout_s:.0f} s; try again shortly",
                       retry_after=int(self.timeout_s // 2) or 1)

    def _drop(self, user: str) -> None:
        self._held[user] -= 1
        if not self._held[user]:
            del self._held[user]

    def release(self, user: str = "") -> None:
        with self._lock:
            self.running -= 1
            self._drop(user)
            started = self._started.get(user)
            if started:
                took = time.monotonic() - started.pop(0)
                self._service_s += 0.2 * (took - self._service_s)  # a moving average
                if not started:
                    del self._started[user]
            if len(self._served) > 10_000:  # forget users long gone
                for who in sorted(self._served, key=self._served.__getitem__)[:5_000]:
                    self._served.pop(who)
            self._turns.notify_all()

    @contextmanager
    def slot(self, user: str = "") -> Iterator[None]:
        self.acquire(user)
        try:
            yield
        finally:
            self.release(user)


class Hold:
    """A question's place at the gate: taken when the model is first needed (``take``, which
    may raise Busy), released once, however the question ends."""

    def __init__(self, gate: Gate, user: str, gone: Callable[[], bool] | None = None,
                 stopping: Callable[[], bool] | None = None) -> None:
        self.gate, self.user, self.gone, self.stopping = gate, user, gone, stopping
        self.held = False

    def check(self) -> None:
        """Raise Busy if the question would be turned away now (``Gate.check``)."""
        if not self.held:
            self.gate.check(self.user)

    def take(self) -> None:
        if not self.held:
            self.gate.acquire(self.user, self.gone, self.stopping)
            self.held = True
            if self.gone is not None and self.gone():  # left as its turn came
                self.release()
                raise ClientGone("the client left before the model started on its question")

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.release(self.user)
