"""Retrieval over a user's collections at 100k chunks: one Chroma collection per Hearth
collection (what Hearth does) against one filtered query over a shared collection, and both
against one unfiltered query.

The same 100k synthetic chunks (random unit vectors of all-MiniLM-L6-v2's 384 dimensions, as in
``retrieval_scale.py``: scale is measured here, not relevance) are stored twice: in one Chroma
collection with a ``collection`` metadata field, and through Hearth's ``VectorStore`` as
``--collections`` collections of equal size. For a readable set of 1, 3, 10 and 100 of them,
it times:

- ``unfiltered``: one plain top-k query over all 100k chunks (the floor),
- ``hearth``: ``VectorStore.search`` over the readable collections, each queried (in threads)
  and the hits merged by similarity,
- ``filtered``: one query over the shared collection with ``where collection in [...]``,

each query kind in turn for the same vectors, median and p95 in milliseconds, and the ratio of
the medians to the unfiltered query; and each design's recall@k against the exact top-k within
the readable set (numpy over the same vectors): both are approximate (HNSW), so this is what
each finds of what it should. Results go to ``bench/results/collections_scale.json``.

    .venv/bin/python bench/collections_scale.py            # 100k chunks, 100 collections (~5 min)
    .venv/bin/python bench/collections_scale.py --chunks 20000 --queries 50   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import common
from common import RESULTS, percentile, table
from retrieval_scale import FixedEmbeddings, text_of, unit_vectors

BATCH = 5000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=100_000, help="chunks in all")
    p.add_argument("--collections", type=int, default=100, help="collections they are split in")
    p.add_argument("--readable", default="1,3,10,100", help="sizes of the readable set")
    p.add_argument("--queries", type=int, default=100, help="timed queries of each kind")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--dir", type=Path, default=RESULTS / "collections-scale")
    return p.parse_args()


def build(args: argparse.Namespace) -> tuple[Any, Any, FixedEmbeddings, Any, list[str]]:
    import numpy as np

    from hearth.access import DEFAULT
    from hearth.config import load_settings
    from hearth.vectorstore import SPACE, VectorStore

    shutil.rmtree(args.dir, ignore_errors=True)
    embeddings = FixedEmbeddings()
    settings = load_settings(_env_file=None, data_dir=args.dir, chroma_collection="bench")
    store = VectorStore(settings, embeddings)  # type: ignore[arg-type]
    shared = store.client.get_or_create_collection("shared", metadata=SPACE)
    vectors = unit_vectors(np.random.default_rng(3), args.chunks)
    names = [DEFAULT, *(f"c{n:03d}" for n in range(1, args.collections))]
    per = args.chunks // len(names)
    started = time.perf_counter()
    for index, name in enumerate(names):
        target = store.writer(name)._collection
        for start in range(index * per, (index + 1) * per, BATCH):
            ids = [f"chunk-{i}" for i in range(start, min(start + BATCH, (index + 1) * per))]
            block = vectors[start:start + len(ids)].tolist()
            texts = [text_of(i, 200) for i in range(start, start + len(ids))]
            target.add(ids=ids, embeddings=block, documents=texts,
                       metadatas=[{"source": f"/docs/{name}/{i % 50}.md"} for i in range(len(ids))])
            shared.add(ids=ids, embeddings=block, documents=texts,
                       metadatas=[{"source": f"/docs/{name}/{i % 50}.md", "collection": name}
                                  for i in range(len(ids))])
    print(f"built {per * len(names)} chunks twice in {time.perf_counter() - started:.0f} s")
    owner = [names[i // per] for i in range(per * len(names))]
    return store, shared, embeddings, vectors[:per * len(names)], owner


def main() -> None:
    import numpy as np

    args = parse_args()
    store, shared, embeddings, vectors, owner = build(args)
    names = sorted(set(owner), key=lambda n: (n != "default", n))
    owners = np.array(owner)
    queries = unit_vectors(np.random.default_rng(11), args.queries + 5).tolist()
    include = ["documents", "metadatas", "distances"]
    rows, result = [], {"chunks": args.chunks, "collections": len(names), "k": args.k,
                        "queries": args.queries, "readable": {}, "machine": common.machine()}
    for size in [int(s) for s in args.readable.split(",")]:
        readable = names[:size]
        where = {"collection": readable[0]} if size == 1 else {"collection": {"$in": readable}}

        def unfiltered(v: list[float]) -> Any:
            return shared.query(query_embeddings=[v], n_results=args.k, include=include)

        def hearth(v: list[float], readable: list[str] = readable) -> Any:
            embeddings.vector = v
            return store.search("a question", args.k, readable)

        def filtered(v: list[float], where: dict[str, Any] = where) -> Any:
            return shared.query(query_embeddings=[v], n_results=args.k, where=where,
                                include=include)

        kinds = {"unfiltered": unfiltered, "hearth": hearth, "filtered": filtered}
        for v in queries[:5]:  # warm: each collection's index read from disk once
            for fn in kinds.values():
                fn(v)
        # Recall of each design against the exact top-k within the readable set (numpy).
        inside = np.isin(owners, readable)
        recall = {"hearth": 0.0, "filtered": 0.0}
        for v in queries[:20]:
            scores = np.where(inside, vectors @ np.array(v, dtype=np.float32), -2.0)
            exact = {f"chunk-{i}" for i in np.argsort(-scores)[:args.k]}
            recall["hearth"] += len(exact & {h[2] for h in hearth(v)}) / args.k / 20
            recall["filtered"] += len(exact & set(filtered(v)["ids"][0])) / args.k / 20
        times: dict[str, list[float]] = {name: [] for name in kinds}
        for v in queries[5:]:
            for name, fn in kinds.items():
                started = time.perf_counter()
                fn(v)
                times[name].append((time.perf_counter() - started) * 1000)
        figures = {name: {"median": percentile(t, 50), "p95": percentile(t, 95)}
                   for name, t in times.items()}
        floor = figures["unfiltered"]["median"]
        result["readable"][size] = {**figures, "recall": recall,
                                    "hearth_vs_unfiltered": figures["hearth"]["median"] / floor,
                                    "filtered_vs_unfiltered": figures["filtered"]["median"] / floor}
        rows.append([size, f"{figures['unfiltered']['median']:.1f} / {figures['unfiltered']['p95']:.1f}",
                     f"{figures['hearth']['median']:.1f} / {figures['hearth']['p95']:.1f}",
                     f"{figures['filtered']['median']:.1f} / {figures['filtered']['p95']:.1f}",
                     f"{figures['hearth']['median'] / floor:.2f}",
                     f"{figures['filtered']['median'] / floor:.2f}",
                     f"{recall['hearth']:.2f}", f"{recall['filtered']:.2f}"])
    print(table(f"Top-{args.k} over a user's readable collections, {args.chunks} chunks in "
                f"{len(names)} collections (ms, median / p95)",
                ["readable", "unfiltered", "hearth", "filtered", "hearth ×", "filtered ×",
                 "recall hearth", "recall filtered"], rows))
    out = RESULTS / "collections_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
