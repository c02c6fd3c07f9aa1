"""transformers + bitsandbytes NF4 against llama.cpp's GGUF, on the same model and prompts.

Issue 18 asks whether a bitsandbytes-quantized Hugging Face model runs a private chatbot on
modest hardware. Both engines answer through Hearth's own adapters (llm.py), greedy, the same
messages: the prompts Hearth builds for the benchmark questions (bench/answer_path.py's) over
the Python tutorial from python3.11-doc, indexed once into a scratch folder.

Each engine runs in a process of its own, one after the other, so that its memory is its own:
the weights' size as the engine holds them, the resident memory the model adds (after the
answers, over a baseline taken with torch and transformers imported), the peak, load seconds,
and for each question the prompt's tokens (the engine's own count), prefill tokens/s (prompt
tokens / time to first token), decode tokens/s (tokens after the first / the time after the
first) and the answer. Then the agreement
of each engine's answers with llama.cpp's (same text; ROUGE-L F1). ``--tune-steps`` also times
`hearth tune` (LoRA over the float base, QLoRA over NF4) on a Q&A file made from Hearth's guide.

    .venv/bin/python bench/nf4_vs_gguf.py                         # SmolLM2-135M, 4 questions
    .venv/bin/python bench/nf4_vs_gguf.py --model qwen2.5-coder-0.5b-instruct-q4_k_m
    .venv/bin/python bench/nf4_vs_gguf.py --engines llamacpp,nf4,none --tune-steps 5

The packaged model is converted into models/hf/NAME (git-ignored) on first use. Results go to
bench/results/nf4_vs_gguf[_MODEL].json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from answer_path import QUESTIONS  # the same questions, in the same order
from common import MODELS, PY_DOCS, REPO, SMOLLM, machine, median, save, table

ENGINES = {"llamacpp": "llama.cpp GGUF", "nf4": "transformers NF4", "int8": "transformers int8",
           "none": "transformers float32"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=SMOLLM, help="a packaged model (default SmolLM2-135M)")
    p.add_argument("--engines", default="llamacpp,nf4",
                   help="comma-separated, from: " + ", ".join(ENGINES))
    p.add_argument("--questions", type=int, default=4, help=f"at most {len(QUESTIONS)}")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both engines")
    p.add_argument("--tune-steps", type=int, default=0, help="also time N steps of hearth tune")
    p.add_argument("--omp-default", action="store_true",
                   help="leave OMP_WAIT_POLICY unset instead of PASSIVE (common.omp_passive)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def settings_for(args: argparse.Namespace, engine: str, data_dir: Path) -> Any:
    from hearth.config import load_settings

    backend = "llamacpp" if engine == "llamacpp" else "transformers"
    return load_settings(
        _env_file=None, data_dir=data_dir, models_dir=MODELS, llm_backend=backend,
        llamacpp_model=args.model, llamacpp_n_threads=args.threads, llamacpp_n_ctx=4096,
        transformers_model=args.model, transformers_quantization=engine if backend ==
        "transformers" else "nf4", transformers_device="cpu", transformers_n_ctx=4096,
        temperature=0, max_new_tokens=args.max_tokens, llm_timeout_s=3600)


# --- the prompts -----------------------------------------------------------------------------


def build_prompts(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """Hearth's prompt for each question over the indexed tutorial (same for every engine)."""
    from langchain_core.messages import messages_to_dict

    from hearth.ingest.pipeline import ingest_files
    from hearth.services import build_services

    services = build_services(settings_for(args, "llamacpp", scratch / "data"))
    started = time.perf_counter()
    summary = ingest_files(services, PY_DOCS / "tutorial")
    print(f"indexed the tutorial: {summary} ({time.perf_counter() - started:.0f} s)", flush=True)
    prompts = []
    for question in QUESTIONS[:args.questions]:
        hits = [h for h in services.assistant.retrieve(question)
                if h.score >= services.settings.min_relevance]
        messages, used = services.assistant.build_prompt(question, hits, [])
        prompts.append({"question": question, "messages": messages_to_dict(messages),
                        "sources": [s.source for s in used]})
    return prompts


