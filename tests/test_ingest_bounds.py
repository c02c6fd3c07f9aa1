"""Ingestion reads within bounds: bombs are skipped with the reason, memory stays bounded, and
an API job that runs out of memory or time fails alone, changing nothing, the server answering.

Real parts throughout: HTTP servers on 127.0.0.1 serving gzip and deflate bombs, zip bombs and
PDFs made here, a FIFO, a sparse file of 5 GiB (no disk used); the API jobs run in their real
child process over the real embedding model and Chroma.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hearth.ingest.documents import IngestError, Parsed, ReadLimits, Skipped
from hearth.ingest.files import load_folder
from hearth.ingest.web import Crawler
from hearth.services import Services, build_services

MiB = 2**20
SMALL = ReadLimits(file_bytes=1 * MiB, unpacked_bytes=1 * MiB, pdf_pages=3,
                   page_bytes=256 * 1024, ocr_pages=1, ocr_page_s=10.0)


def _bomb(size: int, wbits: int) -> bytes:
    """``size`` bytes of spaces, compressed (a few hundred bytes per MiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * MiB
    return b"".join(packer.compress(block) for _ in range(size // MiB)) + packer.flush()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"gzip": _bomb(100 * MiB, zlib.MAX_WBITS | 16), "deflate": _bomb(100 * MiB, -15)}


@pytest.fixture
def bomb_site(bombs: dict[str, bytes]) -> Iterator[str]:
    """A site on 127.0.0.1 whose robots.txt and sitemap.xml are gzip bombs (100 MiB unpacked
    from about 100 KB), with a page linking to a gzip and a deflate bomb page."""
    pages = {
        "/robots.txt": ("text/plain", "gzip", bombs["gzip"]),
        "/sitemap.xml": ("application/xml", "gzip", bombs["gzip"]),
        "/gz.html": ("text/html", "gzip", bombs["gzip"]),
        "/deflate.html": ("text/html", "deflate", bombs["deflate"]),
        "/": ("text/html", "", b"<html><title>Bombs</title><body><p>A page about bombs.</p>"
              b"<a href='/gz.html'>gz</a> <a href='/deflate.html'>deflate</a></body></html>"),
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            ctype, encoding, body = pages.get(self.path, ("text/plain", "", b""))
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", ctype)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_gzip_and_deflate_bombs_are_unpacked_no_further_than_the_bound(bomb_site: str) -> None:
    crawler = Crawler(bomb_site, max_depth=1, max_pages=10, concurrency=1, timeout_s=10,
                      limits=SMALL)
    tracemalloc.start()
    try:
        items = list(crawler.pages())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    reasons = {i.name.split(" ")[0]: i.reason for i in items if isinstance(i, Skipped)}
    assert reasons == {
        f"{bomb_site}gz.html": "larger than 0.25 MiB (HEARTH_CRAWL_MAX_PAGE_BYTES)",
        f"{bomb_site}deflate.html": "larger than 0.25 MiB (HEARTH_CRAWL_MAX_PAGE_BYTES)",
    }
    assert [i.title for i in items if isinstance(i, Parsed)] == ["Bombs"]
    assert crawler.ignored["sitemaps larger than 1 MiB (HEARTH_INGEST_MAX_UNPACKED_BYTES)"] == 1
    assert "robots.txt past 0.25 MiB (not read, as search engines do)" in crawler.ignored
    # Four bombs of 100 MiB each were read: memory held a bound's worth at a time.
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


def _zip_bomb(path: Path, member_bytes: int) -> None:
    """A .docx-shaped zip whose document.xml unpacks to ``member_bytes`` (written in pieces:
    the file on disk stays small)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            for _ in range(member_bytes // MiB):
                part.write(b"\0" * MiB)


def _lying_zip_bomb(path: Path) -> None:
    """A zip bomb whose directory says its part is 1,000 bytes: declared sizes lie."""
    _zip_bomb(path, 16 * MiB)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        start = data.find(signature, data.find(signature) + 1)  # the second member's header
        data[start + offset:start + offset + 4] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _pdf(path: Path, pages: int) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(200, 200)
    with path.open("wb") as f:
        writer.write(f)


def bomb_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good.md").write_text("# Lighthouse\n\nThe lighthouse keeper logs the tides.\n")
    os.mkfifo(folder / "notes.txt")  # opening it would block until someone writes
    with (folder / "huge.txt").open("wb") as f:
        f.truncate(2 * MiB)  # sparse: no disk used
    _zip_bomb(folder / "bomb.docx", 256 * MiB)
    _lying_zip_bomb(folder / "liar.docx")
    _pdf(folder / "long.pdf", pages=5)
    return folder


EXPECTED = {
    "notes.txt": "not a regular file (a FIFO): not opened",
    "huge.txt": "larger than 1 MiB (HEARTH_INGEST_MAX_FILE_BYTES)",
    "bomb.docx": "unpacks to more than 1 MiB (HEARTH_INGEST_MAX_UNPACKED_BYTES)",
    "long.pdf": "5 pages, more than 3 (HEARTH_INGEST_MAX_PDF_PAGES)",
}


def _in_thread(work: Callable[[], Any], seconds: float) -> Any:
    """``work()``, failing the test (instead of hanging it) if it blocks."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still running after {seconds:g} s: something blocked (the FIFO?)"
    return result[0]


def test_a_folder_of_bombs_and_a_fifo_is_read_within_bounds(tmp_path: Path) -> None:
    folder = bomb_folder(tmp_path / "bombs")
    assert (folder / "bomb.docx").stat().st_size < 2 * MiB
    tracemalloc.start()
    try:
        items = _in_thread(lambda: list(load_folder(folder, pdf_char_margin=30.0,
                                                    limits=SMALL)), 120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    reasons = {i.name: i.reason for i in items if isinstance(i, Skipped)}
    assert {name: reasons.get(name) for name in EXPECTED} == EXPECTED
    assert reasons["liar.docx"].startswith("corrupt Word file")  # stopped at its declared size
    assert [i.title for i in items if isinstance(i, Parsed)] == ["Lighthouse"]
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_the_bounds_are_settings(make_settings: Callable[..., Any]) -> None:
    settings = make_settings(ingest_max_file_bytes=2 * MiB, ingest_max_pdf_pages=7,
                             ingest_ocr_max_pages=3, ingest_ocr_timeout_s=5)
    limits = ReadLimits.of(settings)
    assert (limits.file_bytes, limits.pdf_pages) == (2 * MiB, 7)
    assert (limits.ocr_pages, limits.ocr_page_s) == (3, 5.0)
    defaults = ReadLimits.of()
    assert defaults == ReadLimits(100 * MiB, 50 * MiB, 2000, 5 * MiB, 100, 60.0)
    with pytest.raises(IngestError, match="cannot crawl"):
        list(Crawler("http://127.0.0.1:9/", max_depth=0, max_pages=1, concurrency=1,
                     timeout_s=2).pages())


def test_ocr_renders_a_page_at_300_dpi_and_no_page_past_5000_pixels_a_side() -> None:
    from hearth.ingest.ocr import MAX_SIDE_PX, dpi_for

    assert dpi_for(612, 792) == 300  # US Letter
    for width, height in [(14400, 14400), (14400, 3), (3, 14400)]:  # the largest PDF pages
        longest_px = max(width, height) / 72 * dpi_for(width, height)
        assert longest_px <= MAX_SIDE_PX == 5000


# --- API jobs, in their own process ------------------------------------------------------------


def _client(services: Services) -> Any:
    from hearth.api import create_app

    return create_app(services.settings, services).test_client()


def _wait(client: Any, job_id: str, seconds: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        status: dict[str, Any] = client.get(f"/api/ingest/{job_id}").get_json()
        if status["state"] in ("done", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


@pytest.fixture
def api(make_settings: Callable[..., Any], embeddings: Any,
        tmp_path: Path) -> Callable[..., tuple[Services, Any]]:
    def make(**overrides: Any) -> tuple[Services, Any]:
        settings = make_settings(ingest_api=True, ingest_roots=[tmp_path], **overrides)
        services = build_services(settings, embeddings=embeddings)
        return services, _client(services)
    return make


def _chunks(services: Services, root: Path) -> set[str]:
    return set(services.vectorstore.collection.get(where={"root": str(root)})["ids"])


@pytest.mark.real
def test_an_api_job_skips_the_bombs_and_ingests_the_rest(
        api: Callable[..., tuple[Services, Any]], tmp_path: Path) -> None:
    folder = bomb_folder(tmp_path / "bombs")
    services, client = api(ingest_max_file_bytes=MiB, ingest_max_unpacked_bytes=MiB,
                           ingest_max_pdf_pages=3)
    job = client.post("/api/ingest", json={"files": str(folder)}).get_json()
    status = _wait(client, job["id"])
    assert status["state"] == "done", status
    reasons = {s["name"]: s["reason"] for s in status["summary"]["skipped"]}
    assert {name: reasons.get(name) for name in EXPECTED} == EXPECTED
    assert status["summary"]["added"] == 1
    assert status["progress"]["documents"] == 6 == status["progress"]["documents_total"]
    stored = services.vectorstore.collection.get(where={"root": str(folder)},
                                                 include=["metadatas"])["metadatas"]
    assert {m["source"] for m in stored} == {str(folder / "good.md")}
    assert not list((services.settings.data_dir / "ingest-jobs").glob("*"))  # spool removed


@pytest.mark.real
def test_a_job_out_of_memory_fails_alone_and_changes_nothing(
        api: Callable[..., tuple[Services, Any]], tmp_path: Path) -> None:
    """A 5 GiB file (sparse) with the file bound lifted: reading it needs more than the job's
    4096 MB; the job fails, the source stays as it was, the server answers."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.md").write_text("# Tides\n\nThe harbour master posts the tide tables.\n")
    services, client = api(ingest_max_file_bytes=8 * 2**30)
    first = _wait(client, client.post("/api/ingest", json={"files": str(folder)}).get_json()["id"])
    assert first["state"] == "done", first
    before = _chunks(services, folder)
    (folder / "good.md").write_text("# Tides\n\nEdited: the tide tables move to the pier.\n")
    with (folder / "huge.txt").open("wb") as f:
        f.truncate(5 * 2**30)

    status = _wait(client, client.post("/api/ingest", json={"files": str(folder)}
                                       ).get_json()["id"])
    assert status["state"] == "failed", status
    assert status["error"]["code"] == "ingest_out_of_memory", status
    assert "HEARTH_INGEST_JOB_MEMORY_MB=4096" in status["error"]["message"]
    assert client.get("/healthz").status_code == 200
    assert _chunks(services, folder) == before  # not half-indexed: the edit is not in


@pytest.mark.real
def test_a_job_that_hangs_ends_with_ingest_timeout(
        api: Callable[..., tuple[Services, Any]]) -> None:
    """A site on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    port = listener.getsockname()[1]
    services, client = api(ingest_allow_hosts=["127.0.0.1/32"], crawl_timeout_s=600,
                           ingest_job_timeout_s=30)
    try:
        started = time.monotonic()
        job = client.post("/api/ingest", json={"web": f"http://127.0.0.1:{port}/"}).get_json()
        status = _wait(client, job["id"], seconds=120)
        assert status["state"] == "failed", status
        assert status["error"]["code"] == "ingest_timeout", status
        assert "HEARTH_INGEST_JOB_TIMEOUT_S (30 s)" in status["error"]["message"]
        assert accepted, "the crawl never reached the site: the timeout was not the hang's"
        assert 30 <= time.monotonic() - started < 90
        assert client.get("/healthz").status_code == 200
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
