"""Ingestion in the background, for the HTTP API: the request that starts a job, and the jobs.

``prepare`` checks a request (``IngestRequest``) and turns it into what a job runs: a crawl
confined by ``ingest.safety`` (no private, loopback or metadata address unless
``HEARTH_INGEST_ALLOW_HOSTS`` lists it; the crawl limits of the settings) or a folder under
``HEARTH_INGEST_ROOTS``. ``Jobs`` runs them one at a time on a single worker thread of the
server that was asked (ingestion is CPU-bound, and two runs on one source must not interleave),
and writes each job's state and progress to a ``JobStore`` every second: MongoDB's
``ingest_jobs`` when ``HEARTH_MONGODB_URI`` is set, so that any API worker answers for any job,
else ``jobs.sqlite3`` in the data folder. A job whose server stopped before it ended is reported
failed (``worker_lost``) once its record has not been refreshed for ``STALE_S``; the index
itself converges when the job is run again. Each job reads
its source in a process of its own, bounded in memory and time (``ingest.worker``; the crawl's
guard is rebuilt there from ``HEARTH_INGEST_ALLOW_HOSTS``), and the server indexes what it read
once it is all read: a job that fails reading changes nothing in the index. A file deleted
between its reading and the indexing is not indexed, and the indexing (with ``on_done``) holds
the collection's uploads still (``uploads.held_still``), so that a document removed meanwhile
does not come back in search. The HTTP face
(``POST /api/ingest``, ``GET /api/ingest[/<id>]``) lives in the web layer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hearth.access import DEFAULT
from hearth.access import NAME as COLLECTION_NAME
from hearth.config import Settings
from hearth.errors import HearthError, Unavailable
from hearth.ingest.documents import Chunked, IngestError, Skipped, Summary
from hearth.ingest.files import MAX_EXCLUSIONS, Exclusions, InvalidExclusion
from hearth.ingest.pipeline import run
from hearth.ingest.progress import Progress
from hearth.ingest.safety import GuardedTransport, check_folder, check_host
from hearth.ingest.uploads import held_still
from hearth.ingest.web import start_address
from hearth.ingest.worker import read_in_child, spooled
from hearth.migrations import use_wal
from hearth.mongo import mongo_client

if TYPE_CHECKING:
    from hearth.services import Services

log = logging.getLogger(__name__)
KEPT_JOBS = 100
REPORT_EVERY_S = 1.0  # how often a running job's progress reaches the store
STALE_S = 30.0  # a queued or running job not refreshed for this long: its server is gone

JobKind = Literal["web", "files"]


class InvalidIngestRequest(IngestError):
    """A request to ingest that cannot be run as given."""

    code = "invalid_request"


class NotAFolder(IngestError):
    """The folder to ingest is not there on the server."""

    code = "not_a_folder"


class CrawlOptions(BaseModel):
    """How a crawl ("web") goes; options left out take the server's settings
    (HEARTH_CRAWL_*)."""

    model_config = ConfigDict(extra="forbid")
    max_depth: int | None = Field(
        None, ge=0, le=50, description="links to follow from the start page "
        "(default: HEARTH_CRAWL_MAX_DEPTH)")
    max_pages: int | None = Field(
        None, ge=1, le=100_000, description="pages to fetch at most "
        "(default: HEARTH_CRAWL_MAX_PAGES)")
    include: list[str] = Field(
        [], description="path prefixes to crawl (default: the start URL's folder)")
    exclude: list[str] = Field([], description="path prefixes not to crawl")
    use_sitemap: bool = Field(True, description="also read the site's sitemap.xml")


class FileOptions(BaseModel):
    """How a folder ("files") is read; options left out take the server's settings."""

    model_config = ConfigDict(extra="forbid")
    pdf_char_margin: float | None = Field(
        None, gt=0, description="pdfminer's char_margin: high keeps table rows whole, 2 suits "
        "two-column text (default: HEARTH_PDF_CHAR_MARGIN)")
    exclude: list[str] = Field(
        [], max_length=MAX_EXCLUSIONS,
        description="glob patterns of files or folders not to read, as in a .gitignore "
        "(\"*.docx\", \"drafts\", \"archive/2019/\"); on a re-run, what a pattern now "
        "excludes leaves the index")

    @field_validator("exclude")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        try:
            Exclusions(patterns)
        except InvalidExclusion as exc:
            raise ValueError(str(exc)) from None
        return patterns


