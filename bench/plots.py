"""The PNGs of BENCHMARKS.md, drawn from the JSON the scripts write to bench/results/.

Each benchmark script draws its own plot when it finishes; this redraws every plot whose
results are there:

    .venv/bin/python bench/plots.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#64b5cd"]


def _save(fig: Any, name: str, folder: Path | None) -> Path:
    """bench/plots/NAME.png, the one BENCHMARKS.md shows; a quick run's go to bench/results/."""
    folder = folder or common.PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _machine(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, no GPU, {m.get('date', '')[:10]}"


def answer_path(result: dict[str, Any], folder: Path | None = None) -> Path:
    """Left: a streamed answer through Hearth, piece by piece, beside llama.cpp alone.
    Right: every piece in milliseconds (log scale), the engines' and Hearth's own."""
    breakdown = result["breakdown_s"]
    m = result["median"]
    colour = {step: COLOURS[i % len(COLOURS)] for i, step in enumerate(breakdown)}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.1, 1]})
    left = 0.0
    for step, seconds in breakdown.items():
        ax.barh("Hearth\n(streamed, HTTP)", seconds, left=left, color=colour[step])
        left += seconds
    ax.barh("llama.cpp alone", m["raw_ttft_s"], color=colour["LLM prefill (to first token)"])
    ax.barh("llama.cpp alone", m["raw_stream_total_s"] - m["raw_ttft_s"], left=m["raw_ttft_s"],
            color=colour["LLM decode"])
    ax.set_xlabel("seconds (median over the questions)")
    ax.set_title(f"{result['args']['model']}: Hearth ÷ raw = {m['paired_stream_total_ratio']:.3f} "
                 f"(total), {m['paired_ttft_ratio']:.3f} (first token)", fontsize=9)
    steps = list(breakdown)[::-1]
    ax2.barh(steps, [breakdown[k] * 1000 for k in steps], color=[colour[k] for k in steps])
    for y, k in enumerate(steps):
        ax2.text(breakdown[k] * 1000 * 1.1, y, f"{breakdown[k] * 1000:.1f}", va="center", fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("ms per answer (log scale)")
    ax2.set_title(f"Each piece; Hearth's own work = {100 * result['hearth_own_vs_llm']:.2f}% of "
                  "llama.cpp's time", fontsize=9)
    ax2.tick_params(axis="y", labelsize=7)
    ax2.set_xlim(right=max(breakdown.values()) * 1000 * 8)
    fig.text(0.01, 0.01, _machine(result), fontsize=7, color="grey")
    return _save(fig, "answer_path", folder)


def retrieval_scale(result: dict[str, Any], folder: Path | None = None) -> Path:
    """Top-k latency against the number of chunks, with and without a filter; memory and disk."""
    sizes = result["sizes"]
    n = [s["chunks"] for s in sizes]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    series = [("query_ms", "Chroma query"), ("filtered_ms", "+ filter: one document (0.1%)"),
              ("filtered_folder_ms", "+ filter: one folder (10%)"),
              ("hearth_search_ms", "Hearth VectorStore.search")]
    for colour, (key, label) in zip(COLOURS, series, strict=False):
        if all(key in s for s in sizes):
            ax.plot(n, [s[key]["median"] for s in sizes], "o-", color=colour, label=f"{label}, median")
            ax.plot(n, [s[key]["p95"] for s in sizes], "o--", color=colour, alpha=0.6,
                    label=f"{label}, p95")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chunks in the collection (384-d)")
    ax.set_ylabel(f"top-{result['k']} latency, ms")
    ax.set_title("Retrieval latency vs corpus size", fontsize=10)
    ax.legend(fontsize=6)
    ax2.plot(n, [s["rss_mib"] for s in sizes], "o-", color=COLOURS[0], label="process RSS after queries")
    ax2.plot(n, [s["disk_mib"] for s in sizes], "o-", color=COLOURS[1], label="Chroma folder on disk")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("chunks in the collection")
    ax2.set_ylabel("MiB")
    ax2.set_title("Memory and disk", fontsize=10)
    ax2.legend(fontsize=7)
    fig.text(0.01, 0.01, _machine(result), fontsize=7, color="grey")
    return _save(fig, "retrieval_scale", folder)


def load(result: dict[str, Any], folder: Path | None = None) -> Path:
    """Latency percentiles against concurrent users, for history reads and for questions."""
    levels = result["levels"]
    users = [lv["users"] for lv in levels]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for colour, p in zip(COLOURS, ("p50", "p95", "p99"), strict=False):
        ax.plot(users, [lv["history"]["latency_ms"][p] for lv in levels], "o-", color=colour,
                label=f"history read {p}")
    if "history_idle_http_ms" in result:
        ax.axhline(result["history_idle_http_ms"], color="grey", linestyle=":", label="idle server")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("ms")
    ax.set_title("History reads while the model answers", fontsize=10)
    ax.set_xticks(users)
    ax.legend(fontsize=7)
    for colour, p in zip(COLOURS, ("p50", "p95", "p99"), strict=False):
        ax2.plot(users, [lv["question"]["ttft_ms"][p] / 1000 for lv in levels], "o-", color=colour,
                 label=f"time to first token {p}")
    ax2.set_xlabel("concurrent users")
    ax2.set_ylabel("seconds")
    ax2.set_title("Admitted questions: first token, queue included", fontsize=10)
    ax2.set_xticks(users)
    ax2.legend(fontsize=7)
    fig.text(0.01, 0.01, _machine(result), fontsize=7, color="grey")
    return _save(fig, "load", folder)


def scale_out(result: dict[str, Any], folder: Path | None = None) -> Path:
    """Throughput and latency by configuration (workers x llama-server slots)."""
    configs = result["configs"]
    labels = [f"{c['workers']}w x {c['slots']}s" for c in configs]
    x = range(len(configs))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.bar([i - 0.2 for i in x], [c["rps"] for c in configs], 0.4, color=COLOURS[0],
           label="requests/s (answers + history reads)")
    ax.set_ylabel("requests/s")
    right = ax.twinx()
    right.bar([i + 0.2 for i in x], [c["answers_per_s"] for c in configs], 0.4, color=COLOURS[1],
              label="answers/s")
    right.set_ylabel("answers/s")
    ax.set_xticks(list(x), labels)
    ax.set_title(f"{result['args']['users']} users through HAProxy", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    right.legend(loc="upper right", fontsize=7)
    ax2.plot(list(x), [c["history_ms"]["p95"] for c in configs], "o-", color=COLOURS[2],
             label="history read p95 (ms)")
    ax2.set_ylabel("ms")
    ttft = ax2.twinx()
    ttft.plot(list(x), [c["ttft_ms"]["p50"] / 1000 for c in configs], "s--", color=COLOURS[3],
              label="first token p50 (s)")
    ttft.set_ylabel("seconds")
    ax2.set_xticks(list(x), labels)
    ax2.set_title("Latency by configuration", fontsize=10)
    ax2.legend(loc="upper left", fontsize=7)
    ttft.legend(loc="upper right", fontsize=7)
    fig.text(0.01, 0.01, _machine(result), fontsize=7, color="grey")
    return _save(fig, "scale_out", folder)


DRAW = {"answer_path": answer_path, "retrieval_scale": retrieval_scale, "load": load,
        "scale_out": scale_out}


def main() -> None:
    for name, draw in DRAW.items():
        result = common.load(name)
        if result is None:
            print(f"{name}: no results in {common.RESULTS} (run bench/{name}.py first)")
            continue
        print(f"{name}: {draw(result)}")


if __name__ == "__main__":
    main()
