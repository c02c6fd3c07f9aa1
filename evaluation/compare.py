"""Runs on the same questions: wins, ties and losses per judge, and metric deltas; for more
than two runs, every run's metrics side by side and every pair's tallies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hearth.evaluation.scoring import flatten, judge_names, summarize


@dataclass
class Tally:
    judge: str
    wins: int  # A rated higher than B
    ties: int
    losses: int
    pairs: list[tuple[float, float]] = field(default_factory=list, repr=False)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


@dataclass
class Comparison:
    label_a: str
    label_b: str
    n: int  # questions in both runs
    tallies: list[Tally]
    metrics_a: dict[str, float]
    metrics_b: dict[str, float]

    @property
    def deltas(self) -> dict[str, float]:
        """B minus A, for every metric both runs have."""
        return {k: self.metrics_b[k] - v for k, v in self.metrics_a.items() if k in self.metrics_b}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for tally in data["tallies"]:
            tally.pop("pairs")
        data["deltas"] = self.deltas
        return data


def align(records_a: Sequence[Mapping[str, Any]], records_b: Sequence[Mapping[str, Any]]
          ) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Pairs of records about the same question, matched by id."""
    by_id = {str(r["id"]): r for r in records_b}
    pairs = [(a, by_id[str(a["id"])]) for a in records_a if str(a["id"]) in by_id]
    mismatched = [a["id"] for a, b in pairs if a.get("reference") != b.get("reference")]
    if mismatched:
        raise ValueError(f"runs differ on the reference answer of {len(mismatched)} questions "
                         f"(first: {mismatched[0]}): they do not come from the same dataset")
    return pairs


def tally(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], judge: str,
          tie_margin: float = 0.0) -> Tally:
    """Per question, A wins when its rating exceeds B's by more than `tie_margin`."""
    result = Tally(judge, 0, 0, 0)
    for a, b in pairs:
        rating_a = ((a.get("judges") or {}).get(judge) or {}).get("rating")
        rating_b = ((b.get("judges") or {}).get(judge) or {}).get("rating")
        if rating_a is None or rating_b is None:
            continue
        rating_a, rating_b = float(rating_a), float(rating_b)
        result.pairs.append((rating_a, rating_b))
        if rating_a - rating_b > tie_margin:
            result.wins += 1
        elif rating_b - rating_a > tie_margin:
            result.losses += 1
        else:
            result.ties += 1
    return result


def compare(records_a: Sequence[Mapping[str, Any]], records_b: Sequence[Mapping[str, Any]],
            label_a: str = "A", label_b: str = "B", tie_margin: float = 0.0) -> Comparison:
    pairs = align(records_a, records_b)
    if not pairs:
        raise ValueError("the runs share no question ids: they do not come from the same dataset")
    common_a = [a for a, _ in pairs]
    common_b = [b for _, b in pairs]
    names_b = set(judge_names(common_b))
    tallies = [tally(pairs, name, tie_margin) for name in judge_names(common_a) if name in names_b]
    return Comparison(
        label_a, label_b, len(pairs), tallies,
        flatten(summarize(common_a)), flatten(summarize(common_b)),
    )


@dataclass
class MultiComparison:
    """Three runs or more, on the questions they all answered: one column of metrics a run,
    and the wins, ties and losses of every pair (earlier run first)."""

    labels: list[str]
    n: int
    metrics: list[dict[str, float]]
    pairs: list[Comparison]

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "n": self.n, "metrics": self.metrics,
                "pairs": [c.to_json() for c in self.pairs]}


def compare_many(runs: Sequence[tuple[Sequence[Mapping[str, Any]], str]],
                 tie_margin: float = 0.0) -> MultiComparison:
    """``runs``: (records, label) each. Only the questions every run answered are counted,
    so that each column and each pair is over the same questions."""
    if len(runs) < 2:
        raise ValueError("compare needs two runs or more")
    ids = set.intersection(*({str(r["id"]) for r in records} for records, _ in runs))
    if not ids:
        raise ValueError("the runs share no question ids: they do not come from the same dataset")
    common = [[r for r in records if str(r["id"]) in ids] for records, _ in runs]
    labels = [label for _, label in runs]
    pairs = [compare(common[i], common[j], labels[i], labels[j], tie_margin)
             for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return MultiComparison(labels, len(ids), [flatten(summarize(c)) for c in common], pairs)
