"""Documents that users upload into collections: checked, stored under safe names, indexed by a
background job, and removable one by one.

Each user has a private collection of their own (``mine`` in the API), created on first use; a
user uploads into it, and into any collection they own; administrators into any. A file is
checked by its content as well as its name (a PDF starts as one, a .docx is a Word archive
that does not unpack past the ingestion bound, text is UTF-8 without NUL bytes), refused past
the size bounds, and stored as ``<id>-<safe name>`` under the data folder, beside a small JSON
record of what it was (``uploads/<collection>/files`` and ``.../records``), and a hidden name
file that gives the name the user gave it (``files.name_file``): a document without a title of
its own is titled after that name, not the stored one. The collection's files folder is then
ingested like any folder, by an ingestion job (read in a child process), so only what changed
is embedded. Removing a document deletes its chunks from the index before it returns; a job
that fails removes what it added. A removal and a job's indexing into the same collection take
turns (``held_still``): a document removed while its job reads is not indexed, and one removed
while the job indexes waits for it to end, then leaves the index.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hearth.access import RESERVED, Collection, CollectionForbidden, CollectionNotFound
from hearth.auth import Forbidden
from hearth.errors import HearthError, backend_codes, unexplained
from hearth.ingest.cache import ParseCache, parse_cache_dir
from hearth.ingest.documents import IngestError, ReadLimits
from hearth.ingest.files import KINDS, cache_key, looks_binary, name_file, wide_codec
from hearth.ingest.pipeline import files_namespace, records_namespace
from hearth.ingest.records import close_records, record_manager
from hearth.private import private_dir

if TYPE_CHECKING:
    from hearth.config import Settings
    from hearth.ingest.jobs import Job, Jobs
    from hearth.services import Services

MINE = RESERVED  # how a user names their own collection in the API
DOCUMENT_ID = r"^[0-9a-f]{16}$"
READ_BLOCK = 1 << 16


class UploadsDisabled(HearthError):
    code = "uploads_disabled"
    status = 403


class UploadTooLarge(HearthError):
    code = "upload_too_large"
    status = 413


class DocumentNotFound(HearthError):
    code = "document_not_found"
    status = 404


@dataclass
class Uploaded:
    id: str
    collection: str
    name: str  # as the user named it (cleaned for display)
    file: str  # the stored file's name, under the collection's files folder
    kind: str
    bytes: int
    sha256: str
    uploader: str | None
    uploaded_at: float
    state: str = "queued"  # queued, indexed, failed
    error: str | None = None
    job: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Refused:
    name: str
    reason: str


def own_collection(user_id: str) -> str:
    """The name of a user's own collection: derived from the user id (any text) by a hash, so
    that it is a valid name and says nothing about the user to those who cannot read it."""
    return "u-" + hashlib.sha256(user_id.encode()).hexdigest()[:20]


def display_name(name: str) -> str:
    """A file name as the user gave it, without folders, control characters or excess."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "unnamed"
    if len(name) <= 200:
        return name
    suffix = Path(name).suffix[:16]
    return name[:200 - len(suffix)] + suffix


def safe_stem(name: str) -> str:
    stem = Path(name).stem
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "document")[:60]


@contextmanager
def held_still(settings: Settings, collection: str) -> Iterator[None]:
    """The uploaded documents of ``collection`` held still, for an ingestion job's indexing
    into it (and the states it then gives them) or a document's removal, one at a time: else a
    document removed while the job indexes would come back in search, and its record with it.
    An advisory lock (``flock``) on a file of the collection's uploads folder, so it holds
    across the server's threads and processes; a collection without uploads has nothing to
    hold."""
    folder = settings.data_dir / "uploads" / collection
    if not folder.is_dir():
        yield
        return
    with flocked(folder / ".lock"):
        yield


