"""Scanned PDFs: a page without a text layer is read by OCR (Debian's tesseract-ocr), with
real pages of a real manual (Debian's r-doc-pdf "An Introduction to R") made into scans at test
time: each is rendered to a picture (pdftoppm) and wrapped, alone, in a PDF (Pillow).

Proves: a scanned page's text is indexed with its page number, retrieved, and answers a
question; pages with text keep the fast path (never OCR'd, even with a picture on them); OCR
is bounded in pages and in time; without tesseract a scanned page is skipped with the reason,
the rest of the document is indexed, and the next run (tesseract installed, an API job) reads
the page and reports it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth.ingest.documents import (
    Parsed,
    ReadLimits,
    Skipped,
    SkippedForNow,
    SkippedPages,
    Summary,
)
from hearth.ingest.pdf import OCR_FOUND_NOTHING, parse_pdf
from hearth.ingest.pipeline import ingest_files
from hearth.ingest.progress import Progress
from hearth.model import cited, to_source
from hearth.services import Services, build_services
from tests.conftest import MODELS, QWEN_1_5B
from tests.test_ingest import chunks
from tests.test_ingest_bounds import _client, _wait

R_INTRO = Path("/usr/share/R/doc/manual/R-intro.pdf")
# R-intro's page 12 ("1.11 Data permanency and removing objects": rm, .RData), page 13 (two
# lines: quick to OCR) and page 18 ("2.4 Generating regular sequences"), all text only.
REMOVING_OBJECTS, SHORT, SEQUENCES = 12, 13, 18
SHORT_TEXT = "be quite hard to decide what they might be when the several analyses"
NO_TESSERACT = "no text layer, and OCR is not available: tesseract is not installed " \
               "(apt-get install tesseract-ocr)"

pytestmark = [
    pytest.mark.real,  # real documents and real programs: pdftoppm, tesseract
    pytest.mark.skipif(not R_INTRO.is_file(),
                       reason="needs Debian's r-doc-pdf (apt-get install r-doc-pdf)"),
    pytest.mark.skipif(not (shutil.which("tesseract") and shutil.which("pdftoppm")),
                       reason="needs tesseract and pdftoppm "
                       "(apt-get install tesseract-ocr poppler-utils)"),
]


def scan(page: int, target: Path, dpi: int = 150) -> Path:
    """Page ``page`` of R-intro as a scanner makes it: a greyscale picture of the page, alone
    in a PDF with no text layer."""
    from PIL import Image
    from pypdf import PdfReader

    picture = target.with_suffix(".png")
    subprocess.run(["pdftoppm", "-f", str(page), "-l", str(page), "-r", str(dpi), "-gray",
                    "-png", "-singlefile", str(R_INTRO), str(picture.with_suffix(""))],
                   check=True)
    with Image.open(picture) as image:
        image.save(target, "PDF", resolution=float(dpi))
    picture.unlink()
    assert not (PdfReader(target).pages[0].extract_text() or "").strip()  # no text layer
    return target


def manual(pages: list[int | Path], target: Path) -> Path:
    """A PDF of R-intro's pages (numbers) and scans (paths), in that order."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    intro = PdfReader(R_INTRO)
    for page in pages:
        writer.add_page(PdfReader(page).pages[0] if isinstance(page, Path)
                        else intro.pages[page - 1])
    with target.open("wb") as f:
        writer.write(f)
    return target


def no_tesseract_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A PATH with pdftoppm on it, and no tesseract: a machine where it is not installed.
    Returns the real PATH."""
    real = os.environ["PATH"]
    bin_dir = tmp_path / "bin-without-tesseract"
    bin_dir.mkdir()
    (bin_dir / "pdftoppm").symlink_to(str(shutil.which("pdftoppm")))
    monkeypatch.setenv("PATH", str(bin_dir))
    return real


# --- a scanned page of a real manual, read, retrieved, answered from ---------------------------


class Scanned:
    def __init__(self, services: Services, folder: Path, summary: Summary,
                 progress: Progress) -> None:
        self.services, self.folder, self.summary, self.progress = \
            services, folder, summary, progress


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, embeddings: Any) -> Iterator[Scanned]:
    """A folder of a scan of R-intro's page 12 beside three pages of R-intro with text (14-16,
    not 12), ingested; the model is the 1.5B (the default from 2 physical cores; loaded only
    if a test asks it): the 0.5B's R was withheld, rightly, as unsupported."""
    from hearth.config import load_settings

    root = tmp_path_factory.mktemp("ocr")
    folder = root / "scans"
    folder.mkdir()
    scan(REMOVING_OBJECTS, folder / "scanned.pdf")
    manual([14, 15, 16], folder / "manual.pdf")
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("HEARTH_")]:
            mp.delenv(name)
        settings = load_settings(_env_file=None, data_dir=root / "data", models_dir=MODELS,
                                 llamacpp_model=QWEN_1_5B)
    services = build_services(settings, embeddings=embeddings)
    progress = Progress()
    started = time.monotonic()
    summary = ingest_files(services, folder, progress=progress)
    print(f"\n{summary}\n({time.monotonic() - started:.1f} s)")
    yield Scanned(services, folder, summary, progress)


