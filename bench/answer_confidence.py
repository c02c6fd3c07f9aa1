"""How sure was the model of the answers the grounding check passed, and does it tell right from wrong?

HEARTH_MIN_ANSWER_CONFIDENCE withholds an answer the model was unsure of: the geometric mean
of the probabilities it gave the tokens it wrote, read from llama.cpp's logits as it
generates. A `hearth eval facts` run records each answer's `confidence` (llama.cpp in
process). This script reads a run's records, without generating anything, and gives, over
the drafts the grounding check passes: the AUC of telling right ones (every key fact) from
wrong ones by confidence, and for a few floors the right and wrong drafts a floor would
withhold and the issue's goals with it (a withheld answer scores 0).

    .venv/bin/python bench/answer_confidence.py eval-runs/RUN [--sets evaluation/sets]
    .venv/bin/python bench/answer_confidence.py eval-runs/RUN --ids first.txt   # a part
    .venv/bin/python bench/answer_confidence.py eval-runs/RUN --signal claims

`--signal` reads another figure from the tokens the run recorded with each answer (runs from
this version on): `low3`, the geometric mean of the answer's three least likely tokens;
`claims`, that of the tokens of what the grounding check reads as its claims (names,
numbers, commands: the whole answer's where it has none); `first20`, that of its first 20
tokens. Hearth's floor uses `mean`, the recorded confidence: none of these told right from
wrong better on the whole set (docs/evaluation.md, "How sure the model was").

Runs made with `hearth eval facts --alternatives N` also record the likeliest tokens at each
drawn token's place, and three more figures read them: `margin`, the mean of each token's
probability less that of the likeliest other token at its place (negative where the model
drew one it thought less likely); `entropy`, the mean entropy at each place (the N likeliest
and the rest as one more outcome: a lower bound), negated so that higher is surer;
`claims-margin`, the least margin among the tokens of the draft's claims (the whole answer's
where it has none): whether the model, sure of the name it copied, had another in mind.
Neither did better than the mean on the 1.5B's first 102 questions (docs/evaluation.md,
"What else the model had in mind"). `--floor` takes values on the signal's own scale.

The confidence is the generated tokens' own: re-reading a draft's text later gives lower
figures (the text tokenized again is not always the tokens drawn), so a floor is measured
on recorded runs only.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common  # puts the repository on sys.path
from self_check import auc

from hearth.evaluation.keyfacts import facts_present, load_fact_sets
from hearth.grounding import check, claims
from hearth.llm import Generation

FLOORS = (0.6, 0.65, 0.7, 0.75, 0.8)
# As a run records them: [text, log-probability], with --alternatives a third element, the
# likeliest tokens at its place, [[text, log-probability], ...].
Tokens = Sequence[Sequence[Any]]


def geometric(logprobs: Sequence[float]) -> float:
    """As Hearth reads an answer's confidence from all its tokens, read from some of them."""
    confidence = Generation(logprobs=list(logprobs)).confidence
    assert confidence is not None  # every answer has tokens; a part has at least one
    return confidence


def claim_tokens(tokens: Tokens, draft: str) -> list[float]:
    """The log-probabilities of the tokens that spell the draft's claims (each of their
    occurrences in the tokens' text)."""
    return [tokens[k][1] for k in claim_places(tokens, draft)]


def claim_places(tokens: Tokens, draft: str) -> list[int]:
    """Which tokens spell the draft's claims (each of their occurrences in the tokens' text)."""
    text, spans = "", []
    for token in tokens:
        spans.append((len(text), len(text) + len(token[0])))
        text += token[0]
    hit: set[int] = set()
    for claim in claims(draft):
        at = text.find(claim)
        while at >= 0:
            hit |= {k for k, (a, b) in enumerate(spans) if a < at + len(claim) and b > at}
            at = text.find(claim, at + 1)
    return sorted(hit)


def alternatives(token: Sequence[Any]) -> list[tuple[str, float]]:
    if len(token) < 3:
        raise SystemExit("the run recorded no alternatives: answer with "
                         "`hearth eval facts --alternatives 5` for this signal")
    return [(text, lp) for text, lp in token[2]]


def margin(token: Sequence[Any]) -> float:
    """The drawn token's probability less the likeliest other's at its place."""
    text, lp = token[0], token[1]
    others = [other for piece, other in alternatives(token) if piece != text]
    return math.exp(lp) - (math.exp(max(others)) if others else 0.0)


