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


def test_the_held_out_set_is_checked_the_same_way_and_shares_nothing_with_the_set() -> None:
    """evaluation/holdout: questions no tuning run has used, checked by the same checker; none
    of its questions or ids is the set's."""
    holdout = SETS.parent / "holdout"
    result = subprocess.run([sys.executable, str(SETS / "check.py"), "--sets", str(holdout)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK: 0 failures" in result.stdout, result.stdout

    def rows(folder: Path) -> list[dict[str, object]]:
        return [json.loads(x) for f in sorted(folder.glob("*.jsonl"))
                for x in f.read_text().splitlines() if x.strip()]

    held, used = rows(holdout), rows(SETS)
    assert {q["id"] for q in held}.isdisjoint(q["id"] for q in used)
    assert {q["question"] for q in held}.isdisjoint(q["question"] for q in used)
    # Its Python questions are about pages the set never asks about (a PDF page holds many
    # topics: some of its R questions share a page with one of the set's).
    pages = {q.get("source") for q in used if q.get("corpus") == "python-docs"}
    assert not [q["id"] for q in held if q.get("corpus") == "python-docs"
                and q.get("source") in pages]


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


def test_an_alt_source_is_checked_against_its_own_page(tmp_path: Path) -> None:
    """Another page that answers a question must exist, a PDF's with its page; a key fact it
    words its own way is noted for the reviewer (the real pages of both documents)."""
    def question(n: int, **fields: object) -> str:
        return json.dumps({"id": f"t-{n}", "question": f"Test question number {n}?",
                           "answerable": True, **fields})

    (tmp_path / "python-docs.jsonl").write_text("\n".join([
        question(1, corpus="python-docs", source="library/re.html", key_facts=["(?P<name>"],
                 alt_sources=["howto/regex.html"]),
        question(2, corpus="python-docs", source="library/venv.html",
                 key_facts=["python -m venv"], alt_sources=["tutorial/venv.html"]),
        question(3, corpus="python-docs", source="library/re.html", key_facts=["(?P<name>"],
                 alt_sources=["howto/no-such-page.html"]),
    ]) + "\n")
    (tmp_path / "r-manuals.jsonl").write_text("\n".join([
        question(4, corpus="r-manuals", source="R-admin.pdf", page=60,
                 key_facts=["--enable-R-shlib"],
                 alt_sources=[{"source": "R-exts.pdf", "page": 217}]),
        question(5, corpus="r-manuals", source="R-admin.pdf", page=60,
                 key_facts=["--enable-R-shlib"], alt_sources=["R-exts.pdf"]),
    ]) + "\n")
    (tmp_path / "unanswerable.jsonl").write_text("")
    result = subprocess.run([sys.executable, str(SETS / "check.py"), "-v", "--sets",
                             str(tmp_path)], capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    failures = out[out.index("FAILURES"):]
    assert "t-3" in failures and "no-such-page.html" in failures
    assert "t-5" in failures and "names its page" in failures
    assert not any(f"(t-{n})" in failures for n in (1, 2, 4))
    assert "key fact 'python -m venv' not verbatim in alt source tutorial/venv.html" in out
    assert "(t-1): key fact" not in out and "(t-4): key fact" not in out


def test_every_way_of_a_fact_given_several_ways_is_on_its_page(tmp_path: Path) -> None:
    """A key fact written as the ways to state it (`["-u", "PYTHONUNBUFFERED"]`) has each way
    checked on the page, as a fact of its own would be; a list of one way is refused."""
    def question(n: int, facts: list[object]) -> str:
        return json.dumps({"id": f"t-{n}", "question": f"Test question number {n}?",
                           "answerable": True, "corpus": "python-docs",
                           "source": "using/cmdline.html", "key_facts": facts})

    (tmp_path / "python-docs.jsonl").write_text("\n".join([
        question(1, [["-u", "PYTHONUNBUFFERED"]]),
        question(2, [["-u", "PYTHONNOSUCHVARIABLE"]]),
        question(3, [["-u"]]),
    ]) + "\n")
    (tmp_path / "r-manuals.jsonl").write_text("")
    (tmp_path / "unanswerable.jsonl").write_text("")
    result = subprocess.run([sys.executable, str(SETS / "check.py"), "--sets", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    failures = out[out.index("FAILURES"):]
    assert "(t-1)" not in failures
    assert "(t-2): key fact 'PYTHONNOSUCHVARIABLE' not in using/cmdline.html" in failures
    assert "(t-3): `key_facts` must be" in failures
