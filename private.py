"""What Hearth writes is its user's alone: folders 0700, files 0600, whatever the umask.

The stores hold questions, answers and key hashes; on a shared machine, another account must
not read them. ``hearth`` also sets the process umask to 077, so that what libraries write
(Chroma's files, SQLite's journals) is private too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):  # a folder of another owner (a mount): leave it
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Make an existing file (and SQLite's -wal and -shm beside it) readable by its owner only."""
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            if candidate.exists():
                os.chmod(candidate, 0o600)
    return path
