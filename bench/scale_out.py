"""Scale-out: 64 users through HAProxy against 1 and 3 `hearth serve` workers, with
llama.cpp's server at 1 and 4 parallel slots (deploy/scale-out/stack.py, on loopback).

Each configuration starts the whole stack afresh (MongoDB stand-in, `chroma run`,
`llama-server --parallel N` with SmolLM2, the workers, HAProxy), indexes the same corpus, seeds
every user's history in MongoDB, and runs bench/load.py's users (questions streamed, history
reads) for a fixed time. Reported: requests/s, answers/s, errors, history reads p50/p95, time
to first token, and Jain's index of answers per user.

On 2 cores this measures correctness and overhead, not capacity: the workers, the embedding of
each question and the model share the same two cores, so more workers or slots cannot add
compute here. docs/scaling.md says what the figures support and what is extrapolated.

    .venv/bin/python bench/scale_out.py                 # 4 configurations, 60 s each (~12 min)
    .venv/bin/python bench/scale_out.py --duration 20   # a quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import table
from load import User, jain, pcts, seed_history


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0, help="seconds a configuration")
    p.add_argument("--configs", default="1x1,1x4,3x1,3x4", help="WORKERSxSLOTS, comma-separated")
    p.add_argument("--question-share", type=float, default=0.2)
    p.add_argument("--think-s", type=float, default=0.5)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--corpus", default=str(common.PY_DOCS / "tutorial"))
    return p.parse_args()


def stack_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "scale_out_stack", common.REPO / "deploy" / "scale-out" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_config(workers: int, slots: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from hearth.config import load_settings

    module = stack_module()
    settings = {
        "HEARTH_AUTH": "false",  # loopback only; keys are the test's business, not the load's
        "HEARTH_RATE_LIMIT": "100000/minute", "HEARTH_QUESTION_RATE_LIMIT": "100000/minute",
        "HEARTH_CLIENT_RATE_LIMIT": "100000/minute", "HEARTH_MAX_NEW_TOKENS": str(args.max_tokens),
        "HEARTH_TOP_K": "1", "HEARTH_TEMPERATURE": "0"}
    started = time.monotonic()
    with module.Stack(root, workers=workers, slots=slots, ctx_per_slot=2048,
                      settings=settings) as stack:
        up_s = time.monotonic() - started
        indexed = stack.hearth("ingest", "files", args.corpus)
        if indexed.returncode:
            raise RuntimeError(f"ingest failed: {indexed.stderr[-2000:]}")
        env = stack.worker_env(8000, 0)
        hearth_settings = load_settings(_env_file=None, mongodb_uri=env["HEARTH_MONGODB_URI"],
                                        chroma_url=env["HEARTH_CHROMA_URL"],
                                        data_dir=root / "data")
        conversations = seed_history(hearth_settings, args.users)
        deadline = time.monotonic() + args.duration
        crowd = [User(n, stack.url, conversations[n], args.question_share, args.think_s,
                      deadline, 2000) for n in range(args.users)]
        threads = [threading.Thread(target=u.run, daemon=True) for u in crowd]
        begun = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline + 240 - time.monotonic()))
        elapsed = time.monotonic() - begun
    records = [r for u in crowd for r in u.records]
    history = [r for r in records if r.kind == "history" and r.status == 200 and not r.error]
    answered = [r for r in records if r.kind == "question" and r.status == 200 and not r.error]
    busy = [r for r in records if r.kind == "question" and r.status == 503 and not r.error]
    errors = [r for r in records if r.error or r.status not in (200, 503)
              or (r.status == 503 and r.kind != "question")]
    per_user = [sum(1 for r in answered if r.user == n) for n in range(args.users)]
    return {
        "workers": workers, "slots": slots, "stack_up_s": up_s, "elapsed_s": elapsed,
        "requests": len(records), "rps": (len(history) + len(answered)) / elapsed,
        "answers": len(answered), "answers_per_s": len(answered) / elapsed,
        "busy_503": len(busy), "errors": len(errors),
        "error_samples": sorted({f"{r.kind} {r.status} {r.error}" for r in errors})[:5],
        "history_ms": pcts([r.latency_s for r in history]),
        "ttft_ms": pcts([r.ttft_s for r in answered if r.ttft_s is not None]),
        "jain": jain(per_user), "users_answered": sum(1 for c in per_user if c),
    }


def main() -> None:
    args = parse_args()
    common.require_model(common.SMOLLM)
    info = common.machine()
    print(f"{info['cpu']}, {info['cores']} cores, no GPU; SmolLM2 in llama-server, "
          f"{args.users} users, {args.duration:.0f} s a configuration")
    results = []
    for config in args.configs.split(","):
        workers, slots = (int(x) for x in config.split("x"))
        print(f"{workers} worker(s), {slots} slot(s) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="hearth-scale-") as root:
            results.append(run_config(workers, slots, args, Path(root)))
        r = results[-1]
        print(f"  {r['rps']:.1f} req/s, {r['answers_per_s']:.2f} answers/s, "
              f"{r['errors']} errors", flush=True)
    rows = [[r["workers"], r["slots"], f"{r['rps']:.1f}", f"{r['answers_per_s']:.2f}",
             r["answers"], r["busy_503"], r["errors"], f"{r['history_ms']['p50']:.0f}",
             f"{r['history_ms']['p95']:.0f}", f"{r['ttft_ms']['p50'] / 1000:.1f}",
             f"{r['ttft_ms']['p95'] / 1000:.1f}", f"{r['jain']:.2f}", r["users_answered"]]
            for r in results]
    print(table(f"Scale-out: {args.users} users through HAProxy, {args.duration:.0f} s each",
                ["workers", "slots", "req/s", "answers/s", "answers", "busy 503", "errors",
                 "history p50 ms", "p95", "TTFT p50 s", "p95", "Jain", "users answered"], rows))
    for r in results:
        for sample in r["error_samples"]:
            print(f"  {r['workers']}x{r['slots']} error: {sample}")
    result = {"machine": info, "args": vars(args), "configs": results}
    path = common.save("scale_out", result)
    import plots

    print(f"\nresults: {path}\nplot: {plots.scale_out(result)}")


if __name__ == "__main__":
    main()
