"""The grounding check, graded offline on the drafts of a `hearth eval facts` run.

A run's records keep each answer's draft (the model's text, before the check withheld it)
and the four passages retrieved for its question. This script checks every draft again with
the checked-out ``hearth.grounding.check`` against those passages, and counts, for answerable
questions, right drafts (every key fact stated) and wrong ones the check withholds or passes,
and for unanswerable ones the drafts it withholds. Run it at two commits to compare two
versions of the check on the same drafts, without answering anything again:

    .venv/bin/python bench/grounding_check.py eval-runs/full

The passages are the retrieved chunks' text, without the heading line Hearth adds before each
one in the prompt: a claim found only in a heading passes in Hearth and not here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common  # puts the repository on sys.path

from hearth.evaluation.keyfacts import facts_present
from hearth.grounding import check


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a hearth eval facts run folder (records.jsonl)")
    p.add_argument("-v", "--verbose", action="store_true", help="list what each withheld draft named")
    args = p.parse_args()
    counts = {k: 0 for k in ("right", "right withheld", "wrong", "wrong withheld",
                             "unanswerable", "unanswerable withheld", "declined by the model")}
    for record, draft in common.drafts(args.run):
        if not draft:
            counts["declined by the model"] += 1
            continue
        verdict = check(draft, record.get("passages") or [], record.get("question", ""))
        if record["answerable"]:
            facts = record["key_facts"]
            kind = "right" if len(facts_present(facts, draft)) == len(facts) else "wrong"
        else:
            kind = "unanswerable"
        counts[kind] += 1
        if not verdict.grounded:
            counts[f"{kind} withheld"] += 1
            if args.verbose:
                print(f"{record['id']} ({kind}): {verdict.unsupported[:4]} "
                      f"word support {verdict.word_support}")
    for kind in ("right", "wrong", "unanswerable"):
        print(f"{kind} drafts withheld: {counts[f'{kind} withheld']} of {counts[kind]}")
    print(f"declined by the model: {counts['declined by the model']}")


if __name__ == "__main__":
    main()
