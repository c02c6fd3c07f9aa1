"""Focused context: how many key facts survive when the passages are narrowed to their
sentences nearest the question (``HEARTH_CONTEXT_FOCUS``), against the index the settings name
(no generation, no model loaded).

    HEARTH_DATA_DIR=/path/to/index python bench/context_focus.py evaluation/sets/*.jsonl

For each answerable question, the passages the chain retrieves (the settings' retrieval, the
first ``--passages`` of them) are focused to each share of their characters; the table gives
the key facts present in what is kept ("facts in context", as `hearth eval facts` counts
facts retrievable), the kept characters (median) and the time focusing took (it embeds each
sentence of the passages). Share 1 is the passages whole: the default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common  # puts the repository on sys.path

from hearth.evaluation.keyfacts import facts_present
from hearth.focus import narrowed, scored

SHARES = (1.0, 0.75, 0.6, 0.5, 0.4)


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path, help="evaluation sets (JSONL)")
    parser.add_argument("--passages", type=int, action="append",
                        help="passages focused together (repeatable; default 4)")
    parser.add_argument("--share", type=float, action="append",
                        help=f"share of the characters kept (repeatable; default {SHARES})")
    parser.add_argument("--scoring", action="append",
                        help="own, window, both or words (repeatable; default all four)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    settings, services, questions, assistant = common.answerable_on_index(parser, args.sets)
    store = services.vectorstore
    depths = args.passages or [settings.top_k]
    shares = args.share or list(SHARES)
    scorings = args.scoring or ["own", "window", "both", "words"]
    found: dict[tuple[int, float, str], list[float]] = {}
    chars: dict[tuple[int, float, str], list[int]] = {}
    seconds: dict[tuple[int, float, str], list[float]] = {}
    for number, question in enumerate(questions, 1):
        ranked = assistant.retrieve(question.question, k=max(depths))
        for depth in depths:
            passages = [s.snippet for s in ranked[:depth]]
            started = time.perf_counter()
            found_scores = scored(question.question, passages, store.embeddings)
            embedding_s = time.perf_counter() - started
            for share in shares:
                for scoring in scorings if share < 1 else ["own"]:
                    key = (depth, share, scoring)
                    started = time.perf_counter()
                    kept = narrowed(passages, found_scores, found_scores.scores(scoring), share)
                    seconds.setdefault(key, []).append(
                        time.perf_counter() - started + (embedding_s if share < 1 else 0))
                    text = "\n".join(kept)
                    chars.setdefault(key, []).append(len(text))
                    present = facts_present(question.key_facts, text)
                    found.setdefault(key, []).append(len(present) / len(question.key_facts))
        if number % 20 == 0:
            print(f"{number} of {len(questions)}", file=sys.stderr)
    rows = [{"passages": key[0], "share": key[1], "scoring": key[2],
             "facts_in_context": statistics.mean(found[key]),
             "chars_median": statistics.median(chars[key]),
             "focus_ms_median": 1000 * statistics.median(seconds[key])}
            for key in found]
    out(f"{len(questions)} answerable questions of {', '.join(p.name for p in args.sets)}; "
        f"index {settings.data_dir} ({store.count()} chunks); retrieval "
        f"{settings.retrieval.value}\n")
    out("| passages | share kept | sentences scored by | facts in context | chars (median) "
        "| focus time (median) |")
    out("|---:|---:|---|---:|---:|---:|")
    for r in rows:
        out(f"| {r['passages']} | {r['share']:.2f} | {r['scoring']} | {r['facts_in_context']:.3f} "
            f"| {r['chars_median']:.0f} | {r['focus_ms_median']:.0f} ms |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
