"""Collections: whose documents a question may read, enforced inside retrieval.

Real parts throughout: the embedding model, Chroma on disk, the SQLite stores, SmolLM2 answering
through the Flask app. SmolLM2's answers are poor, which does not matter here: what a user may
not read is a random code that no model writes unless a passage holding it was in its prompt,
so finding it nowhere in a response (answer, sources, snippets, evidence) shows that no passage
of the private collection reached the prompt or the reply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.api import create_app
from hearth.cli import main
from hearth.ingest.pipeline import ingest_files
from hearth.ingest.sources import list_sources
from hearth.services import Services

SECRET = "quokka-7731"
PRIVATE = {"vault.md": f"# The family vault\n\nThe family vault code is {SECRET}. It opens the "
                       "safe in the cellar, behind the wine rack.\n"}
PUBLIC = {"garden.md": "# The garden\n\nThe garden shed key hangs on the hook by the back door. "
                       "Water the tomatoes every evening in July.\n"}
QUESTION = "What is the family vault code that opens the safe?"


def folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def family(make_services: Any, tmp_path: Path) -> Any:
    """Keys on; a public collection (default) and Ann's private one, read by Ann only."""
    services: Services = make_services(auth=True, question_rate_limit="1000/minute")
    services.access.create("ann-notes", "Ann's notes", readers=["ann"])
    ingest_files(services, folder(tmp_path / "public", PUBLIC))
    ingest_files(services, folder(tmp_path / "private", PRIVATE), collection="ann-notes")
    keys = {name: services.keys.create(name, admin=(name == "root"))[0]
            for name in ("ann", "bob", "root")}
    return create_app(services.settings, services).test_client(), keys, services


def ask(client: Any, token: str, user: str, **fields: Any) -> Any:
    return client.post("/api/question", headers=bearer(token),
                       json={"question": QUESTION, "user_id": user, **fields})


def test_a_private_collection_is_read_by_its_reader(family: Any) -> None:
    client, keys, _ = family
    reply = ask(client, keys["ann"], "ann")
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["sources"][0]["collection"] == "ann-notes", body["sources"]
    assert SECRET in body["sources"][0]["snippet"]
    # Named, it is the only one read.
    only = ask(client, keys["ann"], "ann", collections=["ann-notes"]).get_json()
    assert {s["collection"] for s in only["sources"]} == {"ann-notes"}
    shelves = client.get("/api/collections", headers=bearer(keys["ann"])).get_json()
    assert [c["name"] for c in shelves["collections"]] == ["ann-notes", "default"]


def test_nobody_else_reads_a_word_of_it(family: Any) -> None:
    client, keys, _ = family
    as_bob = bearer(keys["bob"])
    # Asked plainly, through JSON and the stream: everything Bob may read, nothing of Ann's.
    plain = ask(client, keys["bob"], "bob")
    assert plain.status_code == 200 and SECRET not in plain.get_data(as_text=True)
    assert {s["collection"] for s in plain.get_json()["sources"]} <= {"default"}
    streamed = client.post("/api/question", headers={**as_bob, "Accept": "text/event-stream"},
                           json={"question": QUESTION, "user_id": "bob"})
    assert streamed.status_code == 200 and SECRET not in streamed.get_data(as_text=True)
    # Named: refused before anything is read, and a name that exists reads like one that does
    # not, so the refusal does not tell Bob that Ann's collection exists.
    for name in ("ann-notes", "no-such-shelf"):
        for headers in (as_bob, {**as_bob, "Accept": "text/event-stream"}):
            refused = client.post("/api/question", headers=headers, json={
                "question": QUESTION, "user_id": "bob", "collections": [name]})
            assert refused.status_code == 403, refused.get_data(as_text=True)
            error = refused.get_json()["error"]
            assert error["code"] == "collection_forbidden"
            assert error["message"] == f"no collection {name!r} that you may read"
    # A follow-up in Bob's own conversation that names Ann's collection.
    cid = plain.get_json()["conversation_id"]
    follow = ask(client, keys["bob"], "bob", conversation_id=cid, collections=["ann-notes"])
    assert follow.status_code == 403
    # The collection list, the OpenAI-compatible face and its model list.
    listed = client.get("/api/collections", headers=as_bob).get_json()
    assert [c["name"] for c in listed["collections"]] == ["default"]
    models = client.get("/v1/models", headers=as_bob).get_json()
    assert [m["id"] for m in models["data"]] == ["hearth", "hearth/default"]
    for model, status in (("hearth", 200), ("gpt-4o", 200), ("hearth/ann-notes", 403)):
        for stream in (False, True):
            out = client.post("/v1/chat/completions", headers=as_bob, json={
                "model": model, "stream": stream,
                "messages": [{"role": "user", "content": QUESTION}]})
            assert out.status_code == status, (model, stream)
            assert SECRET not in out.get_data(as_text=True), (model, stream)
    forbidden = client.post("/v1/chat/completions", headers=as_bob, json={
        "model": "hearth/ann-notes", "messages": [{"role": "user", "content": QUESTION}]})
    assert forbidden.get_json()["error"]["type"] == "permission_error"
    # Ann sees her collection as a model to pick; an administrator sees every collection.
    ann_models = client.get("/v1/models", headers=bearer(keys["ann"])).get_json()
    assert "hearth/ann-notes" in [m["id"] for m in ann_models["data"]]
    root = client.get("/api/collections", headers=bearer(keys["root"])).get_json()
    assert [(c["name"], c["readers"]) for c in root["collections"]] == [
        ("ann-notes", ["ann"]), ("default", [])]


