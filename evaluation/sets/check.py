#!/usr/bin/env python3
"""Check the evaluation question sets in this folder against the documents they are about.

For every answerable question (python-docs.jsonl, r-manuals.jsonl):
  * its source page exists (an HTML file under --python-root, or a page of a PDF under --r-root);
  * every key fact appears verbatim in that page's visible text (case-insensitive, Unicode
    NFKC, quotes and whitespace normalised); a fact given as a list of ways to state it
    (`["-u", "PYTHONUNBUFFERED"]`) has every way on the page. For a PDF a match on page-1 or
    page+1 is accepted and reported, since where a passage breaks across pages depends on the
    text extractor;
  * the question does not copy the page: sharing a run of 8 or more consecutive words with it
    is a failure (the questions are meant to be in a user's own words).
For every question: the id is unique across all files, the fields are well-formed, no two
questions have the same text. Unanswerable questions (unanswerable.jsonl) carry
`answerable: false` and a one-line `why`.

Standard library only, plus `pypdf` (or the `pdftotext` command) for the PDF manuals. If
neither is importable/installed, the script re-runs itself with the project's .venv python
when that one has pypdf.

Exit status: 0 when there is no failure, 1 otherwise (2 on a usage error).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PYTHON_ROOT = "/usr/share/doc/python3.11/html"
# Where Debian's r-doc-pdf puts the manuals (the first that exists is used).
R_ROOT_CANDIDATES = (
    "/usr/share/doc/r-doc-pdf/manual",
    "/usr/share/R/doc/manual",
    "/usr/share/doc/r-base-core/manual",
    "/usr/share/doc/r-doc-pdf",
    "/usr/lib/R/doc/manual",
)
SET_FILES = {
    "python-docs.jsonl": "python-docs",
    "r-manuals.jsonl": "r-manuals",
    "unanswerable.jsonl": None,
}
COPY_RUN = 8  # words in a row shared with the page that count as copying

# --- text normalisation --------------------------------------------------------------------

_QUOTES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2212": "-",
    "\u00a0": " ", "\u00ad": "", "\u200b": "", "\ufeff": "",
})


def normalise(text: str) -> str:
    """Lower-case, NFKC (splits ligatures such as 'ﬁ'), straight quotes, single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", normalise(text))


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


# --- HTML ----------------------------------------------------------------------------------

_BLOCK = {
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
    "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "ul", "title",
}
_HIDDEN = {"script", "style", "noscript", "template", "head"}