class IngestRequest(BaseModel):
    """Start ingesting a site or a server folder: give exactly one of "web" and "files"."""

    model_config = ConfigDict(extra="forbid")
    web: str | None = Field(
        None, min_length=1, max_length=2000,
        description="a site to crawl from this http(s) URL (same site, robots.txt respected; "
        "no private address unless HEARTH_INGEST_ALLOW_HOSTS lists it)")
    files: str | None = Field(
        None, min_length=1, max_length=4000,
        description="a folder on the server, under one of HEARTH_INGEST_ROOTS")
    options: CrawlOptions | FileOptions = Field(
        default_factory=lambda: CrawlOptions.model_validate({}),
        description="crawl options with \"web\", file options with \"files\"")
    collection: str = Field(DEFAULT, pattern=COLLECTION_NAME,
                            description="the collection to ingest into (it must exist)")

    @model_validator(mode="before")
    @classmethod
    def _folder_options(cls, data: Any) -> Any:
        """A folder's options read as a folder's: "exclude" is an option of both kinds (path
        prefixes of a site, glob patterns of a folder), and would be read as a site's."""
        if not isinstance(data, dict) or data.get("files") is None or data.get("web") is not None:
            return data
        options = data.get("options")
        if not isinstance(options, dict) or not set(options) <= set(FileOptions.model_fields):
            return data  # not a folder's: said below
        try:
            return {**data, "options": FileOptions.model_validate(options)}
        except ValidationError as exc:
            raise ValueError("; ".join(
                f"options.{'.'.join(map(str, e['loc']))}: {_message(e['msg'])}"
                for e in exc.errors())) from None

    @model_validator(mode="after")
    def _one_source(self) -> IngestRequest:
        if (self.web is None) == (self.files is None):
            raise ValueError('give exactly one of "web" (a URL) or "files" (a folder)')
        wanted = CrawlOptions if self.web is not None else FileOptions
        if not isinstance(self.options, wanted):
            given = sorted(self.options.model_fields_set - set(wanted.model_fields))
            if given:
                kind = "web" if self.files is not None else "files"
                raise ValueError(f"options {', '.join(given)} are for \"{kind}\", not for "
                                 f"\"{'files' if kind == 'web' else 'web'}\"")
            # Only options both kinds have (or none): read them as this kind's.
            self.options = wanted.model_validate(
                self.options.model_dump(include=self.options.model_fields_set))
        return self


def _message(text: str) -> str:
    """A validation message without pydantic's "Value error, " before the validator's own."""
    return text.removeprefix("Value error, ")


def prepare(settings: Settings,
            request: IngestRequest | Mapping[str, Any]) -> tuple[JobKind, str, dict[str, Any]]:
    """What a job runs for ``request`` (validated here when given as a mapping): its kind,
    its target (the normalized start URL, or the resolved folder) and the keyword options of
    ``ingest_web``/``ingest_files``, the crawl limits of the settings and the guard on every
    request of a crawl included.

    Raises ``InvalidIngestRequest`` (400 ``invalid_request``), ``NotAFolder`` (400
    ``not_a_folder``), or an ``UnsafeTarget``: ``AddressNotAllowed`` (403
    ``address_not_allowed``), ``FolderNotAllowed`` (403 ``folder_not_allowed``). Each is a
    ``HearthError`` carrying that ``status`` and ``code``.
    """
    try:
        req = (request if isinstance(request, IngestRequest)
               else IngestRequest.model_validate(request))
    except ValidationError as exc:
        raise InvalidIngestRequest("; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {_message(e['msg'])}"
            for e in exc.errors()
        )) from None
    options = req.options.model_dump(exclude_none=True)
    options["collection"] = req.collection
    if req.web is not None:
        try:
            target = start_address(req.web)  # the crawl starts where the user said
        except IngestError as exc:
            raise InvalidIngestRequest(str(exc)) from None
        options.setdefault("max_depth", settings.crawl_max_depth)
        options.setdefault("max_pages", settings.crawl_max_pages)
        options["concurrency"] = settings.crawl_concurrency
        options["timeout_s"] = settings.crawl_timeout_s
        # Every request of an API-started crawl, each redirect hop included, is checked:
        # no private, loopback or cloud-metadata address unless allow-listed.
        guard = GuardedTransport(settings.ingest_allow_hosts)
        _check_start(guard, target)
        options["transport"] = guard
        return "web", target, options
    folder = check_folder(Path(str(req.files)), settings.ingest_roots)
    if not folder.is_dir():
        raise NotAFolder(f"no folder at {folder} on the server")
    return "files", str(folder), options


