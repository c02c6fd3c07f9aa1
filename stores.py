"""Every store Hearth owns, for maintenance: their schema versions, and migrating them all.

Each store migrates itself when it opens (see ``migrations``); ``hearth migrate`` and
``hearth doctor`` use this module to do it at once, or only to look.
"""

from __future__ import annotations

from hearth.access import build_access, collections_status
from hearth.auth import build_keys, keys_status
from hearth.config import Settings
from hearth.history import build_history, history_status
from hearth.ingest.records import migrate_records, records_status
from hearth.migrations import StoreVersion


def store_versions(settings: Settings) -> list[StoreVersion]:
    """The schema version of every store, read without changing anything."""
    return [history_status(settings), keys_status(settings), collections_status(settings),
            records_status(settings)]


def migrate(settings: Settings) -> None:
    """Open every store, which brings each to this version's schema."""
    build_history(settings).ping()
    build_keys(settings).list()
    build_access(settings).all()
    migrate_records(settings)
