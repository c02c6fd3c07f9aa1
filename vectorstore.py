"""The vector store: Chroma, embedded under the data directory or a server by URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import httpx
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from hearth.config import Settings
from hearth.errors import Unavailable


class VectorStoreError(Unavailable):
    code = "vector_store_unavailable"


class VectorStore:
    """A Chroma collection in cosine space, reached through LangChain's ``Chroma``."""

    def __init__(self, settings: Settings, embeddings: Embeddings) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from langchain_chroma import Chroma

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        try:
            if settings.chroma_url:
                url = urlparse(settings.chroma_url)
                self.where = settings.chroma_url
                timeout = httpx.Timeout(settings.chroma_timeout_s,
                                        connect=min(settings.backend_timeout_s,
                                                    settings.chroma_timeout_s))
                # Chroma's client waits forever by default, opening included: a server that
                # accepts and never answers must not hang Hearth, so ask it first, time-limited.
                httpx.get(f"{settings.chroma_url.rstrip('/')}/api/v2/heartbeat",
                          timeout=timeout).raise_for_status()
                client = chromadb.HttpClient(
                    host=url.hostname or "127.0.0.1",
                    port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https",
                    settings=chroma_settings,
                )
                client._server._session.timeout = timeout  # type: ignore[attr-defined]
            else:
                settings.chroma_path.mkdir(parents=True, exist_ok=True)
                self.where = str(settings.chroma_path.resolve())
                client = chromadb.PersistentClient(
                    path=str(settings.chroma_path), settings=chroma_settings
                )
            self.client = client
            # Always pass the embedding function: Chroma's default downloads a model.
            self.langchain = Chroma(
                client=client,
                collection_name=settings.chroma_collection,
                embedding_function=embeddings,
                collection_metadata={"hnsw:space": "cosine"},
            )
            self.collection = self.langchain._collection
        except Exception as exc:
            raise VectorStoreError(f"cannot open the vector store at {self.where}: {exc}") from exc

    def search(
        self, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[Document, float, str]]:
        """The k nearest chunks with their cosine similarity and chunk id, best first."""
        try:
            vector = self.langchain.embeddings.embed_query(query)  # type: ignore[union-attr]
            result = self.collection.query(
                query_embeddings=[vector], n_results=k, where=where,
                include=["documents", "metadatas", "distances"],
            )
        except Exception as exc:
            raise VectorStoreError(f"cannot search the vector store at {self.where}: {exc}") from exc
        hits = []
        for chunk_id, text, meta, distance in zip(
            result["ids"][0], result["documents"][0],  # type: ignore[index]
            result["metadatas"][0], result["distances"][0],  # type: ignore[index]
            strict=True,
        ):
            hits.append((Document(page_content=text or "", metadata=dict(meta or {})),
                         1.0 - float(distance), chunk_id))
        return hits

    def count(self) -> int:
        try:
            return self.collection.count()
        except Exception as exc:
            raise VectorStoreError(f"cannot read the vector store at {self.where}: {exc}") from exc

    def ping(self) -> None:
        self.count()
