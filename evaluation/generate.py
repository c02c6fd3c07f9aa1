"""Synthetic questions: for sampled chunks of the index, the question each chunk answers.

The origin's recipe: ask an LLM for "a concise question ... that has the following TEXT as
the answer", keep the chunk as the reference answer. Boilerplate chunks (too short,
navigation and footers repeated across pages, "Related Posts" lists) would make questions
nobody asks, so they are left out before sampling. The sample is fixed by its seed, so an
interrupted run picks up where it stopped: the output JSONL is appended question by question.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.evaluation.records import EvalDataError, JsonlAppender, Question, read_jsonl

QUESTION_PROMPT = (
    "Write a concise question in as few words as possible to the author in the second person "
    "that has the following TEXT as the answer.\n\n### TEXT ###\n{text}"
)
# Chunks that start like this are lists of links or headings, not prose (the origin skipped
# "Related Posts"; the others are their counterparts in manuals and sites).
DEFAULT_BOILERPLATE = (
    r"^\s*(related posts|table of contents|contents|navigation|previous topic|next topic)\b",
    r"^\s*(copyright|©)",
)

QuestionWriter = Callable[[str], str]  # prompt in, the LLM's text out


@dataclass
class Chunk:
    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class BoilerplateFilter:
    """Which chunks are not worth a question."""

    min_words: int = 25
    min_letter_ratio: float = 0.5  # below: tables of numbers, code, link lists
    patterns: Sequence[str] = DEFAULT_BOILERPLATE

    def __post_init__(self) -> None:
        self._patterns = [re.compile(p, re.IGNORECASE) for p in self.patterns]

    def reason(self, chunk: Chunk, repeated: bool = False) -> str | None:
        """Why the chunk is boilerplate, or None when it is content."""
        text = chunk.text.strip()
        if chunk.metadata.get("boilerplate"):
            return "marked"
        if repeated:
            return "repeated"  # the same text on several pages: headers, footers, menus
        if len(text.split()) < self.min_words:
            return "short"
        non_space = [c for c in text if not c.isspace()]
        if sum(c.isalpha() for c in non_space) < self.min_letter_ratio * len(non_space):
            return "not prose"
        if any(p.search(text) for p in self._patterns):
            return "pattern"
        return None


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def content_chunks(chunks: Iterable[Chunk], boilerplate: BoilerplateFilter) -> tuple[
        list[Chunk], Counter[str]]:
    """The chunks that are content, and a count of the others by reason."""
    chunks = list(chunks)
    copies = Counter(_normalized(c.text) for c in chunks)
    kept, skipped = [], Counter[str]()
    for chunk in chunks:
        reason = boilerplate.reason(chunk, repeated=copies[_normalized(chunk.text)] > 1)
        if reason:
            skipped[reason] += 1
        else:
            kept.append(chunk)
    return kept, skipped


def sample_chunks(chunks: Sequence[Chunk], n: int | None, seed: int) -> list[Chunk]:
    """A sample that depends only on the chunk ids and the seed, not on the index's order."""
    ordered = sorted(chunks, key=lambda c: c.id)
    if n is None or n >= len(ordered):
        random.Random(seed).shuffle(ordered)
        return ordered
    return random.Random(seed).sample(ordered, n)


def iter_collection(collection: Any, page_size: int = 500) -> Iterator[Chunk]:
    """Every chunk of a chromadb Collection, paged."""
    offset = 0
    while True:
        page = collection.get(include=["documents", "metadatas"], limit=page_size, offset=offset)
        ids = page.get("ids") or []
        documents = page.get("documents") or [None] * len(ids)
        metadatas = page.get("metadatas") or [None] * len(ids)
        for chunk_id, text, metadata in zip(ids, documents, metadatas, strict=True):
            if text:
                yield Chunk(str(chunk_id), text, metadata or {})
        if len(ids) < page_size:
            return
        offset += page_size


def clean_question(text: str) -> str:
    """The question alone, or "" when the reply holds none.

    Small models add labels, quotes and explanations, and a 0.5B model answers with a heading
    of the text or with the answer itself about a third of the time: only a line that asks
    something is kept."""
    for line in (text or "").splitlines():
        line = re.sub(r"^\s*(\*\*)?\s*(question|q)\s*[:.-]\s*(\*\*)?", "", line, flags=re.I)
        line = line.strip().strip("*\"'`“”").strip()
        if line.endswith("?"):
            return line
    return ""


