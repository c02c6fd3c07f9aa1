"""Uploads into one's own collection, and erasing a user: real parts throughout (the embedding
model, Chroma on disk, the SQLite stores, SmolLM2, the ingestion job reading in its own
process, a page cut from a real R manual), driven through the Flask app as a client would.
A removal that races a job is made to come at the worst moment by running it from inside the
job (the job itself unchanged)."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.api import create_app
from hearth.cli import main
from hearth.ingest.uploads import Uploads, own_collection
from hearth.services import Services

MiB = 2**20
R_DATA = Path("/usr/share/R/doc/manual/R-data.pdf")
NOTE = ("# Ann's bike\n\nThe lock of Ann's bike opens with the combination wombat-4096. "
        "It is chained to the rack by the library.\n")
NOTE_WORD = "wombat"  # a word of the note's, and of no other document here


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def real_pdf_pages(first: int, count: int) -> tuple[bytes, str]:
    """Pages of a real manual as a PDF of their own, and a sentence that is on them."""
    from pypdf import PdfReader, PdfWriter

    reader = PdfReader(R_DATA)
    writer = PdfWriter()
    for page in reader.pages[first:first + count]:
        writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    text = " ".join(p.extract_text() or "" for p in reader.pages[first:first + count])
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
                 if 80 < len(s.strip()) < 300]
    return out.getvalue(), sentences[0]


@pytest.fixture
def app(make_services: Any) -> Any:
    services: Services = make_services(auth=True, question_rate_limit="1000/minute",
                                       upload_max_file_bytes=MiB)
    keys = {name: services.keys.create(name, admin=(name == "root"))[0]
            for name in ("ann", "bob", "root")}
    return create_app(services.settings, services).test_client(), keys, services


def upload(client: Any, token: str, files: list[tuple[str, bytes]], collection: str = "mine",
           **headers: str) -> Any:
    data = {"files": [(io.BytesIO(content), name) for name, content in files]}
    return client.post(f"/api/collections/{collection}/documents", data=data,
                       content_type="multipart/form-data", headers={**bearer(token), **headers})


def wait_for(client: Any, token: str, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = client.get(url, headers=bearer(token)).get_json()
        if job["state"] in ("done", "failed"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"the job at {url} did not end")


def test_a_user_uploads_asks_removes_and_others_see_nothing(app: Any) -> None:
    client, keys, services = app
    pdf, sentence = real_pdf_pages(8, 2)
    started = upload(client, keys["ann"], [("bike.md", NOTE.encode()), ("R data.pdf", pdf)])
    assert started.status_code == 202, started.get_data(as_text=True)
    body = started.get_json()
    mine = own_collection("ann")
    assert body["collection"] == mine and body["refused"] == []
    assert [(d["name"], d["state"]) for d in body["documents"]] == [
        ("bike.md", "queued"), ("R data.pdf", "queued")]
    job = wait_for(client, keys["ann"], body["job"]["url"])
    assert job["state"] == "done", job
    listed = client.get("/api/collections/mine/documents", headers=bearer(keys["ann"]))
    assert [d["state"] for d in listed.get_json()["documents"]] == ["indexed", "indexed"]
    stored = services.settings.data_dir / "uploads" / mine / "files"
    assert sorted(p.name for p in stored.iterdir() if not p.name.startswith(".")) == sorted(
        f"{d['id']}-{stem}" for d, stem in zip(body["documents"], ("bike.md", "R-data.pdf"),
                                               strict=True))
    # Ann's question reads her upload (the real PDF page, too), named by collection.
    hits = services.assistant.retrieve(sentence, collections=[mine])
    assert hits and hits[0].source.endswith("R-data.pdf") and hits[0].collection == mine
    asked = client.post("/api/question", headers=bearer(keys["ann"]), json={
        "question": "What is the combination of the lock of Ann's bike?", "user_id": "ann"})
    assert any("wombat-4096" in s["snippet"] and s["collection"] == mine
               for s in asked.get_json()["sources"])
    # Bob reads none of it, by any road.
    as_bob = bearer(keys["bob"])
    bob = client.post("/api/question", headers=as_bob, json={
        "question": "What is the combination of the lock of Ann's bike?", "user_id": "bob"})
    assert bob.status_code == 200 and "wombat" not in bob.get_data(as_text=True)
    bike = body["documents"][0]["id"]
    for method, url in (("get", f"/api/collections/{mine}/documents"),
                        ("delete", f"/api/collections/{mine}/documents/{bike}"),
                        ("get", body["job"]["url"].replace("/mine/", f"/{mine}/"))):
        refused = getattr(client, method)(url, headers=as_bob)
        assert refused.status_code == 403, (method, url)
        assert "wombat" not in refused.get_data(as_text=True)
    assert upload(client, keys["bob"], [("x.md", b"# x\n\nhello")], collection=mine
                  ).status_code == 403
    assert client.get("/api/collections/mine/documents", headers=as_bob
                      ).get_json()["documents"] == []
    # Removed: out of search before the response.
    removed = client.delete(f"/api/collections/mine/documents/{bike}", headers=bearer(keys["ann"]))
    assert removed.status_code == 200 and removed.get_json()["removed"]["name"] == "bike.md"
    after = services.assistant.retrieve("combination of the lock of Ann's bike",
                                        collections=[mine])
    assert all("wombat" not in h.snippet for h in after)
    # Nor in any file of the data folder (its parse cached, its words in the keyword index),
    # the conversation that quoted it aside; the R manual uploaded beside it is still cached.
    data = services.settings.data_dir
    files = [p for p in data.rglob("*") if p.is_file() and "chroma" not in p.parts
             and not p.name.startswith("history.sqlite3")]
    assert [p for p in files if NOTE_WORD.encode() in p.read_bytes()] == []
    assert list((data / "ingest-cache").rglob("*.json"))
    assert client.delete(f"/api/collections/mine/documents/{bike}",
                         headers=bearer(keys["ann"])).status_code == 404


def docx_bomb(declared_small: bool) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            for _ in range(64):
                part.write(b"\0" * MiB)
    data = bytearray(out.getvalue())
    if declared_small:  # the directory lies: 1,000 bytes
        for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
            start = data.find(signature, data.find(signature) + 1)
            data[start + offset:start + offset + 4] = (1000).to_bytes(4, "little")
    return bytes(data)


def test_bad_uploads_are_refused_with_reasons_and_leave_nothing(app: Any) -> None:
    client, keys, services = app
    ann = keys["ann"]
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 200
    cases = {
        "empty.md": b"",
        "empty.pdf": b"",
        "big.pdf": b"%PDF-1.4\n" + b"0" * (MiB + 1),
        "setup.pdf": elf,
        "notes.txt": elf,
        "tool.exe": b"MZ" + b"\0" * 100,
        "bomb.docx": docx_bomb(declared_small=False),
        "plain.docx": b"PK\x03\x04 not really a zip",
    }
    response = upload(client, ann, list(cases.items()))
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "upload_refused"
    for name, reason in (("empty.md", "empty"), ("empty.pdf", "empty"), ("big.pdf", "over"),
                         ("setup.pdf", "not a PDF"), ("notes.txt", "NUL bytes"),
                         ("tool.exe", "not a supported type"), ("bomb.docx", "unpacks to"),
                         ("plain.docx", "not a Word document")):
        assert re.search(rf"{re.escape(name)}: [^;]*{reason}", error["message"]), (name, error)
    files = services.settings.data_dir / "uploads" / own_collection("ann") / "files"
    assert not files.exists() or list(files.iterdir()) == []
    # Names: folders and control characters do not reach the disk, a long name is cut.
    named = upload(client, ann, [("../../etc/evil.md", b"# a\n\nOne."),
                                 ("nul\x00byte.md", b"# b\n\nTwo."),
                                 ("x" * 500 + ".md", b"# c\n\nThree."),
                                 ("again.md", b"# a\n\nOne.")])
    assert named.status_code == 202, named.get_data(as_text=True)
    out = named.get_json()
    assert [d["name"] for d in out["documents"]] == ["evil.md", "nulbyte.md", "x" * 197 + ".md"]
    assert out["refused"] == [{"name": "again.md", "reason": "the same file is already in this "
                               "collection as 'evil.md'"}]
    assert all(p.parent == files and len(p.name) < 100 for p in files.iterdir())
    assert wait_for(client, ann, out["job"]["url"])["state"] == "done"
    # Text in UTF-16 (Windows Notepad's "Unicode") has NUL bytes and a byte-order mark that
    # says why: it is text, and it is indexed.
    wide = upload(client, ann, [("wide.txt", "Descale the kettle monthly.".encode("utf-16")),
                                ("wide-zh.txt", "水壶每月除垢。".encode("utf-16"))])
    assert wide.status_code == 202, wide.get_data(as_text=True)
    assert wait_for(client, ann, wide.get_json()["job"]["url"])["state"] == "done"
    states = {d["name"]: d["state"] for d in client.get(
        "/api/collections/mine/documents", headers=bearer(ann)).get_json()["documents"]}
    assert states["wide.txt"] == states["wide-zh.txt"] == "indexed", states
    # A bomb whose directory lies passes the check and is stopped while read: the document
    # fails, and nothing of it is left on disk or in search.
    liar = upload(client, ann, [("liar.docx", docx_bomb(declared_small=True))])
    assert liar.status_code == 202
    wait_for(client, ann, liar.get_json()["job"]["url"])
    listed = {d["name"]: d for d in client.get("/api/collections/mine/documents",
                                               headers=bearer(ann)).get_json()["documents"]}
    assert listed["liar.docx"]["state"] == "failed" and listed["liar.docx"]["error"]
    assert not any(p.name.endswith("liar.docx") for p in files.iterdir())
    # Too many files, or not multipart: clear errors; the app answers the next request.
    many = upload(client, ann, [(f"n{i}.md", b"# n\n\nx") for i in range(1000)])
    assert many.status_code == 413 and many.get_json()["error"]["code"] in (
        "upload_too_large", "body_too_large")
    assert client.post("/api/collections/mine/documents", headers=bearer(ann),
                       json={"files": []}).status_code == 415
    assert client.get("/healthz").status_code == 200


def test_another_site_cannot_upload(app: Any) -> None:
    client, keys, _ = app
    response = upload(client, keys["ann"], [("a.md", b"# a\n\nx")],
                      Origin="http://evil.example")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "origin_not_allowed"


def test_erasing_a_user_leaves_nothing_of_them(app: Any, tmp_path: Path) -> None:
    client, keys, services = app
    services.access.create("team", readers=["ann", "bob"])
    asked = client.post("/api/question", headers=bearer(keys["ann"]), json={
        "question": "Where is the bike?", "user_id": "ann"})
    assert asked.status_code == 200
    started = upload(client, keys["ann"], [("bike.md", NOTE.encode())])
    wait_for(client, keys["ann"], started.get_json()["job"]["url"])
    assert client.delete("/api/users/ann", headers=bearer(keys["bob"])).status_code == 403
    erased = client.delete("/api/users/ann", headers=bearer(keys["ann"]))
    assert erased.get_json() == {"conversations": 1, "collections": 1, "documents": 1,
                                 "grants": 1, "keys": 1}
    assert client.get("/api/collections", headers=bearer(keys["ann"])).status_code == 401
    assert services.access.get("team").readers == ("bob",)
    assert not (services.settings.data_dir / "uploads" / own_collection("ann")).exists()
    assert services.assistant.retrieve("combination of the lock of Ann's bike",
                                       collections=[own_collection("ann")]) == []
    # Nothing of the note's text is left in any file of the data folder: the parse cache
    # kept it, and the keyword index kept its words in segments until they were merged.
    # Nor of her own collection's name, which the records of her uploads' jobs held.
    traces = (NOTE_WORD.encode(), own_collection("ann").encode())
    holding = [(p, t) for p in services.settings.data_dir.rglob("*") if p.is_file()
               and "chroma" not in p.parts for t in traces if t in p.read_bytes()]
    assert holding == [], holding
    # The same from the terminal.
    services.keys.create("carol")
    services.access.grant("team", ["carol"])
    result = CliRunner().invoke(main, ["users", "erase", "carol", "--yes"],
                                env={"HEARTH_DATA_DIR": str(services.settings.data_dir)})
    assert result.exit_code == 0, result.output
    assert "1 grants" in result.output and "1 keys" in result.output


SALARIES = b"Alice earns 120k a year, and Bob earns 95k. The raises are due in March.\n" * 3
ROTA = b"The kitchen rota: Ann cleans on Mondays, Bob on Tuesdays, Carol on Wednesdays.\n" * 3


def indexed(services: Services, collection: str) -> dict[str, dict[str, Any]]:
    """The documents of a collection's uploads in the index: each one's first chunk, by the
    stored file's name."""
    found = services.vectorstore.writer(collection).get(include=["metadatas", "documents"])
    return {Path(m["source"]).name: {**m, "text": t}
            for t, m in zip(found["documents"], found["metadatas"], strict=True)
            if m["chunk"] == 0}


