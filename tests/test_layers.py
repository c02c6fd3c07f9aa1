"""The architecture, enforced: import-linter's contracts in pyproject.toml.

Layers one way down (faces -> chat service -> chain -> adapters -> config), no import cycle
between Hearth's modules, and no face importing the history store (only the chat service
stores a turn). Each contract is shown to hold on the repository and to break on a copy with
the defect it forbids.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).parent / "lint-imports")
CONTRACTS = {
    "layers": "faces -> chat service -> chain -> adapters -> config, never up",
    "one-writer": "only the chat service stores a turn: no face imports the history store",
    "acyclic": "no import cycles between Hearth's modules",
}


def lint(cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    return result.stdout + result.stderr


def verdicts(output: str) -> dict[str, str]:
    found = {}
    for key, name in CONTRACTS.items():
        for line in output.splitlines():
            if line.startswith(name + " "):
                found[key] = line.rsplit(" ", 1)[1]
    return found


def test_the_repository_keeps_every_contract() -> None:
    output = lint(ROOT)
    assert verdicts(output) == dict.fromkeys(CONTRACTS, "KEPT"), output


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package as a folder named `hearth`, importable from ``tmp_path``."""
    package = tmp_path / "hearth"
    package.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, package / path.name)
    for folder in ("ingest", "evaluation", "webui"):
        shutil.copytree(ROOT / folder, package / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "sets", "origin", "static"))
    (package / "tests").mkdir()  # in the checkout, tests/ sits inside the package's folder
    (package / "tests" / "__init__.py").write_text("")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_copy(copy: Path, module: str, line: str) -> dict[str, str]:
    path = copy / "hearth" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    output = lint(copy, env)
    found = verdicts(output)
    assert set(found) == set(CONTRACTS), output
    return found


def test_the_copy_is_the_package_and_keeps_every_contract(copy: Path) -> None:
    assert lint_copy(copy, "errors.py", "# unchanged") == dict.fromkeys(CONTRACTS, "KEPT")


def test_a_cycle_breaks_the_acyclic_contract(copy: Path) -> None:
    # history -> conversations already; conversations -> history closes a cycle in one layer.
    found = lint_copy(copy, "conversations.py", "from hearth import history  # noqa")
    assert found["acyclic"] == "BROKEN"


def test_a_lower_layer_importing_a_higher_one_breaks_the_layers(copy: Path) -> None:
    found = lint_copy(copy, "model.py", "from hearth import chat  # noqa")
    assert found["layers"] == "BROKEN"


def test_a_face_writing_the_history_breaks_the_one_writer_rule(copy: Path) -> None:
    found = lint_copy(copy, "openai_compat.py", "from hearth.history import build_history  # noqa")
    assert found["one-writer"] == "BROKEN"
    assert found["layers"] == "KEPT"  # the history store is below the faces: only this rule sees it
