"""How far an ingestion has got: counts for the API's job status, and what the CLI shows.

``Progress`` only counts. ``TerminalProgress`` draws bars (rich) on stderr when it is a
terminal; ``LogProgress`` prints a plain line every few seconds and at the end, for output that
is not a terminal (``docker compose run``, a log file, CI), where bars would show only their
final state. ``progress_for`` picks one.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

# How often LogProgress prints a line.
LOG_INTERVAL_S = 10.0


class Progress:
    """Counts of the work done so far: read by the API's job status, shown by the CLI."""

    def __init__(self) -> None:
        self.unit = "documents"
        self.documents = 0
        self.documents_total: int | None = None
        self.chunks = 0
        self.indexed = 0
        self.ocr_pages = 0  # scanned PDF pages read by OCR so far (seconds each)
        self.phase = "starting"
        self.started = time.monotonic()

    def begin(self, unit: str, total: int | None = None) -> None:
        self.unit, self.documents_total, self.phase = unit, total, "reading"

    def document_done(self, name: str) -> None:
        self.documents += 1

    def chunked(self, n: int) -> None:
        self.chunks += n

    def page_read_by_ocr(self) -> None:
        self.ocr_pages += 1

    def indexed_to(self, n: int) -> None:
        self.indexed = n

    def finish(self) -> None:
        self.phase = "done"

    def update(self, counts: dict[str, Any]) -> None:
        """Take the counts of another ``Progress`` (``to_dict``): an API job's reading process
        reports them."""
        self.phase, self.unit = counts["phase"], counts["unit"]
        self.documents, self.documents_total = counts["documents"], counts["documents_total"]
        self.chunks, self.indexed = counts["chunks"], counts["chunks_indexed"]
        self.ocr_pages = counts["ocr_pages"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "unit": self.unit, "documents": self.documents,
            "documents_total": self.documents_total, "chunks": self.chunks,
            "chunks_indexed": self.indexed, "ocr_pages": self.ocr_pages,
        }

    def line(self) -> str:
        """One line of where things stand: "120/415 files parsed, 2,300 chunks, 1,800
        indexed, 2m10s" (and ", 12 pages read by OCR" once there are some)."""
        done = (f"{self.documents:,}/{self.documents_total:,}" if self.documents_total is not None
                else f"{self.documents:,}")
        ocr = (f", {self.ocr_pages:,} page{'s' if self.ocr_pages > 1 else ''} read by OCR"
               if self.ocr_pages else "")
        return (f"{done} {self.unit}, {self.chunks:,} chunks, {self.indexed:,} indexed{ocr}, "
                f"{_duration(time.monotonic() - self.started)}")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class TerminalProgress(Progress):
    """Progress bars on the terminal (stderr): documents read, chunks indexed."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bars = RichProgress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[current]}", style="dim"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._documents = self._bars.add_task("documents", total=None, current="")
        self._chunks = self._bars.add_task("chunks indexed", total=None, current="")
        self._started = False

    def begin(self, unit: str, total: int | None = None) -> None:
        super().begin(unit, total)
        self._bars.update(self._documents, description=unit, total=total)
        if not self._started:  # an ingestion that fails before it begins draws nothing
            self._started = True
            self._bars.start()

    def document_done(self, name: str) -> None:
        super().document_done(name)
        self._bars.update(self._documents, completed=self.documents, current=_short(name))

    def chunked(self, n: int) -> None:
        super().chunked(n)
        self._bars.update(self._chunks, total=self.chunks)

    def page_read_by_ocr(self) -> None:
        super().page_read_by_ocr()  # a scanned PDF takes seconds a page: show it moving
        self._bars.update(self._documents, current=f"OCR: {self.ocr_pages} pages read")

    def indexed_to(self, n: int) -> None:
        super().indexed_to(n)
        self._bars.update(self._chunks, completed=n)

    def finish(self) -> None:
        if self.phase == "done":
            return
        super().finish()
        if self._started:
            self._bars.update(self._documents, total=self.documents, completed=self.documents)
            self._bars.update(self._chunks, total=self.chunks, completed=self.indexed)
            self._bars.stop()


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


class LogProgress(Progress):
    """A plain line on ``stream`` (stderr) every ``interval_s`` seconds from ``begin`` on,
    and one at ``finish``: "ingest: 120/415 files parsed, 2,300 chunks, 1,800 indexed, 2m10s".
    The lines come from a timer thread, so a long step (a big PDF, a slow batch of
    embeddings) still shows the ingestion is alive."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, stream: TextIO | None = None) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._stream = stream
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def begin(self, unit: str, total: int | None = None) -> None:
        super().begin(unit, total)
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="ingest-progress",
                                           daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print(self.line())

    def _print(self, text: str) -> None:
        stream = self._stream or sys.stderr
        print(f"ingest: {text}", file=stream, flush=True)

    def finish(self) -> None:
        if self.phase == "done":
            return
        super().finish()
        self._stop.set()
        if self._timer is not None:  # an ingestion that fails before it begins prints nothing
            self._timer.join()
            self._print(self.line())


def progress_for(enabled: bool) -> Progress:
    """What a command shows of its progress: nothing unless ``enabled``; bars on a terminal,
    periodic plain lines otherwise (a log file, ``docker compose run`` without a TTY, CI)."""
    if not enabled:
        return Progress()
    if sys.stderr.isatty():
        return TerminalProgress()
    return LogProgress()