def test_a_revoked_grant_reads_nothing_from_the_next_question(family: Any) -> None:
    client, keys, services = family
    services.access.grant("ann-notes", ["bob"])
    first = ask(client, keys["bob"], "bob").get_json()
    assert any(s["collection"] == "ann-notes" for s in first["sources"])
    services.access.revoke("ann-notes", ["bob"])
    # The conversation read ann-notes so far; its follow-up no longer may.
    follow = ask(client, keys["bob"], "bob", conversation_id=first["conversation_id"])
    assert follow.status_code == 200 and SECRET not in follow.get_data(as_text=True)
    named = ask(client, keys["bob"], "bob", collections=["ann-notes"])
    assert named.status_code == 403


def test_a_question_over_one_collection_finds_its_best_chunks(make_services: Any,
                                                              tmp_path: Path) -> None:
    """Restricted inside the query: the top k of the collection asked, even when another
    collection holds k closer chunks (a filter after a global top-k would return none)."""
    services: Services = make_services()
    services.access.create("plants", public=True)
    close = {f"vault-{n}.md": f"The family vault code of safe {n} is written on card {n}."
             for n in range(6)}
    ingest_files(services, folder(tmp_path / "close", close))
    ingest_files(services, folder(tmp_path / "far", PUBLIC), collection="plants")
    everywhere = services.assistant.retrieve(QUESTION, k=4, collections=["default", "plants"])
    assert {s.collection for s in everywhere} == {"default"}
    within = services.assistant.retrieve(QUESTION, k=4, collections=["plants"])
    assert [Path(s.source).name for s in within] == ["garden.md"]
    assert within[0].collection == "plants"
    assert services.assistant.retrieve(QUESTION, k=4, collections=[]) == []


def test_with_keys_off_the_user_id_is_the_label_that_decides(make_services: Any,
                                                             tmp_path: Path) -> None:
    services: Services = make_services()
    services.access.create("ann-notes", readers=["ann"])
    ingest_files(services, folder(tmp_path / "private", PRIVATE), collection="ann-notes")
    client = create_app(services.settings, services).test_client()
    bob = client.post("/api/question", json={"question": QUESTION, "user_id": "bob"})
    assert bob.status_code == 200 and SECRET not in bob.get_data(as_text=True)
    ann = client.post("/api/question", json={"question": QUESTION, "user_id": "ann"})
    assert SECRET in json.dumps(ann.get_json()["sources"])
    # An OpenAI client that names no user reads the public collections only.
    anonymous = client.post("/v1/chat/completions", json={
        "model": "hearth", "messages": [{"role": "user", "content": QUESTION}]})
    assert anonymous.status_code == 200 and SECRET not in anonymous.get_data(as_text=True)


def test_bad_collection_names_are_clear_errors(family: Any) -> None:
    client, keys, services = family
    for bad in (["../x"], ["A"], [""], ["x" * 65], "default", [], ["ok"] * 65):
        response = ask(client, keys["root"], "root", collections=bad)
        assert response.status_code == 400, bad
        error = response.get_json()["error"]
        assert error["code"] == "invalid_field" and "collections" in error["message"], bad
    from hearth.access import CollectionExists, InvalidCollection
    with pytest.raises(InvalidCollection):
        services.access.create("Bad Name")
    with pytest.raises(CollectionExists):
        services.access.create("ann-notes")


