"""The parse cache: parsed documents by a hash of their bytes, so unchanged sources are not
parsed again. One folder per source under ``DATA_DIR/ingest-cache``."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from hearth.config import Settings

log = logging.getLogger(__name__)


class ParseCache:
    """Parsed documents by a hash of their bytes (and the parser's options), so re-ingesting
    an unchanged source does not parse it again: PDFs are the slow part of a folder, HTML
    parsing the slow part of a re-crawl. Only a cache: deleting it costs time, never
    correctness. ``prune`` after a successful run forgets what the run did not use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.used: set[str] = set()

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder / f"{key}.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        self.used.add(key)
        return data if isinstance(data, dict) else None

    def put(self, key: str, data: dict[str, Any]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{key}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(data), "utf-8")
            tmp.replace(self.folder / f"{key}.json")
            self.used.add(key)
        except OSError as exc:
            log.warning("cannot write the parse cache in %s: %s", self.folder, exc)

    def forget(self, key: str) -> None:
        """Delete one document's parse (a document removed: its text is not kept)."""
        (self.folder / f"{key}.json").unlink(missing_ok=True)

    def prune(self) -> None:
        if self.folder.is_dir():
            for entry in self.folder.iterdir():
                if entry.suffix == ".json" and entry.stem not in self.used:
                    entry.unlink(missing_ok=True)


def parse_cache_dir(settings: Settings, namespace: str) -> Path:
    """The parse cache's folder for source ``namespace``."""
    digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()
    return settings.data_dir / "ingest-cache" / digest[:24]
