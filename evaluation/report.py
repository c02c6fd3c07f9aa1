"""A run folder: Markdown summary, JSON with every record, PNG plots (matplotlib, headless)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hearth.evaluation.compare import Comparison, MultiComparison
from hearth.evaluation.records import ROUGE_IMPLEMENTATIONS, write_results
from hearth.evaluation.scoring import (
    ROUGE_SCORE_TYPES,
    ROUGE_TYPES,
    flatten,
    judge_ratings,
    metric_label,
)

SUMMARY_FILE = "summary.md"
COMPARE_FILE = "compare.md"
COMPARE_JSON = "compare.json"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "judge"


def summary_markdown(summary: Mapping[str, Any], title: str = "Evaluation") -> str:
    lines = [f"# {title}", "", f"{summary['n']} questions.", "", "| metric | value |",
             "|---|---|"]
    for key, value in flatten(summary).items():
        lines.append(f"| {metric_label(key)} | {_fmt(value)} |")
    judges = summary.get("judges") or {}
    if judges:
        lines += ["", "| judge | mean | median | rated | how |", "|---|---|---|---|---|"]
        for name, stats in judges.items():
            how = {"logprobs": "expected value over P(0..10)",
                   "number": "the number written"}.get(stats["method"], stats["method"])
            lines.append(f"| {name} | {_fmt(stats['mean'], 3)} | {_fmt(stats['median'], 3)} "
                         f"| {stats['n']} | {how} |")
    retrieval = summary.get("retrieval")
    if retrieval:
        lines += ["", f"Retrieval looked {retrieval['depth']} chunks deep for "
                      f"{retrieval['n']} questions with a source chunk."]
    if summary.get("errors"):
        lines += ["", f"{summary['errors']} questions failed to answer, left out of every "
                      "figure (see `error` in results.json; a resumed run asks them again)."]
    return "\n".join(lines) + "\n"


def comparison_markdown(comparison: Comparison) -> str:
    a, b = comparison.label_a, comparison.label_b
    lines = [f"# {a} vs {b}", "", f"{comparison.n} questions in both runs.", ""]
    if comparison.tallies:
        lines += [f"| judge | {a} wins | ties | {b} wins |", "|---|---|---|---|"]
        for t in comparison.tallies:
            lines.append(f"| {t.judge} | {t.wins} | {t.ties} | {t.losses} |")
        lines.append("")
    lines += [f"| metric | {a} | {b} | {b} - {a} |", "|---|---|---|---|"]
    deltas = comparison.deltas
    for key, value in comparison.metrics_a.items():
        if key in deltas:
            lines.append(f"| {metric_label(key)} | {_fmt(value)} | "
                         f"{_fmt(comparison.metrics_b[key])} | {deltas[key]:+.4f} |")
    return "\n".join(lines) + "\n"


def multi_comparison_markdown(multi: MultiComparison) -> str:
    labels = multi.labels
    lines = [f"# {' vs '.join(labels)}", "", f"{multi.n} questions in every run.", "",
             "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    keys = [k for k in multi.metrics[0] if all(k in m for m in multi.metrics)]
    for key in keys:
        lines.append(f"| {metric_label(key)} | "
                     + " | ".join(_fmt(m[key]) for m in multi.metrics) + " |")
    tallies = [(c, t) for c in multi.pairs for t in c.tallies]
    if tallies:
        lines += ["", "| judge | A | B | A wins | ties | B wins |", "|---|---|---|---|---|---|"]
        for c, t in tallies:
            lines.append(f"| {t.judge} | {c.label_a} | {c.label_b} | {t.wins} | {t.ties} | "
                         f"{t.losses} |")
    return "\n".join(lines) + "\n"


def plot_multi_comparison(multi: MultiComparison, out_dir: Path) -> list[Path]:
    """Each run's ROUGE-L F1 (both implementations) and judges' mean ratings, as bars."""
    plt = _pyplot()
    keys = [k for k in multi.metrics[0] if (k.startswith("judge/") or k.endswith(("rougeL_f",
            "rouge-l_f"))) and all(k in m for m in multi.metrics)]
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys) + 1, 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.bar(range(len(multi.labels)), [m[key] for m in multi.metrics])
        ax.set_xticks(range(len(multi.labels)))
        ax.set_xticklabels(multi.labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric_label(key), fontsize=9)
    return [_save(fig, out_dir / "compare.png", plt)]


# --- plots ---------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_run(records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Distributions of ROUGE F1 (both implementations), judge ratings and latency."""
    plt = _pyplot()
    written = []
    scored = [r for r in records if r.get("rouge")]
    if scored:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
        for ax, score_type, rouge_type in zip(axes, ROUGE_SCORE_TYPES, ROUGE_TYPES, strict=True):
            for implementation, key in zip(ROUGE_IMPLEMENTATIONS, (score_type, rouge_type),
                                           strict=True):
                values = [r["rouge"][implementation][key]["f"] for r in scored]
                label = "rouge (as the origin)" if implementation == "rouge" else implementation
                ax.hist(values, bins=20, range=(0, 1), alpha=0.55, label=label)
            ax.set_title(f"{rouge_type.upper()} F1")
            ax.set_xlabel("F1")
        axes[0].set_ylabel("questions")
        axes[0].legend()
        written.append(_save(fig, out_dir / "rouge.png", plt))
    for name in sorted({n for r in records for n in (r.get("judges") or {})}):
        ratings = judge_ratings(records, name)
        if not ratings:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.hist(ratings, bins=[x - 0.5 for x in range(12)], rwidth=0.85)
        ax.set_xticks(range(11))
        ax.set_title(f"judge {name}: mean {sum(ratings) / len(ratings):.2f}")
        ax.set_xlabel("rating")
        ax.set_ylabel("questions")
        written.append(_save(fig, out_dir / f"judge-{_slug(name)}.png", plt))
    latencies = [r["latency_s"] for r in records if r.get("latency_s") is not None]
    if latencies:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.hist(latencies, bins=20)
        ax.set_title("latency per answer")
        ax.set_xlabel("seconds")
        ax.set_ylabel("questions")
        written.append(_save(fig, out_dir / "latency.png", plt))
    return written


