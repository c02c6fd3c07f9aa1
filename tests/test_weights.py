"""Packaged models: assembled from the PyPI wheels and checked by sha256."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import weights
from tests.conftest import MODELS, SMOLLM


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


def test_an_install_that_is_not_a_checkout_finds_the_catalogue(tmp_path: Path) -> None:
    """The wheel carries models/catalog.json as a data file, and weights looks for it there
    when it is not beside the code (the Docker image installs Hearth into a venv)."""
    import subprocess
    import sys
    import zipfile

    from tests.test_deploy import ROOT, check_deploy

    # What the Docker image copies before `pip install .`: what pyproject.toml installs.
    source = tmp_path / "source"
    for name in ["pyproject.toml", "README.md",
                 *check_deploy.project_sources((ROOT / "pyproject.toml").read_text())]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)], check=True)
    [wheel] = (tmp_path / "dist").glob("hearth-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [member] = [n for n in archive.namelist() if n.endswith("data/share/hearth/catalog.json")]
        assert archive.read(member) == weights.CATALOG_PATH.read_bytes()
    # Installed: no models/ beside the modules, the catalogue under the environment's prefix.
    prefix = tmp_path / "venv"
    (prefix / "share" / "hearth").mkdir(parents=True)
    shutil.copy(weights.CATALOG_PATH, prefix / "share" / "hearth" / "catalog.json")
    found = weights.catalog_path(here=tmp_path / "site-packages", prefix=str(prefix))
    assert found == prefix / "share" / "hearth" / "catalog.json"
    assert weights.catalog(found) == weights.catalog()
    assert weights.catalog_path() == weights.CATALOG_PATH  # a checkout uses its own