def test_the_collections_commands(make_settings: Any, embeddings: Any, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    monkeypatch.setenv("HEARTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr("hearth.embeddings.build_embeddings", lambda _settings: embeddings)
    runner = CliRunner()

    def hearth(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    assert "Created team (private)" in hearth("collections", "create", "team",
                                              "--description", "the team's handbook")
    private = folder(tmp_path / "private", PRIVATE)
    assert "1 added" in hearth("ingest", "files", str(private), "--collection", "team")
    assert "team" in hearth("sources", "list", "--collection", "team")
    assert "read by: administrators only" in hearth("collections", "show", "team")
    assert "ann, bob" in hearth("collections", "grant", "team", "ann", "bob")
    assert "read by: bob" in hearth("collections", "revoke", "team", "ann")
    assert "now public" in hearth("collections", "publish", "team")
    listed = json.loads(hearth("collections", "list", "--json"))
    assert [(c["name"], c["public"], c["sources"]) for c in listed] == [
        ("default", True, 0), ("team", True, 1)]
    failed = runner.invoke(main, ["ingest", "files", str(private), "--collection", "nope"])
    assert failed.exit_code == 1 and "no collection 'nope'" in failed.output
    assert "Traceback" not in failed.output
    assert "Deleted team" in hearth("collections", "delete", "team", "--yes")
    assert list_sources(settings) == []
    refused = runner.invoke(main, ["collections", "delete", "default", "--yes"])
    assert refused.exit_code == 1 and "default collection stays" in refused.output


def test_the_source_commands_name_a_collection_that_does_not_exist(tmp_path: Path) -> None:
    """`hearth sources list --collection nosuch` said "Nothing ingested yet" and exited 0, as if
    the collection existed and were empty; `sources remove` said there was no such source."""
    runner = CliRunner()
    env = {"HEARTH_DATA_DIR": str(tmp_path / "data")}
    for args in (["sources", "list", "--collection", "nosuch"],
                 ["sources", "list", "--collection", "nosuch", "--json"],
                 ["sources", "remove", "notes", "--collection", "nosuch", "--yes"]):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert result.output == ("Error: no collection 'nosuch' (`hearth collections list` "
                                 "shows them)\n"), args
    existing = runner.invoke(main, ["sources", "list", "--collection", "default"], env=env)
    assert existing.exit_code == 0 and "Nothing ingested yet" in existing.output


def test_an_openai_follow_up_reads_every_collection_the_key_may_read(family: Any) -> None:
    """An OpenAI client resends the chat: its earlier turns say nothing of collections, so the
    follow-up reads what the key may read, not only the default collection."""
    client, keys, _ = family
    reply = client.post("/v1/chat/completions", headers=bearer(keys["ann"]), json={
        "model": "hearth", "messages": [
            {"role": "user", "content": "Where is the garden shed key?"},
            {"role": "assistant", "content": "On the hook by the back door."},
            {"role": "user", "content": QUESTION}]})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert "ann-notes" in {s["collection"] for s in reply.get_json()["sources"]}


@pytest.mark.parametrize("backend", ["sqlite", "mongodb"])
def test_readers_are_user_ids_and_each_change_touches_only_itself(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A reader is a user id as every route reads it: " ann" was stored with its space (so ann
    read nothing), "bob/x" could never be erased, and a revoke did not strip what the grant
    had. And each change of readers or publicity writes that alone: a grant no longer writes
    back a whole collection read before, undoing a revoke or "private" made meanwhile."""
    from hearth.access import Access, InvalidCollection, MongoCollections, SQLiteCollections

    if backend == "mongodb":
        uri = request.getfixturevalue("mongo_server")
        first = Access(MongoCollections(uri, f"readers{tmp_path.name[-8:]}", 5.0))
        second = Access(MongoCollections(uri, f"readers{tmp_path.name[-8:]}", 5.0))
    else:
        first = Access(SQLiteCollections(tmp_path / "collections.sqlite3"))
        second = Access(SQLiteCollections(tmp_path / "collections.sqlite3"))
    team = first.create("team", readers=[" ann", "carl ", "ann"], public=True)
    assert team.readers == ("ann", "carl")
    assert first.grant("team", [" dan "]).readers == ("ann", "carl", "dan")
    for bad in (["bob/x"], ["   "], ["e\x01ve"], ["x" * 129]):
        with pytest.raises(InvalidCollection, match="is not a user id"):
            first.grant("team", bad)
        with pytest.raises(InvalidCollection):
            first.create("other", readers=bad)
    assert first.revoke("team", [" carl "]).readers == ("ann", "dan")
    # Two workers, each with its own view: the private and the revoke of one, the grant of the
    # other, all hold.
    stale = second.get("team")
    second.set_public("team", False)
    second.revoke("team", ["ann"])
    first.grant("team", ["erin"])
    assert stale.public and "ann" in stale.readers
    now = first.get("team")
    assert (now.public, now.readers) == (False, ("dan", "erin"))
    assert not now.readable_by(None) and not now.readable_by("ann")


def test_mine_names_each_users_own_collection_and_no_other(make_services: Any,
                                                           tmp_path: Path) -> None:
    """`hearth collections create mine` made a collection that the API could never reach
    (`mine` is each user's own there), and a question naming it read the operator's."""
    from hearth.access import InvalidCollection

    services = make_services(data_dir=tmp_path / "data")
    with pytest.raises(InvalidCollection, match="'mine' names each user's own collection"):
        services.access.create("mine")
    result = CliRunner().invoke(main, ["collections", "create", "mine"],
                                env={"HEARTH_DATA_DIR": str(services.settings.data_dir)})
    assert result.exit_code != 0 and "names each user's own collection" in result.output


def test_the_guide_is_indexed_only_when_no_collection_holds_anything(make_services: Any,
                                                                     tmp_path: Path) -> None:
    """`hearth serve` counted the default collection only: with every document in other
    collections, it indexed its user guide into the public one at every start."""
    from hearth.cli import index_docs_if_empty

    services = make_services(data_dir=tmp_path / "data")
    services.access.create("family", readers=["ann"])
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Insurance\n\nThe car insurance is due in March.\n")
    ingest_files(services, notes, collection="family")
    index_docs_if_empty(services)
    assert services.vectorstore.count() == 0  # the default collection: no guide
    assert [s.collection for s in list_sources(services.settings)] == ["family"]
