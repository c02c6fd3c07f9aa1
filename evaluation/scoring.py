"""Per-question scores and their summary: ROUGE (two implementations), judges, retrieval.

Two ROUGE implementations, labelled everywhere, because they disagree on the same text:
- `rouge-score` (Google's, the reference implementation today): lowercases, drops
  punctuation, sentence-free ROUGE-L.
- `rouge` (PyPI `rouge` 1.0.1, what the origin published with): case-sensitive, whitespace
  tokens, summary-level ROUGE-L. On the origin's 669 answers it gives ROUGE-1/2/L F1
  0.3311/0.1455/0.3055 where `rouge-score` gives 0.3719/0.1681/0.2446.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from hearth.evaluation.records import ROUGE_IMPLEMENTATIONS

ROUGE_SCORE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_TYPES = ("rouge-1", "rouge-2", "rouge-l")
DEFAULT_HIT_KS = (1, 3, 5)

# Display labels of the flat metrics (see `flatten`), in report order.
METRIC_LABELS = {
    "rouge-score/rouge1_f": "ROUGE-1 F1 (rouge-score)",
    "rouge-score/rouge2_f": "ROUGE-2 F1 (rouge-score)",
    "rouge-score/rougeL_f": "ROUGE-L F1 (rouge-score)",
    "rouge/rouge-1_f": "ROUGE-1 F1 (rouge, as published by the origin)",
    "rouge/rouge-2_f": "ROUGE-2 F1 (rouge, as published by the origin)",
    "rouge/rouge-l_f": "ROUGE-L F1 (rouge, as published by the origin)",
    "facts/fact_recall": "key-fact recall (the set's questions, `--facts`)",
    "facts/all_facts": "answers with every key fact (`--facts`)",
    "facts/questions": "key-fact questions (answerable, in every `--facts` run)",
}


@lru_cache(maxsize=1)
def _rouge_score_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_SCORE_TYPES), use_stemmer=False)


@lru_cache(maxsize=1)
def _rouge_package() -> Any:
    import rouge

    return rouge.Rouge()


def _prf(p: float, r: float, f: float) -> dict[str, float]:
    return {"p": float(p), "r": float(r), "f": float(f)}


def rouge_score_scores(hypothesis: str, reference: str) -> dict[str, dict[str, float]]:
    """ROUGE-1/2/L precision, recall and F1 from the `rouge-score` package."""
    scores = _rouge_score_scorer().score(target=reference, prediction=hypothesis)
    return {t: _prf(s.precision, s.recall, s.fmeasure) for t, s in scores.items()}


def rouge_package_scores(hypothesis: str, reference: str) -> dict[str, dict[str, float]]:
    """ROUGE-1/2/L from the `rouge` package, called as the origin did (no lowercasing)."""
    # Its LCS backtracking recurses once a word of a sentence: long sentences outgrow Python's
    # default limit. Python 3.11 keeps pure-Python recursion off the C stack, so raising it is safe.
    needed = 2 * (len(hypothesis.split()) + len(reference.split())) + 1000
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, needed))
    try:
        scores = _rouge_package().get_scores(hypothesis, reference)[0]
    except ValueError:  # "Hypothesis is empty." (also for punctuation only, or an empty reference)
        return {t: _prf(0.0, 0.0, 0.0) for t in ROUGE_TYPES}
    finally:
        sys.setrecursionlimit(limit)
    return {t: _prf(scores[t]["p"], scores[t]["r"], scores[t]["f"]) for t in ROUGE_TYPES}


def rouge_scores(hypothesis: str, reference: str) -> dict[str, dict[str, dict[str, float]]]:
    return {
        "rouge-score": rouge_score_scores(hypothesis, reference),
        "rouge": rouge_package_scores(hypothesis, reference),
    }


def rank_of(chunk_id: str | None, retrieved: Sequence[str] | None) -> int | None:
    """1-based rank of the source chunk among the retrieved ones; None when not retrieved."""
    if not chunk_id or not retrieved:
        return None
    try:
        return list(retrieved).index(chunk_id) + 1
    except ValueError:
        return None


def _page(value: Any) -> int | None:
    """A page number, None for a document without pages (stored as 0 or left out)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) or None


def cited_rank(record: Mapping[str, Any], cited: Sequence[Mapping[str, Any]] | None
               ) -> int | None:
    """1-based rank of the first cited source that holds the record's chunk: its own id, or the
    chunk's document and page (a document without pages: the document). The API cites one
    source a page, under the id of its best chunk only, so the page is what it can tell."""
    chunk_id, source = record.get("chunk_id"), record.get("source")
    for n, cite in enumerate(cited or (), 1):
        if chunk_id and cite.get("chunk_id") == chunk_id:
            return n
        if source and cite.get("source") == source \
                and _page(cite.get("page")) == _page(record.get("page")):
            return n
    return None


def ranking(record: Mapping[str, Any]) -> Sequence[Any] | None:
    """What a record's rank is read from: the pages its answer cited (through the API), else
    the chunk ids retrieval ranked (in process); None when neither is known."""
    cited = record.get("cited")
    return cited if cited is not None else record.get("retrieved")


def record_rank(record: Mapping[str, Any]) -> int | None:
    """1-based rank of the record's source chunk in its `ranking`; None when not found."""
    if record.get("cited") is not None:
        return cited_rank(record, record["cited"])
    return rank_of(record.get("chunk_id"), record.get("retrieved"))


