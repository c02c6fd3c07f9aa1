"""Ingestion throughput: the Python docs site over local HTTP and a ~100-page PDF manual.

For each source it prints pages/s and chunks/s of a first ingestion (crawl or parse, split,
embed, index), the raw embedding throughput of the same chunks with the same model (so the
ratio is the share of the work that is embedding; 1.0 would mean crawling, parsing, splitting
and bookkeeping cost nothing), and the time of a re-ingest that changes nothing. Real
documents from Debian packages: python3.11-doc and r-doc-pdf.

    .venv/bin/python bench/ingest.py                      # 150 pages of the site, R-intro.pdf
    .venv/bin/python bench/ingest.py --site-pages 0       # the whole site (530 pages)
    .venv/bin/python bench/ingest.py --pdf /path/to/manual.pdf --json bench/results/ingest.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PY_DOCS = Path("/usr/share/doc/python3.11/html")
R_INTRO = Path("/usr/share/R/doc/manual/R-intro.pdf")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(QuietHandler, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def raw_embedding(services: Any, namespace: str) -> tuple[int, float, float]:
    """The same chunks embedded again, in batches of the size ingestion uses."""
    from hearth.ingest.pipeline import INDEX_BATCH

    texts = services.vectorstore.collection.get(where={"root": namespace},
                                                include=["documents"])["documents"]
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), INDEX_BATCH):
        services.embeddings.embed_documents(texts[start:start + INDEX_BATCH])
    return len(texts), time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, services: Any, ingest: Any, namespace: str,
            pages: int | None = None) -> dict[str, Any]:
    cpu = time.process_time()
    first = ingest()
    ingest_cpu = time.process_time() - cpu
    chunks, raw_s, raw_cpu = raw_embedding(services, namespace)
    again = ingest()
    documents = pages if pages is not None else first.seen - len(first.skipped)
    ingest_cps = first.chunks / first.seconds
    raw_cps = chunks / raw_s
    return {
        "source": name, "pages": documents, "chunks": first.chunks,
        "ingest_s": round(first.seconds, 1),
        "pages_per_s": round(documents / first.seconds, 2),
        "chunks_per_s": round(ingest_cps, 1),
        "raw_embed_chunks_per_s": round(raw_cps, 1),
        "ingest_vs_raw_embedding": round(ingest_cps / raw_cps, 2),
        # CPU seconds of this process: steadier than wall time on a shared machine.
        "ingest_cpu_s": round(ingest_cpu, 1), "raw_embed_cpu_s": round(raw_cpu, 1),
        "cpu_ratio": round(raw_cpu / ingest_cpu, 2),
        "reingest_s": round(again.seconds, 2), "reingest_embedded": again.chunks_added,
        "skipped": len(first.skipped),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-pages", type=int, default=150,
                        help="pages of the Python docs to crawl (0: the whole site)")
    parser.add_argument("--pdf", type=Path, default=R_INTRO, help="the PDF to ingest")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "true")

    from pypdf import PdfReader

    from hearth.config import load_settings
    from hearth.ingest.pipeline import ingest_files, ingest_web
    from hearth.ingest.web import site_namespace
    from hearth.services import build_services

    missing = [p for p in (PY_DOCS, args.pdf) if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(map(str, missing))}: apt-get install python3.11-doc "
                 "r-doc-pdf")
    work = Path(tempfile.mkdtemp(prefix="hearth-bench-"))
    try:
        services = build_services(load_settings(_env_file=None, data_dir=work / "data"))
        services.embeddings.embed_documents(["warm up the model"])  # load it before timing
        server, url = serve(PY_DOCS)
        start = f"{url}/index.html"
        max_pages = args.site_pages or 100_000
        site = measure("python3.11-doc site", services,
                       lambda: ingest_web(services, start, max_depth=20, max_pages=max_pages,
                                          concurrency=4), site_namespace(start))
        server.shutdown()

        folder = work / "pdf"
        folder.mkdir()
        shutil.copy(args.pdf, folder / args.pdf.name)
        pages = len(PdfReader(args.pdf).pages)
        pdf = measure(f"{args.pdf.name} ({pages} pages)", services,
                      lambda: ingest_files(services, folder), str(folder.resolve()), pages)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
               "results": [site, pdf]}
    header = ("source", "pages", "chunks", "ingest_s", "pages_per_s", "chunks_per_s",
              "raw_embed_chunks_per_s", "ingest_vs_raw_embedding", "cpu_ratio", "reingest_s")
    print("  ".join(f"{h:>12}" if i else f"{h:<28}" for i, h in enumerate(header)))
    for row in (site, pdf):
        print("  ".join(f"{row[h]!s:>12}" if i else f"{row[h]!s:<28}"
                        for i, h in enumerate(header)))
    print("ingest_vs_raw_embedding: ingestion chunks/s over embedding-only chunks/s (wall "
          "time); cpu_ratio: the same from this process's CPU seconds, which other load on "
          f"the machine disturbs less. {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
