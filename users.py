"""Erasing a user: everything Hearth holds about them, in every store.

``DELETE /api/users/<id>`` and ``hearth users erase ID``: the user's conversations, the
collections they own (with their chunks and uploaded files), what they uploaded elsewhere,
their place among other collections' readers, and their API keys. ``DELETE
/api/users/<id>/history`` keeps its narrower meaning: the conversations only. Access ends
first: a store that fails part-way leaves the rest for erasing again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hearth.chat import Chat
from hearth.errors import HearthError, Unavailable
from hearth.ingest.jobs import Jobs, build_job_store
from hearth.ingest.sources import remove_collection
from hearth.ingest.uploads import Uploads


@dataclass
class Erased:
    conversations: int
    collections: int
    documents: int
    grants: int
    keys: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EraseIncomplete(Unavailable):
    """A step of an erasure failed: what was erased stays erased, and erasing again finishes
    it. Reported as the failure that stopped it (its code and status): an API client without
    the backends' details reads only the code of a store that is down, as for any other."""

    def __init__(self, user_id: str, erased: list[str], left: list[str],
                 cause: HearthError) -> None:
        super().__init__(
            f"erasing {user_id!r} stopped: {cause}. Erased: {', '.join(erased) or 'nothing'}; "
            f"not erased yet: {', '.join(left)}. Run the erasure again to finish it")
        self.code, self.status = cause.code, cause.status


def erase_user(chat: Chat, user_id: str, jobs: Jobs | None = None) -> Erased:
    """Erase ``user_id`` everywhere; ``jobs`` is the server's job runner (the terminal has
    none), so that a job of theirs still running is not recorded when it ends.

    Their access ends first (API keys, then grants): a store that fails later leaves nothing
    they can use, and erasing again finishes the rest."""
    services = chat.services
    access = services.access
    erased: list[str] = []
    steps = ["their API keys", "their grants", "their collections and uploads",
             "their conversations"]
    try:
        keys = services.keys.delete_user(user_id)
        erased.append(f"{keys} API keys")
        grants = access.forget_reader(user_id)
        erased.append(f"{grants} grants")
        owned = [c.name for c in access.all() if c.owner == user_id]
        uploads = Uploads(services)
        documents = sum(len(uploads.documents(name)) for name in owned)
        for name in owned:
            remove_collection(services, name)
        elsewhere = uploads.remove_uploads_of(user_id)
        documents += len(elsewhere)
        # The records of the jobs that read their files: their names, their collection's.
        job_ids = [doc.job for doc in elsewhere if doc.job]
        (jobs or build_job_store(services.settings)).forget(job_ids, owned)
        erased.append(f"{len(owned)} collections with {documents} documents")
        conversations = chat.erase_history(user_id)
    except HearthError as exc:
        raise EraseIncomplete(user_id, erased, steps[len(erased):], exc) from exc
    return Erased(conversations=conversations, collections=len(owned), documents=documents,
                  grants=grants, keys=keys)