def entropy(token: Sequence[Any]) -> float:
    """The entropy at a token's place, from its alternatives and the rest taken as one."""
    probabilities = [math.exp(lp) for _, lp in alternatives(token)]
    rest = max(0.0, 1.0 - sum(probabilities))
    return -sum(p * math.log(p) for p in [*probabilities, rest] if p > 0)


SIGNALS: dict[str, Callable[[Tokens, str], float]] = {
    "low3": lambda tokens, draft: geometric(sorted(t[1] for t in tokens)[:3]),
    "claims": lambda tokens, draft: geometric(claim_tokens(tokens, draft)
                                              or [t[1] for t in tokens]),
    "first20": lambda tokens, draft: geometric([t[1] for t in tokens[:20]]),
    "margin": lambda tokens, draft: statistics.fmean(margin(t) for t in tokens),
    "entropy": lambda tokens, draft: -statistics.fmean(entropy(t) for t in tokens),
    "claims-margin": lambda tokens, draft: min(
        margin(tokens[k]) for k in (claim_places(tokens, draft) or range(len(tokens)))),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a hearth eval facts run folder (records.jsonl)")
    p.add_argument("--sets", type=Path, help="grade with the key facts of the sets in this "
                   "folder (evaluation/sets), by question id, instead of the run's")
    p.add_argument("--ids", type=Path, help="only the questions whose ids this file lists (one "
                   "a line): a part of the run, to choose a floor on and check it on the rest")
    p.add_argument("--floor", type=float, action="append", help="a floor to give the goals "
                   f"at (repeat it); default {', '.join(map(str, FLOORS))}")
    p.add_argument("--signal", choices=["mean", *SIGNALS], default="mean",
                   help="the figure to grade (default: mean, the recorded confidence)")
    args = p.parse_args()
    wanted = set(args.ids.read_text().split()) if args.ids else None
    facts_now = ({q.id: q.key_facts for q in load_fact_sets(sorted(args.sets.glob("*.jsonl")))}
                 if args.sets else {})
    rows: list[dict[str, Any]] = []
    for record, draft in common.drafts(args.run):
        if wanted is not None and record["id"] not in wanted:
            continue
        passed = bool(draft) and check(draft, record.get("passages") or [],
                                       record["question"]).grounded
        facts = facts_now.get(record["id"], record.get("key_facts") or [])
        share = len(facts_present(facts, draft)) / len(facts) if facts and passed else 0.0
        if passed and record.get("confidence") is None:
            raise SystemExit(f"{record['id']}: the run recorded no confidence (a run made "
                             "before it was recorded, or not with llama.cpp in process)")
        confidence = record.get("confidence")
        if passed and args.signal != "mean":
            if not record.get("tokens"):
                raise SystemExit(f"{record['id']}: the run recorded no tokens (a run made "
                                 "before they were recorded): only --signal mean reads it")
            confidence = SIGNALS[args.signal](record["tokens"], draft)
        rows.append({"answerable": record["answerable"], "passed": passed, "share": share,
                     "confidence": confidence})
    passed = [r for r in rows if r["passed"] and r["answerable"]]
    right = [r["confidence"] for r in passed if r["share"] == 1]
    wrong = [r["confidence"] for r in passed if r["share"] < 1]
    print(f"\n{len(passed)} answerable drafts passed by the check: {len(right)} right, "
          f"{len(wrong)} wrong; {args.signal} median {statistics.median(right):.3f} right, "
          f"{statistics.median(wrong):.3f} wrong; AUC {auc(right, wrong):.2f}\n")
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    n = len(answerable)
    print("| floor | right withheld | wrong withheld | recall over answers presented | "
          "presented | wrong presented | false refusals | unanswerable refused |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    # No floor first (a signal's scale may run below 0: entropy), then each floor.
    for floor in (-math.inf, *(args.floor or FLOORS)):
        def shown(r: dict[str, Any], floor: float = floor) -> bool:
            return bool(r["passed"]) and r["confidence"] >= floor

        presented = [r for r in answerable if shown(r)]
        wrong_shown = sum(1 for r in presented if r["share"] < 1)
        print(f"| {'off' if floor == -math.inf else floor} | {sum(1 for c in right if c < floor)} | "
              f"{sum(1 for c in wrong if c < floor)} | "
              f"{sum(r['share'] for r in presented) / n:.3f} | "
              f"{len(presented) / n:.3f} ({len(presented)}) | {wrong_shown / n:.3f} ({wrong_shown}) | "
              f"{(n - len(presented)) / n:.3f} ({n - len(presented)}) | "
              f"{sum(1 for r in unanswerable if not shown(r))} of {len(unanswerable)} |")


if __name__ == "__main__":
    main()