def score_record(record: dict[str, Any]) -> dict[str, Any]:
    """Add ROUGE and the source chunk's rank to a record (in place) and return it. A failed
    question (its record holds an `error`) has no answer to score: it gets neither."""
    if record.get("error"):
        record.pop("rouge", None)
        record.pop("rank", None)
        return record
    record["rouge"] = rouge_scores(record.get("hypothesis") or "", record["reference"])
    if ranking(record) is not None:
        record["rank"] = record_rank(record)
    return record


# --- summaries -----------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q  # linear interpolation, as numpy's default
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def judge_ratings(records: Iterable[Mapping[str, Any]], judge: str) -> list[float]:
    ratings = []
    for record in records:
        rating = ((record.get("judges") or {}).get(judge) or {}).get("rating")
        if rating is not None:
            ratings.append(float(rating))
    return ratings


def judge_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.get("judges") or {}))
    return list(names)


def retrieval_summary(
    records: Sequence[Mapping[str, Any]], ks: Sequence[int] = DEFAULT_HIT_KS
) -> dict[str, Any] | None:
    """hit@k and MRR of the source chunk, over the records that carry a retrieval list (or,
    through the API, the pages their answers cited: see `cited_rank`)."""
    ranked = [r for r in records if ranking(r) is not None
              and (r.get("chunk_id") or (r.get("cited") is not None and r.get("source")))]
    if not ranked:
        return None
    ranks = [record_rank(r) for r in ranked]
    summary: dict[str, Any] = {"n": len(ranked)}
    for k in ks:
        summary[f"hit@{k}"] = sum(1 for x in ranks if x is not None and x <= k) / len(ranks)
    summary["mrr"] = sum(1.0 / x for x in ranks if x is not None) / len(ranks)
    summary["depth"] = max(len(ranking(r) or ()) for r in ranked)
    return summary


def summarize(
    records: Sequence[Mapping[str, Any]], ks: Sequence[int] = DEFAULT_HIT_KS
) -> dict[str, Any]:
    """Every metric over a run, as nested dicts (see `flatten` for one level). The questions
    that failed are left out of every figure and counted in `errors`."""
    summary: dict[str, Any] = {"n": len(records)}
    failed = [r for r in records if r.get("error")]
    records = [r for r in records if not r.get("error")]
    scored = [r for r in records if r.get("rouge")]
    for implementation, types in zip(ROUGE_IMPLEMENTATIONS, (ROUGE_SCORE_TYPES, ROUGE_TYPES),
                                     strict=True):
        summary[implementation] = {
            f"{t}_f": _mean(r["rouge"][implementation][t]["f"] for r in scored) for t in types
        }
    summary["judges"] = {}
    for name in judge_names(records):
        ratings = judge_ratings(records, name)
        methods = {((r.get("judges") or {}).get(name) or {}).get("method") for r in records}
        summary["judges"][name] = {
            "mean": _mean(ratings),
            "median": statistics.median(ratings) if ratings else None,
            "n": len(ratings),
            "method": "/".join(sorted(m for m in methods if m)),
        }
    summary["retrieval"] = retrieval_summary(records, ks)
    refusals = [bool(r["refused"]) for r in records if r.get("refused") is not None]
    summary["refusal_rate"] = sum(refusals) / len(refusals) if refusals else None
    latencies = [float(r["latency_s"]) for r in records if r.get("latency_s") is not None]
    summary["latency_s"] = {
        "mean": _mean(latencies),
        "p50": _percentile(latencies, 0.5),
        "p95": _percentile(latencies, 0.95),
    } if latencies else None
    tokens = [int(r["completion_tokens"]) for r in records
              if r.get("completion_tokens") is not None]
    summary["completion_tokens"] = {"mean": _mean(tokens)} if tokens else None
    summary["errors"] = len(failed)
    return summary


def flatten(summary: Mapping[str, Any]) -> dict[str, float]:
    """One level of numeric metrics: "rouge/rouge-1_f", "judge/NAME", "retrieval/hit@1", ..."""
    flat: dict[str, float] = {}
    for implementation in ROUGE_IMPLEMENTATIONS:
        for key, value in (summary.get(implementation) or {}).items():
            if value is not None:
                flat[f"{implementation}/{key}"] = value
    for name, stats in (summary.get("judges") or {}).items():
        if stats.get("mean") is not None:
            flat[f"judge/{name}"] = stats["mean"]
    for key, value in (summary.get("retrieval") or {}).items():
        if key not in ("n", "depth"):
            flat[f"retrieval/{key}"] = value
    if summary.get("refusal_rate") is not None:
        flat["refusal_rate"] = summary["refusal_rate"]
    for key, value in (summary.get("latency_s") or {}).items():
        if value is not None:
            flat[f"latency_s/{key}"] = value
    if summary.get("completion_tokens"):
        flat["completion_tokens/mean"] = summary["completion_tokens"]["mean"]
    return flat


def metric_label(key: str) -> str:
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    if key.startswith("judge/"):
        return f"judge {key.removeprefix('judge/')}: mean rating (0-10)"
    if key.startswith("retrieval/"):
        name = key.removeprefix("retrieval/")
        return "retrieval MRR" if name == "mrr" else f"retrieval {name}"
    return {
        "refusal_rate": "refusal rate",
        "latency_s/mean": "latency, mean (s)",
        "latency_s/p50": "latency, median (s)",
        "latency_s/p95": "latency, 95th percentile (s)",
        "completion_tokens/mean": "tokens per answer",
    }.get(key, key)