class RateLimiter:
    """At most `per_minute` calls a minute (0: no limit), spaced evenly."""

    def __init__(self, per_minute: float = 0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def question_for(chunk: Chunk, question: str) -> Question:
    metadata = chunk.metadata
    page = metadata.get("page")
    return Question(
        id=f"q-{chunk.id}",
        question=question,
        reference=chunk.text.strip(),
        source=metadata.get("source"),
        chunk_id=chunk.id,
        title=metadata.get("title"),
        page=int(page) if isinstance(page, int | float | str) and str(page).isdigit() else None,
    )


@dataclass
class GenerateReport:
    written: int = 0
    resumed: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    available: int = 0


def generate(
    chunks: Iterable[Chunk],
    write_question: QuestionWriter,
    out: Path,
    *,
    n: int | None = 100,
    seed: int = 0,
    prompt: str = QUESTION_PROMPT,
    boilerplate: BoilerplateFilter | None = None,
    limiter: RateLimiter | None = None,
    progress: bool = False,
    attempts: int = 2,
) -> GenerateReport:
    """Write `n` questions to `out` (JSONL), one a chunk, resuming what is already there.

    Chunks are taken in an order fixed by the seed; each gets `attempts` tries to yield a
    question, and one that gives none is counted in `failed` and replaced by the next."""
    if "{text}" not in prompt:
        raise ValueError("the question prompt must hold {text}, where the chunk goes")
    kept, skipped = content_chunks(chunks, boilerplate or BoilerplateFilter())
    if not kept:
        found = sum(skipped.values())
        raise EvalDataError(
            f"none of the index's {found} chunks is content (all boilerplate: lower "
            "--min-words?)" if found else "the index is empty: ingest documents first")
    # The whole seeded order: a chunk that gives no question is replaced by the next one.
    order = sample_chunks(kept, None, seed)
    done = {q.get("chunk_id") for q in read_jsonl(out)} if out.exists() else set()
    report = GenerateReport(skipped=skipped, available=len(kept), resumed=len(done))
    wanted = len(order) if n is None else max(0, n - len(done))
    limiter = limiter or RateLimiter()
    bar = counter_bar(wanted, progress, "questions")
    with JsonlAppender(out) as writer:
        for chunk in order:
            if report.written >= wanted:
                break
            if chunk.id in done:
                continue
            question = ""
            for _ in range(attempts):
                limiter.wait()
                question = clean_question(write_question(prompt.format(text=chunk.text.strip())))
                if question:
                    break
            if not question:
                report.failed += 1
                continue
            writer.write(question_for(chunk, question).to_json())
            report.written += 1
            bar.update(1)
    bar.close()
    return report


class Bar:
    """Progress on stderr: a rich bar on a terminal; elsewhere (a log file, CI, `docker compose
    run`) a plain line every ``every_s`` seconds and at the end, so a long run shows signs of
    life. Advanced by hand (``update``, ``close``)."""

    def __init__(self, total: int, unit: str, every_s: float = 10.0) -> None:
        import sys

        self.total, self.unit, self.every_s, self.done = total, unit, every_s, 0
        self._started = self._said = time.monotonic()
        self._rich: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self._rich = Progress(console=Console(stderr=True))
            self._task = self._rich.add_task(unit, total=total)
            self._rich.start()

    def update(self, n: int) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        elif time.monotonic() - self._said >= self.every_s:
            self._say()

    def _say(self) -> None:
        import sys

        self._said = time.monotonic()
        print(f"{self.unit}: {self.done}/{self.total} ({self._said - self._started:.0f} s)",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            self._say()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(items: list[Any], enabled: bool, unit: str) -> Iterable[Any]:
    """``items``, advancing a progress bar as each is taken."""
    if not enabled:
        yield from items
        return
    bar = Bar(len(items), unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def counter_bar(total: int, enabled: bool, unit: str) -> Bar | _NoBar:
    """A progress bar advanced by hand (``update``, ``close``)."""
    return Bar(total, unit) if enabled else _NoBar()
