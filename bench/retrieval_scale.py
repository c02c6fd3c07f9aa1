"""Retrieval at scale: top-k latency of Chroma at 10k, 100k and 1M chunks, with and without a
metadata filter, and the memory and disk it takes.

The vectors are synthetic (random unit vectors of all-MiniLM-L6-v2's 384 dimensions; scale is
what is measured here, not relevance) with the metadata Hearth's ingestion writes (``source``:
one of 1,000 documents, ``root``: one of 10 folders) and a text of ``--doc-chars`` characters
(a real chunk is about 1,000). For each size, one child process builds the collection through
Hearth's ``VectorStore`` (cosine space, batches of at most 5,461) and reports the add time and
disk; a second child opens it as the server would and times the queries:

- the raw Chroma query (``collection.query``, top-k, documents + metadatas + distances),
- the same with a ``where`` filter on one document (0.1% of chunks) and on one folder (10%),
- Hearth's ``VectorStore.search`` (query embedding stubbed to the same vector): its ratio to the
  raw query is Hearth's overhead,

with the first query after opening (the index is read from disk), the process's RSS, and the
size of the Chroma folder on disk. Results merge into ``bench/results/retrieval_scale.json``
by size, so the 1M case can run alone, later:

    .venv/bin/python bench/retrieval_scale.py --quick                   # 10k only (~1 min)
    .venv/bin/python bench/retrieval_scale.py                           # 10k and 100k
    nohup .venv/bin/python bench/retrieval_scale.py --sizes 1000000 > bench/results/1m.log &
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import RESULTS, percentile, table

DIM = 384
DOCUMENTS = 1000
FOLDERS = 10
WORDS = ["the", "of", "and", "to", "in", "is", "for", "that", "with", "as", "on", "by", "this", "are",
         "from", "it", "or", "be", "an", "at", "which", "list", "file", "function", "class", "module",
         "value", "return", "string", "loop", "error", "object", "method", "import", "python"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k chunks only, 100 queries")
    p.add_argument("--sizes", default="10000,100000",
                   help="comma-separated collection sizes (1000000 takes 10-30 min to build)")
    p.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    p.add_argument("--k", type=int, default=4, help="top-k (Hearth's default is 4)")
    p.add_argument("--doc-chars", type=int, default=1000, help="characters of text per chunk")
    p.add_argument("--dir", type=Path, default=RESULTS / "retrieval-scale",
                   help="where the collections are built (deleted afterwards unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the collections")
    p.add_argument("--build", type=int, help=argparse.SUPPRESS)  # child: build one size
    p.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # child: query one size
    args = p.parse_args()
    if args.quick:
        args.sizes, args.queries = "10000", 100
    return args


def store_at(folder: Path, embeddings: Any) -> Any:
    from hearth.config import load_settings
    from hearth.vectorstore import VectorStore

    settings = load_settings(_env_file=None, data_dir=folder, chroma_collection="bench")
    return VectorStore(settings, embeddings)


class FixedEmbeddings:
    """Stands in for the embedding model: the query vector is set before each search."""

    vector: list[float] = []

    def embed_query(self, text: str) -> list[float]:
        return self.vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vector for _ in texts]


def unit_vectors(rng: Any, n: int) -> Any:
    import numpy as np

    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def text_of(i: int, chars: int) -> str:
    words, n = [], i
    while sum(len(w) + 1 for w in words) < chars:
        n = (n * 1103515245 + 12345) & 0x7FFFFFFF
        words.append(WORDS[n % len(WORDS)])
    return " ".join(words)[:chars]


def disk_mib(folder: Path) -> float:
    """Space the folder takes on disk (allocated blocks, like du)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed meanwhile
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(n: int, folder: Path, doc_chars: int) -> dict[str, Any]:
    """Child process: a collection of n chunks, added in the largest batches Chroma takes."""
    import numpy as np

    shutil.rmtree(folder, ignore_errors=True)
    rss_before = rss_mib()
    store = store_at(folder, FixedEmbeddings())
    batch = min(5461, store.client.get_max_batch_size())
    rng = np.random.default_rng(n)
    started = time.perf_counter()
    for first in range(0, n, batch):
        ids = range(first, min(first + batch, n))
        store.collection.add(
            ids=[f"chunk-{i}" for i in ids],
            embeddings=unit_vectors(rng, len(ids)),
            documents=[text_of(i, doc_chars) for i in ids],
            metadatas=[{"source": f"/docs/folder-{i % FOLDERS}/doc-{i % DOCUMENTS}.html",
                        "root": f"/docs/folder-{i % FOLDERS}", "title": f"Document {i % DOCUMENTS}",
                        "section": "Section", "page": 0} for i in ids],
        )
        if first and first % (batch * 10) == 0:
            print(f"  {n:>9,}: {first:,} added ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    add_s = time.perf_counter() - started
    count = store.count()
    return {"chunks": count, "add_s": add_s, "add_per_s": count / add_s, "batch": batch,
            "build_rss_mib": rss_mib() - rss_before, "build_peak_rss_mib": peak_rss_mib()}


def latencies(kinds: dict[str, Any], vectors: Any) -> dict[str, list[float]]:
    """Each kind of query for each vector in turn, so that drift on the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for v in vectors:
        for name, fn in kinds.items():
            started = time.perf_counter()
            fn(v)
            times[name].append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median": percentile(times, 50) * 1000, "p95": percentile(times, 95) * 1000,
            "p99": percentile(times, 99) * 1000}


def measure(n: int, folder: Path, queries: int, k: int) -> dict[str, Any]:
    """Child process: open the collection as the server does, and time the queries."""
    import numpy as np

    rss_before = rss_mib()
    embeddings = FixedEmbeddings()
    store = store_at(folder, embeddings)
    vectors = unit_vectors(np.random.default_rng(7), queries + 1).tolist()
    include = ["documents", "metadatas", "distances"]

    def query(v: list[float], where: dict[str, Any] | None = None) -> Any:
        return store.collection.query(query_embeddings=[v], n_results=k, where=where, include=include)

    def search(v: list[float]) -> Any:
        embeddings.vector = v
        return store.search("a question", k)

    started = time.perf_counter()
    query(vectors[0])
    first_s = time.perf_counter() - started
    doc = {"source": "/docs/folder-7/doc-7.html"}
    folder_filter = {"root": "/docs/folder-3"}
    hits = len(query(vectors[1], doc)["ids"][0])
    times = latencies({"query_ms": query, "filtered_ms": lambda v: query(v, doc),
                       "filtered_folder_ms": lambda v: query(v, folder_filter),
                       "hearth_search_ms": search}, vectors[1:])
    result: dict[str, Any] = {
        "first_query_ms": first_s * 1000, **{name: summary(t) for name, t in times.items()},
        "filter_hits": hits,
        "rss_mib": rss_mib(), "index_rss_mib": rss_mib() - rss_before, "peak_rss_mib": peak_rss_mib(),
        "disk_mib": disk_mib(folder),
    }
    result["hearth_vs_raw"] = result["hearth_search_ms"]["median"] / result["query_ms"]["median"]
    return result


def child(flag: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, flag, str(n), "--dir", str(args.dir), "--queries", str(args.queries),
            "--k", str(args.k), "--doc-chars", str(args.doc_chars)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def merge(name: str, sizes: list[dict[str, Any]], args: argparse.Namespace,
          info: dict[str, Any]) -> dict[str, Any]:
    """This run's sizes over those of earlier runs (each size keeps its own machine and date)."""
    old = common.load(name) or {}
    by_size = {s["chunks"]: s for s in old.get("sizes", []) if s.get("k") == args.k}
    by_size.update({s["chunks"]: s for s in sizes})
    return {"k": args.k, "machine": info, "sizes": [by_size[n] for n in sorted(by_size)]}


def report(result: dict[str, Any]) -> None:
    rows = []
    for s in result["sizes"]:
        rows.append([f"{s['chunks']:,}", f"{s['add_s']:.1f}", f"{s['add_per_s']:,.0f}",
                     f"{s['first_query_ms']:.0f}",
                     f"{s['query_ms']['median']:.2f}", f"{s['query_ms']['p95']:.2f}",
                     f"{s['filtered_ms']['median']:.2f}", f"{s['filtered_ms']['p95']:.2f}",
                     f"{s['filtered_folder_ms']['median']:.2f}", f"{s['filtered_folder_ms']['p95']:.2f}",
                     f"{s['hearth_search_ms']['median']:.2f}", f"{s['hearth_vs_raw']:.3f}",
                     f"{s['rss_mib']:.0f}", f"{s['disk_mib']:.0f}", s["doc_chars"], s.get("date", "")[:10]])
    print(table(f"Retrieval at scale: top-{result['k']} from Chroma (ms; add in s; memory and disk in MiB)",
                ["chunks", "add s", "add/s", "first", "median", "p95", "doc filter", "p95",
                 "folder filter", "p95", "Hearth search", "÷ raw", "RSS", "disk", "text", "taken"], rows))
    print("first: the first query after opening (index read from disk); doc filter: where source = one of "
          f"{DOCUMENTS:,} documents; folder filter: where root = one of {FOLDERS} folders; Hearth search: "
          "VectorStore.search with the embedding stubbed; RSS: the querying process, all in; text: "
          "characters of text per chunk.")


def main() -> None:
    args = parse_args()
    if args.build or args.measure:
        n = args.build or args.measure
        folder = args.dir / str(n)
        out = build(n, folder, args.doc_chars) if args.build else measure(n, folder, args.queries, args.k)
        print(json.dumps(out))
        return
    info = common.machine()
    sizes = [int(x.replace("_", "")) for x in args.sizes.split(",")]
    print(f"{info['cpu']}, {info['cores']} cores, no GPU; sizes {sizes}, top-{args.k}, "
          f"{args.queries} queries each, {args.doc_chars} characters a chunk")
    done = []
    for n in sizes:
        print(f"{n:>9,} chunks: building ...", flush=True)
        built = child("--build", n, args)
        print(f"{n:>9,} chunks: added in {built['add_s']:.1f} s; querying ...", flush=True)
        measured = child("--measure", n, args)
        done.append({**built, **measured, "k": args.k, "doc_chars": args.doc_chars,
                     "queries": args.queries, "date": info["date"], "cpu": info["cpu"]})
        if not args.keep:
            shutil.rmtree(args.dir / str(n), ignore_errors=True)
    name = "retrieval_scale_quick" if args.quick else "retrieval_scale"
    result = merge(name, done, args, info)
    report(result)
    path = common.save(name, result)
    import plots

    print(f"\nresults: {path}\nplot: {plots.retrieval_scale(result, RESULTS if args.quick else None)}")


if __name__ == "__main__":
    main()
