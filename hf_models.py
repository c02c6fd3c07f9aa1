"""Hugging Face models in process: folders, conversion from packaged GGUF files, quantized
loading with bitsandbytes, LoRA adapters, and a streaming LangChain chat model over them.

A model folder is what ``save_pretrained`` writes (``config.json``, safetensors, tokenizer). A
packaged model (a GGUF file from ``models/catalog.json``) is converted once into
``models/hf/NAME`` with a manifest naming its source and that source's sha256: transformers
refuses a ``quantization_config`` together with ``gguf_file``, so quantized loading needs the
folder. Nothing here reaches the network: every load is ``local_files_only``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from hearth.errors import Unavailable
from hearth.weights import ModelError, catalog, packaged, resolve_model_path, sha256_of

CONVERSION_MANIFEST = "hearth-conversion.json"
ADAPTER_MANIFEST = "hearth-adapter.json"
QUANTIZATIONS = ("nf4", "int8", "none")


class HFModelError(Unavailable):
    """A Hugging Face model or adapter cannot be used; the message says what to do."""

    code = "llm_unavailable"


def hf_dir(models_dir: Path) -> Path:
    return models_dir / "hf"


def adapters_dir(models_dir: Path) -> Path:
    return models_dir / "adapters"


def resolve_model_folder(name_or_path: str, models_dir: Path) -> Path:
    """A model folder as given, or the converted folder of a packaged model."""
    if name_or_path in catalog():
        folder = hf_dir(models_dir) / name_or_path
        if not (folder / "config.json").is_file():
            raise HFModelError(f"{name_or_path} is not converted yet ({folder} is missing): run "
                               f"`hearth models convert {name_or_path}`")
        return folder
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise HFModelError(f"model folder not found at {folder}: give a Hugging Face model folder "
                           "or a packaged model's name (`hearth models list`)")
    if not (folder / "config.json").is_file():
        raise HFModelError(f"{folder} is not a Hugging Face model folder (it has no config.json)")
    return folder


def resolve_adapter_folder(name_or_path: str, models_dir: Path) -> Path:
    """A name (no path separator) is an adapter under models/adapters, as `hearth tune --name`
    saves it, even where the current folder has one of that name (``docs``); else a path."""
    folder = Path(name_or_path).expanduser()
    if os.sep not in name_or_path and (adapters_dir(models_dir) / name_or_path).is_dir():
        folder = adapters_dir(models_dir) / name_or_path
    if not (folder / "adapter_config.json").is_file():
        raise HFModelError(f"no LoRA adapter at {folder} (no adapter_config.json): train one "
                           "with `hearth tune`")
    return folder


def weights_sha256(folder: Path) -> str:
    """One digest of a folder's weights (its safetensors files, in name order)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise HFModelError(f"{folder} holds no safetensors weights")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HFModelError(f"{what} {path} cannot be read ({exc})") from exc
    if not isinstance(data, dict):
        raise HFModelError(f"{what} {path} is not a JSON object")
    return data


# --- conversion of a packaged GGUF model -------------------------------------------------------


def convert(name: str, models_dir: Path, *, force: bool = False) -> Path:
    """Dequantize packaged model NAME into a safetensors folder ``models/hf/NAME``, once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = packaged(name)
    except ModelError as exc:
        raise HFModelError(str(exc)) from exc
    target = hf_dir(models_dir) / name
    if (target / CONVERSION_MANIFEST).is_file() and not force:
        return target
    try:
        gguf = resolve_model_path(name, models_dir)
    except ModelError as exc:
        raise HFModelError(str(exc)) from exc
    digest = sha256_of(gguf)
    if digest != model.sha256:
        raise HFModelError(f"{gguf} has sha256 {digest}, expected {model.sha256}: delete it and "
                           f"run `hearth models fetch {name}`")
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise HFModelError("conversion needs transformers and gguf: install hearth[tune]") from exc
    started = time.perf_counter()
    try:
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  local_files_only=True)
    except ImportError as exc:
        raise HFModelError(f"reading GGUF needs the gguf package ({exc}): install hearth[tune]"
                           ) from exc
    # Loaded dequantized (float weights in plain Linear layers); what marks it as a GGUF
    # checkpoint only stops save_pretrained.
    quantizer: Any = getattr(lm, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(lm)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lm.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    manifest = {
        "kind": "hearth-conversion",
        "version": 1,
        "model": name,
        "source": {"file": gguf.name, "sha256": digest, "size": gguf.stat().st_size},
        "architecture": type(lm).__name__,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "n_ctx_train": getattr(lm.config, "max_position_embeddings", None),
        "transformers_version": transformers.__version__,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (partial / CONVERSION_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)  # a half-written folder is never seen under the model's name
    return target


# --- loading -----------------------------------------------------------------------------------


@dataclass
class Loaded:
    model: Any  # a transformers PreTrainedModel, or a peft PeftModel over one
    tokenizer: Any
    folder: Path
    device: str
    quantization: str
    adapter: Path | None = None

    @property
    def n_ctx(self) -> int:
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", 0) or 2048)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise HFModelError("HEARTH_TRANSFORMERS_DEVICE=cuda but torch sees no CUDA device: use "
                           "cpu or auto")
    return device


def quantization_config(quantization: str) -> Any:
    """bitsandbytes' settings for ``nf4`` or ``int8``; None for ``none``."""
    if quantization not in QUANTIZATIONS:
        raise HFModelError(f"unknown quantization {quantization!r}: one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a library that fails to load on this machine
        raise HFModelError(f"bitsandbytes cannot quantize on this machine ({exc}): install "
                           "hearth[tune], or set HEARTH_TRANSFORMERS_QUANTIZATION=none") from exc
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_base(folder: Path, *, quantization: str = "nf4", device: str = "auto") -> Loaded:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise HFModelError("the transformers backend needs transformers: install hearth[tune]"
                           ) from exc
    device = pick_device(device)
    config = quantization_config(quantization)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise HFModelError(f"{folder} has no usable tokenizer ({exc})") from exc
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, quantization_config=config, dtype=dtype,
            device_map=device)
    except (OSError, ValueError) as exc:
        raise HFModelError(f"{folder} cannot be loaded as a causal language model ({exc})"
                           ) from exc
    except (ImportError, RuntimeError) as exc:
        if config is None:
            raise HFModelError(f"{folder} cannot be loaded on {device} ({exc})") from exc
        raise HFModelError(f"bitsandbytes cannot quantize to {quantization} on {device} here "
                           f"({exc}): set HEARTH_TRANSFORMERS_QUANTIZATION=none") from exc
    except Exception as exc:  # safetensors' own errors: a weights file cut short or damaged
        raise HFModelError(f"the weights in {folder} cannot be read ({type(exc).__name__}: "
                           f"{exc}): they may be damaged; convert the model again (`hearth "
                           "models convert NAME --force`)") from exc
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model, tokenizer, folder, device, quantization)