class _VisibleText(HTMLParser):
    """Collects visible text; separately, the text inside Sphinx's main body
    (<div role="main">, or <div class="body">), which leaves out navigation and sidebars."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.all: list[str] = []
        self.main: list[str] = []
        self._hidden = 0
        self._div_depth = 0
        self._main_at: int | None = None
        self.found_main = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
            return
        if tag == "div":
            self._div_depth += 1
            a = dict(attrs)
            classes = (a.get("class") or "").split()
            if self._main_at is None and (a.get("role") == "main" or "body" in classes):
                self._main_at = self._div_depth
                self.found_main = True
        if tag in _BLOCK:
            self._emit(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self._emit(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
            return
        if tag in _BLOCK:
            self._emit(" ")
        if tag == "div":
            if self._main_at is not None and self._div_depth == self._main_at:
                self._main_at = None
            self._div_depth = max(0, self._div_depth - 1)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._emit(data)

    def _emit(self, text: str) -> None:
        self.all.append(text)
        if self._main_at is not None:
            self.main.append(text)


def html_text(path: Path) -> str:
    parser = _VisibleText()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    chunks = parser.main if parser.found_main else parser.all
    return html.unescape("".join(chunks))


# --- PDF -----------------------------------------------------------------------------------


class PdfPages:
    """Text of single PDF pages, extracted lazily with pypdf, else with pdftotext."""

    def __init__(self) -> None:
        self._readers: dict[Path, object] = {}
        self._counts: dict[Path, int] = {}
        self._cache: dict[tuple[Path, int], str] = {}
        try:
            import pypdf  # noqa: F401

            self.engine = "pypdf"
        except ImportError:
            self.engine = "pdftotext" if shutil.which("pdftotext") else ""

    def page_count(self, path: Path) -> int:
        if path not in self._counts:
            if self.engine == "pypdf":
                self._counts[path] = len(self._reader(path).pages)
            else:
                out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True)
                m = re.search(r"^Pages:\s+(\d+)", out.stdout, re.MULTILINE)
                self._counts[path] = int(m.group(1)) if m else 0
        return self._counts[path]

    def text(self, path: Path, page: int) -> str:
        """The text of 1-based `page`, or '' when there is no such page."""
        if not 1 <= page <= self.page_count(path):
            return ""
        key = (path, page)
        if key not in self._cache:
            if self.engine == "pypdf":
                self._cache[key] = self._reader(path).pages[page - 1].extract_text() or ""
            else:
                out = subprocess.run(
                    ["pdftotext", "-layout", "-f", str(page), "-l", str(page), str(path), "-"],
                    capture_output=True, text=True,
                )
                self._cache[key] = out.stdout
        return self._cache[key]

    def page_label(self, path: Path, page: int) -> str | None:
        """The printed label of 1-based `page` (e.g. '12' or 'iv'), when pypdf can tell."""
        if self.engine != "pypdf":
            return None
        try:
            return self._reader(path).page_labels[page - 1]
        except Exception:  # noqa: BLE001 - a PDF without usable labels
            return None

    def _reader(self, path: Path):  # noqa: ANN202
        if path not in self._readers:
            import pypdf

            self._readers[path] = pypdf.PdfReader(str(path))
        return self._readers[path]


def pdf_variants(text: str) -> list[str]:
    """The normalised page text, and the same with words broken at line ends re-joined."""
    flat = normalise(text)
    joined = normalise(re.sub(r"(\w)-\s*\n\s*(\w)", r"\1\2", text))
    return [flat] if joined == flat else [flat, joined]


def ways(facts: list) -> list[str]:
    """Every string of the key facts: a fact given as a list of ways counts each way."""
    return [way for fact in facts for way in ([fact] if isinstance(fact, str) else fact)]


def valid_fact(fact: object) -> bool:
    """A non-empty string, or a list of two or more (one fact, stated any of these ways)."""
    if isinstance(fact, list):
        return len(fact) >= 2 and all(isinstance(w, str) and w.strip() for w in fact)
    return isinstance(fact, str) and bool(fact.strip())


def missing_facts(facts: list, texts: list[str]) -> list[str]:
    """The key facts (each way of one) in none of ``texts`` (each normalised already): noted
    for an alt source, which a reviewer found answering the question but may word a fact its
    own way."""
    return [fact for fact in ways(facts) if not any(normalise(fact) in t for t in texts)]


def find_r_root() -> str:
    for candidate in R_ROOT_CANDIDATES:
        if Path(candidate, "R-exts.pdf").exists() or Path(candidate, "R-lang.pdf").exists():
            return candidate
    return R_ROOT_CANDIDATES[0]


def maybe_reexec() -> None:
    """Without pypdf or pdftotext, re-run under the project's .venv python if it has pypdf."""
    try:
        import pypdf  # noqa: F401

        return
    except ImportError:
        pass
    if shutil.which("pdftotext") or os.environ.get("HEARTH_SETS_CHECK_REEXEC"):
        return
    for parent in HERE.parents:
        venv = parent / ".venv"
        python = venv / "bin" / "python"
        # (a venv's python is a link to the same binary: compare prefixes, not executables)
        if python.exists() and Path(sys.prefix).resolve() != venv.resolve():
            probe = subprocess.run([str(python), "-c", "import pypdf"], capture_output=True)
            if probe.returncode == 0:
                env = dict(os.environ, HEARTH_SETS_CHECK_REEXEC="1")
                os.execve(str(python), [str(python), __file__, *sys.argv[1:]], env)


# --- checking ------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.notes: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.failures.append(f"{where}: {message}")

    def note(self, where: str, message: str) -> None:
        self.notes.append(f"{where}: {message}")


