"""The transformers backend, `hearth models convert` and `hearth tune`, on real parts: SmolLM2
converted from its packaged GGUF file once per session, the real embedding model, Hearth's own
documents. Bad input (a missing folder, an adapter of another model, a damaged checkpoint)
gets an error that says what to do."""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from langchain_core.messages import HumanMessage, SystemMessage

from hearth import hf_models
from hearth.cli import main
from hearth.config import Settings, load_settings
from hearth.llm import Generation, LLMError, LLMTimeout, TransformersLLM, build_llm
from hearth.services import build_services
from hearth.tune import Bounds, HyperParameters, TuneError, split_by_source, tune
from hearth.weights import packaged
from tests.conftest import DOCS, MODELS, SMOLLM

MESSAGES = [SystemMessage("Answer in one short sentence."), HumanMessage("What colour is the sky?")]
pytestmark = pytest.mark.real


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the packaged SmolLM2, converted once for the session."""
    folder = tmp_path_factory.mktemp("models")
    gguf = MODELS / packaged(SMOLLM).file
    (folder / gguf.name).symlink_to(gguf)
    hf_models.convert(SMOLLM, folder)
    return folder


@pytest.fixture(scope="session")
def smol_folder(models_dir: Path) -> Path:
    return hf_models.hf_dir(models_dir) / SMOLLM


def tf_settings(models_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir, "models_dir": models_dir, "docs_dir": DOCS,
        "llm_backend": "transformers", "transformers_model": SMOLLM,
        "transformers_quantization": "none", "transformers_n_ctx": 2048, "max_new_tokens": 48,
    }
    return load_settings(_env_file=None, **{**values, **overrides})


@pytest.fixture(scope="session")
def tf_llm(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TransformersLLM:
    llm = build_llm(tf_settings(models_dir, tmp_path_factory.mktemp("unused")))
    assert isinstance(llm, TransformersLLM)
    return llm


def generating() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hearth-generate" and t.is_alive()]


# --- conversion -------------------------------------------------------------------------------


def test_conversion_writes_a_folder_and_its_manifest(models_dir: Path, smol_folder: Path) -> None:
    import transformers

    manifest = json.loads((smol_folder / hf_models.CONVERSION_MANIFEST).read_text())
    source = MODELS / packaged(SMOLLM).file
    assert manifest["source"] == {"file": source.name, "sha256": packaged(SMOLLM).sha256,
                                  "size": source.stat().st_size}
    assert manifest["transformers_version"] == transformers.__version__
    assert datetime.fromisoformat(manifest["converted_at"]).tzinfo is not None
    assert (manifest["architecture"], manifest["n_ctx_train"]) == ("LlamaForCausalLM", 8192)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= \
        {p.name for p in smol_folder.iterdir()}
    # Converted once: a second call finds the folder and leaves it alone.
    written = (smol_folder / "model.safetensors").stat().st_mtime_ns
    assert hf_models.convert(SMOLLM, models_dir) == smol_folder
    assert (smol_folder / "model.safetensors").stat().st_mtime_ns == written


def test_convert_an_unfetched_model_says_to_fetch_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["models", "convert", SMOLLM],
                                env={"HEARTH_MODELS_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert f"run `hearth models fetch {SMOLLM}`" in result.output
    unknown = CliRunner().invoke(main, ["models", "convert", "gpt-9"],
                                 env={"HEARTH_MODELS_DIR": str(tmp_path)})
    assert unknown.exit_code == 1 and "unknown packaged model 'gpt-9'" in unknown.output


# --- the backend -----------------------------------------------------------------------------


def test_transformers_streams_and_counts_with_its_tokenizer(tf_llm: TransformersLLM) -> None:
    usage = Generation()
    pieces = list(tf_llm.stream(MESSAGES, usage=usage))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert usage.prompt_tokens == tf_llm.count_message_tokens(MESSAGES) > 10
    assert 0 < usage.completion_tokens <= 48
    assert tf_llm.count_tokens("hello world") == 2
    assert tf_llm.n_ctx == 2048  # HEARTH_TRANSFORMERS_N_CTX caps the model's 8192
    assert tf_llm.name == f"transformers:{SMOLLM}"
    assert tf_llm.complete(MESSAGES).strip()


def test_transformers_records_each_drawn_tokens_log_probability(
        tf_llm: TransformersLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's confidence from the model's own logits, as with llama.cpp: each drawn
    token's log-probability equals what transformers itself reports for it (``output_logits``,
    the logits before the repetition penalty and sampling change them), the likeliest tokens
    at each place are its top ones, and the tokens spell the answer byte for byte."""
    import torch

    from hearth.hf_models import encode_chat

    monkeypatch.setattr(tf_llm.chat_model, "temperature", 0.0)  # greedy: one answer to compare
    usage = Generation(top=3)
    text = "".join(tf_llm.stream(MESSAGES, usage=usage))
    drawn = tf_llm.drawn(usage)
    assert len(drawn) >= 5 and usage.confidence is not None and 0 < usage.confidence < 1
    # Every token but the last drawn (the end of the answer, or the 48th), which is not read.
    joined = b"".join(t.piece for t in drawn)
    assert text.encode().startswith(joined) and len(text.encode()) - len(joined) <= 16

    ids = encode_chat(tf_llm.tokenizer, MESSAGES)
    with torch.inference_mode():
        out = tf_llm.loaded.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=48,
            do_sample=False, repetition_penalty=1.1, output_logits=True,
            return_dict_in_generate=True, pad_token_id=tf_llm.tokenizer.pad_token_id)
    tokens = out.sequences[0, ids.shape[-1]:].tolist()
    reference = [torch.log_softmax(row[0].double(), dim=-1) for row in out.logits]
    assert tf_llm.tokenizer.decode(tokens, skip_special_tokens=True) == text  # the same answer
    assert [t.logprob for t in drawn] == pytest.approx(
        [float(reference[n][token]) for n, token in enumerate(tokens[:len(drawn)])], abs=1e-6)
    for n, t in enumerate(drawn):
        values, best = torch.topk(reference[n], 3)
        assert [lp for _, lp in t.top] == pytest.approx(values.tolist(), abs=1e-6)
        assert [piece for piece, _ in t.top] == [
            tf_llm.tokenizer.decode([i]).encode() for i in best.tolist()]


