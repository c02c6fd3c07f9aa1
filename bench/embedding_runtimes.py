"""Embedding runtimes: torch against ONNX Runtime (fp32 and int8) for all-MiniLM-L6-v2.

All in one process and one run, so that the ratios are fair on a machine whose cores other jobs
share: for each corpus, each runtime ingests it end to end into a fresh index (crawl or parse,
split, embed, store), then embeds the same chunks again alone (raw chunks/s); the order of the
runtimes turns round from one round to the next. Wall time swings with the other jobs, so the
raw figures are also taken interleaved: every batch of 128 chunks embedded by each runtime in
turn, and each runtime's CPU seconds counted apart. Then, with ``--eval``, each runtime indexes the
pages behind the key-fact questions and answers them retrieval-only, as `hearth eval facts
--retrieval-only` does: hit@k and MRR of the expected page, and the questions whose rank moved.

    .venv/bin/python bench/embedding_runtimes.py                  # tutorial site + R-intro.pdf
    .venv/bin/python bench/embedding_runtimes.py --eval           # and hit@k on the eval sets
    .venv/bin/python bench/embedding_runtimes.py --no-ingest --raw-repeats 3   # raw only
    .venv/bin/python bench/embedding_runtimes.py --no-ingest --raw-repeats 0 --eval

The ONNX models are exported into models/embeddings/ (git-ignored) on first use.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import PY_DOCS, REPO, machine, save, table

# bench/ingest.py by its path: `ingest` is also Hearth's package, which common puts first.
_spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).with_name("ingest.py"))
assert _spec and _spec.loader
bench_ingest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_ingest)
R_INTRO, serve = bench_ingest.R_INTRO, bench_ingest.serve

RUNTIMES = ("torch", "onnx", "onnx-int8")
SETS = REPO / "evaluation" / "sets"
R_MANUALS = Path("/usr/share/R/doc/manual")


def settings(runtime: str, data_dir: Path) -> Any:
    from hearth.config import load_settings

    return load_settings(_env_file=None, data_dir=data_dir, models_dir=REPO / "models",
                         embedding_runtime=runtime)


def raw_embedding(embeddings: Any, texts: list[str]) -> float:
    """Chunks/s of embedding ``texts`` alone, in the batches ingestion hands the model."""
    from hearth.ingest.pipeline import INDEX_BATCH

    started = time.perf_counter()
    for start in range(0, len(texts), INDEX_BATCH):
        embeddings.embed_documents(texts[start:start + INDEX_BATCH])
    return len(texts) / (time.perf_counter() - started)


def interleaved(embedders: dict[str, Any], texts: list[str], repeats: int) -> dict[str, Any]:
    """Raw chunks/s of each runtime, batch by batch in turn (the first to go turning round), so
    that every runtime meets the same load from the machine's other jobs; and chunks per CPU
    second of this process, which that load disturbs less."""
    from hearth.ingest.pipeline import INDEX_BATCH

    wall = dict.fromkeys(embedders, 0.0)
    cpu = dict.fromkeys(embedders, 0.0)
    names = list(embedders)
    batches = [texts[i:i + INDEX_BATCH] for i in range(0, len(texts), INDEX_BATCH)]
    for turn in range(repeats * len(batches)):
        batch = batches[turn % len(batches)]
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            started, used = time.perf_counter(), time.process_time()
            embedders[name].embed_documents(batch)
            wall[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - used
    done = len(texts) * repeats
    return {name: {"chunks_per_s": done / wall[name], "chunks_per_cpu_s": done / cpu[name]}
            for name in names}


def ingest_once(runtime: str, embeddings: Any, corpus: str, work: Path, site: str,
                pdf_folder: Path) -> dict[str, Any]:
    from hearth.ingest.pipeline import files_namespace, ingest_files, ingest_web
    from hearth.services import build_services

    data = Path(tempfile.mkdtemp(prefix=f"{runtime}-", dir=work))
    services = build_services(settings(runtime, data), embeddings=embeddings)
    used = time.process_time()
    if corpus == "site":
        summary = ingest_web(services, site, max_depth=20, max_pages=1000, concurrency=4,
                             include=["/tutorial/"])
        namespace = summary.source
    else:
        summary = ingest_files(services, pdf_folder)
        namespace = files_namespace(pdf_folder)
    cpu = time.process_time() - used
    texts = services.vectorstore.collection.get(where={"root": namespace},
                                                include=["documents"])["documents"]
    raw = raw_embedding(embeddings, texts)
    shutil.rmtree(data, ignore_errors=True)
    return {"runtime": runtime, "corpus": corpus, "documents": summary.seen - len(summary.skipped),
            "chunks": summary.chunks, "ingest_s": summary.seconds,
            "ingest_chunks_per_s": summary.chunks / summary.seconds, "raw_chunks_per_s": raw,
            "ingest_cpu_s": cpu, "ingest_chunks_per_cpu_s": summary.chunks / cpu, "texts": texts}


def eval_folder(work: Path, python_questions: int, r_questions: int) -> tuple[Path, list[Any]]:
    """A folder with the pages behind the first ``python_questions`` Python questions and the
    manuals behind the first ``r_questions`` R ones, and those questions (plus the unanswerable
    ones)."""
    from hearth.evaluation.keyfacts import load_fact_sets

    python = load_fact_sets([SETS / "python-docs.jsonl"])[:python_questions]
    r = load_fact_sets([SETS / "r-manuals.jsonl"])[:r_questions]
    unanswerable = load_fact_sets([SETS / "unanswerable.jsonl"])
    folder = work / "eval-docs"
    for root, questions in ((PY_DOCS, python), (R_MANUALS, r)):
        for question in questions:
            assert question.source
            target = folder / question.source
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy(root / question.source, target)
    return folder, python + r + unanswerable


def retrieval(runtime: str, embeddings: Any, work: Path, folder: Path,
              questions: list[Any]) -> dict[str, Any]:
    from hearth.evaluation import keyfacts
    from hearth.ingest.pipeline import ingest_files
    from hearth.services import build_services

    data = Path(tempfile.mkdtemp(prefix=f"eval-{runtime}-", dir=work))
    # Parsed once: the first runtime's parse cache serves the others (what is compared here
    # is retrieval, and the R manuals take minutes to parse).
    cache = work / "eval-parse-cache"
    if cache.is_dir():
        shutil.copytree(cache, data / "ingest-cache")
    services = build_services(settings(runtime, data), embeddings=embeddings)
    summary = ingest_files(services, folder)
    answerer = keyfacts.InProcessAnswerer(services, retrieval_only=True)
    records = keyfacts.run_facts(questions, answerer, mode="retrieval")
    figures = keyfacts.summarize_facts(records, (1, 4))["groups"]
    if not cache.is_dir():
        shutil.copytree(data / "ingest-cache", cache)
    shutil.rmtree(data, ignore_errors=True)
    return {"runtime": runtime, "chunks": summary.chunks, "ingest_s": summary.seconds,
            "groups": figures,
            "ranks": {r["id"]: r["scores"].get("retrieval_rank") for r in records
                      if r.get("answerable")}}


def ingestion_table(results: dict[str, Any], runs: list[dict[str, Any]], runtimes: list[str],
                    rounds: int) -> None:
    results["ingest_runs"] = runs
    rows = []
    for corpus in ("site", "pdf"):
        base: dict[str, float] = {}
        for runtime in runtimes:
            mine = [r for r in runs if r["corpus"] == corpus and r["runtime"] == runtime]
            ingest = statistics.median(r["ingest_chunks_per_s"] for r in mine)
            per_cpu = statistics.median(r["ingest_chunks_per_cpu_s"] for r in mine)
            raw = statistics.median(r["raw_chunks_per_s"] for r in mine)
            base = base or {"ingest": ingest, "cpu": per_cpu, "raw": raw}
            rows.append([corpus, runtime, mine[0]["documents"], mine[0]["chunks"],
                         f"{statistics.median(r['ingest_s'] for r in mine):.1f}",
                         f"{ingest:.1f}", f"{ingest / base['ingest']:.2f}",
                         f"{per_cpu:.1f}", f"{per_cpu / base['cpu']:.2f}",
                         f"{raw:.1f}", f"{raw / base['raw']:.2f}"])
    results["ingest_table"] = rows
    first = runtimes[0]
    print(table(f"Ingestion end to end and raw embedding after it, median of {rounds} rounds",
                ["corpus", "runtime", "documents", "chunks", "ingest s", "chunks/s", f"÷ {first}",
                 "per CPU s", f"÷ {first}", "raw chunks/s", f"÷ {first}"], rows))


def value(group: dict[str, Any], key: str) -> str:
    figure = group.get(key)
    return "-" if not figure else f"{figure['value']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--rounds", type=int, default=2, help="ingestions of each corpus by each "
                        "runtime, the order turned round each time (medians are reported)")
    parser.add_argument("--no-ingest", action="store_true", help="skip the ingestion figures")
    parser.add_argument("--raw-repeats", type=int, default=2, help="passes over the chunks of "
                        "both corpora for the interleaved raw embedding figures (0: none)")
    parser.add_argument("--pdf", type=Path, default=R_INTRO)
    parser.add_argument("--eval", action="store_true", help="also hit@k on the key-fact sets")
    parser.add_argument("--python-questions", type=int, default=30,
                        help="Python questions whose pages are indexed for --eval (all R "
                        "questions and their three manuals are; 0: all 119)")
    parser.add_argument("--r-questions", type=int, default=47,
                        help="R questions whose manuals are indexed for --eval (the first 17 "
                        "are R-data.pdf's)")
    parser.add_argument("--name", default="embedding_runtimes")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")

    from hearth.embeddings import build_embeddings

    work = Path(tempfile.mkdtemp(prefix="hearth-bench-runtimes-"))
    results: dict[str, Any] = {"machine": machine(), "runtimes": runtimes}
    try:
        embedders = {}
        for runtime in runtimes:
            started = time.perf_counter()
            embedders[runtime] = build_embeddings(settings(runtime, work / "unused"))
            embedders[runtime].embed_documents(["warm up the model"])
            print(f"{runtime}: ready in {time.perf_counter() - started:.1f} s", flush=True)
            if runtime != "torch":
                results.setdefault("manifests", {})[runtime] = embedders[runtime].manifest

        if not args.no_ingest or args.raw_repeats:
            server, url = serve(PY_DOCS)
            pdf_folder = work / "pdf"
            pdf_folder.mkdir()
            shutil.copy(args.pdf, pdf_folder / args.pdf.name)
            site = f"{url}/tutorial/index.html"
            runs = []
            for n in range(0 if args.no_ingest else args.rounds):
                order = runtimes if n % 2 == 0 else runtimes[::-1]
                for corpus in ("site", "pdf"):
                    for runtime in order:
                        run = ingest_once(runtime, embedders[runtime], corpus, work, site,
                                          pdf_folder)
                        run["round"] = n
                        runs.append(run)
                        print(f"round {n} {corpus} {runtime}: {run['chunks']} chunks, "
                              f"{run['ingest_chunks_per_s']:.1f} chunks/s ingested "
                              f"({run['ingest_chunks_per_cpu_s']:.1f} per CPU s), "
                              f"{run['raw_chunks_per_s']:.1f} raw", flush=True)
            texts = {r["corpus"]: r.pop("texts") for r in reversed(runs)}
            for corpus in ("site", "pdf"):
                if corpus not in texts:  # the chunks alone, made by the fastest runtime
                    texts[corpus] = ingest_once(runtimes[-1], embedders[runtimes[-1]], corpus,
                                                work, site, pdf_folder)["texts"]
            server.shutdown()
            if runs:
                ingestion_table(results, runs, runtimes, args.rounds)
            if args.raw_repeats:
                raw = interleaved(embedders, texts["site"] + texts["pdf"], args.raw_repeats)
                results["interleaved_raw"] = raw
                base = raw[runtimes[0]]
                rows = [[runtime, len(texts["site"]) + len(texts["pdf"]),
                         f"{r['chunks_per_s']:.1f}",
                         f"{r['chunks_per_s'] / base['chunks_per_s']:.2f}",
                         f"{r['chunks_per_cpu_s']:.1f}",
                         f"{r['chunks_per_cpu_s'] / base['chunks_per_cpu_s']:.2f}"]
                        for runtime, r in raw.items()]
                print(table(f"Raw embedding, interleaved batch by batch, {args.raw_repeats} "
                            "passes over the site's and the PDF's chunks",
                            ["runtime", "chunks", "chunks/s", f"÷ {runtimes[0]}",
                             "chunks per CPU s", f"÷ {runtimes[0]}"], rows))

        if args.eval:
            folder, questions = eval_folder(work, args.python_questions or 10_000,
                                            args.r_questions)
            evals = [retrieval(runtime, embedders[runtime], work, folder, questions)
                     for runtime in runtimes]
            results["eval"] = evals
            rows = []
            for e in evals:
                for group in ("overall", "python-docs", "r-manuals"):
                    g = e["groups"].get(group, {})
                    rows.append([e["runtime"], group, e["chunks"], g.get("answerable", "-"),
                                 value(g, "retrieval_hit@1"), value(g, "retrieval_hit@4"),
                                 value(g, "retrieval_mrr"),
                                 value(g, "refusal_rate_unanswerable")])
            print(table("Retrieval on the key-fact sets (retrieval ranks, 10 deep)",
                        ["runtime", "corpus", "chunks", "answerable", "hit@1", "hit@4", "MRR",
                         "unanswerable declined"], rows))
            first = evals[0]
            for e in evals[1:]:
                moved = {q: (first["ranks"][q], e["ranks"].get(q)) for q in first["ranks"]
                         if first["ranks"][q] != e["ranks"].get(q)}
                print(f"{e['runtime']} vs {first['runtime']}: {len(moved)} of "
                      f"{len(first['ranks'])} questions ranked their page differently"
                      + (f": {moved}" if moved else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; torch "
          "and ONNX measured in this same run.")
    path = save(args.name, results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
