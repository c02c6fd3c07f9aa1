"""Erasing a user: everything Hearth holds about them, in every store.

``DELETE /api/users/<id>`` and ``hearth users erase ID``: the user's conversations, the
collections they own (with their chunks and uploaded files), what they uploaded elsewhere,
their place among other collections' readers, and their API keys. ``DELETE
/api/users/<id>/history`` keeps its narrower meaning: the conversations only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hearth.chat import Chat
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


def erase_user(chat: Chat, user_id: str, jobs: Jobs | None = None) -> Erased:
    """Erase ``user_id`` everywhere; ``jobs`` is the server's job runner (the terminal has
    none), so that a job of theirs still running is not recorded when it ends."""
    services = chat.services
    access = services.access
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
    return Erased(conversations=chat.erase_history(user_id), collections=len(owned),
                  documents=documents, grants=access.forget_reader(user_id),
                  keys=services.keys.delete_user(user_id))