def test_an_upload_without_a_title_is_titled_by_the_name_it_was_given(app: Any) -> None:
    """Uploads are stored as "<id>-<safe name>": that was the title of every one without a
    title of its own, in each chunk's heading and in the answers' sources."""
    client, keys, services = app
    started = upload(client, keys["ann"], [("Team salaries 2024.txt", SALARIES),
                                           ("bike.md", NOTE.encode())])
    assert wait_for(client, keys["ann"], started.get_json()["job"]["url"])["state"] == "done"
    docs = {d["name"]: d for d in started.get_json()["documents"]}
    chunks = indexed(services, own_collection("ann"))
    salaries = chunks[f"{docs['Team salaries 2024.txt']['id']}-Team-salaries-2024.txt"]
    assert salaries["title"] == "Team salaries 2024"
    assert salaries["text"].startswith("Team salaries 2024\nAlice earns 120k")
    assert chunks[f"{docs['bike.md']['id']}-bike.md"]["title"] == "Ann's bike"  # its own


def test_a_document_removed_while_its_job_reads_does_not_come_back(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job reads the whole folder in a child, then indexes what it read: a document
    removed in between (the removal answered 200) was indexed all the same, in search until
    some later job of the collection."""
    from hearth.ingest import jobs

    client, keys, services = app
    mine = own_collection("ann")
    salaries = hashlib.sha256(SALARIES).hexdigest()[:16]
    read_in_child = jobs.read_in_child
    removed: list[str] = []

    def read_then_removed(*args: Any, **kwargs: Any) -> Any:
        read = read_in_child(*args, **kwargs)  # both files read and chunked
        removed.append(Uploads(services).remove(mine, salaries).name)  # the user's DELETE
        return read

    monkeypatch.setattr(jobs, "read_in_child", read_then_removed)
    started = upload(client, keys["ann"], [("salaries.txt", SALARIES), ("rota.txt", ROTA)])
    job = wait_for(client, keys["ann"], started.get_json()["job"]["url"])
    assert job["state"] == "done" and removed == ["salaries.txt"]
    assert [Path(name).name.split("-", 1)[1] for name in indexed(services, mine)] == ["rota.txt"]
    assert all("Alice earns" not in hit.snippet for hit in services.assistant.retrieve(
        "How much does Alice earn?", collections=[mine]))
    listed = client.get("/api/collections/mine/documents", headers=bearer(keys["ann"]))
    assert [(d["name"], d["state"]) for d in listed.get_json()["documents"]] == [
        ("rota.txt", "indexed")]


def test_a_document_removed_while_its_job_indexes_waits_for_it_then_leaves(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A removal while the job is storing what it read: without the job and the removal
    taking turns, the removal found nothing indexed yet, and the job then stored the
    document's chunks, for good."""
    import langchain_core.indexing

    client, keys, services = app
    mine = own_collection("ann")
    salaries = hashlib.sha256(SALARIES).hexdigest()[:16]
    index = langchain_core.indexing.index
    removal: list[threading.Thread] = []
    waited: list[bool] = []
    removed: list[str] = []

    def index_while_removed(docs: Any, *args: Any, **kwargs: Any) -> Any:
        docs = list(docs)  # every document read, each file checked as still there
        remover = threading.Thread(
            target=lambda: removed.append(Uploads(services).remove(mine, salaries).name))
        remover.start()
        remover.join(timeout=3)  # time enough to remove, were the removal not to wait
        removal.append(remover)
        waited.append(remover.is_alive())
        return index(docs, *args, **kwargs)

    monkeypatch.setattr(langchain_core.indexing, "index", index_while_removed)
    started = upload(client, keys["ann"], [("salaries.txt", SALARIES), ("rota.txt", ROTA)])
    job = wait_for(client, keys["ann"], started.get_json()["job"]["url"])
    assert job["state"] == "done"
    [remover] = removal
    remover.join(timeout=60)
    # The removal waited for the job to store what it read, then took the document out: it
    # was never in search once the removal had answered.
    assert waited == [True] and removed == ["salaries.txt"]
    assert [Path(name).name.split("-", 1)[1] for name in indexed(services, mine)] == ["rota.txt"]
    assert all("Alice earns" not in hit.snippet for hit in services.assistant.retrieve(
        "How much does Alice earn?", collections=[mine]))
    listed = client.get("/api/collections/mine/documents", headers=bearer(keys["ann"]))
    assert [d["name"] for d in listed.get_json()["documents"]] == ["rota.txt"]


def test_a_users_uploads_at_once_stay_within_their_limit(make_services: Any) -> None:
    """Each upload counted what the user had stored against HEARTH_UPLOAD_MAX_USER_BYTES, and
    uploads sent at the same time each found room for themselves: 352,401 bytes were stored
    against a 300,000-byte limit, and the refusal said "over -52401 bytes"."""
    import threading

    services: Services = make_services(auth=True, upload_max_user_bytes=300_000,
                                       upload_max_file_bytes=MiB)
    app = create_app(services.settings, services)
    token = services.keys.create("ann")[0]
    results: list[Any] = []
    start = threading.Barrier(3)

    def send(n: int) -> None:
        client = app.test_client()
        start.wait()
        body = (f"Note {n}. " + "The kettle is descaled monthly. " * 5500).encode()
        results.append(upload(client, token, [(f"note{n}.txt", body)]).get_json())

    threads = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    accepted = [d for r in results for d in r.get("documents", [])]
    refused = [r["error"]["message"] for r in results if "error" in r]
    assert len(accepted) == 1 and len(refused) == 2, results
    assert all(re.search(r"over \d+ bytes: the limit left of your uploads", m)
               for m in refused), refused
    client = app.test_client()
    [job] = [r["job"]["url"] for r in results if "job" in r]
    assert wait_for(client, token, job)["state"] == "done"
    listed = client.get("/api/collections/mine/documents", headers=bearer(token)).get_json()
    assert sum(d["bytes"] for d in listed["documents"]) <= 300_000


def test_a_removal_that_cannot_write_the_index_now_leaves_the_document_whole(app: Any) -> None:
    """Removing an upload deleted its file, then found the index held by another process's
    ingest (index_busy): the document stayed listed and in search, citing a file gone."""
    import fcntl

    from hearth.vectorstore import WRITE_LOCK, WRITE_WAIT_S, IndexBusy

    client, keys, services = app
    started = upload(client, keys["ann"], [("bike.md", NOTE.encode())])
    assert wait_for(client, keys["ann"], started.get_json()["job"]["url"])["state"] == "done"
    [doc] = client.get("/api/collections/mine/documents",
                       headers=bearer(keys["ann"])).get_json()["documents"]
    uploads = Uploads(services)
    files = services.settings.data_dir / "uploads" / own_collection("ann") / "files"
    stored = sorted(p.name for p in files.iterdir())
    bound = WRITE_WAIT_S.set(0.3)  # as a request's (web.py)
    try:
        with open(services.settings.chroma_path / WRITE_LOCK, "a") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another process is writing the index
            with pytest.raises(IndexBusy):
                uploads.remove(own_collection("ann"), doc["id"])
    finally:
        WRITE_WAIT_S.reset(bound)
    assert sorted(p.name for p in files.iterdir()) == stored
    assert [d.id for d in uploads.documents(own_collection("ann"))] == [doc["id"]]
    uploads.remove(own_collection("ann"), doc["id"])  # once it is done
    assert uploads.documents(own_collection("ann")) == []


def test_an_upload_failed_by_a_backend_tells_its_uploader_no_address(app: Any) -> None:
    """A job that failed because a backend was down recorded that backend's message (an
    address, a path) as each document's error, and served the job's error as it was, to an
    uploader the rest of the API tells only the code."""
    from hearth.errors import backend_codes
    from hearth.ingest.jobs import Job
    from hearth.web import public_error

    client, keys, services = app
    started = upload(client, keys["ann"], [("bike.md", NOTE.encode())])
    assert wait_for(client, keys["ann"], started.get_json()["job"]["url"])["state"] == "done"
    uploads = Uploads(services)
    [doc] = uploads.documents(own_collection("ann"))
    inside = "cannot open the vector store at http://10.1.2.3:8000: refused"
    failed = Job(id=str(doc.job), kind="files", target="x", state="failed",
                 options={"collection": own_collection("ann")},
                 error={"code": "vector_store_unavailable", "message": inside})
    uploads._finished(failed)
    [doc] = uploads.documents(own_collection("ann"))
    assert doc.state == "failed" and "10.1.2.3" not in str(doc.error)
    assert str(doc.error).startswith("vector_store_unavailable: ")
    assert {"vector_store_unavailable", "keyword_index_unavailable", "index_write_failed",
            "ingest_records_unavailable", "history_unavailable"} <= backend_codes()
    error = {"code": "vector_store_unavailable", "message": inside}
    flask_app = client.application
    with flask_app.test_request_context(headers=bearer(keys["ann"]),
                                        environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        assert "10.1.2.3" not in str(public_error(error))
    with flask_app.test_request_context(headers=bearer(keys["root"]),
                                        environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        assert public_error(error) == error  # an administrator reads why
