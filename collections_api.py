"""Collections on the HTTP API: those a user may read, the documents uploaded into them, and
erasing everything Hearth holds about a user.

- ``GET /api/collections``: what the acting user may read (what ``collections`` may name);
- ``POST /api/collections/<name>/documents``: upload files (multipart, field ``files``) into a
  collection the user owns (``mine``: their own, made on first use), indexed by a job;
- ``GET /api/collections/<name>/documents``, ``DELETE .../documents/<id>``: list, remove;
- ``GET /api/collections/<name>/jobs/<id>``: the progress of an upload's indexing;
- ``DELETE /api/users/<id>``: the user's history, collections, uploads, grants and keys;
- ``GET /api/keys``, ``POST /api/keys``, ``DELETE /api/keys/<id>``: API keys, with API keys on
  (an administrator's for anyone, a user's own otherwise); a key revoked through one API worker
  is refused by every worker at once, as they all read the same key store.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, request
from pydantic import BaseModel, Field, StrictBool, field_validator

from hearth.access import Collection
from hearth.auth import Key
from hearth.conversations import USER_ID
from hearth.ingest.uploads import MINE, Uploaded, Uploads
from hearth.users import erase_user
from hearth.web import (
    ApiError,
    ErrorOut,
    JobOut,
    Route,
    acting_as,
    chat,
    jobs,
    ok,
    principal,
    public_error,
    read_json,
    reads_everything,
    services,
    settings,
)

collections_blueprint = Blueprint("collections", __name__)


class CollectionOut(BaseModel):
    name: str
    description: str
    public: bool = Field(description="read by everyone; otherwise by its owner and readers")
    owner: str | None = Field(description="the user whose own collection this is")
    created_at: float
    readers: list[str] | None = Field(
        None, description="the users it is granted to (shown to its owner and administrators)")
    mine: bool = Field(False, description="the acting user's own collection (also named mine)")


class CollectionListOut(BaseModel):
    collections: list[CollectionOut]
    enforced: bool = Field(description="true with API keys on; false: user_id is only a label "
                                       "that anyone may set, so private collections protect "
                                       "nothing")


class DocumentOut(BaseModel):
    id: str
    collection: str
    name: str = Field(description="the file's name as it was uploaded")
    kind: str
    bytes: int
    uploader: str | None
    uploaded_at: float
    state: Literal["queued", "indexed", "failed"] = Field(
        description="queued until its job has indexed it; failed with the reason in error")
    error: str | None
    job: str | None


class DocumentListOut(BaseModel):
    documents: list[DocumentOut]


class RefusedOut(BaseModel):
    name: str
    reason: str


class JobRefOut(BaseModel):
    id: str
    url: str


class UploadOut(BaseModel):
    collection: str
    documents: list[DocumentOut] = Field(description="the files accepted, queued for indexing")
    refused: list[RefusedOut] = Field(description="the files refused, each with why")
    job: JobRefOut


class RemovedOut(BaseModel):
    removed: DocumentOut


class ErasedOut(BaseModel):
    conversations: int
    collections: int = Field(description="the user's own collections, deleted with their chunks")
    documents: int = Field(description="documents the user uploaded, removed")
    grants: int = Field(description="collections the user was a reader of")
    keys: int


class KeyOut(BaseModel):
    id: str = Field(description="the key's public id (not the key itself)")
    user_id: str
    admin: bool
    created_at: float
    revoked_at: float | None


class KeyListOut(BaseModel):
    keys: list[KeyOut]


class KeyIn(BaseModel):
    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID,
                         description="the user the key acts for")
    admin: StrictBool = Field(False, description="an administrator's key: every collection, "
                                                 "ingestion, every user's keys")

    @field_validator("user_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        """As every other route reads a user id: a key for " ann" acts for ann, and one for
        "   " could never name its own user."""
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class KeyCreatedOut(BaseModel):
    key: str = Field(description="the key itself: shown once, never stored by Hearth")
    id: str
    user_id: str
    admin: bool


class RevokedOut(BaseModel):
    revoked: KeyOut


def _user() -> str:
    return acting_as(request.args.get("user_id", "").strip() or None)


def _key_holder() -> tuple[str, bool]:
    """Who manages keys: the acting key's user, and whether it is an administrator's."""
    holder = principal()
    if holder is None:
        raise ApiError(403, "forbidden", "API keys are managed over HTTP only with API keys on "
                       "(HEARTH_AUTH=true); on the server, use `hearth keys`")
    return holder.user_id, holder.admin


def _key_out(key: Key) -> KeyOut:
    return KeyOut(id=key.id, user_id=key.user_id, admin=key.admin,
                  created_at=key.created_at, revoked_at=key.revoked_at)


def _collection_out(c: Collection, user_id: str, admin: bool) -> CollectionOut:
    return CollectionOut(**c.to_dict(readers=admin or c.owner == user_id),
                         mine=c.owner == user_id and c.name.startswith("u-"))


def _document_out(doc: Uploaded) -> DocumentOut:
    return DocumentOut(**{k: v for k, v in doc.to_dict().items()
                          if k in DocumentOut.model_fields})


@collections_blueprint.get("/api/collections")
def list_collections() -> Response:
    user_id = _user()
    admin = reads_everything(user_id)
    readable = services().access.readable(user_id, everything=admin)
    # Who else reads a collection is the business of its owner and the administrators.
    return ok(CollectionListOut(collections=[_collection_out(c, user_id, admin)
                                             for c in readable],
                                enforced=settings().auth_required))


@collections_blueprint.get("/api/collections/<name>/documents")
def list_documents(name: str) -> Response:
    user_id = _user()
    uploads = Uploads(services())
    collection = uploads.resolve(name, user_id, admin=reads_everything(user_id))
    return ok(DocumentListOut(documents=[_document_out(d)
                                         for d in uploads.documents(collection.name)]))


@collections_blueprint.post("/api/collections/<name>/documents")
def upload_documents(name: str) -> Response:
    user_id = _user()
    uploads = Uploads(services())
    collection = uploads.writable(name, user_id, admin=reads_everything(user_id))
    s = settings()
    if not request.mimetype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type",
                       "send the files as multipart/form-data, in the field \"files\"")
    # This route alone takes bodies past HEARTH_MAX_BODY_BYTES, up to the upload bounds.
    request.max_content_length = s.upload_max_request_bytes + s.max_body_bytes
    request.max_form_parts = s.upload_max_files + 16
    files = [*request.files.getlist("files"), *request.files.getlist("file")]
    if not files:
        raise ApiError(400, "missing_field", "files: send at least one file in the field "
                       "\"files\" (multipart/form-data)")
    if name == MINE and user_id is not None:
        collection = uploads.own(user_id)  # created now, with its first upload
    accepted, refused, job = uploads.add(
        collection, ((f.filename or "", f.stream) for f in files), user_id, jobs())
    if job is None:
        raise ApiError(400, "upload_refused", "no file was accepted: " + "; ".join(
            f"{r.name}: {r.reason}" for r in refused))
    shown = MINE if name == MINE else collection.name
    return ok(UploadOut(
        collection=collection.name, documents=[_document_out(d) for d in accepted],
        refused=[RefusedOut(name=r.name, reason=r.reason) for r in refused],
        job=JobRefOut(id=job.id, url=f"/api/collections/{shown}/jobs/{job.id}")), 202)


@collections_blueprint.delete("/api/collections/<name>/documents/<doc_id>")
def remove_document(name: str, doc_id: str) -> Response:
    user_id = _user()
    uploads = Uploads(services())
    collection = uploads.writable(name, user_id, admin=reads_everything(user_id))
    return ok(RemovedOut(removed=_document_out(uploads.remove(collection.name, doc_id))))


@collections_blueprint.get("/api/collections/<name>/jobs/<job_id>")
def upload_job(name: str, job_id: str) -> Response:
    user_id = _user()
    collection = Uploads(services()).writable(name, user_id, admin=reads_everything(user_id))
    job = jobs().get(job_id)
    if job is None or job.collection != collection.name:
        raise ApiError(404, "job_not_found", f"no job {job_id[:40]!r} for collection {name!r} "
                       "(the latest 100 jobs are kept)")
    return ok(JobOut(**{**job.to_dict(), "error": public_error(job.to_dict()["error"])}))


@collections_blueprint.delete("/api/users/<user_id>")
def erase(user_id: str) -> Response:
    return ok(ErasedOut(**erase_user(chat(), acting_as(user_id), jobs()).to_dict()))


@collections_blueprint.get("/api/keys")
def list_keys() -> Response:
    user_id, admin = _key_holder()
    return ok(KeyListOut(keys=[_key_out(k) for k in services().keys.list()
                               if admin or k.user_id == user_id]))


@collections_blueprint.post("/api/keys")
def create_key() -> Response:
    _, admin = _key_holder()
    if not admin:
        raise ApiError(403, "forbidden", "only an administrator's key may create keys")
    wanted = read_json(KeyIn)
    token, key = services().keys.create(wanted.user_id, admin=wanted.admin)
    return ok(KeyCreatedOut(key=token, id=key.id, user_id=key.user_id, admin=key.admin), 201)


@collections_blueprint.delete("/api/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    user_id, admin = _key_holder()
    keys = services().keys
    found = [k for k in keys.list() if k.id == key_id and (admin or k.user_id == user_id)]
    if not found:  # another user's key reads as no key at all
        raise ApiError(404, "key_not_found", f"no key {key_id[:40]!r} of yours")
    keys.revoke(key_id)
    revoked = [k for k in keys.list() if k.id == key_id]
    return ok(RevokedOut(revoked=_key_out(revoked[0] if revoked else found[0])))


USER_QUERY = {"name": "user_id", "in": "query", "schema": {"type": "string"}}
UPLOAD_BODY = {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array",
                                 "items": {"type": "string", "format": "binary"}}}}}}


def routes() -> list[Route]:
    user = [{**USER_QUERY, "required": False}]
    return [
        Route("/api/collections", "GET", list_collections, None,
              {200: CollectionListOut, 400: ErrorOut, 503: ErrorOut},
              "The collections the user may read (query parameter user_id; with a key, the "
              "key's user): what a question's collections may name.", query=user),
        Route("/api/collections/<name>/documents", "GET", list_documents, None,
              {200: DocumentListOut, 400: ErrorOut, 503: ErrorOut},
              "The documents uploaded into a collection the user may read (mine: their own).",
              query=user),
        Route("/api/collections/<name>/documents", "POST", upload_documents, None,
              {202: UploadOut, 400: ErrorOut, 413: ErrorOut, 415: ErrorOut, 503: ErrorOut},
              "Upload PDF, Markdown, text, HTML or .docx files (multipart field files) into a "
              "collection the user owns (mine: their own); they are indexed by a background "
              "job (follow job.url). Refused files are listed with the reason.",
              query=user, body=UPLOAD_BODY),
        Route("/api/collections/<name>/documents/<doc_id>", "DELETE", remove_document, None,
              {200: RemovedOut, 400: ErrorOut, 404: ErrorOut, 503: ErrorOut},
              "Remove an uploaded document: its chunks leave search before this returns.",
              query=user),
        Route("/api/collections/<name>/jobs/<job_id>", "GET", upload_job, None,
              {200: JobOut, 400: ErrorOut, 404: ErrorOut},
              "The progress of an upload's indexing.", query=user),
        Route("/api/users/<user_id>", "DELETE", erase, None,
              {200: ErasedOut, 400: ErrorOut, 503: ErrorOut},
              "Erase everything Hearth holds about a user (the user, or an admin): "
              "conversations, own collections and uploads, grants and API keys."),
        Route("/api/keys", "GET", list_keys, None, {200: KeyListOut},
              "API keys (never the keys themselves): every user's for an administrator, the "
              "caller's own otherwise. With API keys on only."),
        Route("/api/keys", "POST", create_key, KeyIn,
              {201: KeyCreatedOut, 400: ErrorOut, 415: ErrorOut},
              "Create an API key for a user (administrators only); the key is in the answer, "
              "once."),
        Route("/api/keys/<key_id>", "DELETE", revoke_key, None, {200: RevokedOut, 404: ErrorOut},
              "Revoke a key (an administrator: anyone's; a user: their own). Every API worker "
              "refuses it from the next request."),
    ]
