"""What an install of Hearth puts on a machine: one package, `hearth`, and the `hearth` command.

The wheel is built from a copy of the checkout (as `pip install .` would build it) and
installed into an empty folder; nothing but `hearth` and its metadata may land at the top of
site-packages, and the installed package must work from any folder, with its data files.
Real build, real install; no model and no server: fast enough for the fast tier, but it runs
pip, so it is marked real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[1]
# What a clean clone does not have: never copied into the build.
LOCAL = shutil.ignore_patterns(".git", ".venv", "data", "*.gguf", "*.part", "__pycache__",
                               "build", "dist", "*.egg-info", ".mypy_cache", ".ruff_cache",
                               ".pytest_cache", "eval-runs", "artifacts", "node_modules",
                               # models/hf and models/adapters: converted models, LoRA adapters
                               "hf", "adapters")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=LOCAL)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder / "dist"), str(source)], check=True, timeout=300)
    [built] = (folder / "dist").glob("hearth-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"hearth"}, top
    assert "hearth/models/catalog.json" in names  # the packaged-model catalogue
    assert "hearth/webui/static/index.html" in names  # the page
    assert {"hearth/api.py", "hearth/config.py", "hearth/model.py",
            "hearth/ingest/pipeline.py", "hearth/chat.py"} <= set(names)
    # The checkout's other folders stay out of the install.
    assert not [n for n in names if n.startswith(("hearth/tests/", "hearth/bench/",
                                                  "hearth/scripts/", "hearth/docs/"))]
    [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        assert "hearth = hearth.cli:main" in archive.read(entry_points).decode()


def test_installed_it_imports_from_any_folder_with_its_data(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", str(target), str(wheel)], check=True, timeout=300)
    installed = {p.name for p in target.iterdir()}
    assert {n for n in installed if not n.endswith(".dist-info")} <= {"hearth", "bin"}, installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = ("import json, hearth, hearth.weights as w; "
             "print(json.dumps([hearth.__file__, str(w.CATALOG_PATH), sorted(w.catalog())]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    package_file, catalog_path, models = json.loads(out)
    assert Path(package_file).parent == target / "hearth"
    assert Path(catalog_path).is_file() and Path(catalog_path).is_relative_to(target)
    assert "qwen2.5-coder-0.5b-instruct-q4_k_m" in models
