"""Chroma embedded and as a real server (`chroma run`), through the same VectorStore."""

from __future__ import annotations

import threading
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

    from hearth.embeddings import EmbeddingsError, build_embeddings
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
        with pytest.raises(EmbeddingsError, match="did not embed the text in time"):
            silent.embed_query("abc")
        assert time.monotonic() - started < 5


def test_a_serving_process_sees_what_another_process_ingested(make_services: Any,
                                                              tmp_path: Path) -> None:
    """`hearth ingest` in another process beside a running server (embedded Chroma): the
    server's next question finds the new document, and sees a removal too."""
    import os
    import subprocess
    import sys

    services = make_services()
    folder = tmp_path / "ferry"
    folder.mkdir()
    (folder / "ferry.md").write_text("# Ferry\n\nThe Ellery ferry leaves the mainland at 7:40 "
                                     "and the crossing takes 55 minutes.\n")
    question = "When does the Ellery ferry leave the mainland?"
    assert services.vectorstore.search(question, 4) == []  # nothing indexed yet: opened empty
    env = {**os.environ, "HEARTH_DATA_DIR": str(services.settings.data_dir)}
    hearth = [sys.executable, "-m", "hearth.cli"]
    added = subprocess.run([*hearth, "ingest", "files", str(folder)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr[-2000:]
    hits = services.vectorstore.search(question, 4)
    assert [Path(d.metadata["source"]).name for d, _, _ in hits] == ["ferry.md"]
    removed = subprocess.run([*hearth, "sources", "remove", str(folder), "--yes"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert removed.returncode == 0, removed.stderr[-2000:]
    assert services.vectorstore.search(question, 4) == []
    assert services.vectorstore.count() == 0


def test_two_processes_never_write_the_embedded_index_at_once(make_services: Any,
                                                              tmp_path: Path) -> None:
    """Two ingests at once (or one beside a server's job) wrote the embedded index together,
    each saving its own in-memory index over the other's: past about a thousand chunks every
    search failed after, for good. A writer now waits for the one writing, and says so."""
    import fcntl
    import os
    import subprocess
    import sys
    import time

    from hearth.vectorstore import WRITE_LOCK, WRITE_WAIT_S, IndexBusy

    services = make_services()
    folder = tmp_path / "ferry"
    folder.mkdir()
    (folder / "ferry.md").write_text("# Ferry\n\nThe Ellery ferry leaves the mainland at 7:40.\n")
    env = {**os.environ, "HEARTH_DATA_DIR": str(services.settings.data_dir)}
    log = tmp_path / "ingest.log"
    assert services.vectorstore.count() == 0  # the index opened (made) before the other writes
    with open(services.settings.chroma_path / WRITE_LOCK, "a") as held, log.open("w") as out:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another process is writing the index
        ingest = subprocess.Popen([sys.executable, "-m", "hearth.cli", "ingest", "files",
                                   str(folder)], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while "waiting until it is done" not in log.read_text():
                assert ingest.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
            assert services.vectorstore.count() == 0  # it waits, writing nothing
            # A request (WRITE_WAIT_S bounded, web.py) does not hold its client meanwhile.
            bound = WRITE_WAIT_S.set(0.3)
            try:
                with pytest.raises(IndexBusy, match="being written by another ingest"), \
                        services.vectorstore.writing():
                    pass
            finally:
                WRITE_WAIT_S.reset(bound)
        finally:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        assert ingest.wait(300) == 0, log.read_text()[-2000:]
    hits = services.vectorstore.search("When does the Ellery ferry leave?", 1)
    assert [Path(d.metadata["source"]).name for d, _, _ in hits] == ["ferry.md"]
    # In this process the lock is reentrant: a removal inside a run does not wait for itself.
    with services.vectorstore.writing(), services.vectorstore.writing():
        assert services.vectorstore.count() == 1
    # Requests waiting for the lock each hold a server thread: two may wait, a third is told
    # at once that the index is busy, rather than hold a thread of its own for 20 s.
    results: list[str] = []

    def request() -> None:
        bound = WRITE_WAIT_S.set(3.0)
        started = time.monotonic()
        try:
            with services.vectorstore.writing():
                results.append("wrote")
        except IndexBusy:
            results.append(f"busy after {time.monotonic() - started:.1f} s")
        finally:
            WRITE_WAIT_S.reset(bound)

    with services.vectorstore.writing():  # an ingest of this process (a job) writes
        waiting = [threading.Thread(target=request) for _ in range(2)]
        for thread in waiting:
            thread.start()
        time.sleep(0.5)
        third = threading.Thread(target=request)
        third.start()
        third.join()
        assert results == ["busy after 0.0 s"]
    for thread in waiting:
        thread.join()
    assert results == ["busy after 0.0 s", "wrote", "wrote"]


def test_a_collection_deleted_and_made_again_by_another_worker_is_reopened(
        make_settings: Any, embeddings: Any, chroma_server: str, tmp_path: Path) -> None:
    """Two API workers over one Chroma server: each kept the handle of a collection it had
    used, and once another worker (or the CLI) deleted the collection and made it again,
    every search, keyword search and ingest of that worker into it failed until it restarted."""
    prefix = f"recreate-{tmp_path.name[-12:]}"
    one, two = (VectorStore(make_settings(chroma_url=chroma_server, chroma_collection=prefix,
                                          data_dir=tmp_path / "data"), embeddings)
                for _ in range(2))
    one.writer("team").add_texts([TEXTS[0]], metadatas=[{"source": "a"}], ids=["1"])
    assert [c for _, _, c in one.search("printer driver", 1, ["team"])] == ["1"]
    assert [c for _, _, c in one.keyword_search("printer driver", 1, ["team"])] == ["1"]
    two.drop("team")  # the other worker deletes it, then it is made again
    two.writer("team").add_texts([TEXTS[1]], metadatas=[{"source": "b"}], ids=["2"])
    assert [c for _, _, c in one.search("yellow fruit", 1, ["team"])] == ["2"]
    assert [c for _, _, c in one.keyword_search("yellow fruit", 1, ["team"])] == ["2"]
    assert one.count(["team"]) == 1
    assert set(one.similarities(embeddings.embed_query("fruit"), [("team", "2")])) == {"2"}
    one.writer("team").add_texts([TEXTS[0]], metadatas=[{"source": "a"}], ids=["3"])
    assert two.count(["team"]) == 2
    two.drop("team")  # deleted, not made again: empty, not an error
    assert one.search("printer", 4, ["team"]) == [] and one.count(["team"]) == 0
    assert one.keyword_search("printer", 4, ["team"]) == []
