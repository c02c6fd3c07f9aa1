"""Keyword and fused retrieval (retrieval.py, keywords.py) on real pages of the Python docs.

Real parts: the embedding model, Chroma on disk, the SQLite keyword index, pages of the
python3.11-doc package, ingested by the real pipeline. The fast tests at the end check the
query's terms and the settings alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

from hearth.config import ConfigError, RetrievalMode, Settings
from hearth.ingest.pipeline import ingest_files
from hearth.ingest.sources import remove_collection, remove_source
from hearth.keywords import IDENTIFIER_WEIGHT, KeywordIndex, fts_query, keywords_path, query_terms
from hearth.model import Assistant
from hearth.retrieval import SUPPORT_MARGIN, Fusion, Hit, Mode, introduces, leading, supported
from hearth.services import Services, build_services

LIBRARY = Path("/usr/share/doc/python3.11/html/library")
PAGES = ["grp.html", "pwd.html", "spwd.html", "imghdr.html", "tty.html"]

pytestmark = pytest.mark.skipif(not LIBRARY.is_dir(),
                                reason="needs Debian's python3.11-doc (the pages tested on)")


def pages(folder: Path, names: list[str] = PAGES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(LIBRARY / name, folder / name)
    return folder


@pytest.fixture
def services(make_settings: Any, embeddings: Any) -> Services:
    return build_services(make_settings(), embeddings=embeddings)


def chroma_ids(services: Services, collection: str) -> set[str]:
    return set(services.vectorstore.writer(collection)._collection.get(include=[])["ids"])


def assert_in_step(services: Services, collection: str = "default") -> None:
    assert services.vectorstore.keywords.ids(collection) == chroma_ids(services, collection)


def top(assistant: Assistant, question: str, mode: Mode, k: int = 4,
        collections: tuple[str, ...] = ("default",)) -> list[Any]:
    return assistant.retrieve(question, k=k, collections=collections, fusion=Fusion(mode))


@pytest.mark.parametrize(("question", "needle", "page"), [
    ("what does gr_gid hold", "gr_gid", "grp.html"),  # an identifier
    ("what does imghdr return for 'rast'", "'rast'", "imghdr.html"),  # a value in a table
])
def test_words_find_the_passage_that_meaning_misses(services: Services, tmp_path: Path,
                                                    question: str, needle: str,
                                                    page: str) -> None:
    ingest_files(services, pages(tmp_path / "docs"))
    assistant = Assistant(Any, services.vectorstore, services.settings)  # type: ignore[arg-type]
    dense = top(assistant, question, Mode.dense)
    # The premise: the embeddings put another chunk of the right page first.
    assert Path(dense[0].source).name == page and needle not in dense[0].snippet
    for mode in (Mode.keyword, Mode.hybrid):
        found = top(assistant, question, mode)
        assert needle in found[0].snippet, (mode, found[0].snippet)
        # The fused passage keeps its cosine similarity: the relevance gate reads the same.
        assert 0.2 < found[0].score < 1.0


def test_keyword_search_reads_only_the_collections_in_its_query(services: Services,
                                                               tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "public", ["grp.html"]))
    services.access.create("ann-notes", "Ann's notes", readers=["ann"])
    private = tmp_path / "private"
    private.mkdir()
    (private / "vault.md").write_text(
        "# Vault\n\nThe vault's gr_gid is quokka-7731; gr_gid gr_gid gr_gid, the group id of "
        "the vault, opens the safe.\n")
    ingest_files(services, private, collection="ann-notes")
    store = services.vectorstore
    both = store.keyword_search("gr_gid quokka-7731", 1, ["default", "ann-notes"])
    assert both[0][0].metadata["collection"] == "ann-notes"
    # The best match overall is Ann's: a filter after the top 1 would leave nothing. The query
    # itself reads the public collection only, and finds its best chunk.
    public = store.keyword_search("gr_gid quokka-7731", 1, ["default"])
    assert len(public) == 1 and "gr_gid" in public[0][0].page_content
    assert public[0][0].metadata["collection"] == "default"
    assistant = Assistant(Any, store, services.settings)  # type: ignore[arg-type]
    for mode in Mode:
        hits = top(assistant, "what is the vault's gr_gid quokka-7731", mode, k=10)
        assert hits and all(h.collection == "default" for h in hits), mode
        assert not any("quokka" in h.snippet for h in hits)
    assert store.keyword_search("quokka-7731", 5, []) == []


def test_reingesting_and_removing_keep_the_keyword_index_in_step(services: Services,
                                                                tmp_path: Path) -> None:
    docs = pages(tmp_path / "docs", ["grp.html", "tty.html"])
    (docs / "notes.md").write_text("# Notes\n\nThe spare key is under the flowerpot "
                                   "numbered 4417.\n")
    ingest_files(services, docs)
    store = services.vectorstore
    assert_in_step(services)
    assert store.keyword_search("flowerpot 4417", 3, ["default"])
    # A changed document: its new chunks replace the old ones, none left behind or doubled.
    (docs / "notes.md").write_text("# Notes\n\nThe spare key is under the doormat numbered "
                                   "9021.\n")
    summary = ingest_files(services, docs)
    assert summary.updated == 1
    assert_in_step(services)
    assert not store.keyword_search("flowerpot 4417", 3, ["default"])
    assert len(store.keyword_search("doormat 9021", 10, ["default"])) == 1
    # A document gone from the folder, then the whole source.
    (docs / "tty.html").unlink()
    ingest_files(services, docs)
    assert_in_step(services)
    assert not store.keyword_search("TCSAFLUSH", 3, ["default"])
    remove_source(services, str(docs))
    assert store.keywords.count("default") == 0 and not chroma_ids(services, "default")
    # A deletion by id (what removing an upload does) and a whole collection.
    services.access.create("notes", "notes")
    ingest_files(services, docs, collection="notes")
    assert_in_step(services, "notes")
    some = sorted(chroma_ids(services, "notes"))[:2]
    store.writer("notes").delete(ids=some)
    assert_in_step(services, "notes")
    remove_collection(services, "notes")
    assert store.keywords.count("notes") == 0


def test_an_index_from_before_the_keyword_index_is_copied_in_once(
        make_settings: Any, embeddings: Any, tmp_path: Path) -> None:
    settings = make_settings()
    first = build_services(settings, embeddings=embeddings)
    ingest_files(first, pages(tmp_path / "docs", ["grp.html", "pwd.html"]))
    chunks = chroma_ids(first, "default")
    first.vectorstore.keywords.close()
    for path in settings.data_dir.glob("keywords.sqlite3*"):
        path.unlink()  # as an index built by a Hearth without one
    later = build_services(settings, embeddings=embeddings)
    store = later.vectorstore
    assert not store.keywords.is_whole("default")
    hits = store.keyword_search("gr_gid", 2, ["default"])
    assert "gr_gid" in hits[0][0].page_content
    assert store.keywords.ids("default") == chunks and store.keywords.is_whole("default")


def test_dense_retrieval_keeps_no_keyword_index_until_hybrid_asks_for_one(
        make_settings: Any, embeddings: Any, tmp_path: Path) -> None:
    """HEARTH_RETRIEVAL=dense is what deploy/kubernetes sets so that a shared NFS volume, where
    SQLite's locks do not hold, carries no keyword index; every ingest wrote one anyway."""
    settings = make_settings(retrieval="dense")
    dense = build_services(settings, embeddings=embeddings)
    docs = pages(tmp_path / "docs", ["grp.html", "pwd.html"])
    ingest_files(dense, docs)
    assert not list(settings.data_dir.glob("keywords.sqlite3*"))
    assert dense.vectorstore.search("What does gr_gid hold?", 1)  # dense search as ever
    # Switched to hybrid, the keyword index is made and filled from the vector store.
    hybrid = build_services(make_settings(retrieval="hybrid"), embeddings=embeddings)
    hits = hybrid.vectorstore.keyword_search("gr_gid", 2, ["default"])
    assert "gr_gid" in hits[0][0].page_content
    hybrid.vectorstore.keywords.close()
    # Back to dense, an index that exists loses the words of what is removed.
    dense = build_services(settings, embeddings=embeddings)
    remove_source(dense, str(docs))
    assert KeywordIndex(keywords_path(settings)).count("default") == 0


