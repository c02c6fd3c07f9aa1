"""What a larger default model costs, and what can be won back: threads and speculative decoding.

Issue 14 asks for the default model to be chosen by measurement, and for a slower one to win
back what it can: all physical cores, speculative decoding with the 0.5B drafting for the 1.5B,
a shorter prompt. This script times the packaged Qwen2.5-Coder models on Hearth's own prompts
(``Assistant.build_prompt`` over the passages retrieved for the first questions of the
evaluation set, from an index you built: ``HEARTH_DATA_DIR``), through llama.cpp's own server
(``llama-server``, built by scripts/build-llama-server.sh), greedy, the same prompts for every
variant:

- each model with 1 thread and with every physical core (``OMP_WAIT_POLICY=PASSIVE``);
- the 1.5B with the 0.5B as its draft model (``--model-draft``), which yields the same greedy
  tokens when the draft is right and costs the draft's time when it is not.

For each: time to the first token (prefill), decode tokens/s, total time, and whether the
answer is the same text as the variant's baseline (a draft must not change greedy output).

    HEARTH_DATA_DIR=/path/to/index .venv/bin/python bench/model_speed.py --questions 5

Results go to bench/results/model_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import REPO, as_dicts, free_port, machine, median, require_model, save, table, wait_ready

SMALL = "qwen2.5-coder-0.5b-instruct-q4_k_m"
LARGE = "qwen2.5-coder-1.5b-instruct-q4_k_m"
SETS = REPO / "evaluation" / "sets"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=5, help="first N questions of each set")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--draft-max", type=int, default=8, help="tokens the draft proposes at once")
    p.add_argument("--only", default="", help="variant names to run, separated by semicolons")
    return p.parse_args()


def physical_cores() -> int:
    import psutil

    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def build_prompts(n: int) -> list[dict[str, Any]]:
    """Hearth's messages for the first ``n`` questions of the Python and R sets."""
    from hearth.config import load_settings
    from hearth.services import build_services

    settings = load_settings()
    services = build_services(settings)
    assistant = services.assistant
    prompts = []
    for name in ("python-docs.jsonl", "r-manuals.jsonl"):
        lines = (SETS / name).read_text().splitlines()[:n]
        for line in lines:
            question = json.loads(line)["question"]
            hits = assistant.retrieve(question)
            messages, _ = assistant.build_prompt(question, hits, ())
            prompts.append({"question": question, "messages": as_dicts(messages)})
    return prompts


class LlamaServer:
    def __init__(self, model: str, threads: int, draft: str | None, draft_max: int,
                 log: Path) -> None:
        sys.path.insert(0, str(REPO / "deploy" / "scale-out"))
        from stack import llama_server_binary

        self.port = free_port()
        argv = [str(llama_server_binary()), "-m", str(require_model(model)), "--host",
                "127.0.0.1", "--port", str(self.port), "-c", "4096", "-b", "512",
                "-t", str(threads), "-tb", str(threads), "--parallel", "1", "--no-webui"]
        if draft:
            argv += ["-md", str(require_model(draft)), "-td", str(threads), "-tbd", str(threads),
                     "--spec-draft-n-max", str(draft_max), "--spec-draft-n-min", "1"]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.log = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.proc, f"{self.url}/health", "llama-server", log, 300)

    def ask(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        import httpx

        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "cache_prompt": False, "timings_per_token": False}
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        timings: dict[str, Any] = {}
        with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body,
                          timeout=600) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                if delta:
                    first = first or time.perf_counter() - started
                    pieces.append(delta)
                timings = chunk.get("timings") or timings
        total = time.perf_counter() - started
        return {"first_token_s": first, "total_s": total, "answer": "".join(pieces),
                "prompt_tokens": timings.get("prompt_n"),
                "completion_tokens": timings.get("predicted_n"),
                "prefill_tps": timings.get("prompt_per_second"),
                "decode_tps": timings.get("predicted_per_second"),
                "draft_n": timings.get("draft_n"), "draft_accepted": timings.get("draft_n_accepted")}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def main() -> None:
    args = parse_args()
    common.omp_passive(True)
    cores = physical_cores()
    prompts = build_prompts(args.questions)
    variants = [("0.5B, 1 thread", SMALL, 1, None), (f"0.5B, {cores} threads", SMALL, cores, None),
                ("1.5B, 1 thread", LARGE, 1, None), (f"1.5B, {cores} threads", LARGE, cores, None),
                (f"1.5B + 0.5B draft, {cores} threads", LARGE, cores, SMALL)]
    wanted = {v.strip() for v in args.only.split(";") if v.strip()}
    results: dict[str, Any] = {"machine": machine(), "physical_cores": cores,
                               "max_tokens": args.max_tokens, "draft_max": args.draft_max,
                               "questions": [p["question"] for p in prompts], "variants": {}}
    logs = REPO / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    for name, model, threads, draft in variants:
        if wanted and name not in wanted:
            continue
        print(f"{name}: starting llama-server", flush=True)
        server = LlamaServer(model, threads, draft, args.draft_max, Path("/tmp/model_speed.log"))
        try:
            server.ask(prompts[0]["messages"], 8)  # warm up: weights paged in
            runs = []
            for n, prompt in enumerate(prompts, 1):
                run = server.ask(prompt["messages"], args.max_tokens)
                runs.append(run)
                print(f"  {n}/{len(prompts)}: first token {run['first_token_s']:.1f} s, "
                      f"total {run['total_s']:.1f} s, {run['completion_tokens']} tokens",
                      flush=True)
        finally:
            server.close()
        results["variants"][name] = {"model": model, "threads": threads, "draft": draft,
                                     "runs": runs}

    base = {SMALL: f"0.5B, {cores} threads", LARGE: f"1.5B, {cores} threads"}
    rows = []
    for name, data in results["variants"].items():
        runs = data["runs"]
        reference = results["variants"].get(base[data["model"]])
        same = (sum(a["answer"] == b["answer"] for a, b in zip(runs, reference["runs"], strict=True))
                if reference else None)
        drafted = sum(r.get("draft_n") or 0 for r in runs)
        accepted = sum(r.get("draft_accepted") or 0 for r in runs)
        rows.append([name, f"{median([r['first_token_s'] for r in runs]):.2f}",
                     f"{median([r['prefill_tps'] for r in runs]):.0f}",
                     f"{median([r['decode_tps'] for r in runs]):.1f}",
                     f"{median([r['total_s'] for r in runs]):.2f}",
                     f"{median([r['completion_tokens'] for r in runs]):.0f}",
                     f"{accepted}/{drafted}" if drafted else "-",
                     f"{same}/{len(runs)}" if same is not None else "-"])
    print(table(f"{len(prompts)} of Hearth's prompts, greedy, at most {args.max_tokens} tokens "
                f"({cores} physical cores; medians)",
                ["variant", "first token s", "prefill tok/s", "decode tok/s", "total s",
                 "tokens", "draft accepted", "same answer as baseline"], rows))
    print(f"saved {save('model_speed', results)}")


if __name__ == "__main__":
    main()
