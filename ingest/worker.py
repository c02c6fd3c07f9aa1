"""An API job's reading, in a process of its own, so no source can take the server down.

Reading a source is where the danger is: a zip bomb, a PDF that pdfminer expands, a site that
never answers. ``read_in_child`` runs the reading half of an ingestion (loader, parser,
chunker; ``pipeline.read_files``/``read_web``) in a child process started with "spawn" (torch
and Chroma do not survive a fork) whose address space is limited to ``HEARTH_INGEST_JOB_MEMORY_MB``
(``RLIMIT_AS``), and kills it past ``HEARTH_INGEST_JOB_TIMEOUT_S``. The child writes the chunks
to a spool file and sends its progress through a pipe; the server indexes the spool only once
the child has finished. So:

- a job that runs out of memory fails with ``ingest_out_of_memory``, one that runs out of time
  with ``ingest_timeout``; the server keeps answering;
- such a job changes nothing in the index: the source stays as it was;
- only the server writes to the vector store. Embedded Chroma is not safe for two writing
  processes, and a server that has it open does not see another process's new vectors in its
  searches until it reopens it (measured with chromadb 1.5.9: ``count()`` sees them, ``query``
  does not).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.ingest.documents import Chunked, IngestError, Skipped, SkippedForNow, SkippedPages
from hearth.ingest.progress import Progress

log = logging.getLogger(__name__)
# How often the child reports its progress, at most.
REPORT_INTERVAL_S = 0.25
# glibc's M_ARENA_MAX: each thread's malloc arena reserves 64 MiB of address space, which
# counts against RLIMIT_AS; two arenas keep the limit about memory actually used.
_M_ARENA_MAX = -8


class IngestOutOfMemory(IngestError):
    """A job's reading process ran out of the memory it may use."""

    code = "ingest_out_of_memory"
    status = 500


class IngestTimeout(IngestError):
    """A job's reading process took longer than it may."""

    code = "ingest_timeout"
    status = 504


class ReadFailed(HearthError):
    """An error the reading process reported, with its own code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Read:
    """What the child read: the source's namespace, its spool of chunks, what it passed over."""

    namespace: str
    spool: Path
    ignored: dict[str, int] = field(default_factory=dict)


# -- the parent's side ---------------------------------------------------------------------------


def read_in_child(settings: Settings, kind: str, target: str, options: dict[str, Any],
                  spool: Path, progress: Progress) -> Read:
    """Read ``target`` in a child process into ``spool``, mirroring its counts on ``progress``.

    Raises IngestOutOfMemory, IngestTimeout, or the error the child reported (ReadFailed)."""
    spool.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, name="hearth-ingest", daemon=True,
                            args=(settings, kind, target, options, str(spool), send))
    child.start()
    send.close()  # the child's end: the pipe reports EOF when the child is gone
    deadline = time.monotonic() + settings.ingest_job_timeout_s
    try:
        outcome = _watch(child, receive, progress, deadline)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    return _result(outcome, child.exitcode, settings, spool)