# --- one engine, in its own process ----------------------------------------------------------


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    """VmHWM: this process's peak since its exec (getrusage's maxrss would include the memory
    of the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def weights_mib(llm: Any) -> float:
    """What the engine holds the weights in: the GGUF file, or transformers' own count."""
    loaded = getattr(llm, "loaded", None)
    if loaded is not None:
        return float(loaded.model.get_memory_footprint()) / 2**20
    return llm.model_path.stat().st_size / 2**20


def run_engine(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers  # noqa: F401 - imported before the baseline by every engine alike
    from langchain_core.messages import messages_from_dict

    from hearth import hf_models  # noqa: F401
    from hearth.llm import Generation, build_llm

    torch.set_num_threads(args.threads)
    engine = args.child
    prompts = json.loads(args.prompts.read_text())
    before = rss_mib()
    started = time.perf_counter()
    llm = build_llm(settings_for(args, engine, Path(tempfile.mkdtemp(prefix="hearth-nf4-"))))
    load_s = time.perf_counter() - started
    rows = []
    for prompt in prompts:
        messages = messages_from_dict(prompt["messages"])
        usage = Generation()
        pieces, first = [], None
        started = time.perf_counter()
        for piece in llm.stream(messages, usage=usage):
            first = first if first is not None else time.perf_counter() - started
            pieces.append(piece)
        total = time.perf_counter() - started
        first = first if first is not None else total
        prompt_tokens = llm.count_message_tokens(messages)
        decoded = max(usage.completion_tokens - 1, 0)
        rows.append({
            "question": prompt["question"], "prompt_tokens": prompt_tokens,
            "completion_tokens": usage.completion_tokens, "first_token_s": round(first, 3),
            "total_s": round(total, 3), "prefill_tok_s": round(prompt_tokens / first, 2),
            "decode_tok_s": round(decoded / (total - first), 2) if decoded and total > first else None,
            "answer": "".join(pieces)})
        print(f"  {engine}: {prompt_tokens} prompt tokens, first token {first:.1f} s, "
              f"{usage.completion_tokens} tokens in {total:.1f} s", flush=True)
    # After the answers: mmap-ed weights count once they have been read.
    return {"engine": engine, "name": llm.name, "load_s": round(load_s, 1),
            "weights_mib": round(weights_mib(llm), 1),
            "rss_added_mib": round(rss_mib() - before, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "threads": args.threads, "rows": rows}


def in_child(args: argparse.Namespace, engine: str, prompts: Path, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{engine}.json"
    argv = [sys.executable, __file__, "--child", engine, "--prompts", str(prompts), "--out",
            str(out), "--model", args.model, "--max-tokens", str(args.max_tokens),
            "--threads", str(args.threads)]
    subprocess.run(argv, check=True)  # this environment: OMP_WAIT_POLICY, HF_HUB_OFFLINE
    return dict(json.loads(out.read_text()))


# --- hearth tune, timed ----------------------------------------------------------------------


def guide_questions(path: Path) -> Path:
    """A Q&A file in `hearth eval generate`'s format from Hearth's guide: one question a page,
    answered by the page's first paragraph (as tests/test_transformers.py makes it)."""
    lines = []
    for n, page in enumerate(sorted((REPO / "docs").glob("*.md"))):
        text = page.read_text()
        title = text.splitlines()[0].lstrip("# ").strip()
        paragraph = next(p for p in re.split(r"\n\s*\n", text)[1:] if p.strip()
                         and not p.startswith(("#", "-", "|", "```")))
        lines.append({"id": f"guide-{n}", "question": f"What does the guide's page '{title}' "
                      "cover?", "reference": " ".join(paragraph.split())[:300], "source": page.name})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def time_tune(args: argparse.Namespace, folder: Path, scratch: Path) -> list[dict[str, Any]]:
    import torch

    from hearth.tune import Bounds, HyperParameters, tune

    torch.set_num_threads(args.threads)
    data = guide_questions(scratch / "guide.jsonl")
    models = scratch / "models"
    results = []
    for quantization in ("none", "nf4"):
        started = time.perf_counter()
        manifest = tune(f"bench-{quantization}", data, folder, models, quantization=quantization,
                        hyper=HyperParameters(batch_size=4, max_length=256), restart=True,
                        bounds=Bounds(max_steps=args.tune_steps, checkpoint_every=args.tune_steps))
        results.append({"quantization": quantization, "steps": manifest["steps"],
                        "seconds_per_step": manifest["seconds_per_step"],
                        "wall_s": round(time.perf_counter() - started, 1),
                        "loss_first": manifest["loss_curve"][0][1],
                        "loss_last": manifest["loss_curve"][-1][1],
                        "eval_loss": [manifest["eval_loss_before"], manifest["eval_loss_after"]]})
        print(f"  tune {quantization}: {manifest['seconds_per_step']} s/step", flush=True)
    return results


# --- the report ------------------------------------------------------------------------------


def rouge_l(a: str, b: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(a, b)["rougeL"].fmeasure)


def report(runs: list[dict[str, Any]], tuning: list[dict[str, Any]]) -> None:
    rows = []
    for run in runs:
        r = run["rows"]
        rows.append([ENGINES[run["engine"]], f"{run['load_s']:.1f}", f"{run['weights_mib']:.0f}",
                     f"{run['rss_added_mib']:.0f}",
                     f"{run['peak_rss_mib']:.0f}",
                     f"{median([x['prefill_tok_s'] for x in r]):.1f}",
                     f"{median([x['decode_tok_s'] for x in r if x['decode_tok_s']] or [0]):.2f}",
                     f"{median([x['first_token_s'] for x in r]):.1f}"])
    print(table("Engines (medians over the questions)",
                ["engine", "load s", "weights MiB", "RSS added MiB", "peak RSS MiB", "prefill tok/s",
                 "decode tok/s", "first token s"], rows))
    base = next((run for run in runs if run["engine"] == "llamacpp"), None)
    if base is None:
        return
    ratios = []
    for run in runs:
        if run is base:
            continue
        pairs = list(zip(base["rows"], run["rows"], strict=True))
        same = sum(a["answer"].strip() == b["answer"].strip() for a, b in pairs)
        rouge = [rouge_l(a["answer"], b["answer"]) for a, b in pairs]
        ratio = [median([x[k] for x in run["rows"] if x[k]] or [0])
                 / median([x[k] for x in base["rows"] if x[k]] or [1])
                 for k in ("prefill_tok_s", "decode_tok_s")]
        ratios.append([ENGINES[run["engine"]], f"{ratio[0]:.2f}", f"{ratio[1]:.2f}",
                       f"{run['rss_added_mib'] / max(base['rss_added_mib'], 1):.2f}",
                       f"{same} of {len(pairs)}", f"{median(rouge):.2f}"])
    print(table("Against llama.cpp (engine ÷ llama.cpp; answers compared with llama.cpp's)",
                ["engine", "prefill", "decode", "RSS added", "same answer", "ROUGE-L F1"], ratios))
    if tuning:
        print(table("hearth tune", ["base", "steps", "s/step", "loss first -> last",
                                    "held-out loss before -> after"],
                    [[t["quantization"], t["steps"], t["seconds_per_step"],
                      f"{t['loss_first']} -> {t['loss_last']}",
                      f"{t['eval_loss'][0]} -> {t['eval_loss'][1]}"] for t in tuning]))


def main() -> None:
    args = parse_args()
    common.omp_passive(not args.omp_default)
    if args.child:
        args.out.write_text(json.dumps(run_engine(args)))
        return
    engines = args.engines.split(",")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not 1 <= args.questions <= len(QUESTIONS):
        sys.exit(f"unknown engines {unknown}" if unknown else f"1 to {len(QUESTIONS)} questions")
    from hearth import hf_models

    common.require_model(args.model)
    started = time.perf_counter()
    folder = hf_models.convert(args.model, MODELS)
    print(f"{args.model}: {folder} ({time.perf_counter() - started:.0f} s)", flush=True)
    info = machine()
    scratch = Path(tempfile.mkdtemp(prefix="hearth-nf4-vs-gguf-"))
    try:
        prompts = scratch / "prompts.json"
        prompts.write_text(json.dumps(build_prompts(args, scratch)))
        runs = [in_child(args, engine, prompts, scratch) for engine in engines]
        tuning = time_tune(args, folder, scratch) if args.tune_steps else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(runs, tuning)
    name = "nf4_vs_gguf" + ("" if args.model == SMOLLM else f"_{args.model}")
    path = save(name, {"machine": info, "model": args.model, "max_tokens": args.max_tokens,
                       "questions": QUESTIONS[:args.questions], "runs": runs, "tune": tuning,
                       "argv": sys.argv[1:]})
    print(f"\nresults: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
