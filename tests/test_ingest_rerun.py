"""Re-ingesting a folder while some of its files cannot be read for now, over real Chroma, a real
SQLite record manager and the real embedding model: the tutorial's own sources (Debian's
``python3.11-doc``) as documents nobody here wrote.

Proves: a file Hearth may not read now, or that changed while it was read, keeps what was indexed
of it (and the summary says so), as it does when an API job read the folder in another process;
a file that is corrupt now, or gone, is removed; once readable again, it is found unchanged. A
run stopped part-way is finished by the next, which counts unchanged only the documents wholly
indexed.
(A web page that fails for now: ``test_ingest_web``.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hearth.ingest import files
from hearth.ingest.pipeline import files_namespace, ingest_files, run
from hearth.ingest.progress import Progress
from hearth.ingest.records import close_records, record_manager
from hearth.ingest.sources import remove_source
from hearth.ingest.worker import _read, spooled
from hearth.services import Services, build_services
from tests.test_ingest import CountingEmbeddings, chunks, expected_chunks, tutorial_folder


@pytest.fixture
def counting(embeddings: Any) -> CountingEmbeddings:
    return CountingEmbeddings(embeddings)


@pytest.fixture
def services(make_settings: Callable[..., Any], counting: CountingEmbeddings) -> Services:
    return build_services(make_settings(), embeddings=counting)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """Six real text documents (the tutorial's .rst sources) and a Word file."""
    import docx

    folder = tutorial_folder(tmp_path / "notes")
    document = docx.Document()
    document.add_heading("Ferries", level=1)
    document.add_paragraph("The winter ferry timetable: boats leave the harbour at dawn.")
    document.save(str(folder / "ferries.docx"))
    return folder


def refuse_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """appetite.txt may not be read now; interpreter.txt grows while it is read. (Tests run as
    root here, which no file mode keeps out: the refusal is the operating system's error,
    raised where Hearth first touches the file.)"""
    real = files._unreadable

    def refusing(path: Path, limit: int) -> str | None:
        if path.name == "appetite.txt":
            raise PermissionError(13, "Permission denied", str(path))
        if path.name == "interpreter.txt":
            raise files.ChangedWhileRead("grew past 100 MiB while read")
        return real(path, limit)

    monkeypatch.setattr(files, "_unreadable", refusing)


KEPT = " (indexed before: kept as it was until it can be read)"
REASONS = {
    "appetite.txt": "could not be read: PermissionError: [Errno 13] Permission denied: "
                    "'{folder}/appetite.txt'" + KEPT,
    "interpreter.txt": "could not be read: ChangedWhileRead: grew past 100 MiB while read" + KEPT,
}


def _corrupt(folder: Path) -> None:
    (folder / "ferries.docx").write_bytes(b"PK\x03\x04 no longer a Word file")
    (folder / "whatnow.txt").unlink()


def test_a_file_unreadable_for_now_keeps_its_chunks_and_a_corrupt_or_gone_one_goes(
        services: Services, notes: Path, counting: CountingEmbeddings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = ingest_files(services, notes)
    assert (first.added, first.skipped) == (7, [])
    stored = {c["id"]: c["source"] for c in chunks(services, notes)}

    with monkeypatch.context() as patch:
        refuse_two(patch)
        _corrupt(notes)
        second = ingest_files(services, notes)

    assert (second.unchanged, second.kept, second.deleted, second.added) == (3, 2, 2, 0)
    reasons = {s.name: s.reason for s in second.skipped}
    assert reasons.pop("ferries.docx").startswith("corrupt Word file")
    assert reasons == {name: reason.format(folder=notes) for name, reason in REASONS.items()}
    assert "3 skipped (2 of them kept as indexed before)" in str(second)
    gone = {str(notes / "ferries.docx"), str(notes / "whatnow.txt")}
    assert {c["id"] for c in chunks(services, notes)} == {
        i for i, source in stored.items() if source not in gone}

    counting.texts = 0
    third = ingest_files(services, notes)  # readable again: found unchanged
    assert (third.unchanged, third.kept, third.deleted, counting.texts) == (5, 0, 0, 0)
    assert {c["id"] for c in chunks(services, notes)} == {
        i for i, source in stored.items() if source not in gone}


def test_an_api_job_keeps_them_too(services: Services, notes: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An API job reads in another process and hands over a spool: what was skipped for now
    still says so there."""
    ingest_files(services, notes)
    stored = {c["id"]: c["source"] for c in chunks(services, notes)}
    refuse_two(monkeypatch)
    _corrupt(notes)
    spool = tmp_path / "job.jsonl"
    read = _read(services.settings, "files", files_namespace(notes), {}, spool, Progress())
    summary = run(services, read.namespace, spooled(spool))
    assert (summary.unchanged, summary.kept, summary.deleted) == (3, 2, 2)
    gone = {str(notes / "ferries.docx"), str(notes / "whatnow.txt")}
    assert {c["id"] for c in chunks(services, notes)} == {
        i for i, source in stored.items() if source not in gone}


def test_a_run_stopped_part_way_leaves_nothing_that_no_record_names(
        services: Services, notes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed (or failing: a full disk) between a batch reaching the index and its
    records being written left chunks that no record named: the next run deleted only what
    the records named, so a document deleted meanwhile stayed in search for good, and
    `hearth sources remove` left them too."""
    from langchain_classic.indexes import SQLRecordManager

    from hearth.ingest.pipeline import IndexWriteError
    from hearth.ingest.sources import remove_source

    def full_disk(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(SQLRecordManager, "update", full_disk)
        with pytest.raises(IndexWriteError, match=r"^indexing failed \(OSError: .*"
                                                  r"No space left on device\); run the same"):
            ingest_files(services, notes, batch_size=8)
    stray = {c["source"] for c in chunks(services, notes)}
    assert stray, "the first batch reached the index"
    for name in {Path(s).name for s in stray}:
        (notes / name).unlink()  # deleted before the next run
    again = ingest_files(services, notes)
    assert {c["source"] for c in chunks(services, notes)}.isdisjoint(stray)
    assert again.chunks_deleted >= 1
    words = services.vectorstore.keyword_search("tutorial", 50)
    assert not {d.metadata["source"] for d, _, _ in words} & stray  # the keyword index too
    # Chunks no record names are removed with their source as well.
    services.vectorstore.writer("default").add_texts(
        ["An orphan chunk about ferries."], metadatas=[{"source": str(notes / "x.txt"),
                                                        "root": str(notes)}], ids=["orphan"])
    remove_source(services, str(notes))
    assert chunks(services, notes) == []


def test_a_folder_that_cannot_be_listed_now_keeps_what_was_indexed_from_it(
        services: Services, notes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder Hearth could not list (its permissions) was walked past in silence, and
    every document under it deleted as if gone. (Tests run as root, which no mode keeps out:
    the refusal is the operating system's error, raised where the walk lists the folder.)"""
    import os

    deep = notes / "deep" / "deeper"
    deep.mkdir(parents=True)
    (deep / "ferry.md").write_text("# Ferry\n\nThe Ellery ferry leaves at 7:40.\n")
    (notes / "deep" / "tides.md").write_text("# Tides\n\nHigh tide is at noon.\n")
    first = ingest_files(services, notes)
    stored = {c["id"] for c in chunks(services, notes)}
    real = os.scandir

    def refusing(path: Any = ".") -> Any:
        if Path(path) == notes / "deep":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "scandir", refusing)
        second = ingest_files(services, notes)
    assert (second.deleted, second.kept) == (0, 2)
    [notice] = second.skipped
    assert notice.name == "deep/" and notice.reason.startswith(
        "folder could not be listed: PermissionError: Permission denied (indexed before: kept")
    assert {c["id"] for c in chunks(services, notes)} == stored
    third = ingest_files(services, notes)
    assert (third.unchanged, third.deleted, third.skipped) == (first.added, 0, [])


def test_a_document_changed_after_a_failed_run_keeps_none_of_that_runs_chunks(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """v1 indexed; a run that failed between the index and its records left v2's chunks that
    no record named; the file changed to v3, and the next run deleted v1 through its record
    but kept v2 in search beside v3."""
    from langchain_classic.indexes import SQLRecordManager

    from hearth.ingest.pipeline import IndexWriteError

    folder = tmp_path / "notes"
    folder.mkdir()
    note = folder / "ferry.md"

    def write(version: str) -> None:
        note.write_text(f"# Ferry\n\nVersion {version}: the ferry leaves at {version}.\n")

    def full_disk(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    write("one")
    ingest_files(services, folder)
    write("two")
    with monkeypatch.context() as patch:
        patch.setattr(SQLRecordManager, "update", full_disk)
        with pytest.raises(IndexWriteError):
            ingest_files(services, folder)
    write("three")
    ingest_files(services, folder)
    texts = [c["text"] for c in chunks(services, folder)]
    assert len(texts) == 1 and "Version three" in texts[0], texts
    words = services.vectorstore.keyword_search("ferry version", 10)
    assert ["Version three" in d.page_content for d, _, _ in words] == [True]


def test_a_document_indexed_in_part_by_a_stopped_run_is_not_counted_unchanged(
        services: Services, notes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped part-way (killed, a full disk) left chunks in the index of which some or
    none were recorded: the next run counted their documents unchanged, from the chunks in
    the index, while it embedded them again ("22 unchanged documents, 0 unchanged chunks").
    A document is unchanged only when every chunk of it is indexed and recorded."""
    from langchain_classic.indexes import SQLRecordManager

    from hearth.ingest.pipeline import IndexWriteError

    real = SQLRecordManager.update
    calls = 0

    def full_disk_at_the_second_batch(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        real(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SQLRecordManager, "update", full_disk_at_the_second_batch)
        with pytest.raises(IndexWriteError):
            ingest_files(services, notes, batch_size=8)
    expected = expected_chunks(services, notes)
    total = Counter(source for source, _ in expected)
    records = record_manager(services.settings, str(notes))
    recorded = {source: len(records.list_keys(group_ids=[source])) for source in total}
    close_records(records)
    whole = sum(recorded[s] == total[s] for s in total)
    part = sum(0 < recorded[s] < total[s] for s in total)
    in_index = {c["source"] for c in chunks(services, notes)}
    assert whole and part and len(in_index) > whole + part, "the run stopped after two batches"

    again = ingest_files(services, notes)
    assert (again.added, again.updated, again.unchanged) == (len(total) - whole - part, part,
                                                             whole)
    assert again.chunks_unchanged == sum(recorded.values())
    assert again.chunks_added == again.chunks - again.chunks_unchanged
    stored = chunks(services, notes)
    assert {(c["source"], c["hash"]) for c in stored} == expected
    records = record_manager(services.settings, str(notes))
    assert sorted(records.list_keys()) == sorted(c["id"] for c in stored)
    close_records(records)

    # Stopped before any record was written: nothing of the folder counts as indexed.
    remove_source(services, str(notes))
    with monkeypatch.context() as patch:
        calls = 1
        patch.setattr(SQLRecordManager, "update", full_disk_at_the_second_batch)
        with pytest.raises(IndexWriteError):
            ingest_files(services, notes, batch_size=8)
    assert chunks(services, notes), "the first batch reached the index"
    last = ingest_files(services, notes)
    assert (last.added, last.unchanged, last.chunks_unchanged) == (len(total), 0, 0)
    assert last.chunks_added == last.chunks == len(expected)