def test_a_scanned_page_is_read_by_ocr_and_counted(scanned: Scanned) -> None:
    summary = scanned.summary
    assert (summary.seen, summary.added, summary.skipped) == (2, 2, [])
    assert summary.ocr_pages == 1 and summary.skipped_pages == []  # manual.pdf: no OCR
    assert scanned.progress.ocr_pages == 1
    assert summary.to_dict()["ocr_pages"] == 1
    assert "pages:     1 read by OCR, 0 skipped" in str(summary)
    pages = [c for c in chunks(scanned.services, scanned.folder)
             if c["source"].endswith("scanned.pdf")]
    assert pages and {c["page"] for c in pages} == {1}
    text = " ".join(" ".join(c["text"] for c in pages).split())
    assert "1.11 Data permanency and removing objects" in text
    assert "To remove objects the function rm is available" in text


def test_the_scanned_page_is_what_a_question_retrieves(scanned: Scanned) -> None:
    question = "How do I remove objects from the R workspace?"
    hits = scanned.services.vectorstore.search(question, scanned.services.settings.top_k)
    best = cited([to_source(doc, score, chunk_id) for doc, score, chunk_id in hits])[0]
    assert (Path(best.source).name, best.page) == ("scanned.pdf", 1)
    assert "rm(x, y, z" in hits[0][0].page_content


@pytest.mark.slow
def test_a_question_is_answered_from_the_scanned_page(scanned: Scanned) -> None:
    answer = scanned.services.assistant.answer("How do I remove objects from the R workspace?")
    assert not answer.refused
    assert "rm(" in answer.answer or "rm " in answer.answer, answer.answer
    assert Path(answer.sources[0].source).name == "scanned.pdf"
    assert answer.sources[0].page == 1


# --- the fast path: pages with text are never OCR'd --------------------------------------------


