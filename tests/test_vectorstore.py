"""Chroma embedded and as a real server (`chroma run`), through the same VectorStore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vectorstore import VectorStore, VectorStoreError

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
