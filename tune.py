"""LoRA fine-tuning (`hearth tune`): a Q&A file of the evaluation toolkit in, an adapter out.

The questions are split by source document, so that the held-out questions ask about documents
the adapter never saw. Training is bounded in steps and minutes and checkpoints as it goes: a
run that stops (a bound, Ctrl+C, a crash) continues from its last checkpoint when started
again. Over a bitsandbytes NF4 base this is QLoRA. The adapter lands in
``models/adapters/NAME`` with a manifest that names the base model by its weights' sha256, so
the transformers backend refuses it on any other model.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hearth import hf_models
from hearth.errors import HearthError
from hearth.evaluation.records import EvalDataError, Question, load_questions
from hearth.weights import sha256_of

log = logging.getLogger("hearth.tune")

CHECKPOINT = "checkpoint"
HELD_OUT = "held-out.jsonl"
TRAINING = "training.jsonl"
STATE = "state.json"
OPTIMIZER = "optimizer.pt"
FINAL_PARTIAL = ".adapter.partial"  # the finished adapter, being written
IGNORE = -100  # labels the loss skips: the prompt's tokens


class TuneError(HearthError):
    code = "tune_failed"
    status = 400


# An adapter's name is a folder under models/adapters, never a path out of it ("..", "/x").
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class HyperParameters:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    learning_rate: float = 2e-4
    batch_size: int = 4
    max_length: int = 384
    held_out: float = 0.2
    seed: int = 0
    target_modules: str = "all-linear"


@dataclass
class Bounds:
    max_steps: int = 200
    max_minutes: float = 60.0
    checkpoint_every: int = 10


@dataclass
class Split:
    train: list[Question]
    held_out: list[Question]
    held_out_sources: list[str] = field(default_factory=list)


def split_by_source(questions: Sequence[Question], fraction: float, seed: int) -> Split:
    """Whole source documents go to the held-out side until it has ``fraction`` of the
    questions; a document is never on both sides."""
    by_source: dict[str, list[Question]] = {}
    for q in questions:
        by_source.setdefault(q.source or "", []).append(q)
    if len(by_source) < 2:
        raise TuneError("the held-out split is by source document, and every question names "
                        "the same source: generate questions from two documents or more")
    sources = sorted(by_source)
    random.Random(seed).shuffle(sources)
    held: list[str] = []
    wanted = fraction * len(questions)
    for source in sources[:-1]:  # at least one document is trained on
        if sum(len(by_source[s]) for s in held) >= wanted:
            break
        held.append(source)
    held_set = set(held)
    return Split(train=[q for q in questions if (q.source or "") not in held_set],
                 held_out=[q for q in questions if (q.source or "") in held_set],
                 held_out_sources=sorted(held))


def example(tokenizer: Any, question: Question, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of one conversation (question, then the reference as the answer) and its
    labels: only the answer's tokens are learnt."""
    prompt = [{"role": "user", "content": question.question}]
    whole = prompt + [{"role": "assistant", "content": question.reference}]
    asked = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)
    ids = tokenizer.apply_chat_template(whole, return_dict=True)["input_ids"][:max_length]
    start = min(len(asked["input_ids"]), len(ids))
    return ids, [IGNORE] * start + ids[start:]


def learnable(examples: list[tuple[list[int], list[int]]], which: str
              ) -> list[tuple[list[int], list[int]]]:
    """The examples with at least one answer token to learn: one whose question and the chat
    template fill ``max_length`` teaches nothing, and its loss (0 of 0 tokens) is NaN."""
    kept = [(ids, labels) for ids, labels in examples if any(x != IGNORE for x in labels)]
    if len(kept) < len(examples):
        log.warning("%d %s questions left out: their prompt fills --max-length, leaving no "
                    "room for the answer", len(examples) - len(kept), which)
    return kept


def batch_of(examples: Sequence[tuple[list[int], list[int]]], pad: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = [i + [pad] * (width - len(i)) for i, _ in examples]
    labels = [lab + [IGNORE] * (width - len(lab)) for _, lab in examples]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in examples]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask)}