def test_pages_with_text_are_not_ocrd_even_with_a_picture(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pypdf import PdfReader, PdfWriter, Transformation

    # R-intro's title page, copyright page and table of contents, and page 10 with a small
    # picture (a scan of page 12) stamped in its corner: text pages, one with an image.
    stamp = PdfReader(scan(REMOVING_OBJECTS, tmp_path / "stamp.pdf")).pages[0]
    writer = PdfWriter(clone_from=manual([1, 2, 3, 10], tmp_path / "text.pdf"))
    writer.pages[3].merge_transformed_page(stamp, Transformation().scale(0.2))
    with (tmp_path / "text.pdf").open("wb") as f:
        writer.write(f)
    assert len(PdfReader(tmp_path / "text.pdf").pages[3].images) == 1
    no_tesseract_path(tmp_path, monkeypatch)

    parsed = parse_pdf(tmp_path / "text.pdf", "text.pdf", char_margin=30.0,
                       limits=ReadLimits.of())

    # Without tesseract on the PATH, any page sent to OCR would be listed as skipped.
    assert isinstance(parsed, Parsed), parsed
    assert (parsed.ocr_pages, parsed.skipped_pages, parsed.lasting) == (0, [], True)
    assert {b.page for b in parsed.blocks} == {1, 2, 3, 4}


# --- without tesseract -----------------------------------------------------------------------


def test_without_tesseract_a_scanned_page_is_skipped_with_the_reason_then_read_by_a_job(
        make_settings: Callable[..., Any], embeddings: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    page = scan(SHORT, tmp_path / "page13.pdf")
    manual([10, 11, page], folder / "mixed.pdf")  # two text pages, then a scanned one
    shutil.copy(page, folder / "scan.pdf")
    services = build_services(make_settings(ingest_api=True, ingest_roots=[tmp_path]),
                              embeddings=embeddings)
    real_path = no_tesseract_path(tmp_path, monkeypatch)

    first = ingest_files(services, folder)

    # The scanned page is skipped with the reason; the text pages of its document are indexed.
    assert first.skipped_pages == [SkippedPages("mixed.pdf", [3], NO_TESSERACT)]
    assert [(s.name, s.reason) for s in first.skipped] == [("scan.pdf", NO_TESSERACT)]
    assert (first.added, first.ocr_pages) == (1, 0)
    assert f"{NO_TESSERACT}: mixed.pdf p. 3" in str(first)
    assert f"{NO_TESSERACT}: scan.pdf" in str(first)
    assert {c["page"] for c in chunks(services, folder)} == {1, 2}

    # tesseract installed, an API job reads the page (the parse cache did not keep the skip),
    # in its own process, and reports it in its progress and summary.
    monkeypatch.setenv("PATH", real_path)
    (folder / "scan.pdf").unlink()  # one page to OCR is enough
    client = _client(services)
    started = client.post("/api/ingest", json={"files": str(folder)})
    assert started.status_code == 202, started.get_json()
    status = _wait(client, started.get_json()["id"])
    assert status["state"] == "done", status
    assert status["progress"]["ocr_pages"] == 1
    second = status["summary"]
    assert (second["updated"], second["ocr_pages"], second["skipped_pages"]) == (1, 1, [])
    page3 = " ".join(c["text"] for c in chunks(services, folder) if c["page"] == 3)
    assert SHORT_TEXT in " ".join(page3.split())


# --- bounds and bad pages --------------------------------------------------------------------


def test_ocr_is_bounded_in_pages_and_time_and_a_bad_page_loses_nothing(tmp_path: Path) -> None:
    two_scans = manual([scan(SHORT, tmp_path / "a.pdf"),
                        scan(SEQUENCES, tmp_path / "b.pdf")], tmp_path / "two.pdf")
    limits = ReadLimits.of()

    # At most HEARTH_INGEST_OCR_MAX_PAGES pages of a document: the others are listed.
    capped = parse_pdf(two_scans, "two.pdf", char_margin=30.0,
                       limits=ReadLimits(**{**vars(limits), "ocr_pages": 1}))
    assert isinstance(capped, Parsed) and capped.ocr_pages == 1 and capped.lasting
    assert capped.skipped_pages == [SkippedPages("two.pdf", [2], (
        "no text layer, past HEARTH_INGEST_OCR_MAX_PAGES (1 page of a document read by OCR)"))]
    assert {b.page for b in capped.blocks} == {1}
    assert SHORT_TEXT in " ".join(" ".join(b.text for b in capped.blocks).split())

    # Past HEARTH_INGEST_OCR_TIMEOUT_S a page is skipped, and read again next time.
    started = time.monotonic()
    late = parse_pdf(two_scans, "two.pdf", char_margin=30.0,
                     limits=ReadLimits(**{**vars(limits), "ocr_page_s": 0.05}))
    assert time.monotonic() - started < 20
    assert isinstance(late, SkippedForNow)
    assert late.reason == "OCR took longer than 0.05 s (HEARTH_INGEST_OCR_TIMEOUT_S)"

    # A scanned page whose picture is broken (its JPEG data overwritten past the header, the
    # PDF around it intact): said, and the text pages are kept.
    data = (tmp_path / "a.pdf").read_bytes()
    start, end = data.index(b"stream") + 400, data.index(b"endstream") - 16
    (tmp_path / "broken.pdf").write_bytes(
        data[:start] + (bytes(range(256)) * (end // 256 + 1))[:end - start] + data[end:])
    mixed = manual([10, tmp_path / "broken.pdf"], tmp_path / "mixed.pdf")
    parsed = parse_pdf(mixed, "mixed.pdf", char_margin=30.0, limits=limits)
    assert isinstance(parsed, Parsed) and {b.page for b in parsed.blocks} == {1}
    assert parsed.skipped_pages == [SkippedPages("mixed.pdf", [2], OCR_FOUND_NOTHING)]


def test_ocr_off_skips_a_scan_with_the_reason(tmp_path: Path) -> None:
    limits = ReadLimits(**{**vars(ReadLimits.of()), "ocr_pages": 0})
    skipped = parse_pdf(scan(SEQUENCES, tmp_path / "s.pdf"), "s.pdf", char_margin=30.0,
                        limits=limits)
    assert type(skipped) is Skipped
    assert skipped.reason == "no text layer, and OCR is off (HEARTH_INGEST_OCR_MAX_PAGES=0)"

