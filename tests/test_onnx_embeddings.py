"""all-MiniLM-L6-v2 under ONNX Runtime (``HEARTH_EMBEDDING_RUNTIME=onnx`` / ``onnx-int8``).

The real tier exports the real model on first use (as Hearth does), then compares its vectors
with the torch model's on real chunks of the Python tutorial (Debian's python3.11-doc, cut by
Hearth's own chunker), and the chunks each runtime retrieves for the key-fact questions about
those pages. The fast tier: a missing, damaged or foreign export is one clear error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from hearth.cli import main
from hearth.config import EmbeddingRuntime, load_settings
from hearth.embeddings import build_embeddings, minilm_path
from hearth.evaluation.keyfacts import load_fact_sets
from hearth.ingest.chunking import chunker_for
from hearth.ingest.documents import Parsed
from hearth.ingest.files import load_folder
from hearth.onnx_embeddings import (
    MANIFEST,
    MODEL_FILE,
    OnnxEmbeddings,
    OnnxModelError,
    Recipe,
    mean_pool,
    sha256_of,
)

REPO = Path(__file__).resolve().parents[1]
PY_DOCS = Path("/usr/share/doc/python3.11/html")
# Five tutorial pages (92 chunks) and the five key-fact questions about them.
PAGES = ["appendix", "floatingpoint", "venv", "introduction", "inputoutput"]

needs_python_docs = pytest.mark.skipif(
    not PY_DOCS.is_dir(), reason="needs Debian's python3.11-doc (apt-get install python3.11-doc)")


# --- fast: the recipe, the pooling, a bad export ---------------------------------------------


def test_the_recipe_is_read_from_the_models_own_config() -> None:
    recipe = Recipe.of(Path(minilm_path()))
    assert (recipe.max_seq_length, recipe.dimension) == (256, 384)


def test_a_model_that_pools_otherwise_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model"
    shutil.copytree(minilm_path(), source, ignore=shutil.ignore_patterns("*.safetensors"))
    config = source / "1_Pooling" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {
        "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(OnnxModelError, match="only does mean pooling"):
        Recipe.of(source)


def test_a_models_folder_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    """In the Docker image /app/models was not the hearth user's to write: the export raised
    a bare PermissionError. (Run as root here, the folder is made impossible by a file in its
    way instead.)"""
    from hearth.onnx_embeddings import export

    (tmp_path / "models").write_text("a file where the models folder should be")
    with pytest.raises(OnnxModelError, match="cannot write the ONNX export of all-MiniLM-L6-v2 "
                       "into .*models/embeddings .*set HEARTH_MODELS_DIR"):
        export(Path(minilm_path()), tmp_path / "models" / "embeddings" / "onnx", int8=False,
               name="all-MiniLM-L6-v2")


def test_mean_pooling_ignores_padding_and_normalises() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    (vector,) = mean_pool(hidden, np.array([[1, 1, 0]]))
    assert vector.tolist() == [1.0, 0.0]  # (1+3)/2 along x, the padded token left out


def export_like(folder: Path, model: bytes, manifest: dict[str, Any] | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(model)
    (folder / "tokenizer.json").write_bytes((Path(minilm_path()) / "tokenizer.json").read_bytes())
    files = {n: sha256_of(folder / n) for n in (MODEL_FILE, "tokenizer.json")}
    (folder / MANIFEST).write_text(json.dumps(
        {"format": 1, "max_seq_length": 256, "dimension": 384, "files": files,
         "source_files": {}, "tolerance": {}} | (manifest or {})))


@pytest.mark.parametrize(("damage", "why"), [
    (lambda f: (f / MANIFEST).unlink(), "no manifest.json"),
    (lambda f: (f / MANIFEST).write_text("{not json"), "unreadable manifest.json"),
    (lambda f: (f / MANIFEST).write_text('{"format": 1, "files": {}}'), "no source_files"),
    (lambda f: (f / MODEL_FILE).write_bytes(b"changed"), "model.onnx does not match the sha256"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda f: None, "ONNX Runtime cannot load it"),  # the manifest vouches for a bad file
])
def test_a_damaged_export_is_one_clear_error(tmp_path: Path, damage: Any, why: str) -> None:
    folder = tmp_path / "export"
    export_like(folder, b"not an ONNX model")
    damage(folder)
    with pytest.raises(OnnxModelError) as caught:
        OnnxEmbeddings(folder)
    message = str(caught.value)
    assert why in message and "hearth models export-onnx --force" in message
    assert "\n" not in message


def test_the_cli_reports_a_damaged_export_in_one_line(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_MODELS_DIR", str(tmp_path))
    folder = tmp_path / "embeddings" / "all-MiniLM-L6-v2-onnx-int8"
    export_like(folder, b"a whole model")
    (folder / MODEL_FILE).write_bytes(b"a cut")
    result = CliRunner().invoke(main, ["models", "export-onnx", "--runtime", "onnx-int8"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: the exported embedding model in {folder} is damaged: model.onnx does not "
        "match the sha256 in manifest.json; export it again with `hearth models export-onnx "
        "--force`"]
    assert result.exception is not None and not isinstance(result.exception, OnnxModelError)


# --- real: the exported model against torch, on real chunks ----------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def runtimes(embeddings: Any, models: Path) -> dict[str, Any]:
    """Each runtime's embeddings; the ONNX ones exported on first use into a fresh models dir."""
    made: dict[str, Any] = {"torch": embeddings}
    for runtime in (EmbeddingRuntime.onnx, EmbeddingRuntime.onnx_int8):
        settings = load_settings(_env_file=None, models_dir=models, embedding_runtime=runtime,
                                 data_dir=models / "unused")
        made[runtime.value] = build_embeddings(settings)
    return made


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[Any]]:
    """Hearth's chunks of five tutorial pages, and the key-fact questions about them."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "tutorial").mkdir()
    for page in PAGES:
        shutil.copy(PY_DOCS / "tutorial" / f"{page}.html", folder / "tutorial" / f"{page}.html")
    chunker = chunker_for(load_settings(_env_file=None, data_dir=folder / "data"))
    chunks = [chunk for item in load_folder(folder, pdf_char_margin=30.0)
              if isinstance(item, Parsed) for chunk in chunker.split(item, str(folder))]
    sources = {f"tutorial/{page}.html" for page in PAGES}
    questions = [q for q in load_fact_sets([REPO / "evaluation" / "sets" / "python-docs.jsonl"])
                 if q.source in sources]
    return chunks, questions


@pytest.fixture(scope="module")
def vectors(runtimes: dict[str, Any], tutorial: tuple[list[Any], list[Any]]) -> dict[str, Any]:
    chunks, questions = tutorial
    texts = [c.page_content for c in chunks]
    return {name: (np.array(e.embed_documents(texts)),
                   np.array([e.embed_query(q.question) for q in questions]))
            for name, e in runtimes.items()}


@needs_python_docs
def test_onnx_vectors_match_torch_on_real_chunks(vectors: dict[str, Any],
                                                 tutorial: tuple[list[Any], list[Any]],
                                                 runtimes: dict[str, Any]) -> None:
    torch_docs, torch_queries = vectors["torch"]
    assert len(torch_docs) == len(tutorial[0]) > 80
    for runtime, least in (("onnx", 0.99), ("onnx-int8", 0.98)):
        docs, queries = vectors[runtime]
        cosines = np.concatenate([(docs * torch_docs).sum(1), (queries * torch_queries).sum(1)])
        assert cosines.min() >= least, (runtime, cosines.min())
        assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4)
        # What the export measured and stated in its manifest holds on these chunks too.
        stated = runtimes[runtime].manifest["tolerance"]
        assert stated["min_cosine"] >= stated["bound"] == least
        assert (runtimes[runtime].manifest["quantization"] is None) == (runtime == "onnx")
    fp32 = (vectors["onnx"][0] * torch_docs).sum(1)
    assert fp32.min() > 0.9999  # fp32: the same computation, not an approximation


@needs_python_docs
def test_onnx_retrieves_what_torch_retrieves(vectors: dict[str, Any],
                                             tutorial: tuple[list[Any], list[Any]]) -> None:
    chunks, questions = tutorial
    assert len(questions) == 5

    def top(runtime: str, k: int = 4) -> list[list[int]]:
        docs, queries = vectors[runtime]
        return [list(np.argsort(-(docs @ q))[:k]) for q in queries]

    def page_hits(runtime: str) -> list[bool]:
        return [any(chunks[i].metadata["source"].endswith(q.source) for i in ranked)
                for q, ranked in zip(questions, top(runtime), strict=True)]

    assert top("onnx") == top("torch")  # the same four chunks, in the same order
    assert page_hits("onnx-int8") == page_hits("torch")
    assert sum(page_hits("torch")) >= 4


def test_the_cli_states_each_exports_tolerance(runtimes: dict[str, Any], models: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_MODELS_DIR", str(models))
    result = CliRunner().invoke(main, ["models", "export-onnx"])  # both in place: nothing to do
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["onnx", "onnx-int8"]
    for line, runtime in zip(lines, ("onnx", "onnx-int8"), strict=True):
        least = runtimes[runtime].manifest["tolerance"]["min_cosine"]
        assert str(models / "embeddings") in line
        assert f"cosine to torch's vectors {least:.4f} at least" in line