def check_adapter(adapter: Path, base: Path) -> dict[str, Any]:
    """The adapter's manifest, if it was trained on ``base``; an error naming both otherwise."""
    manifest = read_json(adapter / ADAPTER_MANIFEST, "the adapter manifest")
    trained_on = manifest.get("base_model") or {}
    if not isinstance(trained_on, dict) or not trained_on.get("sha256"):
        raise HFModelError(f"the adapter manifest {adapter / ADAPTER_MANIFEST} names no base model")
    actual = weights_sha256(base)
    if trained_on["sha256"] != actual:
        raise HFModelError(
            f"the adapter {adapter} was trained on {trained_on.get('name')!r} (weights sha256 "
            f"{trained_on['sha256'][:12]}…), not on {base} ({actual[:12]}…): serve it with that "
            "base model (HEARTH_TRANSFORMERS_MODEL) or train one for this model")
    return manifest


def load(folder: Path, *, quantization: str = "nf4", device: str = "auto",
         adapter: Path | None = None) -> Loaded:
    """A model ready to generate, with its LoRA adapter when one is given."""
    if adapter is not None:
        check_adapter(adapter, folder)  # before the slow load
    loaded = load_base(folder, quantization=quantization, device=device)
    if adapter is not None:
        from peft import PeftModel

        try:
            loaded.model = PeftModel.from_pretrained(loaded.model, adapter, is_trainable=False)
        except Exception as exc:  # safetensors' own errors too: a weights file cut short
            raise HFModelError(f"the adapter {adapter} cannot be applied ({type(exc).__name__}: "
                               f"{exc}): train it again (`hearth tune ... --restart`)") from exc
        loaded.model.eval()
        loaded.adapter = adapter
    return loaded


# --- the chat model ----------------------------------------------------------------------------

ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]