def load_sets(sets_dir: Path, report: Report) -> list[tuple[str, int, dict]]:
    rows: list[tuple[str, int, dict]] = []
    for name in SET_FILES:
        path = sets_dir / name
        if not path.exists():
            report.fail(name, "file missing")
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                report.fail(f"{name}:{number}", f"not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                report.fail(f"{name}:{number}", "a line must be a JSON object")
                continue
            rows.append((name, number, obj))
    return rows


def check_fields(name: str, number: int, q: dict, report: Report) -> bool:
    where = f"{name}:{number} ({q.get('id', '?')})"
    ok = True
    for key in ("id", "question"):
        if not isinstance(q.get(key), str) or not q[key].strip():
            report.fail(where, f"`{key}` must be a non-empty string")
            ok = False
    corpus = SET_FILES[name]
    if corpus is None:
        if q.get("answerable") is not False:
            report.fail(where, "`answerable` must be false in unanswerable.jsonl")
            ok = False
        why = q.get("why")
        if not isinstance(why, str) or not why.strip() or "\n" in why:
            report.fail(where, "`why` must be a one-line non-empty string")
            ok = False
        for key in ("source", "page", "key_facts"):
            if key in q:
                report.fail(where, f"an unanswerable question has no `{key}`")
                ok = False
        return ok
    if q.get("answerable") is not True:
        report.fail(where, "`answerable` must be true")
        ok = False
    if q.get("corpus") != corpus:
        report.fail(where, f"`corpus` must be {corpus!r}")
        ok = False
    if not isinstance(q.get("source"), str) or not q["source"].strip():
        report.fail(where, "`source` must be a non-empty string")
        ok = False
    facts = q.get("key_facts")
    if not isinstance(facts, list) or not facts or not all(valid_fact(f) for f in facts):
        report.fail(where, "`key_facts` must be a non-empty list of non-empty strings "
                           "(or of lists of two or more: the ways to state one fact)")
        ok = False
    if corpus == "r-manuals":
        page = q.get("page")
        if not isinstance(page, int) or isinstance(page, bool) or page < 1:
            report.fail(where, "`page` must be a 1-based page number")
            ok = False
        if isinstance(q.get("source"), str) and not q["source"].endswith(".pdf"):
            report.fail(where, "`source` must be a PDF file name")
            ok = False
    alt = q.get("alt_sources", [])
    if not isinstance(alt, list):
        report.fail(where, "`alt_sources` must be a list")
        ok = False
    return ok


def check_copy(where: str, question: str, page_text: str, report: Report) -> None:
    q_words = words(question)
    if len(q_words) < COPY_RUN:
        return
    shared = ngrams(q_words, COPY_RUN) & ngrams(words(page_text), COPY_RUN)
    if shared:
        run = " ".join(sorted(shared)[0])
        report.fail(where, f"question copies {COPY_RUN}+ consecutive words of its page: {run!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python-root", default=DEFAULT_PYTHON_ROOT,
                        help=f"root of the Python 3.11 HTML docs (default {DEFAULT_PYTHON_ROOT})")
    parser.add_argument("--r-root", default=None,
                        help="folder holding the R manuals' PDFs (default: r-doc-pdf's folder, "
                             f"the first of {', '.join(R_ROOT_CANDIDATES)} that has them)")
    parser.add_argument("--sets", default=str(HERE), help="folder holding the .jsonl sets")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the notes as well")
    args = parser.parse_args(argv)

    py_root = Path(args.python_root)
    r_root = Path(args.r_root or find_r_root())
    report = Report()
    rows = load_sets(Path(args.sets), report)
    pdf = PdfPages()

    ids = Counter(q.get("id") for _, _, q in rows)
    for dup, n in ids.items():
        if n > 1:
            report.fail("ids", f"id {dup!r} used {n} times")
    texts = Counter(normalise(q.get("question", "")) for _, _, q in rows
                    if isinstance(q.get("question"), str))
    for dup, n in texts.items():
        if n > 1:
            report.fail("questions", f"the same question appears {n} times: {dup!r}")

    if not py_root.is_dir():
        report.fail("python-root", f"{py_root} not found (install Debian's python3.11-doc)")
    if not r_root.is_dir():
        report.fail("r-root", f"{r_root} not found (install Debian's r-doc-pdf)")
    if not pdf.engine and any(SET_FILES[n] == "r-manuals" for n, _, _ in rows):
        report.fail("pdf", "neither pypdf nor pdftotext is available to read the R manuals")

    counts: dict[str, int] = Counter()
    pages: dict[str, set[str]] = defaultdict(set)
    html_cache: dict[Path, str] = {}

    def page_text(path: Path) -> str:
        if path not in html_cache:
            html_cache[path] = html_text(path)
        return html_cache[path]

    facts_checked = 0  # each way of a fact given several ways counts
    facts_given = 0
    neighbour_matches = 0

    for name, number, q in rows:
        corpus = SET_FILES[name] or "unanswerable"
        counts[corpus] += 1
        where = f"{name}:{number} ({q.get('id', '?')})"
        if not check_fields(name, number, q, report) or corpus == "unanswerable":
            continue
        for fact in ways(q["key_facts"]):
            if re.search(r"(?<!\w)" + re.escape(normalise(fact)) + r"(?!\w)",
                         normalise(q["question"])):
                report.note(where, f"key fact {fact!r} is already in the question")
        if corpus == "python-docs":
            if not py_root.is_dir():
                continue
            path = py_root / q["source"]
            if not path.is_file():
                report.fail(where, f"page {q['source']} not found under {py_root}")
                continue
            text = page_text(path)
            page_norm = normalise(text)
            pages[corpus].add(q["source"])
            facts_given += len(q["key_facts"])
            for fact in ways(q["key_facts"]):
                facts_checked += 1
                if normalise(fact) not in page_norm:
                    report.fail(where, f"key fact {fact!r} not in {q['source']}")
            check_copy(where, q["question"], text, report)
            for alt in q.get("alt_sources", []):
                if not isinstance(alt, str) or not (py_root / alt).is_file():
                    report.fail(where, f"alt source {alt!r} not found under {py_root}")
                    continue
                for fact in missing_facts(q["key_facts"], [normalise(page_text(py_root / alt))]):
                    report.note(where, f"key fact {fact!r} not verbatim in alt source {alt}")
        else:
            if not r_root.is_dir() or not pdf.engine:
                continue
            path = r_root / q["source"]
            if not path.is_file():
                report.fail(where, f"manual {q['source']} not found under {r_root}")
                continue
            page = q["page"]
            n_pages = pdf.page_count(path)
            if page > n_pages:
                report.fail(where, f"{q['source']} has {n_pages} pages, not {page}")
                continue
            pages[corpus].add(f"{q['source']}#{page}")
            label = q.get("page_label")
            if label is not None:
                found = pdf.page_label(path, page)
                if found is not None and str(label) != found:
                    report.fail(where, f"page {page} of {q['source']} is labelled {found!r}, "
                                       f"not {label!r}")
            here = pdf_variants(pdf.text(path, page))
            near = {p: pdf_variants(pdf.text(path, p)) for p in (page - 1, page + 1)}
            facts_given += len(q["key_facts"])
            for fact in ways(q["key_facts"]):
                facts_checked += 1
                f = normalise(fact)
                if any(f in v for v in here):
                    continue
                other = [p for p, vs in near.items() if any(f in v for v in vs)]
                if other:
                    neighbour_matches += 1
                    report.note(where, f"key fact {fact!r} found on page {other[0]}, "
                                       f"not {page}, of {q['source']}")
                else:
                    report.fail(where, f"key fact {fact!r} not on page {page} (±1) "
                                       f"of {q['source']}")
            context = "\n".join(pdf.text(path, p) for p in (page - 1, page, page + 1))
            check_copy(where, q["question"], context, report)
            for alt in q.get("alt_sources", []):
                src = alt.get("source") if isinstance(alt, dict) else alt
                if not isinstance(src, str) or not (r_root / src).is_file():
                    report.fail(where, f"alt source {alt!r} not found under {r_root}")
                    continue
                alt_page = alt.get("page") if isinstance(alt, dict) else None
                if not isinstance(alt_page, int) or not 1 <= alt_page <= pdf.page_count(
                        r_root / src):
                    report.fail(where, f"alt source {alt!r}: a PDF's alt source names its page")
                    continue
                for fact in missing_facts(q["key_facts"],
                                          pdf_variants(pdf.text(r_root / src, alt_page))):
                    report.note(where, f"key fact {fact!r} not verbatim on page {alt_page} of "
                                       f"alt source {src}")

    answerable = counts["python-docs"] + counts["r-manuals"]
    print(f"python docs: {py_root}")
    print(f"R manuals:   {r_root} (PDF text by {pdf.engine or 'nothing'})")
    print(f"python-docs:  {counts['python-docs']:4d} questions over "
          f"{len(pages['python-docs'])} pages")
    r_files = Counter(p.split('#')[0] for p in pages["r-manuals"])
    r_by_file: Counter[str] = Counter()
    for name, _, q in rows:
        if SET_FILES[name] == "r-manuals" and isinstance(q.get("source"), str):
            r_by_file[q["source"]] += 1
    detail = ", ".join(f"{k} {v}" for k, v in sorted(r_by_file.items()))
    print(f"r-manuals:    {counts['r-manuals']:4d} questions over "
          f"{len(pages['r-manuals'])} pages of {len(r_files)} manuals ({detail})")
    print(f"unanswerable: {counts['unanswerable']:4d} questions")
    print(f"answerable:   {answerable:4d} questions, {facts_given} key facts "
          f"({facts_checked} strings) checked, "
          f"{neighbour_matches} found on a neighbouring PDF page")
    if report.notes and args.verbose:
        print(f"\nnotes ({len(report.notes)}):")
        for line in report.notes:
            print(f"  {line}")
    elif report.notes:
        print(f"notes: {len(report.notes)} (run with -v to list them)")
    if report.failures:
        print(f"\nFAILURES ({len(report.failures)}):")
        for line in report.failures:
            print(f"  {line}")
        print(f"\nFAILED: {len(report.failures)} failure(s)")
        return 1
    print("OK: 0 failures")
    return 0


if __name__ == "__main__":
    maybe_reexec()
    sys.exit(main())
