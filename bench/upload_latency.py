"""Upload to searchable: seconds from an upload's 202 response until the document answers, for
a 20-page PDF (pages of a real R manual), through the API as a client uploads it.

The app runs with the real embedding model and Chroma on disk; the upload is indexed by
Hearth's ingestion job (read in a child process, then embedded). It times, from the response:
the job's end, and the first question whose sources come from the uploaded file. Repeated
``--rounds`` times, each into a fresh data folder.

    .venv/bin/python bench/upload_latency.py            # 3 rounds
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import common
from common import RESULTS

MANUAL = Path("/usr/share/R/doc/manual/R-data.pdf")


def pdf_of(pages: int) -> bytes:
    from pypdf import PdfReader, PdfWriter

    reader, writer = PdfReader(MANUAL), PdfWriter()
    for page in reader.pages[4:4 + pages]:
        writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def one_round(pdf: bytes, embeddings: object) -> dict[str, float]:
    from hearth.api import create_app
    from hearth.config import load_settings
    from hearth.ingest.uploads import own_collection
    from hearth.services import build_services

    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(_env_file=None, data_dir=Path(folder), models_dir=common.MODELS)
        services = build_services(settings, embeddings=embeddings)
        client = create_app(settings, services).test_client()
        started = time.perf_counter()
        response = client.post("/api/collections/mine/documents?user_id=bench",
                               data={"files": [(io.BytesIO(pdf), "R-data-20.pdf")]},
                               content_type="multipart/form-data")
        assert response.status_code == 202, response.get_data(as_text=True)
        answered_at = time.perf_counter()
        url = response.get_json()["job"]["url"]
        while (job := client.get(f"{url}?user_id=bench").get_json())["state"] not in (
                "done", "failed"):
            time.sleep(0.1)
        indexed_at = time.perf_counter()
        assert job["state"] == "done", job
        mine = own_collection("bench")
        while not any(s.source.endswith("R-data-20.pdf") for s in services.assistant.retrieve(
                "How do I import data from a spreadsheet into R?", collections=[mine])):
            time.sleep(0.1)
        found_at = time.perf_counter()
        return {"upload_response_s": answered_at - started,
                "to_indexed_s": indexed_at - answered_at, "to_searchable_s": found_at - answered_at,
                "chunks": job["summary"]["chunks"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pages", type=int, default=20)
    args = p.parse_args()
    from hearth.config import Settings
    from hearth.embeddings import build_embeddings

    embeddings = build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]
    pdf = pdf_of(args.pages)
    rounds = [one_round(pdf, embeddings) for _ in range(args.rounds)]
    for n, r in enumerate(rounds, 1):
        print(f"round {n}: response {r['upload_response_s']:.2f} s, indexed after "
              f"{r['to_indexed_s']:.1f} s, searchable after {r['to_searchable_s']:.1f} s "
              f"({r['chunks']} chunks)")
    median = statistics.median(r["to_searchable_s"] for r in rounds)
    print(f"{args.pages}-page PDF ({len(pdf) // 1024} KiB): searchable {median:.1f} s after the "
          "upload's response (median)")
    (RESULTS / "upload_latency.json").write_text(json.dumps(
        {"pages": args.pages, "bytes": len(pdf), "rounds": rounds,
         "median_to_searchable_s": median, "machine": common.machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