def batch_for_step(step: int, count: int, size: int, seed: int) -> list[int]:
    """The examples of step ``step``: a fresh shuffle each epoch, the same on a resumed run."""
    size = min(size, count)
    per_epoch = max(1, count // size)
    epoch, position = divmod(step, per_epoch)
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[position * size:(position + 1) * size]


@dataclass
class Progress:
    """What the caller shows: called after every step."""

    step: int
    max_steps: int
    loss: float
    seconds: float


def tune(name: str, data: Path, base: Path, models_dir: Path, *,
         hyper: HyperParameters | None = None, bounds: Bounds | None = None,
         quantization: str = "nf4", device: str = "auto", restart: bool = False,
         progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Train (or go on training) adapter NAME; return its manifest."""
    hyper = hyper or HyperParameters()
    bounds = bounds or Bounds()
    if not ADAPTER_NAME.fullmatch(name):
        raise TuneError(f"{name!r} is not an adapter name: letters, digits, '.', '_' and '-', "
                        "at most 64, starting with a letter or digit (it names a folder under "
                        "models/adapters)")
    out = hf_models.adapters_dir(models_dir) / name
    try:
        questions = load_questions(data)
    except (OSError, EvalDataError) as exc:
        raise TuneError(f"the Q&A file {data} cannot be read ({exc}): give what `hearth eval "
                        "generate` writes") from exc
    if not questions:
        raise TuneError(f"the Q&A file {data} holds no questions")
    split = split_by_source(questions, hyper.held_out, hyper.seed)
    data_sha = sha256_of(data)
    base_sha = hf_models.weights_sha256(base)
    if restart:  # only once all that the run needs was found: a bad file deletes nothing
        shutil.rmtree(out, ignore_errors=True)
    checkpoint = out / CHECKPOINT
    state = _check_resumable(checkpoint, data_sha, base_sha, hyper) if checkpoint.exists() else None

    loaded = hf_models.load_base(base, quantization=quantization, device=device)
    model = _with_lora(loaded, hyper, checkpoint if state else None)
    tokenizer = loaded.tokenizer
    train = learnable([example(tokenizer, q, hyper.max_length) for q in split.train], "training")
    held = learnable([example(tokenizer, q, hyper.max_length) for q in split.held_out], "held-out")
    if not train:
        raise TuneError(f"no training question leaves room for its answer within --max-length "
                        f"{hyper.max_length} tokens (the chat template and the question take it "
                        "all): raise --max-length")

    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyper.learning_rate)
    if state:
        try:
            # Onto the CPU first (a run begun on a GPU goes on here): load_state_dict puts each
            # state beside its parameter.
            optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER, weights_only=True,
                                                 map_location="cpu"))
        except Exception as exc:
            raise _damaged(checkpoint, exc) from exc
    else:
        state = {"step": 0, "seconds": 0.0, "losses": [],
                 "eval_loss_before": _eval_loss(model, held, tokenizer.pad_token_id, loaded.device)}

    step, losses = int(state["step"]), list(state["losses"])
    started, spent = time.monotonic(), float(state["seconds"])
    limit = bounds.max_minutes * 60
    stopped = "max_steps"
    model.train()
    while step < bounds.max_steps:
        if spent + time.monotonic() - started >= limit:
            stopped = "max_minutes"
            break
        picked = [train[i] for i in batch_for_step(step, len(train), hyper.batch_size, hyper.seed)]
        batch = {k: v.to(loaded.device) for k, v in batch_of(picked, tokenizer.pad_token_id).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        losses.append([step, round(float(loss.item()), 4)])
        elapsed = spent + time.monotonic() - started
        if progress:
            progress(Progress(step, bounds.max_steps, float(loss.item()), elapsed))
        if step % bounds.checkpoint_every == 0:
            _save_checkpoint(model, optimizer, checkpoint, {
                **state, "step": step, "seconds": elapsed, "losses": losses,
                "data_sha256": data_sha, "base_sha256": base_sha, "hyper": asdict(hyper)})
    elapsed = spent + time.monotonic() - started
    model.eval()
    manifest = {
        "kind": "hearth-adapter",
        "version": 1,
        "name": name,
        "base_model": {"name": base.name, "path": str(base.resolve()), "sha256": base_sha,
                       "quantization": quantization},
        "data": {"file": data.name, "sha256": data_sha, "train_questions": len(split.train),
                 "held_out_questions": len(split.held_out),
                 "held_out_sources": split.held_out_sources},
        "hyperparameters": asdict(hyper),
        "bounds": asdict(bounds),
        "steps": step,
        "stopped_by": stopped,
        "seconds": round(elapsed, 1),
        "seconds_per_step": round(elapsed / step, 2) if step else None,
        "loss_curve": losses,
        "eval_loss_before": state["eval_loss_before"],
        "eval_loss_after": _eval_loss(model, held, tokenizer.pad_token_id, loaded.device),
        "versions": _versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written beside, then moved in file by file, the manifest last: a run killed while saving
    # leaves the adapter it trained before, whole, for the server that loads it.
    ready = out / FINAL_PARTIAL
    shutil.rmtree(ready, ignore_errors=True)
    model.save_pretrained(ready)
    _write_questions(ready / HELD_OUT, split.held_out)
    _write_questions(ready / TRAINING, split.train)
    (ready / hf_models.ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _save_checkpoint(model, optimizer, checkpoint, {
        **state, "step": step, "seconds": elapsed, "losses": losses, "data_sha256": data_sha,
        "base_sha256": base_sha, "hyper": asdict(hyper)})
    for made in sorted(ready.iterdir(), key=lambda p: p.name == hf_models.ADAPTER_MANIFEST):
        made.replace(out / made.name)
    ready.rmdir()
    return manifest


def _with_lora(loaded: hf_models.Loaded, hyper: HyperParameters, resume: Path | None) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    if loaded.quantization != "none":  # QLoRA: norms in float32, inputs that carry gradients
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _keep_4bit_weights_unpacked(model)
    if resume is not None:
        try:
            return PeftModel.from_pretrained(model, resume, is_trainable=True)
        except Exception as exc:
            raise _damaged(resume, exc) from exc
    config = LoraConfig(r=hyper.rank, lora_alpha=hyper.alpha, lora_dropout=hyper.dropout,
                        target_modules=hyper.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _keep_4bit_weights_unpacked(model: Any) -> None:
    """bitsandbytes repacks a 4-bit layer's weights for fast CPU inference on its first eval-mode
    forward without gradients (on CPUs with AVX512-BF16). Training after that goes wrong: the
    held-out loss, measured in eval mode, went from 4.2 to 18 in three QLoRA steps on SmolLM2,
    and stayed near 4.1 with the repacking off. A tuning process keeps them as loaded."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _check_resumable(checkpoint: Path, data_sha: str, base_sha: str,
                     hyper: HyperParameters) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / STATE).read_text())
        step = int(state["step"])
    except Exception as exc:
        raise _damaged(checkpoint, exc) from exc
    for what, saved, now in (("Q&A file", state.get("data_sha256"), data_sha),
                             ("base model", state.get("base_sha256"), base_sha)):
        if saved != now:
            raise TuneError(f"the checkpoint {checkpoint} (step {step}) was made with another "
                            f"{what}: run with --restart to start over")
    if state.get("hyper") != asdict(hyper):
        raise TuneError(f"the checkpoint {checkpoint} (step {step}) was made with other "
                        "hyper-parameters: run with the same ones, or --restart")
    return dict(state)