@contextmanager
def flocked(path: Path) -> Iterator[None]:
    """An advisory lock (``flock``) on the file at ``path``, held across threads and
    processes until the block ends."""
    with open(path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def check_content(kind: str, path: Path, unpacked_limit: int) -> str | None:
    """Why the file at ``path`` is not what its name says, or None when it is."""
    with path.open("rb") as f:
        head = f.read(4096)
    if kind == "pdf":
        return None if head.lstrip(b"\r\n\t \x00")[:5] == b"%PDF-" else "not a PDF (its content " \
            "does not start like one)"
    if kind == "docx":
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                unpacked = sum(i.file_size for i in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return "not a Word document (.docx is a zip archive; this is not one)"
        if "word/document.xml" not in names:
            return "not a Word document (no word/document.xml inside)"
        if unpacked > unpacked_limit:
            return (f"it unpacks to {unpacked} bytes, over the limit of {unpacked_limit} "
                    "(HEARTH_INGEST_MAX_UNPACKED_BYTES)")
        return None
    # Markdown, text, HTML: text, not a binary renamed. UTF-16 and -32 (Windows Notepad's
    # "Unicode") hold NUL bytes, and say so with a byte-order mark.
    if looks_binary(head):
        return "not a text file (it holds NUL bytes: a binary file renamed?)"
    if wide_codec(head):
        return None  # not UTF-8, and read by its mark
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the block's end
            return "not a UTF-8 text file"
    return None


class Uploads:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.root = self.settings.data_dir / "uploads"

    # -- where ---------------------------------------------------------------------------------

    def files_dir(self, collection: str) -> Path:
        return self.root / collection / "files"

    def records_dir(self, collection: str) -> Path:
        return self.root / collection / "records"

    # -- who -----------------------------------------------------------------------------------

    def own(self, user_id: str, *, create: bool = True) -> Collection:
        """The user's own collection, created on first use (an upload). Without ``create``, one
        not created yet is given as it would be, empty and not stored: a look at it (a GET,
        which any web page can make a browser send) must not add to the registry."""
        access = self.services.access
        name = own_collection(user_id)
        try:
            return access.get(name)
        except CollectionNotFound:
            if not create:
                return Collection(name, f"{user_id}'s uploads", owner=user_id)
            try:
                return access.create(name, f"{user_id}'s uploads", owner=user_id)
            except HearthError:  # created meanwhile by another request
                return access.get(name)

    def resolve(self, name: str, user_id: str | None, *, admin: bool) -> Collection:
        """The collection ``name`` (``mine``: the user's own, not created by this), readable by
        the user."""
        if name == MINE:
            if user_id is None:
                raise CollectionForbidden(name)
            return self.own(user_id, create=False)
        readable = self.services.access.readable(user_id, everything=admin)
        found = next((c for c in readable if c.name == name), None)
        if found is None:
            raise CollectionForbidden(name)
        return found

    def writable(self, name: str, user_id: str | None, *, admin: bool) -> Collection:
        """A collection the user may add to and remove from: their own, or any for admins."""
        if not self.settings.uploads:
            raise UploadsDisabled("uploads are off (HEARTH_UPLOADS=false)")
        collection = self.resolve(name, user_id, admin=admin)
        if not admin and (user_id is None or collection.owner != user_id):
            raise Forbidden(f"only its owner and administrators add documents to collection "
                            f"{collection.name!r}; upload into your own: {MINE}")
        return collection

    # -- what ----------------------------------------------------------------------------------

    def documents(self, collection: str) -> list[Uploaded]:
        folder = self.records_dir(collection)
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                found.append(Uploaded(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # being written, or not ours
        return sorted(found, key=lambda d: d.uploaded_at)

    def user_bytes(self, user_id: str | None) -> int:
        if not self.root.is_dir():
            return 0
        return sum(d.bytes for c in self.root.iterdir() for d in self.documents(c.name)
                   if d.uploader == user_id)

    def _save_record(self, doc: Uploaded) -> None:
        folder = private_dir(self.records_dir(doc.collection))
        partial = folder / f".{doc.id}.json.part"
        partial.write_text(json.dumps(doc.to_dict()))
        os.replace(partial, folder / f"{doc.id}.json")

    # -- adding --------------------------------------------------------------------------------

    @contextmanager
    def _one_upload_of(self, uploader: str | None) -> Iterator[None]:
        """One upload of a user at a time, across threads and processes: each counts what the
        user has stored against HEARTH_UPLOAD_MAX_USER_BYTES, and two at once both found room
        for themselves. A lock on a file named after the user's hash."""
        folder = private_dir(self.settings.data_dir / "upload-locks")
        with flocked(folder / f"{own_collection(uploader or '')}.lock"):
            yield

    def add(self, collection: Collection, files: Iterable[tuple[str, IO[bytes]]],
            uploader: str | None, jobs: Jobs) -> tuple[list[Uploaded], list[Refused], Job | None]:
        """Store each acceptable file and queue one job that indexes them; the others are
        refused with their reason. Nothing is stored for a refused file."""
        with self._one_upload_of(uploader):
            return self._add(collection, files, uploader, jobs)

    def _add(self, collection: Collection, files: Iterable[tuple[str, IO[bytes]]],
             uploader: str | None, jobs: Jobs) -> tuple[list[Uploaded], list[Refused], Job | None]:
        s = self.settings
        files = list(files)
        if len(files) > s.upload_max_files:
            raise UploadTooLarge(f"{len(files)} files in one request; the limit is "
                                 f"{s.upload_max_files} (HEARTH_UPLOAD_MAX_FILES)")
        target = private_dir(self.files_dir(collection.name))
        known = {d.sha256: d for d in self.documents(collection.name)}
        room = max(0, s.upload_max_user_bytes - self.user_bytes(uploader))
        accepted: list[Uploaded] = []
        refused: list[Refused] = []
        for raw_name, stream in files:
            name = display_name(raw_name)
            kind = KINDS.get(Path(name).suffix.lower())
            if kind is None:
                refused.append(Refused(name, "not a supported type: PDF, Markdown (.md), text "
                                             "(.txt), HTML or Word (.docx)"))
                continue
            staged = target / f".upload-{os.urandom(8).hex()}.part"
            try:
                size, digest = self._receive(stream, staged, min(s.upload_max_file_bytes, room))
                if size is None:
                    limit = min(s.upload_max_file_bytes, room)
                    refused.append(Refused(name, f"over {limit} bytes: the limit "
                                           + ("for one file (HEARTH_UPLOAD_MAX_FILE_BYTES)"
                                              if limit == s.upload_max_file_bytes else
                                              "left of your uploads in all "
                                              "(HEARTH_UPLOAD_MAX_USER_BYTES)")))
                    continue
                if size == 0:
                    refused.append(Refused(name, "the file is empty"))
                    continue
                if digest in known:
                    refused.append(Refused(name, f"the same file is already in this collection "
                                                 f"as {known[digest].name!r}"))
                    continue
                why = check_content(kind, staged, s.ingest_max_unpacked_bytes)
                if why:
                    refused.append(Refused(name, why))
                    continue
                doc_id = digest[:16]
                stored = f"{doc_id}-{safe_stem(name)}{Path(name).suffix.lower()}"
                doc = Uploaded(doc_id, collection.name, name, stored, kind, size, digest,
                               uploader, time.time())
                name_file(target / stored).write_text(name, "utf-8")
                os.replace(staged, target / stored)
                known[digest] = doc
                room -= size
                accepted.append(doc)
            finally:
                staged.unlink(missing_ok=True)
        if not accepted:
            return accepted, refused, None
        for doc in known.values():  # uploaded before documents had a name file
            if not name_file(target / doc.file).exists() and (target / doc.file).exists():
                name_file(target / doc.file).write_text(doc.name, "utf-8")
        job = jobs.submit("files", files_namespace(target), {"collection": collection.name},
                          on_done=self._finished)
        for doc in accepted:
            doc.job = job.id
            self._save_record(doc)
        return accepted, refused, job

    @staticmethod
    def _receive(stream: IO[bytes], path: Path, limit: int) -> tuple[int | None, str]:
        """Copy ``stream`` to ``path`` up to ``limit`` bytes: (size, sha256), or (None, "")
        past the limit (the rest is not read)."""
        digest, size = hashlib.sha256(), 0
        with path.open("wb") as out:
            while block := stream.read(READ_BLOCK):
                size += len(block)
                if size > limit:
                    return None, ""
                digest.update(block)
                out.write(block)
        return size, digest.hexdigest()

    def _finished(self, job: Job) -> None:
        """Each document the job was for: indexed, or failed with why (and then removed, so
        that nothing of it stays in search). Called with the collection ``held_still``."""
        collection = str(job.options.get("collection"))
        skipped = {Path(s.name).name: s.reason
                   for s in (job.summary.skipped if job.summary else [])}
        for doc in self.documents(collection):
            if doc.job != job.id:
                continue
            if job.state == "done" and doc.file not in skipped:
                doc.state, doc.error = "indexed", None
                self._save_record(doc)
                continue
            doc.state = "failed"
            failure = job.error or {}
            # The document's own reason; the job's, unless a backend's (addresses, paths:
            # the uploader reads it, an administrator finds it in the log and the job).
            doc.error = skipped.get(doc.file) or (
                unexplained(failure["code"]) if failure.get("code") in backend_codes()
                else failure.get("message", "failed"))
            self._unindex(doc)
            self._delete_file(doc)
            self._save_record(doc)

    # -- removing ------------------------------------------------------------------------------

    def _unindex(self, doc: Uploaded) -> int:
        """Delete a document's chunks from the index and its records: at once, not at the next
        ingest of the folder."""
        folder = files_namespace(self.files_dir(doc.collection))
        source = str(Path(folder) / doc.file)
        records = record_manager(self.settings, records_namespace(doc.collection, folder))
        try:
            keys = records.list_keys(group_ids=[source])
            if keys:
                with self.services.vectorstore.writing():
                    self.services.vectorstore.writer(doc.collection).delete(ids=keys)
                    records.delete_keys(keys)
                    self.services.vectorstore.changed()
        finally:
            close_records(records)
        return len(keys)

    def _delete_file(self, doc: Uploaded) -> None:
        """The stored file, its name file and its parsed text in the parse cache."""
        stored = self.files_dir(doc.collection) / doc.file
        try:
            key = cache_key(stored, self.settings.pdf_char_margin, ReadLimits.of(self.settings))
        except (OSError, IngestError):
            key = None  # gone already, or unreadable: the folder's next job prunes its parse
        if key is not None:
            ParseCache(self._cache_dir(doc.collection)).forget(key)
        stored.unlink(missing_ok=True)
        name_file(stored).unlink(missing_ok=True)

    def _cache_dir(self, collection: str) -> Path:
        return parse_cache_dir(self.settings, files_namespace(self.files_dir(collection)))

    def remove(self, collection: str, doc_id: str, *, scrub: bool = True) -> Uploaded:
        """Remove a document: from the index, then its file. ``scrub=False``: the caller
        scrubs the index's files once, after the last (``remove_uploads_of``)."""
        if not re.fullmatch(DOCUMENT_ID, doc_id):
            raise DocumentNotFound(f"no document {doc_id[:40]!r} in collection {collection!r}")
        record = self.records_dir(collection) / f"{doc_id}.json"
        try:
            doc = Uploaded(**json.loads(record.read_text()))
        except (OSError, ValueError, TypeError):
            raise DocumentNotFound(
                f"no document {doc_id!r} in collection {collection!r}") from None
        with held_still(self.settings, collection):  # a job indexing: after it, not during
            # Out of the index first: one that cannot be written now (IndexBusy) leaves the
            # document whole, to remove again, not a file gone that search still cites.
            self._unindex(doc)
            self._delete_file(doc)
            record.unlink(missing_ok=True)
        if scrub:
            self.services.vectorstore.scrub()  # its words out of the index's files too
        return doc

    def remove_uploads_of(self, uploader: str) -> list[Uploaded]:
        """Every document ``uploader`` uploaded, in whatever collection: those removed."""
        removed = []
        try:
            for folder in list(self.root.iterdir()) if self.root.is_dir() else []:
                for doc in self.documents(folder.name):
                    if doc.uploader == uploader:
                        self.remove(folder.name, doc.id, scrub=False)
                        removed.append(doc)
        finally:
            if removed:  # once for all of them; those removed before a failure too
                self.services.vectorstore.scrub()
        lock = self.settings.data_dir / "upload-locks" / f"{own_collection(uploader)}.lock"
        lock.unlink(missing_ok=True)  # named after them
        return removed

    def forget_collection(self, collection: str) -> None:
        """The files of a collection that was deleted, and their parsed text."""
        shutil.rmtree(self._cache_dir(collection), ignore_errors=True)
        shutil.rmtree(self.root / collection, ignore_errors=True)
