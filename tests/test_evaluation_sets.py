"""The evaluation question sets (evaluation/sets/): every key fact really is on its page of the
real documents (Debian's python3.11-doc and r-doc-pdf), checked by the sets' own checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SETS = Path(__file__).resolve().parents[1] / "evaluation" / "sets"
PY_DOCS = Path("/usr/share/doc/python3.11/html")
R_DOCS = Path("/usr/share/doc/r-doc-pdf/manual")

pytestmark = [
    pytest.mark.real,  # reads 117 real pages
    pytest.mark.skipif(not (PY_DOCS.is_dir() and R_DOCS.is_dir()),
                       reason="needs Debian's python3.11-doc and r-doc-pdf"),
]


def test_every_key_fact_is_on_its_page() -> None:
    result = subprocess.run([sys.executable, str(SETS / "check.py")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 0 failures" in result.stdout


def test_the_sets_are_as_large_as_the_issue_asks() -> None:
    def lines(name: str) -> list[dict[str, object]]:
        return [json.loads(x) for x in (SETS / name).read_text().splitlines() if x.strip()]

    answerable = lines("python-docs.jsonl") + lines("r-manuals.jsonl")
    assert len(answerable) >= 150 and all(q["answerable"] and q["key_facts"] for q in answerable)
    assert {q["source"] for q in lines("r-manuals.jsonl")} >= {"R-data.pdf", "R-exts.pdf"}
    unanswerable = lines("unanswerable.jsonl")
    assert len(unanswerable) >= 20 and not any(q["answerable"] for q in unanswerable)
    ids = [q["id"] for q in answerable + unanswerable]
    assert len(ids) == len(set(ids))