def test_neighbours_widen_a_passage_within_its_page(services: Services, tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs", ["grp.html"]))
    assistant = Assistant(Any, services.vectorstore, services.settings)  # type: ignore[arg-type]
    hit = top(assistant, "what does gr_gid hold", Mode.keyword, k=1)[0]
    assert hit.position == 1
    wider = assistant.widened(hit, 1)
    rows = services.vectorstore.keywords.neighbours("default", hit.source, 0, 1, 1, 1)
    assert [n for n, _ in rows] == [0, 1, 2]
    own_text = hit.snippet.partition("\n")[2]  # past the heading line
    assert own_text in wider.snippet and len(wider.snippet) > len(hit.snippet)
    # Each neighbour's text is there once, without its heading line again.
    assert wider.snippet.count("grp — The group database — Python") == 1
    assert "This module provides access to the Unix group database" in wider.snippet
    assert assistant.widened(hit, 0) is hit


def continuing(services: Services, tokens: int = 100) -> Settings:
    """The settings with the continuation on (off by default)."""
    return services.settings.model_copy(update={"context_continuation_tokens": tokens})


def test_a_passage_that_introduces_a_table_goes_on_into_it(services: Services,
                                                          tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs", ["grp.html"]))
    assistant = Assistant(Any, services.vectorstore, continuing(services))  # type: ignore[arg-type]
    question = "What does Python's grp module give access to?"
    hits = assistant.retrieve(question, k=4, fusion=Fusion(Mode.dense))
    intro = next(h for h in hits if h.position == 0)
    # The premise: the page's first chunk ends by introducing the group entry's fields, and
    # the table of them is the next chunk.
    assert intro.snippet.rstrip().endswith("(Attribute field below, see <grp.h>):")
    assert "gr_gid" not in intro.snippet
    table = next(h for h in hits if "gr_gid" in h.snippet)
    assert table.position == 1

    def count(text: str) -> int:  # about four characters a token
        return len(text) // 4

    others = [h for h in hits if h is not table]  # the table itself not among the passages
    continued = assistant.continued(others, 10**6, count)
    longer = continued[others.index(intro)]
    assert longer.snippet.startswith(intro.snippet)
    added = longer.snippet[len(intro.snippet):]
    assert "gr_gid" in added and "gr_name" in added
    # Neither the table's heading line nor the text the chunks share is repeated.
    assert longer.snippet.count("grp — The group database — Python") == 1
    assert 0 < count(added) <= assistant.settings.context_continuation_tokens
    # A passage that ends on its own is left as it is; so is every passage without room.
    for before, after in zip(others, continued, strict=True):
        if not introduces(before.snippet):
            assert after is before
    assert assistant.continued(others, 0, count) == others
    # Nor is a passage whose next chunk is one of the passages: the table is not read twice.
    assert assistant.continued([intro, table], 10**6, count) == [intro, table]


def test_a_passage_that_points_to_the_table_after_it_goes_on_into_it(services: Services,
                                                                    tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs", ["xml.html"]))
    assistant = Assistant(Any, services.vectorstore, continuing(services))  # type: ignore[arg-type]
    hits = assistant.retrieve("Are Python's XML modules safe against malicious data?", k=4,
                              fusion=Fusion(Mode.dense))
    # The premise: the passage says a table follows, a sentence before its end, and ends
    # on its own; the table is the next chunk.
    intro = next(h for h in hits if "The following table gives an overview" in h.snippet)
    assert not introduces(intro.snippet) and "billion laughs" not in intro.snippet
    longer = assistant.continued([intro], 10**6, lambda text: len(text) // 4)[0]
    assert longer.snippet.startswith(intro.snippet)
    assert "billion laughs | Vulnerable" in longer.snippet[len(intro.snippet):]


def test_each_passage_is_a_different_page_with_its_chunks_joined(services: Services,
                                                                  tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs"))
    assistant = Assistant(Any, services.vectorstore, services.settings)  # type: ignore[arg-type]
    question = "what fields does a group database entry have"
    chunks = assistant.retrieve(question, k=4, fusion=Fusion(Mode.dense))
    found = assistant.retrieve(question, k=4, fusion=Fusion(Mode.dense, by_page=True))
    # The premise: chunk by chunk, one page takes several of the four places.
    chunk_pages = [Path(c.source).name for c in chunks]
    assert len(set(chunk_pages)) < 4
    # One passage a page: four different pages, the best chunk's page first, with its score.
    assert len({Path(f.source).name for f in found}) == 4
    assert (found[0].source, found[0].chunk_id, found[0].score) == \
        (chunks[0].source, chunks[0].chunk_id, chunks[0].score)
    # Each page's chunks among the first four are in its passage, and nothing of another page.
    for f in found:
        own = [c for c in chunks if c.source == f.source]
        for c in own:
            assert c.snippet.partition("\n")[2][:200] in f.snippet, (c.snippet[:80], f.snippet)
        if len(own) > 1:
            assert f.position is None  # joined: not widened with neighbours again
            assert assistant.widened(f, 1) is f
    # The pages the chunks reached come first, in their order.
    assert [Path(f.source).name for f in found][:len(set(chunk_pages))] == \
        list(dict.fromkeys(chunk_pages))


def test_a_page_with_near_chunks_rises_within_the_passages(services: Services,
                                                           tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs", [*PAGES, "getpass.html", "termios.html"]))
    assistant = Assistant(Any, services.vectorstore, services.settings)  # type: ignore[arg-type]
    question = "how do I get the password entry for a user name"
    plain = assistant.retrieve(question, k=20, fusion=Fusion(Mode.dense))
    found = assistant.retrieve(question, k=20, fusion=Fusion(Mode.dense, page_support=0.02))
    # The premise: getpass's one chunk is nearest, pwd's several come next.
    assert [Path(p.source).name for p in plain[:4]] == ["getpass.html", *["pwd.html"] * 3]
    # pwd (whose getpwnam answers it) first; the same four passages with the same scores, the
    # rest as they ranked.
    assert Path(found[0].source).name == "pwd.html"
    assert {(f.chunk_id, f.score) for f in found[:4]} == {(p.chunk_id, p.score) for p in plain[:4]}
    assert found[4:] == plain[4:]
    # Ordered by similarity + 0.02 × the other chunks of their page among the 20 within
    # SUPPORT_MARGIN of the best one.
    floor = plain[0].score - SUPPORT_MARGIN
    near = [p.source for p in plain if p.score >= floor]

    def boosted(s: Any) -> float:
        return s.score + 0.02 * (near.count(s.source) - (s.score >= floor))

    assert [boosted(f) for f in found[:4]] == sorted((boosted(f) for f in found[:4]),
                                                     reverse=True)
    # Only the passages the model reads are reordered (Fusion.passages).
    assert assistant.retrieve(question, k=1, fusion=Fusion(Mode.dense, page_support=0.02)
                              )[0].source == plain[0].source


# -- fast: no real part --------------------------------------------------------------------


def hit(source: str, score: float, page: int | None = None) -> Hit:
    return (Document(page_content=source, metadata={"source": source, "page": page}), score,
            f"{source}-{score}")


def test_page_support_counts_only_chunks_near_the_best() -> None:
    # One close chunk of a PDF page against a long page's middling chunks.
    hits = [hit("R-data.pdf", 0.70, 24), hit("sqlite3.html", 0.66), hit("sqlite3.html", 0.62),
            *(hit("sqlite3.html", 0.55 - n / 100) for n in range(6))]
    assert [h[1] for h in supported(hits, 4, 0.02)] == [0.70, 0.66, 0.62, 0.55]
    # Each sqlite3 chunk within 0.1 of the best counts the other one near: +0.05 lifts 0.66.
    assert [h[1] for h in supported(hits, 4, 0.05)] == [0.66, 0.70, 0.62, 0.55]
    # Another PDF page of the same file is another page.
    pdf = [hit("R-exts.pdf", 0.70, 1), hit("R-exts.pdf", 0.69, 2), hit("x.html", 0.695),
           hit("x.html", 0.66)]
    assert [h[1] for h in supported(pdf, 4, 0.05)] == [0.695, 0.66, 0.70, 0.69]
    assert supported([], 4, 0.05) == []


def test_what_a_passage_ends_by_introducing() -> None:
    heading = "Glossary — Python 3.11.2 documentation\n"
    leads_on = ["The special characters used in shell-style wildcards are:",
                "The numeric values of logging levels are given in the following table.",
                "The options are documented below.",
                "It is easy to add a prefix to empty lines as follows."]
    for line in leads_on:
        assert introduces(heading + line), line
    # A term or a heading alone in the last paragraph: its definition is in the next chunk.
    assert introduces(heading + "It typically employs hasattr() tests or EAFP programming.\n\nEAFP")
    assert introduces(heading + "See the module.\n\nNote")
    ended = ["It typically employs hasattr() tests or EAFP programming.",
             "The following table lists them; each is an int.",  # leads on mid-sentence only
             "Level | Numeric value\nDEBUG | 10",  # a table's last row
             "Use it so.\n\n>>> a * 5",  # a console line
             "EAFP"]  # the heading line and one line: nothing before the term
    for text in ended:
        assert not introduces(heading + text), text
    assert not introduces("")
    # What is taken of the next chunk: whole paragraphs, else whole lines, within the budget.
    text = "First paragraph.\n\nSecond one, longer.\n\nThird."
    assert leading(text, 40, len) == "First paragraph.\n\nSecond one, longer."
    assert leading("line one\nline two\nline three", 20, len) == "line one\nline two"
    assert leading("a very long single line", 5, len) == ""


def test_identifiers_and_numbers_weigh_more_in_the_query() -> None:
    terms = dict(query_terms("How do I call os.chdir with --user and R_registerRoutines "
                             "for 999999999 days?"))
    assert terms["os chdir"] == IDENTIFIER_WEIGHT and terms["chdir"] == 1
    assert terms["r_registerroutines"] == IDENTIFIER_WEIGHT
    assert terms["999999999"] == IDENTIFIER_WEIGHT and terms["user"] == IDENTIFIER_WEIGHT
    assert terms["days"] == 1 and "how" not in terms and "do" not in terms
    assert fts_query([("os chdir", 2), ('say "hi"', 1)]) == \
        '"os chdir" OR "os chdir" OR "say ""hi"""'
    assert query_terms("what is it?") == []


def test_a_question_without_words_to_match_finds_nothing(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "keywords.sqlite3")
    index.add("default", ["a"], ["the spare key is under the mat"], [{"source": "x"}])
    assert index.search("is it the?", 4, ["default"]) == []
    assert [h.chunk_id for h in index.search("spare keys", 4, ["default"])] == ["a"]
    assert index.search('"; DROP TABLE chunks; --', 4, ["default"]) == []
    assert index.count("default") == 1


def test_the_retrieval_settings(make_settings: Any) -> None:
    assert make_settings().retrieval is RetrievalMode.hybrid  # measured on the whole set
    assert make_settings().passages_by_page is False
    assert make_settings().page_support == 0
    assert make_settings(page_support=0.02).page_support == 0.02
    with pytest.raises(ConfigError, match="HEARTH_PAGE_SUPPORT"):
        make_settings(page_support=-1)
    assert make_settings(retrieval="dense").retrieval is RetrievalMode.dense
    for measured_worse in ("keyword", "rrf", "bm42"):
        with pytest.raises(ConfigError, match="HEARTH_RETRIEVAL"):
            make_settings(retrieval=measured_worse)
    with pytest.raises(ConfigError, match="HEARTH_CONTEXT_NEIGHBOURS"):
        make_settings(context_neighbours=9)
    assert make_settings().context_continuation_tokens == 0  # measured: docs/evaluation.md
    with pytest.raises(ConfigError, match="HEARTH_CONTEXT_CONTINUATION_TOKENS"):
        make_settings(context_continuation_tokens=-1)


def test_the_prompt_takes_neighbours_within_their_token_budget(make_services: Any,
                                                                tmp_path: Path) -> None:
    docs = pages(tmp_path / "docs", ["grp.html"])
    for budget, widened in ((0, False), (30, False), (600, True)):
        services = make_services(context_neighbours=1, context_neighbour_tokens=budget)
        ingest_files(services, docs)
        assistant = services.assistant
        hits = assistant.retrieve("what does gr_gid hold", k=1)
        _, used = assistant.build_prompt("what does gr_gid hold", hits, [])
        assert (len(used[0].snippet) > len(hits[0].snippet)) is widened, budget
        if widened:
            added = (services.llm.count_tokens(used[0].snippet)
                     - services.llm.count_tokens(hits[0].snippet))
            assert 0 < added <= budget


def test_the_prompt_goes_on_into_what_a_passage_introduces(make_services: Any,
                                                          tmp_path: Path) -> None:
    docs = pages(tmp_path / "docs", ["grp.html"])
    question = "What does Python's grp module give access to?"
    for settings, continued in (({}, False),  # the default
                                ({"context_continuation_tokens": 100}, True),
                                ({"context_neighbours": 1}, True)):  # the neighbours have it
        services = make_services(**settings)
        ingest_files(services, docs)
        intro = [h for h in services.assistant.retrieve(question, k=4) if h.position == 0]
        _, used = services.assistant.build_prompt(question, intro, [])
        assert ("gr_gid" in used[0].snippet) is continued, settings
        if "context_continuation_tokens" in settings:
            added = (services.llm.count_tokens(used[0].snippet)
                     - services.llm.count_tokens(intro[0].snippet))
            assert 0 < added <= services.settings.context_continuation_tokens


def test_passages_stay_as_they_are_where_the_keyword_index_cannot_be_read(
        make_settings: Any, embeddings: Any, tmp_path: Path) -> None:
    settings = make_settings(retrieval="dense")
    ingest_files(build_services(settings, embeddings=embeddings), pages(tmp_path / "docs", ["grp.html"]))
    for suffix in ("", "-wal", "-shm"):  # the keyword index damaged while Hearth was down
        path = settings.data_dir / f"keywords.sqlite3{suffix}"
        if path.exists():
            path.write_bytes(b"not a database" * 100)
    services = build_services(settings, embeddings=embeddings)
    question = "What does Python's grp module give access to?"
    hits = services.assistant.retrieve(question, k=4)  # dense: Chroma alone
    assert any(h.snippet.rstrip().endswith(":") for h in hits)  # one to continue
    assistant = Assistant(Any, services.vectorstore, continuing(services))  # type: ignore[arg-type]
    assert assistant.continued(hits, 10**6, lambda text: len(text) // 4) == hits


def test_a_keyword_entry_the_vector_store_lost_is_never_shown(services: Services,
                                                              tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs", ["grp.html", "pwd.html"]))
    store = services.vectorstore
    table = next(h for h in store.keyword_search("gr_gid", 5, ["default"])
                 if "gr_gid" in h[0].page_content)
    # Deleted from Chroma behind the writer's back (by hand, or a Chroma restored from a
    # backup): the keyword index still holds it.
    store.writer("default")._collection.delete(ids=[table[2]])
    assert table[2] in store.keywords.ids("default")
    assistant = Assistant(Any, store, services.settings)  # type: ignore[arg-type]
    for mode in Mode:
        hits = top(assistant, "what does gr_gid hold in the group database", mode, k=10)
        assert hits and table[2] not in {h.chunk_id for h in hits}, mode


def test_a_drafted_answer_ranks_the_passages_and_the_question_scores_them(
        services: Services, tmp_path: Path) -> None:
    ingest_files(services, pages(tmp_path / "docs"))
    store = services.vectorstore
    assistant = Assistant(Any, store, services.settings)  # type: ignore[arg-type]
    question = "Where is the encrypted password of a user kept?"
    dense = top(assistant, question, Mode.dense)
    # The premise: by meaning alone, the four passages are all of the password database's
    # page, none of the shadow password database's that holds it.
    assert {Path(h.source).name for h in dense} == {"pwd.html"}
    # Written here in place of the model's draft (HEARTH_QUERY_EXPANSION), in the words a
    # manual would use: the next test has the model write one.
    draft = ("spwd.getspnam(name) returns the shadow password database entry; sp_pwdp is the "
             "encrypted password.")
    expanded = assistant.retrieve(question, k=4, fusion=Fusion(Mode.dense), expansion=draft)
    assert any(Path(h.source).name == "spwd.html" and "sp_pwdp" in h.snippet for h in expanded)
    for mode in (Mode.dense, Mode.hybrid):
        found = assistant.retrieve(question, k=4, fusion=Fusion(mode), expansion=draft)
        # Scored by the question alone: the relevance gate reads what it read without a draft.
        own = store.similarities(store.embeddings.embed_query(question),
                                 [(h.collection, h.chunk_id) for h in found])
        assert [h.score for h in found] == pytest.approx([own[h.chunk_id] for h in found],
                                                       abs=1e-4)  # shown to 4 places
    # A draft that is a passage word for word ranks it first for any question, but cannot lift
    # a question about something else over the gate.
    unrelated = assistant.retrieve("how long should sourdough bread rise before baking", k=1,
                                   fusion=Fusion(Mode.dense), expansion=dense[0].snippet)
    assert unrelated[0].chunk_id == dense[0].chunk_id
    assert unrelated[0].score < services.settings.min_relevance


def test_the_model_drafts_what_to_search_with_after_taking_its_place(
        make_services: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = make_services(query_expansion=True)
    ingest_files(services, pages(tmp_path / "docs", ["grp.html"]))
    assistant = services.assistant
    order: list[str] = []
    stream = assistant.llm.stream

    def recorded(*args: Any, **kwargs: Any) -> Any:
        order.append("model")
        return stream(*args, **kwargs)

    monkeypatch.setattr(assistant.llm, "stream", recorded)  # the model is the session's
    answer = assistant.answer("Which field of a group entry holds its numeric id?",
                              hold=lambda: order.append("hold"))
    # The gate is taken (once: taking it again is a no-op) before the model's first use: the
    # draft, then the answer.
    assert order[0] == "hold" and order.count("model") >= 2
    assert answer.expansion and answer.expansion not in answer.answer
    assert answer.timings["expand_s"] > 0
    assert len(answer.expansion.split()) <= 90  # the draft's budget: 60 words, 96 tokens
    assert answer.sources and Path(answer.sources[0].source).name == "grp.html"