def _watch(child: Any, receive: Connection, progress: Progress,
           deadline: float) -> tuple[str, dict[str, Any]] | None:
    """The child's last word ("read" or "failed"), "timeout" once it is killed past the
    deadline, None if it died without a word."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            child.kill()
            return "timeout", {}
        if not receive.poll(min(left, 1.0)):
            continue
        try:
            what, data = receive.recv()
        except (EOFError, OSError):
            return None
        if what == "progress":
            progress.update(data)
        else:
            return what, data


def _result(outcome: tuple[str, dict[str, Any]] | None, exitcode: int | None,
            settings: Settings, spool: Path) -> Read:
    if outcome is not None and outcome[0] == "read":
        return Read(spool=spool, **outcome[1])
    if outcome is not None and outcome[0] == "timeout":
        raise IngestTimeout(
            f"reading took longer than HEARTH_INGEST_JOB_TIMEOUT_S "
            f"({settings.ingest_job_timeout_s:g} s) and was stopped; nothing was changed in the "
            "index")
    if outcome is not None:
        raise ReadFailed(outcome[1]["code"], outcome[1]["message"])
    died = f"signal {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else \
        f"exit status {exitcode}"
    if exitcode in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS):
        raise IngestOutOfMemory(
            f"the ingestion's reading process died ({died}), most likely out of memory: raise "
            f"HEARTH_INGEST_JOB_MEMORY_MB ({settings.ingest_job_memory_mb}) or lower the "
            "HEARTH_INGEST_MAX_* bounds; nothing was changed in the index")
    raise ReadFailed("internal_error", f"the ingestion's reading process died ({died}) "
                     "without a word; nothing was changed in the index")


def spooled(spool: Path) -> Iterator[Chunked | Skipped]:
    """The chunks the child wrote, one document at a time."""
    from langchain_core.documents import Document

    with spool.open(encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            if "skipped" in entry:  # "for_now": a SkippedForNow, which keeps what is indexed
                yield (SkippedForNow if entry.get("for_now") else Skipped)(*entry["skipped"])
            else:
                yield Chunked(entry["source"], [Document(page_content=text, metadata=meta)
                                                for text, meta in entry["docs"]],
                              ocr_pages=entry["ocr_pages"],
                              skipped_pages=[SkippedPages(**p) for p in entry["skipped_pages"]])


# -- the child's side ----------------------------------------------------------------------------


class _Reporting(Progress):
    """Counts sent to the parent, every REPORT_INTERVAL_S at most, and at the end."""

    def __init__(self, send: Connection) -> None:
        super().__init__()
        self._send = send
        self._sent = 0.0

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._sent >= REPORT_INTERVAL_S:
            self._sent = now
            self._send.send(("progress", self.to_dict()))

    def begin(self, unit: str, total: int | None = None) -> None:
        super().begin(unit, total)
        self.report(force=True)

    def document_done(self, name: str) -> None:
        super().document_done(name)
        self.report()

    def chunked(self, n: int) -> None:
        super().chunked(n)
        self.report()

    def page_read_by_ocr(self) -> None:
        super().page_read_by_ocr()
        self.report()


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space; past it allocations fail (MemoryError)."""
    import ctypes
    import resource

    with contextlib.suppress(OSError, AttributeError):  # glibc only; elsewhere RLIMIT_AS alone
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)
    limit = megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(settings: Settings, kind: str, target: str, options: dict[str, Any], spool: str,
           send: Connection) -> None:
    limit_memory(settings.ingest_job_memory_mb)
    progress = _Reporting(send)
    try:
        read = _read(settings, kind, target, options, Path(spool), progress)
        progress.report(force=True)
        send.send(("read", {"namespace": read.namespace, "ignored": read.ignored}))
    except MemoryError:
        send.send(("failed", {"code": IngestOutOfMemory.code, "message": (
            f"reading ran out of memory (HEARTH_INGEST_JOB_MEMORY_MB="
            f"{settings.ingest_job_memory_mb}): lower the HEARTH_INGEST_MAX_* bounds or raise "
            "it; nothing was changed in the index")}))
    except HearthError as exc:
        send.send(("failed", {"code": exc.code, "message": str(exc)}))
    except Exception as exc:
        log.exception("reading %s failed", target)
        send.send(("failed", {"code": "internal_error",
                              "message": f"{type(exc).__name__}: {exc}"}))
    finally:
        send.close()


def _read(settings: Settings, kind: str, target: str, options: dict[str, Any], spool: Path,
          progress: Progress) -> Read:
    from hearth.ingest.chunking import chunker_for
    from hearth.ingest.pipeline import read_files, read_web
    from hearth.ingest.safety import GuardedTransport

    ignored: dict[str, int] = {}
    if kind == "web":
        # The guard is rebuilt here from the settings (a transport does not cross processes).
        reading = read_web(settings, target, progress=progress, ignored=ignored,
                           transport=GuardedTransport(settings.ingest_allow_hosts), **options)
    else:
        reading = read_files(settings, Path(target), progress=progress, ignored=ignored,
                             **options)
    chunker = chunker_for(settings)
    with spool.open("w", encoding="utf-8") as out:
        for item in reading.items:
            progress.document_done(item.name if isinstance(item, Skipped) else item.source)
            if isinstance(item, Skipped):
                entry: dict[str, Any] = {"skipped": [item.name, item.reason]}
                if isinstance(item, SkippedForNow):
                    entry["for_now"] = True
            else:
                docs = chunker.split(item, reading.namespace)
                progress.chunked(len(docs))
                entry = {"source": item.source,
                         "docs": [[d.page_content, d.metadata] for d in docs],
                         "ocr_pages": item.ocr_pages,
                         "skipped_pages": [asdict(p) for p in item.skipped_pages]}
            out.write(json.dumps(entry) + "\n")
    reading.cache.prune()
    return Read(reading.namespace, spool, ignored)