def _check_start(guard: GuardedTransport, url: str) -> None:
    """Refuse a start address the crawl could not fetch anyway, before starting a job."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with contextlib.suppress(httpx.ConnectError):  # unresolvable: the job reports it
        check_host(parts.hostname or "", port, guard.allow)


@dataclass
class Job:
    id: str
    kind: JobKind
    target: str
    options: dict[str, Any]
    state: str = "queued"  # queued, running, done, failed
    progress: Progress = field(default_factory=Progress)
    summary: Summary | None = None
    error: dict[str, str] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def collection(self) -> str:
        return str(self.options.get("collection", DEFAULT))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "target": self.target,
            "collection": self.collection, "state": self.state,
            "progress": self.progress.to_dict(),
            "summary": self.summary.to_dict() if self.summary else None,
            "error": self.error, "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
        }


@dataclass(frozen=True)
class JobView:
    """A job as the store last recorded it, by whichever server runs it."""

    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def state(self) -> str:
        return str(self.record["state"])

    @property
    def collection(self) -> str:
        return str(self.record["collection"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat() if ts else None


class JobStoreError(Unavailable):
    """The job store cannot be read or written."""

    code = "job_store_unavailable"


class JobStore(Protocol):
    """Where jobs' records live, as ``Job.to_dict`` writes them, with when each was written
    (``seen``: seconds since the epoch) and when it was made (``created``)."""

    def save(self, record: dict[str, Any], created: float, seen: float) -> None: ...
    def get(self, job_id: str) -> tuple[dict[str, Any], float] | None: ...
    def recent(self, limit: int) -> list[tuple[dict[str, Any], float]]: ...
    def prune(self, keep: int) -> None: ...
    def forget(self, job_ids: Sequence[str], collections: Sequence[str]) -> int: ...


class SQLiteJobs:
    """Jobs in ``jobs.sqlite3`` in the data folder: one server's, kept across its restarts."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            use_wal(self._db)
            self._db.execute("PRAGMA secure_delete=ON")  # a forgotten job leaves no trace
            self._db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, "
                             "created REAL NOT NULL, seen REAL NOT NULL, record TEXT NOT NULL)")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JobStoreError(f"the job store failed: {exc}") from exc

    def save(self, record: dict[str, Any], created: float, seen: float) -> None:
        self._rows("INSERT INTO jobs (id, created, seen, record) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(id) DO UPDATE SET seen = excluded.seen, record = excluded.record",
                   (record["id"], created, seen, json.dumps(record)))

    def get(self, job_id: str) -> tuple[dict[str, Any], float] | None:
        rows = self._rows("SELECT record, seen FROM jobs WHERE id = ?", (job_id,))
        return (json.loads(rows[0][0]), rows[0][1]) if rows else None

    def recent(self, limit: int) -> list[tuple[dict[str, Any], float]]:
        return [(json.loads(r), seen) for r, seen in self._rows(
            "SELECT record, seen FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]

    def prune(self, keep: int) -> None:
        self._rows("DELETE FROM jobs WHERE id NOT IN "
                   "(SELECT id FROM jobs ORDER BY created DESC LIMIT ?) "
                   "AND json_extract(record, '$.state') IN ('done', 'failed')", (keep,))

    def forget(self, job_ids: Sequence[str], collections: Sequence[str]) -> int:
        ids, names = json.dumps(list(job_ids)), json.dumps(list(collections))
        gone = self._rows("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                          "OR json_extract(record, '$.collection') IN "
                          "(SELECT value FROM json_each(?)) RETURNING id", (ids, names))
        self._rows("PRAGMA wal_checkpoint(TRUNCATE)")  # nor in the write-ahead log
        return len(gone)


class MongoJobs:
    """Jobs in MongoDB's ``ingest_jobs``: every API worker reads what any of them runs."""

    def __init__(self, uri: str, db_name: str, timeout_s: float) -> None:
        import pymongo

        self._coll = mongo_client(uri, timeout_s)[db_name]["ingest_jobs"]
        self._errors = pymongo.errors.PyMongoError

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(self._coll)
        except self._errors as exc:
            raise JobStoreError(f"the job store (MongoDB) failed: {exc}") from exc

    def save(self, record: dict[str, Any], created: float, seen: float) -> None:
        self._run(lambda c: c.replace_one(
            {"_id": record["id"]},
            {"_id": record["id"], "created": created, "seen": seen, "record": record},
            upsert=True))

    def get(self, job_id: str) -> tuple[dict[str, Any], float] | None:
        doc = self._run(lambda c: c.find_one({"_id": job_id}))
        return (doc["record"], doc["seen"]) if doc else None

    def recent(self, limit: int) -> list[tuple[dict[str, Any], float]]:
        return [(d["record"], d["seen"]) for d in self._run(
            lambda c: list(c.find().sort("created", -1).limit(limit)))]

    def prune(self, keep: int) -> None:
        old = [d["_id"] for d in self._run(lambda c: list(
            c.find({}, {"_id": 1}).sort("created", -1).skip(keep)))]
        if old:
            self._run(lambda c: c.delete_many(
                {"_id": {"$in": old}, "record.state": {"$in": ["done", "failed"]}}))

    def forget(self, job_ids: Sequence[str], collections: Sequence[str]) -> int:
        return int(self._run(lambda c: c.delete_many({"$or": [
            {"_id": {"$in": list(job_ids)}},
            {"record.collection": {"$in": list(collections)}}]})).deleted_count)


def build_job_store(settings: Settings) -> JobStore:
    if settings.mongodb_uri:
        return MongoJobs(settings.mongodb_uri, settings.mongodb_db, settings.backend_timeout_s)
    return SQLiteJobs(settings.data_dir / "jobs.sqlite3")


def _as_seen(record: dict[str, Any], seen: float, now: float) -> JobView:
    """A stored job, failed with ``worker_lost`` if its server stopped reporting on it."""
    if record["state"] in ("queued", "running") and now - seen > STALE_S:
        record = {**record, "state": "failed", "error": {
            "code": "worker_lost", "message": "the server running this job stopped before it "
            "ended; nothing it read was half-indexed: start the job again"}}
    return JobView(record)


class Jobs:
    """The app's ingestion jobs: those this server runs, on one worker thread, and every job
    of the store (the latest ``KEPT_JOBS`` ended ones kept), whichever server runs it."""

    def __init__(self, services: Services, store: JobStore | None = None) -> None:
        self.services = services
        self.store = store or build_job_store(services.settings)
        self._jobs: dict[str, Job] = {}  # run here, until they end and are saved
        self._on_done: dict[str, Callable[[Job], None] | None] = {}
        self._forgotten: set[str] = set()  # running here, no longer recorded (``forget``)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self._reporter: threading.Thread | None = None
        self.finished: list[Callable[[Job], None]] = []  # told of each job done or failed

    def submit(self, kind: JobKind, target: str, options: dict[str, Any],
               on_done: Callable[[Job], None] | None = None) -> Job:
        """Queue a job (``prepare`` makes its arguments); it runs after those before it, and
        ``on_done`` is called with it when it has ended, done or failed. Raises
        ``JobStoreError`` (nothing queued) when the store cannot record it."""
        job = Job(id=uuid.uuid4().hex, kind=kind, target=target, options=options)
        self._save(job)
        self.store.prune(KEPT_JOBS)
        self._on_done[job.id] = on_done
        with self._lock:
            self._jobs[job.id] = job
            if self._reporter is None:
                self._reporter = threading.Thread(target=self._report, name="ingest-report",
                                                  daemon=True)
                self._reporter.start()
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job | JobView | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job_id in self._forgotten:
                return None
        if job is not None:
            return job
        found = self.store.get(job_id)
        return _as_seen(*found, time.time()) if found else None

    def all(self) -> list[Job | JobView]:
        """Every job remembered, the most recent first."""
        now = time.time()
        with self._lock:
            mine = dict(self._jobs)
        return [mine.get(record["id"]) or _as_seen(record, seen, now)
                for record, seen in self.store.recent(KEPT_JOBS)]

    def forget(self, job_ids: Sequence[str], collections: Sequence[str]) -> int:
        """Drop the records of these jobs and of every job into these collections (a user
        erased: their uploads' jobs, their own collection's): a job of them still running
        here goes on to its end, unrecorded and unlisted. Returns the records dropped."""
        with self._lock:
            self._forgotten.update(job.id for job in self._jobs.values()
                                   if job.id in job_ids or job.collection in collections)
        return self.store.forget(job_ids, collections)

    def _save(self, job: Job) -> None:
        with self._lock:
            if job.id in self._forgotten:
                return
        self.store.save(job.to_dict(), job.created_at, time.time())

    def _report(self) -> None:
        """Write the progress of the jobs running here, so that other servers can follow them
        and see that this one is alive."""
        while True:
            time.sleep(REPORT_EVERY_S)
            with self._lock:
                live = list(self._jobs.values())
            for job in live:
                try:
                    self._save(job)
                except JobStoreError as exc:
                    log.warning("ingestion job %s: progress not recorded: %s", job.id, exc)

    def _run(self, job: Job) -> None:
        job.state, job.started_at = "running", time.time()
        spool = self.services.settings.data_dir / "ingest-jobs" / f"{job.id}.jsonl"
        # The job is seen running until what follows its end (``on_done``: the uploads'
        # states) is done: a client that reads "done" then finds its documents indexed.
        ended = replace(job, state="failed")
        try:
            ended.summary = self._ingest(job, spool)
            ended.state = "done"
        except HearthError as exc:  # said in words a user can act on: no traceback
            ended.error = {"code": exc.code, "message": str(exc)}
        except Exception as exc:
            log.exception("ingestion job %s failed", job.id)
            ended.error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            spool.unlink(missing_ok=True)
            ended.finished_at = time.time()
            done = self._on_done.pop(job.id, None)
            if done is not None:
                try:
                    with held_still(self.services.settings, job.collection):
                        done(ended)
                except Exception:
                    log.exception("after ingestion job %s", job.id)
            job.summary, job.error, job.finished_at = ended.summary, ended.error, ended.finished_at
            job.state = ended.state
            self._finish(job)
            for observe in self.finished:
                observe(job)

    def _finish(self, job: Job) -> None:
        """Record the job's end, retrying while the store is away: until then it is answered
        from here, and other servers see it running."""
        for attempt in range(30):
            try:
                self._save(job)
                break
            except JobStoreError as exc:
                log.warning("ingestion job %s: end not recorded yet (%s)", job.id, exc)
                time.sleep(min(10.0, 0.5 * 2 ** attempt))
        else:
            return
        with self._lock:
            self._jobs.pop(job.id, None)
            self._forgotten.discard(job.id)

    def _ingest(self, job: Job, spool: Path) -> Summary:
        """Read in a child process, then index what it read, here (the one writer)."""
        options = {k: v for k, v in job.options.items() if k not in ("transport", "collection")}
        collection = job.collection
        self.services.access.get(collection)  # gone since the job was queued: fail now
        read = read_in_child(self.services.settings, job.kind, job.target, options, spool,
                             job.progress)
        progress = job.progress
        progress.update({**progress.to_dict(), "phase": "indexing", "documents": 0, "chunks": 0})
        items = spooled(spool) if job.kind == "web" else still_there(spooled(spool))
        try:
            with held_still(self.services.settings, collection):
                return run(self.services, read.namespace, items, collection=collection,
                           progress=progress,
                           summary=Summary(source=read.namespace, ignored=read.ignored))
        finally:
            progress.finish()


def still_there(items: Iterator[Chunked | Skipped]) -> Iterator[Chunked | Skipped]:
    """A folder's documents as read, less those whose file has been deleted since (an upload
    removed while its job read): indexed, they would be back in search, with nothing left to
    remove them until the folder's next job."""
    for item in items:
        if isinstance(item, Chunked) and not Path(item.source).exists():
            log.info("not indexed: %s, deleted since it was read", item.source)
            continue
        yield item
