"""The grounding check, graded offline on the drafts of a `hearth eval facts` run.

A run's records keep each answer's draft (the model's text, before the check withheld it)
and the four passages retrieved for its question. This script checks every draft again with
the checked-out ``hearth.grounding.check`` against those passages, and counts, for answerable
questions, right drafts (every key fact stated) and wrong ones the check withholds or passes,
and for unanswerable ones the drafts it withholds. It also gives the issue's goals as
this check would have them: key-fact recall over the answers presented as grounded (a
withheld answer scores 0), answers presented, wrong answers presented, false refusals and
unanswerable questions refused. Run it at two commits to compare two versions of the check
on the same drafts, without answering anything again:

    .venv/bin/python bench/grounding_check.py eval-runs/full

A record's key facts are those its run was made with; ``--sets`` grades with the key facts the
evaluation sets give each question now (by id), after the sets were reviewed.

The passages are the retrieved chunks' text, without the heading line Hearth adds before each
one in the prompt: a claim found only in a heading passes in Hearth and not here.

``--neighbours N --index DIR`` checks each draft against its passages widened by up to N
chunks before and after each on its page, read from the run's index (its data directory's
``keywords.sqlite3``): what a check that reads the section around a short passage would
say, the model having read the passage alone.

``--continuation TOKENS --index DIR`` checks each draft against its passages as the chain
continues them with ``HEARTH_CONTEXT_CONTINUATION_TOKENS=TOKENS`` (a passage that introduces
what the next chunk holds, followed by up to TOKENS of it, counted here at four characters a
token): for a run made with it, what the check read live.

``--read`` checks each draft against what the model read, as the run recorded it (``read``:
each passage as the prompt gave it, heading line, neighbours and continuation included; runs
made before it was recorded have none): exactly what Hearth's check read.

``--wrong`` lists each wrong answer presented as grounded, to read one by one: the key facts
it lacks (and whether they were in what the model read), its question and its answer.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # puts the repository on sys.path
from langchain_core.documents import Document

from hearth.evaluation.keyfacts import Fact, facts_present, load_fact_sets
from hearth.grounding import check
from hearth.keywords import KeywordIndex
from hearth.retrieval import continuation, leading


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a hearth eval facts run folder (records.jsonl)")
    p.add_argument("-v", "--verbose", action="store_true", help="list what each withheld draft named")
    p.add_argument("--sets", type=Path, help="grade with the key facts of the sets in this folder "
                   "(evaluation/sets), by question id, instead of the run's")
    p.add_argument("--neighbours", type=int, default=0, metavar="N",
                   help="check against each passage with N chunks before and after it (needs --index)")
    p.add_argument("--continuation", type=int, default=0, metavar="TOKENS",
                   help="check against each passage continued into what it introduces, as the "
                   "chain does (needs --index)")
    p.add_argument("--index", type=Path, metavar="DIR", help="the run's data directory")
    p.add_argument("--read", action="store_true",
                   help="check against what the model read, as the run recorded it")
    p.add_argument("--wrong", action="store_true",
                   help="list each wrong answer presented as grounded: the key facts it lacks "
                   "(and whether the model read them), the question and the answer, to read")
    args = p.parse_args()
    if args.read and (args.neighbours or args.continuation):
        p.error("--read checks against what the model read: not with --neighbours or "
                "--continuation")
    if (args.neighbours or args.continuation) and not (
            args.index and (args.index / "keywords.sqlite3").is_file()):
        p.error("--neighbours and --continuation need --index: the data directory (with "
                "keywords.sqlite3) of the run")
    db = sqlite3.connect(f"file:{args.index / 'keywords.sqlite3'}?mode=ro", uri=True) \
        if args.neighbours or args.continuation else None
    keywords = KeywordIndex(args.index / "keywords.sqlite3") if args.continuation else None
    now: dict[str, list[Fact]] = {}
    if args.sets:
        now = {q.id: q.key_facts for q in load_fact_sets(sorted(args.sets.glob("*.jsonl")))}
    counts = {k: 0 for k in ("right", "right withheld", "wrong", "wrong withheld",
                             "unanswerable", "unanswerable withheld", "declined by the model")}
    recall: list[float] = []  # each answerable question's, 0 where nothing is presented
    presented = wrong_presented = unanswerable = refused_unanswerable = 0
    for record, draft in common.drafts(args.run):
        passages = record.get("passages") or []
        if args.read:
            if record.get("read") is None:
                p.error(f"{record['id']}: the run did not record what the model read "
                        "(made before `read` was recorded): run it without --read")
            passages = record["read"]
        elif db is not None and args.neighbours:
            passages = widened(db, record, passages, args.neighbours)
        elif db is not None and keywords is not None:
            passages = continued(db, keywords, record, passages, args.continuation)
        verdict = check(draft, passages, record.get("question", "")) if draft else None
        shown = verdict is not None and verdict.grounded
        if record["answerable"]:
            facts = now.get(record["id"], record["key_facts"])
            found = len(facts_present(facts, draft)) if draft else 0
            recall.append(found / len(facts) if shown else 0.0)
            presented += shown
            wrong_presented += shown and found < len(facts)
            if args.wrong and shown and found < len(facts):
                print(wrong_answer(record, facts, draft))
        else:
            unanswerable += 1
            refused_unanswerable += not shown
        if verdict is None:
            counts["declined by the model"] += 1
            continue
        kind = "unanswerable" if not record["answerable"] else (
            "right" if found == len(facts) else "wrong")
        counts[kind] += 1
        if not verdict.grounded:
            counts[f"{kind} withheld"] += 1
            if args.verbose:
                print(f"{record['id']} ({kind}): {verdict.unsupported[:4]} "
                      f"word support {verdict.word_support}")
    for kind in ("right", "wrong", "unanswerable"):
        print(f"{kind} drafts withheld: {counts[f'{kind} withheld']} of {counts[kind]}")
    print(f"declined by the model: {counts['declined by the model']}")
    n = len(recall)
    if n:
        print(f"answerable {n}: key-fact recall over answers presented as grounded "
              f"{sum(recall) / n:.3f}; presented {presented / n:.3f} ({presented}); "
              f"wrong presented {wrong_presented / n:.3f} ({wrong_presented}); "
              f"false refusals {(n - presented) / n:.3f} ({n - presented})")
    if unanswerable:
        print(f"unanswerable refused: {refused_unanswerable} of {unanswerable}")


def wrong_answer(record: dict[str, Any], facts: Sequence[Fact], draft: str) -> str:
    """A wrong answer presented as grounded, to read: what it lacks, and what it said."""
    lacking = [fact for fact in facts if fact not in facts_present(facts, draft)]
    read = record.get("read")
    where = "" if read is None else (
        " (in what the model read)" if len(facts_present(lacking, "\n".join(read))) == len(lacking)
        else " (not all in what the model read)")
    answer = " ".join(draft.split())
    return (f"--- {record['id']}: lacks {lacking}{where}\n"
            f"    Q: {record.get('question', '')}\n"
            f"    A: {answer[:400]}{' ...' if len(answer) > 400 else ''}")


def widened(db: sqlite3.Connection, record: dict[str, Any], passages: Sequence[str],
             n: int) -> list[str]:
    """Each passage as the text of its chunk and the ``n`` chunks each side on its page (the
    record names the chunks it retrieved, in the passages' order); a passage whose chunk the
    index no longer holds stays as it is."""
    chunks = [hit.get("chunk_id") for hit in record.get("retrieved") or []]
    out = []
    for i, passage in enumerate(passages):
        row = db.execute("SELECT collection, source, page, position FROM chunks WHERE chunk_id = ?",
                         (chunks[i] if i < len(chunks) else None,)).fetchone()
        if row is None:
            out.append(passage)
            continue
        collection, source, page, position = row
        bodies = db.execute(
            "SELECT body FROM chunks WHERE collection = ? AND source = ? AND page = ? "
            "AND position BETWEEN ? AND ? ORDER BY position",
            (collection, source, page, position - n, position + n)).fetchall()
        out.append("\n".join(body for (body,) in bodies))
    return out


def continued(db: sqlite3.Connection, keywords: KeywordIndex, record: dict[str, Any],
              passages: Sequence[str], tokens: int) -> list[str]:
    """Each passage followed by up to ``tokens`` (four characters a token) of what it
    introduces (``hearth.retrieval.continuation``), as the chain's context has it: not where
    the next chunk is one of the passages itself."""
    chunks = [hit.get("chunk_id") for hit in record.get("retrieved") or []][:len(passages)]
    rows = [db.execute("SELECT collection, source, position, metadata FROM chunks "
                       "WHERE chunk_id = ?", (chunk_id,)).fetchone() for chunk_id in chunks]
    among = {tuple(row[:3]) for row in rows if row is not None}
    out = []
    for i, passage in enumerate(passages):
        row = rows[i] if i < len(rows) else None
        if row is None or row[2] is None or (row[0], row[1], row[2] + 1) in among:
            out.append(passage)
            continue
        meta = {**json.loads(row[3]), "collection": row[0]}
        doc = Document(page_content=passage, metadata=meta)
        more = leading(continuation(keywords, (doc, 0.0, chunks[i])), tokens,
                       lambda text: len(text) // 4)
        out.append(f"{passage}\n{more}" if more else passage)
    return out


if __name__ == "__main__":
    main()
