"""Can the model tell its right drafts from its wrong ones? Two signals, on a run's drafts.

The grounding check (hearth/grounding.py) withholds a draft that names what no passage holds;
it passes a draft that is wrong in words the passages contain (`asyncio.gather` where the page
says `TaskGroup`). This script measures whether the model itself could catch those, on the
drafts of a `hearth eval facts` run, without answering anything again. For each draft, the
answer's prompt is rebuilt as Hearth builds it (the same retrieval, the same settings) and the
model reads it with the draft after it, once, then:

- **asked**: the draft is followed by a question to the model (several wordings below), and
  the probability of "yes" against "no" in its reply's first token is read. In Hearth this
  would cost a few tokens: the prompt and the answer are already in llama.cpp's cache.
- **confidence**: the model's own probability of each token of its draft (mean log
  probability, the lowest, the share of tokens under 0.5): a made-up name is often a token the
  model was unsure of.

Prints, for each signal, its median over right drafts (every key fact) and wrong ones, and the
AUC of telling them apart among the drafts the grounding check passed (0.5: no better than
chance; a check worth adding needs well above 0.8), and how many wrong drafts a threshold would
withhold for at most one or two right ones. Every draft's figures go to RUN/self_check.jsonl.

    HEARTH_DATA_DIR=/path/to/index .venv/bin/python bench/self_check.py eval-runs/RUN

The index and the settings must be the run's. llama.cpp in process, a packaged model with the
ChatML template (both Qwen2.5-Coder models); logits for every token of prompt and draft are
kept, about 2.4 GB for a 4,096-token window.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common  # puts the repository on sys.path
import numpy as np

from hearth.config import load_settings
from hearth.evaluation.keyfacts import facts_present
from hearth.services import build_services
from hearth.weights import catalog, configured_model, packaged, resolve_model_path

QUESTIONS = {
    "asked: supported and answers": (
        "Check your answer against the context. Is everything it says stated in the context, "
        "and does it answer the question? Reply with one word: yes or no."),
    "asked: stated in the context": "Does the context above state what your answer says? "
                                    "Reply yes or no.",
    "asked: could quote it": "Could you support every name, number and command of your answer "
                             "with a quotation from the context? Reply yes or no.",
    "asked: sure": "Are you sure your answer is right according to the context? Reply yes or no.",
}
ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def chatml(messages: Sequence[dict[str, str]], open_reply: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if open_reply else "")


def log_softmax(rows: np.ndarray) -> np.ndarray:
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def auc(good: Sequence[float], bad: Sequence[float]) -> float:
    """The chance that a right draft scores above a wrong one (ties count half)."""
    pairs = [(g > b) + 0.5 * (g == b) for g in good for b in bad]
    return sum(pairs) / len(pairs) if pairs else float("nan")


def caught(good: Sequence[float], bad: Sequence[float], spared: int) -> int:
    """Wrong drafts under the highest threshold that withholds at most ``spared`` right ones."""
    if len(good) <= spared:
        return len(bad)
    threshold = sorted(good)[spared]  # withhold what scores below it
    return sum(1 for b in bad if b < threshold)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a hearth eval facts run folder (records.jsonl)")
    args = p.parse_args()
    from llama_cpp import Llama

    settings = load_settings()
    name, _ = configured_model(settings.llamacpp_model)
    if name not in catalog() or packaged(name).chat_format != "chatml":
        raise SystemExit(f"{name}: this script reads ChatML models only (the packaged Qwen ones)")
    assistant = build_services(settings).assistant
    llm = Llama(model_path=str(resolve_model_path(name, settings.models_dir)),
                n_ctx=settings.llamacpp_n_ctx, n_batch=settings.llamacpp_n_batch,
                n_threads=settings.n_threads, logits_all=True, verbose=False)

    def tokens(text: str, special: bool) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=False, special=special)

    def first(*words: str) -> list[int]:
        return sorted({tokens(w, False)[0] for w in words})

    yes, no = first("yes", "Yes", "YES", " yes", " Yes"), first("no", "No", "NO", " no", " No")
    rows: list[dict[str, Any]] = []
    out = (args.run / "self_check.jsonl").open("w")
    for record, draft in common.drafts(args.run):
        if not draft:
            continue  # the model declined: nothing to check
        started = time.perf_counter()
        question = record["question"]
        relevant = [h for h in assistant.retrieve(question)
                    if h.score >= settings.min_relevance]
        messages, _ = assistant.build_prompt(question, relevant, ())
        chat = [{"role": ROLES[m.type], "content": str(m.content)} for m in messages]
        head = tokens(chatml(chat), True)
        said = tokens(draft, False)
        llm.reset()
        llm.eval(head + said)
        drawn = log_softmax(np.asarray(llm.scores[len(head) - 1:len(head) + len(said) - 1]))
        per_token = [float(drawn[i, t]) for i, t in enumerate(said)]
        facts = record.get("key_facts") or []
        row: dict[str, Any] = {
            "id": record["id"], "answerable": record["answerable"],
            "right": bool(facts) and len(facts_present(facts, draft)) == len(facts),
            "passed_check": not record.get("refused"),
            "confidence: mean log-probability": statistics.fmean(per_token),
            "confidence: lowest log-probability": min(per_token),
            "confidence: share of tokens over 0.5": sum(x >= math.log(0.5) for x in per_token)
            / len(per_token),
        }
        answered = chat + [{"role": "assistant", "content": draft}]
        for label, ask in QUESTIONS.items():
            turn = tokens(chatml([*answered, {"role": "user", "content": ask}]), True)
            common_head = len(head) + len(said)
            # The draft's own tokens and its re-read may differ at the seam: read from there.
            keep = next((i for i, (a, b) in enumerate(zip(turn, head + said, strict=False))
                         if a != b), min(len(turn), common_head))
            llm.n_tokens = keep
            llm.eval(turn[keep:])
            last = log_softmax(np.asarray(llm.scores[len(turn) - 1]))
            ly, ln = max(last[t] for t in yes), max(last[t] for t in no)
            row[label] = float(1 / (1 + math.exp(ln - ly)))
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        out.write(json.dumps(row) + "\n")
        print(f"{record['id']}: {'right' if row['right'] else 'wrong'}, "
              f"{'passed' if row['passed_check'] else 'withheld'}, {row['seconds']} s", flush=True)
    report(rows)


def report(rows: list[dict[str, Any]]) -> None:
    passed = [r for r in rows if r["answerable"] and r["passed_check"]]
    right = [r for r in rows if r["answerable"] and r["right"]]
    wrong = [r for r in rows if r["answerable"] and not r["right"]]
    print(f"\n{len(rows)} drafts: {len(right)} right, {len(wrong)} wrong, "
          f"{len(rows) - len(right) - len(wrong)} to unanswerable questions; the grounding check "
          f"passed {len(passed)} answerable ones "
          f"({sum(r['right'] for r in passed)} right, {sum(not r['right'] for r in passed)} wrong)\n")
    print("| signal | median, right drafts | median, wrong drafts | AUC, drafts the check "
          "passed | wrong withheld for at most 1 / 2 right |")
    print("|---|---:|---:|---:|---:|")
    signals = [k for k in rows[0] if k.startswith(("asked", "confidence"))] if rows else []
    for signal in signals:
        value: Callable[[dict[str, Any]], float] = lambda r, s=signal: r[s]  # noqa: E731
        good = [value(r) for r in passed if r["right"]]
        bad = [value(r) for r in passed if not r["right"]]
        median = (lambda xs: f"{statistics.median(xs):.3f}" if xs else "-")  # noqa: E731
        print(f"| {signal} | {median([value(r) for r in right])} | "
              f"{median([value(r) for r in wrong])} | {auc(good, bad):.2f} | "
              f"{caught(good, bad, 1)} / {caught(good, bad, 2)} of {len(bad)} |")


if __name__ == "__main__":
    main()
