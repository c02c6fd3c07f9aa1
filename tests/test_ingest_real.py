"""A real site and a real PDF, end to end: the Python tutorial (Debian's ``python3.11-doc``)
crawled over HTTP on 127.0.0.1, and the "R Internals" manual (Debian's ``r-doc-pdf``), whose
SEXPTYPE table is a borderless table that PDF text extraction usually scatters into columns.

Proves: a table in a real PDF is retrieved with its header and rows together; an answer about
the PDF cites its page and one about the site cites the page URL (retrieval, and `hearth ask`
with the real default model); re-ingesting both embeds nothing.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth.config import load_settings
from hearth.ingest.chunking import chunker_for
from hearth.ingest.documents import Summary
from hearth.ingest.pipeline import ingest_files, ingest_web
from hearth.ingest.web import site_namespace
from hearth.model import Source, cited, to_source
from hearth.services import Services, build_services
from tests.test_ingest import CountingEmbeddings, chunks
from tests.test_ingest_web import Site

REPO = Path(__file__).resolve().parents[1]
PY_DOCS = Path("/usr/share/doc/python3.11/html")
R_INTERNALS = Path("/usr/share/R/doc/manual/R-ints.pdf")
QWEN = REPO / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

pytestmark = [
    pytest.mark.skipif(not PY_DOCS.is_dir(), reason="needs Debian's python3.11-doc "
                       "(apt-get install python3.11-doc)"),
    pytest.mark.skipif(not R_INTERNALS.is_file(), reason="needs Debian's r-doc-pdf "
                       "(apt-get install r-doc-pdf)"),
]


class Corpus:
    def __init__(self, services: Services, counting: CountingEmbeddings, site: Site,
                 start: str, pdfs: Path, web: Summary, files: Summary) -> None:
        self.services, self.counting, self.site = services, counting, site
        self.start, self.pdfs, self.web, self.files = start, pdfs, web, files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embeddings: Any) -> Iterator[Corpus]:
    with pytest.MonkeyPatch.context() as mp:
        import os

        for name in [n for n in os.environ if n.startswith("HEARTH_")]:
            mp.delenv(name)
        data = tmp_path_factory.mktemp("real-corpus")
        settings = load_settings(_env_file=None, data_dir=data / "data",
                                 models_dir=REPO / "models")
    counting = CountingEmbeddings(embeddings)
    services = build_services(settings, embeddings=counting)
    site = Site(PY_DOCS)
    pdfs = data / "manuals"
    pdfs.mkdir()
    shutil.copy(R_INTERNALS, pdfs / "R-ints.pdf")
    start = f"{site.url}/tutorial/index.html"
    try:
        web = ingest_web(services, start, max_depth=1, max_pages=40)
        files = ingest_files(services, pdfs)
        print(f"\nreal corpus: {web}\n{files}")
        yield Corpus(services, counting, site, start, pdfs, web, files)
    finally:
        site.close()


def ask_index(corpus: Corpus, question: str) -> list[Source]:
    hits = corpus.services.vectorstore.search(question, corpus.services.settings.top_k)
    return cited([to_source(doc, score, chunk_id) for doc, score, chunk_id in hits])


def test_the_real_site_and_pdf_are_ingested_whole(corpus: Corpus) -> None:
    assert (corpus.web.seen, corpus.web.added, corpus.web.skipped) == (17, 17, [])
    assert (corpus.files.seen, corpus.files.added, corpus.files.skipped) == (1, 1, [])
    pdf_chunks = chunks(corpus.services, corpus.pdfs)
    pages = {c["page"] for c in pdf_chunks}
    assert min(pages) >= 1 and max(pages) >= 75  # the manual has 81 pages
    chunker = chunker_for(corpus.services.settings)
    web_chunks = chunks(corpus.services, site_namespace(corpus.start))
    assert len(web_chunks) > 17  # the source is named by its folder (/tutorial/)
    for chunk in pdf_chunks + web_chunks:
        assert chunker.count(chunk["text"]) <= 256
    # Sections come from the PDF's outline; running heads and page numbers are dropped.
    sections = {c["section"] for c in pdf_chunks}
    assert {"1.1.1 SEXPTYPEs", "1.1.2 Rest of header", "1 R Internal Structures"} <= sections
    assert not any(c["text"].startswith("Chapter 1: R Internal Structures") for c in pdf_chunks)


def test_a_table_in_a_real_pdf_is_retrieved_with_its_header_and_rows_together(
        corpus: Corpus) -> None:
    hits = corpus.services.vectorstore.search(
        "table of SEXPTYPE numbers: which number is CLOSXP, which is REALSXP?", 4)
    table = next(doc for doc, _, _ in hits if "NILSXP" in doc.page_content)
    text = " ".join(table.page_content.split())
    assert "no SEXPTYPE Description 0 NILSXP NULL 1 SYMSXP symbols 2 LISTSXP pairlists " \
           "3 CLOSXP closures" in text
    assert "13 INTSXP integer vectors 14 REALSXP numeric vectors" in text
    assert table.metadata["page"] == 6 and table.metadata["section"] == "1.1.1 SEXPTYPEs"
    assert table.metadata["source"] == str(corpus.pdfs / "R-ints.pdf")


def test_answers_cite_the_pdf_page_and_the_web_page(corpus: Corpus) -> None:
    question = "How many bytes does a node occupy on a 64-bit platform?"
    pdf = ask_index(corpus, question)
    assert (Path(pdf[0].source).name, pdf[0].page) == ("R-ints.pdf", 6)
    best = corpus.services.vectorstore.search(question, 1)[0][0]
    assert "64-bit platform typically 56 bytes" in " ".join(best.page_content.split())

    web = ask_index(corpus, "How do I create a virtual environment with venv?")
    assert web[0].source == f"{corpus.site.url}/tutorial/venv.html"
    assert web[0].page is None and web[0].title.startswith("12. Virtual Environments")


def test_reingesting_the_real_site_and_pdf_embeds_nothing(corpus: Corpus) -> None:
    corpus.counting.texts = 0
    started = time.monotonic()
    web = ingest_web(corpus.services, corpus.start, max_depth=1, max_pages=40)
    files = ingest_files(corpus.services, corpus.pdfs)
    print(f"\nre-ingest of the site and the PDF: {time.monotonic() - started:.1f} s")
    assert corpus.counting.texts == 0
    assert (web.unchanged, web.chunks_added, web.deleted) == (17, 0, 0)
    assert (files.unchanged, files.chunks_added, files.deleted) == (1, 0, 0)
    # The PDF is not parsed again: the parse cache answers for unchanged files.
    assert files.seconds < corpus.files.seconds / 2


@pytest.mark.slow
@pytest.mark.skipif(not QWEN.is_file(), reason=f"needs the default model at {QWEN} "
                    "(hearth models fetch)")
def test_hearth_ask_answers_from_the_site_and_the_pdf_citing_them(corpus: Corpus) -> None:
    from click.testing import CliRunner

    from hearth.cli import main

    env = {"HEARTH_DATA_DIR": str(corpus.services.settings.data_dir),
           "HEARTH_MODELS_DIR": str(REPO / "models"), "HEARTH_MAX_NEW_TOKENS": "80",
           "HEARTH_LLAMACPP_MODEL": QWEN.stem}
    runner = CliRunner()
    for question, cites in [
        ("How many bytes does a node occupy on a 64-bit platform in R?",
         f"R Internals — {corpus.pdfs / 'R-ints.pdf'}, page 6"),
        ("Which module creates a Python virtual environment?",
         f"{corpus.site.url}/tutorial/venv.html"),
    ]:
        result = runner.invoke(main, ["ask", question], env=env)
        print(result.output)
        assert result.exit_code == 0, result.output
        answer, sources = result.output.split("\nSources:\n")
        # The answer streams after whatever the model loading printed on the same line.
        answer = re.split(r"it/s\]", answer.strip().splitlines()[-1])[-1].strip()
        assert answer and "I am not programmed to answer that" not in answer
        assert cites in sources.splitlines()[0]
        # The timings line (on stderr, which the runner mixes in) says how sure the model was.
        assert re.search(r"s in all, llamacpp:.*, the model's confidence (0\.\d\d|1\.00)\)",
                         result.output), result.output