def _damaged(checkpoint: Path, exc: BaseException) -> TuneError:
    return TuneError(f"the checkpoint {checkpoint} is damaged ({exc.__class__.__name__}: "
                     f"{str(exc)[:200]}): run with --restart to start over")


def _save_checkpoint(model: Any, optimizer: Any, checkpoint: Path, state: dict[str, Any]) -> None:
    """Written beside, then swapped in: a run killed while saving keeps the previous one."""
    import torch

    partial = checkpoint.with_name(CHECKPOINT + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    torch.save(optimizer.state_dict(), partial / OPTIMIZER)
    (partial / STATE).write_text(json.dumps(state, indent=1) + "\n")
    old = checkpoint.with_name(CHECKPOINT + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint.exists():
        checkpoint.replace(old)
    partial.replace(checkpoint)
    shutil.rmtree(old, ignore_errors=True)


def _eval_loss(model: Any, examples: Sequence[tuple[list[int], list[int]]], pad: int,
               device: str) -> float | None:
    """Mean loss on the held-out questions' answers (None when there are none)."""
    if not examples:
        return None
    import torch

    total = 0.0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), 4):
            batch = batch_of(examples[start:start + 4], pad)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            total += float(loss.item()) * len(examples[start:start + 4])
    value = total / len(examples)
    return round(value, 4) if math.isfinite(value) else None


def _write_questions(path: Path, questions: Sequence[Question]) -> None:
    path.write_text("".join(json.dumps(q.to_json()) + "\n" for q in questions), encoding="utf-8")


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}