def encode_chat(tokenizer: Any, messages: Sequence[BaseMessage]) -> Any:
    """The prompt's token ids (a 1×n tensor) under the model's own chat template."""
    return tokenizer.apply_chat_template(chat_messages(messages), add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


class _Watch:
    """A stopping criterion: stop when cancelled, and count the tokens generated."""

    def __init__(self, prompt_tokens: int) -> None:
        self.cancelled = threading.Event()
        self.prompt_tokens = prompt_tokens
        self.generated = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.generated = int(input_ids.shape[-1]) - self.prompt_tokens
        stop = self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _Logprobs:
    """A logits processor that changes nothing and records each drawn token's log-probability
    under the model's own logits (it runs before the repetition penalty, temperature and top-p:
    Hearth puts it first), with the ``top`` likeliest tokens at its place, as
    llm.TokenLogprobs does for llama.cpp: each step keeps the row, the next reads the token
    drawn from it. The last token drawn (the end of the answer, usually) is not read."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.drawn: list[tuple[int, float, list[tuple[int, float]]]] = []
        self._last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._last is not None:
            token = int(input_ids[0, -1])
            best: list[tuple[int, float]] = []
            if self.top:
                values, ids = torch.topk(self._last, self.top)
                best = [(int(i), float(v)) for v, i in zip(values, ids, strict=True)]
            self.drawn.append((token, float(self._last[token]), best))
        self._last = torch.log_softmax(scores[0].double(), dim=-1)
        return scores


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE (Qwen, SmolLM2, Llama 3) writes each byte as one character: the
    printable ones as themselves, the others from U+0100 on, in order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    decoder, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            decoder[chr(byte)] = byte
        else:
            decoder[chr(256 + extra)] = byte
            extra += 1
    return decoder


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[bytes]:
    """Each token's own bytes (a character may take several tokens): read from a byte-level
    BPE vocabulary's characters, or SentencePiece's ``▁`` and ``<0xNN>`` pieces; a special
    token by its name; else the token decoded alone."""
    decoder = _byte_decoder()
    special = set(getattr(tokenizer, "all_special_ids", ()))
    pieces = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(list(ids)), strict=True):
        if token_id in special or not isinstance(token, str):
            pieces.append(str(token).encode())
        elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            pieces.append(bytes([int(token[3:5], 16)]))
        elif "\u2581" in token:
            pieces.append(token.replace("\u2581", " ").encode())
        elif all(char in decoder for char in token):
            pieces.append(bytes(decoder[char] for char in token))
        else:
            pieces.append(tokenizer.decode([token_id]).encode())
    return pieces


class TransformersChat(BaseChatModel):
    """``model.generate`` in a thread, its text streamed through a TextIteratorStreamer.

    Closing the stream cancels the generation at the next token; stop strings end it too (and
    are not part of the answer, as with llama.cpp); ``max_time`` bounds it in the engine.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    lm: Any
    tokenizer: Any
    max_new_tokens: int = 256
    temperature: float = 0.2
    max_time: float | None = None
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "hearth-transformers"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        text, usage = [], None
        for chunk in self._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            text.append(str(chunk.message.content))
            usage = getattr(chunk.message, "usage_metadata", None) or usage
        message = AIMessage(content="".join(text), usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        import torch
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        input_ids = encode_chat(self.tokenizer, messages).to(self.lm.device)
        # Asked (llm.LLM.recording), each drawn token's log-probability, read from the model's
        # logits before the repetition penalty changes them: hence that penalty here, after it.
        recorder = _Logprobs(int(kwargs.get("top_logprobs") or 0)) if kwargs.get("logprobs") \
            else None
        processors = LogitsProcessorList(
            [*([recorder] if recorder else []), RepetitionPenaltyLogitsProcessor(1.1)])
        watch = _Watch(int(input_ids.shape[-1]))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": 0.95} \
            if self.temperature > 0 else {"do_sample": False}
        failures: list[BaseException] = []

        def run() -> None:
            try:
                torch.manual_seed(self.seed)
                with torch.inference_mode():
                    self.lm.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=self.max_new_tokens, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([watch]),
                        pad_token_id=self.tokenizer.pad_token_id, repetition_penalty=1.0,
                        logits_processor=processors, max_time=self.max_time, **sampling)
            except BaseException as exc:  # raised in the caller's thread below
                failures.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="hearth-generate", daemon=True)
        worker.start()
        said = ""
        try:
            for piece in streamer:
                said, piece, stopped = self._cut(said, piece, stop or [])
                if piece:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    if run_manager:
                        run_manager.on_llm_new_token(piece)
                if stopped:
                    break
        finally:  # a closed stream, a stop string or an error: the engine stops too
            watch.cancelled.set()
            worker.join()
        if failures:
            raise failures[0]
        usage = {"input_tokens": watch.prompt_tokens, "output_tokens": max(watch.generated, 0),
                 "total_tokens": watch.prompt_tokens + max(watch.generated, 0)}
        metadata: dict[str, Any] = {}
        if recorder is not None:  # in the shape servers report them (llm.reported_tokens)
            ids = [t for t, _, _ in recorder.drawn]
            alternatives = [i for _, _, top in recorder.drawn for i, _ in top]
            pieces = token_pieces(self.tokenizer, ids + alternatives)
            names = dict(zip(alternatives, pieces[len(ids):], strict=True))
            metadata["logprobs"] = [
                {"token": piece.decode("utf-8", "replace"), "bytes": list(piece), "logprob": lp,
                 "top_logprobs": [{"token": names[i].decode("utf-8", "replace"),
                                   "bytes": list(names[i]), "logprob": alp} for i, alp in top]}
                for piece, (_, lp, top) in zip(pieces[:len(ids)], recorder.drawn, strict=True)]
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage, response_metadata=metadata))  # type: ignore[arg-type]

    @staticmethod
    def _cut(said: str, piece: str, stop: Sequence[str]) -> tuple[str, str, bool]:
        """What of ``piece`` to show, given the stop strings: the text before the first one."""
        text = said + piece
        ends = [i for i in (text.find(s, max(0, len(said) - len(s))) for s in stop if s) if i >= 0]
        if not ends:
            return text, piece, False
        end = min(ends)
        return text[:end], text[len(said):end] if end > len(said) else "", True
