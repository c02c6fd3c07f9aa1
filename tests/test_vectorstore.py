"""Chroma embedded and as a real server (`chroma run`), through the same VectorStore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hearth.vectorstore import VectorStore, VectorStoreError

TEXTS = ["The printer driver installs with setup.exe.", "Bananas are a yellow tropical fruit."]


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_add_search_count(mode: str, make_settings: Any, embeddings: Any, request: Any,
                          tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"chroma_collection": f"test-{mode}-{tmp_path.name[-12:]}"}
    if mode == "server":
        overrides["chroma_url"] = request.getfixturevalue("chroma_server")
    store = VectorStore(make_settings(**overrides), embeddings)
    store.langchain.add_texts(TEXTS, metadatas=[{"source": "a"}, {"source": "b"}], ids=["1", "2"])
    assert store.count() == 2
    [(doc, score, chunk_id)] = store.search("How do I install the printer driver?", 1)
    assert (doc.metadata["source"], chunk_id) == ("a", "1")
    assert 0.3 < score <= 1.0
    filtered = store.search("printer", 2, where={"source": "b"})
    assert [c for _, _, c in filtered] == ["2"]
    if mode == "embedded":
        assert (tmp_path / "data" / "chroma").is_dir()


def test_unreachable_server_names_it(make_settings: Any, embeddings: Any) -> None:
    from tests.conftest import closed_port_url

    url = closed_port_url()
    with pytest.raises(VectorStoreError, match=url.split("//")[1].split(":")[0]):
        VectorStore(make_settings(chroma_url=url), embeddings).ping()


def test_unreadable_store_names_the_path(make_settings: Any, embeddings: Any,
                                         tmp_path: Path) -> None:
    data = tmp_path / "broken"
    (data / "chroma").mkdir(parents=True)
    (data / "chroma" / "chroma.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(VectorStoreError, match=str(data / "chroma")):
        VectorStore(make_settings(data_dir=data), embeddings).ping()


def test_ollama_embeddings_come_from_the_configured_server_in_bounded_time(
    make_settings: Any, ollama_replay: Any
) -> None:
    import time

    import httpx

    from hearth.embeddings import build_embeddings
    from tests.stall_proxy import StallProxy

    ollama_replay.models.append("nomic-embed-text")
    settings = make_settings(embedding_backend="ollama", ollama_base_url=ollama_replay.url,
                             llm_timeout_s=1.0)
    vectors = build_embeddings(settings).embed_documents(["abc", "abcdefgh"])
    assert vectors == [[3.0, 1.0, 0.5], [1.0, 1.0, 0.5]]  # the replay's: len % 7, 1, 0.5
    assert ollama_replay.requests[-1]["path"] == "/api/embed"
    assert ollama_replay.requests[-1]["body"]["model"] == "nomic-embed-text"
    port = int(ollama_replay.url.rsplit(":", 1)[1])
    with StallProxy("127.0.0.1", port) as proxy:
        proxy.stall()  # an Ollama that takes the request and never answers
        silent = build_embeddings(make_settings(embedding_backend="ollama",
                                                ollama_base_url=proxy.url(), llm_timeout_s=1.0))
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            silent.embed_query("abc")
        assert time.monotonic() - started < 5