def plot_comparison(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Per judge: a scatter of A's rating against B's, one point a question."""
    plt = _pyplot()
    written = []
    for t in comparison.tallies:
        if not t.pairs:
            continue
        xs, ys = zip(*t.pairs, strict=True)
        if all(float(v).is_integer() for v in xs + ys):
            # Whole-number ratings would stack on a grid: spread each point a little.
            jitter = random.Random(0)
            xs = tuple(x + jitter.uniform(-0.2, 0.2) for x in xs)
            ys = tuple(y + jitter.uniform(-0.2, 0.2) for y in ys)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(xs, ys, s=12, alpha=0.35)
        ax.plot([0, 10], [0, 10], color="grey", linewidth=0.8)
        ax.set_xlim(-0.5, 10.5)
        ax.set_ylim(-0.5, 10.5)
        ax.set_xlabel(f"{comparison.label_a} rating")
        ax.set_ylabel(f"{comparison.label_b} rating")
        ax.set_title(f"judge {t.judge}: {comparison.label_a} wins {t.wins}, ties {t.ties}, "
                     f"{comparison.label_b} wins {t.losses}", fontsize=9)
        written.append(_save(fig, out_dir / f"scatter-{_slug(t.judge)}.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- run folders -----------------------------------------------------------------------------


def write_run_report(run_dir: Path, records: list[dict[str, Any]], summary: Mapping[str, Any],
                     config: Mapping[str, Any], title: str, plots: bool = True) -> list[Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    written = [write_results(run_dir, records, summary, config)]
    markdown = run_dir / SUMMARY_FILE
    markdown.write_text(summary_markdown(summary, title), encoding="utf-8")
    written.append(markdown)
    if plots:
        written += plot_run(records, run_dir)
    return written


def write_comparison_report(out_dir: Path, comparison: Comparison | MultiComparison,
                            plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / COMPARE_FILE
    multi = isinstance(comparison, MultiComparison)
    markdown.write_text(multi_comparison_markdown(comparison) if multi
                        else comparison_markdown(comparison), encoding="utf-8")
    data = out_dir / COMPARE_JSON
    data.write_text(json.dumps(comparison.to_json(), indent=1), encoding="utf-8")
    written = [markdown, data]
    if plots:
        written += plot_multi_comparison(comparison, out_dir) if multi \
            else plot_comparison(comparison, out_dir)
    return written