def test_each_tokens_bytes_spell_the_text_where_a_character_takes_several(
        tf_llm: TransformersLLM) -> None:
    text = "Le café coûte 3 € — 日本語 ✓"
    ids = tf_llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = hf_models.token_pieces(tf_llm.tokenizer, ids)
    assert b"".join(pieces) == text.encode()

    def whole(piece: bytes) -> bool:
        try:
            piece.decode()
        except UnicodeDecodeError:
            return False
        return True

    assert not all(whole(p) for p in pieces)  # some token holds part of a character
    assert hf_models.token_pieces(tf_llm.tokenizer, [tf_llm.tokenizer.eos_token_id]) == [
        tf_llm.tokenizer.eos_token.encode()]  # a special token by its name


def test_closing_the_stream_stops_the_engine(tf_llm: TransformersLLM) -> None:
    stream = tf_llm.stream(MESSAGES)
    assert next(stream)
    stream.close()
    assert generating() == []
    # A stop string ends the answer before it, and the engine with it (sampling is seeded:
    # the same prompt gives the same answer).
    whole = tf_llm.complete(MESSAGES)
    words = whole.split()
    assert len(words) > 2
    assert tf_llm.complete(MESSAGES, stop=[words[2]]) == whole[:whole.index(words[2])]
    assert generating() == []


def test_the_deadline_ends_a_slow_answer(models_dir: Path, tf_llm: TransformersLLM,
                                         tmp_path: Path) -> None:
    llm = TransformersLLM.__new__(TransformersLLM)
    llm.__dict__.update(tf_llm.__dict__)
    llm.settings = tf_settings(models_dir, tmp_path, llm_timeout_s=0.001)
    with pytest.raises(LLMTimeout, match="HEARTH_LLM_TIMEOUT_S"):
        list(llm.stream(MESSAGES))
    assert generating() == []


def test_smollm_answers_a_real_question_with_sources(models_dir: Path, tf_llm: TransformersLLM,
                                                     embeddings: Any, tmp_path: Path) -> None:
    from hearth.ingest.pipeline import ingest_files

    # The engine's plumbing, not SmolLM2's answers (poor: the grounding check would withhold
    # them): flagged answers are given, so that the answer itself is checked here.
    settings = tf_settings(models_dir, tmp_path / "data", unsupported_answers="flag")
    services = build_services(settings, embeddings=embeddings, llm=tf_llm)
    shelf = tmp_path / "guide"
    shelf.mkdir()
    shutil.copy(DOCS / "models.md", shelf / "models.md")
    ingest_files(services, shelf)
    answer = services.assistant.answer("Which packaged model is the default language model?")
    assert not answer.refused and answer.answer.strip()
    assert [s.source.rsplit("/", 1)[-1] for s in answer.sources][:1] == ["models.md"]
    assert answer.model == f"transformers:{SMOLLM}"
    assert 0 < answer.usage["completion_tokens"] <= 48
    # The context budget is the model's own tokenizer's count, within the window.
    messages, _ = services.assistant.build_prompt("Which model?", [], [])
    assert tf_llm.count_message_tokens(messages) <= tf_llm.n_ctx


def test_nf4_quantizes_with_bitsandbytes_and_answers(models_dir: Path, tmp_path: Path) -> None:
    llm = build_llm(tf_settings(models_dir, tmp_path, transformers_quantization="nf4",
                                max_new_tokens=6))
    assert isinstance(llm, TransformersLLM)
    kinds = {type(m).__name__ for m in llm.loaded.model.modules()}
    assert "Linear4bit" in kinds
    assert llm.complete(MESSAGES).strip()


def test_without_bitsandbytes_quantization_fails_clearly(monkeypatch: pytest.MonkeyPatch,
                                                         models_dir: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it could not be imported
    with pytest.raises(LLMError, match="bitsandbytes cannot quantize on this machine.*"
                                       "HEARTH_TRANSFORMERS_QUANTIZATION=none"):
        build_llm(tf_settings(models_dir, tmp_path, transformers_quantization="int8"))


def test_a_missing_or_wrong_model_folder_says_what_to_do(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LLMError, match=r"model folder not found at /nowhere/model"):
        build_llm(tf_settings(models_dir, tmp_path, transformers_model="/nowhere/model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match="not a Hugging Face model folder"):
        build_llm(tf_settings(models_dir, tmp_path, transformers_model=str(tmp_path / "empty")))
    with pytest.raises(LLMError, match="run `hearth models convert qwen2.5-coder-0.5b"):
        build_llm(tf_settings(models_dir, tmp_path,
                              transformers_model="qwen2.5-coder-0.5b-instruct-q4_k_m"))
    with pytest.raises(LLMError, match="no LoRA adapter at .*train one with `hearth tune`"):
        build_llm(tf_settings(models_dir, tmp_path, transformers_adapter="never-trained"))


# --- fine-tuning -----------------------------------------------------------------------------


def guide_questions(path: Path) -> Path:
    """A Q&A file in `hearth eval generate`'s format from Hearth's own guide: one question a
    page, answered by the page's first paragraph."""
    lines = []
    for n, page in enumerate(sorted(DOCS.glob("*.md"))):
        text = page.read_text()
        title = text.splitlines()[0].lstrip("# ").strip()
        paragraph = next(p for p in re.split(r"\n\s*\n", text)[1:] if p.strip()
                         and not p.startswith(("#", "-", "|", "```")))
        lines.append({"id": f"guide-{n}", "question": f"What does the guide's page '{title}' "
                      "cover?", "reference": " ".join(paragraph.split())[:300],
                      "source": page.name, "chunk_id": None, "title": title, "page": None})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


HYPER = HyperParameters(batch_size=2, max_length=96, learning_rate=2e-3, held_out=0.25)


@pytest.fixture(scope="session")
def adapter(models_dir: Path, smol_folder: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three LoRA steps on SmolLM2, then one more, resumed from the checkpoint."""
    data = guide_questions(tmp_path_factory.mktemp("qa") / "questions.jsonl")
    first = tune("guide", data, smol_folder, models_dir, hyper=HYPER, quantization="none",
                 bounds=Bounds(max_steps=3, checkpoint_every=2))
    assert first["steps"] == 3
    resumed = tune("guide", data, smol_folder, models_dir, hyper=HYPER, quantization="none",
                   bounds=Bounds(max_steps=4, checkpoint_every=2))
    assert resumed["loss_curve"][:3] == first["loss_curve"]
    return hf_models.adapters_dir(models_dir) / "guide"


def test_lora_steps_change_the_loss_and_write_a_manifest(adapter: Path, smol_folder: Path) -> None:
    manifest = json.loads((adapter / hf_models.ADAPTER_MANIFEST).read_text())
    assert manifest["steps"] == 4 and manifest["stopped_by"] == "max_steps"
    assert [step for step, _ in manifest["loss_curve"]] == [1, 2, 3, 4]
    assert manifest["eval_loss_after"] != manifest["eval_loss_before"]
    losses = [loss for _, loss in manifest["loss_curve"]]
    assert min(losses[1:]) < losses[0]
    assert manifest["base_model"]["sha256"] == hf_models.weights_sha256(smol_folder)
    assert manifest["hyperparameters"]["rank"] == 8 and manifest["seconds_per_step"] > 0
    held = {json.loads(line)["source"] for line in (adapter / "held-out.jsonl").open()}
    trained = {json.loads(line)["source"] for line in (adapter / "training.jsonl").open()}
    assert held == set(manifest["data"]["held_out_sources"]) and held and not held & trained
    assert (adapter / "adapter_model.safetensors").is_file()


def test_the_adapter_loads_and_answers(adapter: Path, models_dir: Path, tmp_path: Path) -> None:
    llm = build_llm(tf_settings(models_dir, tmp_path, transformers_adapter="guide"))
    assert llm.name == f"transformers:{SMOLLM}+guide"
    assert type(llm.loaded.model).__name__ == "PeftModelForCausalLM"  # type: ignore[attr-defined]
    assert llm.complete(MESSAGES).strip()


def test_an_adapter_of_another_base_model_is_refused(adapter: Path, models_dir: Path,
                                                     tmp_path: Path) -> None:
    other = tmp_path / "other-adapter"
    shutil.copytree(adapter, other, ignore=shutil.ignore_patterns("checkpoint*"))
    manifest = json.loads((other / hf_models.ADAPTER_MANIFEST).read_text())
    manifest["base_model"] = {"name": "Qwen2.5-0.5B", "sha256": "0" * 64}
    (other / hf_models.ADAPTER_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LLMError, match="was trained on 'Qwen2.5-0.5B'.*serve it with that base"):
        build_llm(tf_settings(models_dir, tmp_path, transformers_adapter=str(other)))


def damaged_copy(adapter: Path, models_dir: Path, name: str,
                 damage: Callable[[Path], None]) -> None:
    target = hf_models.adapters_dir(models_dir) / name
    shutil.copytree(adapter, target)
    damage(target / "checkpoint")


@pytest.mark.parametrize("damage", [
    lambda ckpt: (ckpt / "state.json").write_text("{\"step\": "),
    lambda ckpt: (ckpt / "adapter_model.safetensors").write_bytes(b"not safetensors"),
], ids=["state", "weights"])
def test_a_damaged_checkpoint_says_to_restart(adapter: Path, models_dir: Path, smol_folder: Path,
                                              damage: Callable[[Path], None],
                                              request: pytest.FixtureRequest) -> None:
    name = f"damaged-{request.node.callspec.id}"
    damaged_copy(adapter, models_dir, name, damage)
    data = hf_models.adapters_dir(models_dir) / name / "questions.jsonl"
    guide_questions(data)
    with pytest.raises(TuneError, match="is damaged .*--restart"):
        tune(name, data, smol_folder, models_dir, hyper=HYPER, quantization="none",
             bounds=Bounds(max_steps=5, checkpoint_every=2))


def test_a_run_killed_while_saving_leaves_the_adapter_it_trained_before(
        adapter: Path, models_dir: Path, smol_folder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The finished adapter was written over the one before it, in place: a run killed part-way
    through saving left half-written weights beside the old manifest, which the server loads."""
    import peft

    target = hf_models.adapters_dir(models_dir) / "killed"
    shutil.copytree(adapter, target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}

    def killed(self: Any, folder: Any, *args: Any, **kwargs: Any) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"half of it")
        raise KeyboardInterrupt

    data = target / "questions.jsonl"
    guide_questions(data)
    monkeypatch.setattr(peft.PeftModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        tune("killed", data, smol_folder, models_dir, hyper=HYPER, quantization="none",
             bounds=Bounds(max_steps=5, checkpoint_every=10))
    after = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "questions.jsonl"} == \
        {k: v for k, v in before.items() if k != "questions.jsonl"}
    monkeypatch.undo()
    llm = build_llm(tf_settings(models_dir, tmp_path, transformers_adapter="killed"))
    assert llm.complete(MESSAGES).strip()


@pytest.mark.parametrize("name", ["..", ".", "/tmp/elsewhere", "a/b", "", "-x"])
def test_an_adapter_name_is_a_folder_under_adapters_and_restart_deletes_nothing_first(
        tmp_path: Path, name: str) -> None:
    """`hearth tune --name .. --restart` deleted the whole models folder before anything was
    checked; and --restart with a bad Q&A file deleted the adapter, then failed. A name is now
    a folder under models/adapters, and --restart deletes only once the run has all it needs."""
    models = tmp_path / "models"
    kept = models / "a-model.gguf"
    adapter = models / "adapters" / "mydocs"
    adapter.mkdir(parents=True)
    kept.write_text("weights")
    (adapter / "adapter_model.safetensors").write_text("trained")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TuneError, match="is not an adapter name"):
        tune(name, empty, tmp_path / "base", models, restart=True)
    with pytest.raises(TuneError, match="is empty"):
        tune("mydocs", empty, tmp_path / "base", models, restart=True)
    assert kept.read_text() == "weights"
    assert (adapter / "adapter_model.safetensors").read_text() == "trained"


def test_an_adapter_name_means_the_adapter_even_beside_a_folder_of_that_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HEARTH_TRANSFORMERS_ADAPTER=docs, run from the repository (which has a docs/ folder),
    looked in ./docs and said there was no adapter; a path still means that path."""
    models = tmp_path / "models"
    saved = hf_models.adapters_dir(models) / "docs"
    saved.mkdir(parents=True)
    (saved / "adapter_config.json").write_text("{}")
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert hf_models.resolve_adapter_folder("docs", models) == saved
    with pytest.raises(hf_models.HFModelError, match="no LoRA adapter at"):
        hf_models.resolve_adapter_folder(str(tmp_path / "docs"), models)


def test_a_qa_file_of_the_wrong_shape_and_examples_with_nothing_to_learn(tmp_path: Path) -> None:
    """A number or a list as a question's source crashed `hearth tune` with a TypeError deep in
    the split; an example whose prompt fills --max-length has no answer token to learn, and
    its loss was NaN (written into the manifest)."""
    from hearth.evaluation.records import EvalDataError, load_questions
    from hearth.tune import IGNORE, learnable

    data = tmp_path / "qa.jsonl"
    for bad in ('{"id": "a", "question": "q?", "reference": "r", "source": 3}',
                '{"id": "a", "question": "q?", "reference": "r", "source": ["x"]}',
                '{"id": "a", "question": "q?", "reference": "r", "page": "2"}'):
        data.write_text(bad + "\n")
        with pytest.raises(EvalDataError, match="must be"):
            load_questions(data)
    with pytest.raises(TuneError, match="cannot be read .*source must be text"):
        data.write_text('{"id": "a", "question": "q?", "reference": "r", "source": 3}\n')
        tune("mydocs", data, tmp_path / "base", tmp_path / "models")
    whole = ([1, 2, 3], [IGNORE, 2, 3])
    cut = ([1, 2], [IGNORE, IGNORE])
    assert learnable([whole, cut, whole], "training") == [whole, whole]


def test_the_split_keeps_each_document_on_one_side(tmp_path: Path) -> None:
    from hearth.evaluation.records import load_questions

    questions = load_questions(guide_questions(tmp_path / "q.jsonl"))
    split = split_by_source(questions, 0.25, seed=0)
    assert {q.source for q in split.held_out}.isdisjoint({q.source for q in split.train})
    assert len(split.held_out) >= 0.25 * len(questions) and split.train
    with pytest.raises(TuneError, match="two documents or more"):
        split_by_source([q for q in questions if q.source == questions[0].source], 0.2, seed=0)


@pytest.mark.slow  # QLoRA steps over NF4 take 10-50 s each on 2 busy cores
def test_qlora_over_nf4_learns_and_is_served_over_nf4(models_dir: Path, smol_folder: Path,
                                                      tmp_path: Path) -> None:
    data = guide_questions(tmp_path / "questions.jsonl")
    manifest = tune("qlora", data, smol_folder, models_dir, quantization="nf4",
                    hyper=HyperParameters(batch_size=2, max_length=96, held_out=0.25),
                    bounds=Bounds(max_steps=2, checkpoint_every=2))
    assert manifest["base_model"]["quantization"] == "nf4" and manifest["steps"] == 2
    # bitsandbytes' CPU repacking, left on, sent this loss from about 4 to 18 (tune.py).
    assert manifest["eval_loss_after"] < manifest["eval_loss_before"] + 0.5
    llm = build_llm(tf_settings(models_dir, tmp_path, transformers_quantization="nf4",
                                transformers_adapter="qlora", max_new_tokens=6))
    assert llm.name.endswith("+qlora") and llm.complete(MESSAGES).strip()
