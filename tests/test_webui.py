"""The web chat page, driven in headless Chromium against a real `hearth serve` on 127.0.0.1.

Debian's chromium, driven by Python Playwright (`playwright install` is not needed: it would
download a browser). The server runs SmolLM2, which answers poorly but streams: these tests are
about the page, not the answers. A screenshot of a finished answer is saved in artifacts/.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.api import create_app
from hearth.config import Settings, load_settings
from hearth.conversations import Turn
from hearth.grounding import Verdict
from hearth.history import SQLiteHistory
from hearth.ingest.pipeline import ingest_files
from hearth.model import Source, unsupported_note, withheld_answer
from hearth.server import build_server
from hearth.services import Services, build_services
from hearth.web import jobs
from hearth.webui import STATIC, webui_blueprint
from tests.conftest import BIN, MODELS, REPO, SMOLLM, Server, free_port, http_ok, wait_until
from tests.fakes import FakeLLM

pytestmark = pytest.mark.real  # real servers, models or a browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "artifacts"
TIMEOUT_MS = 120_000  # an answer on two busy cores

GUIDE = """# Printing

## Installing the printer driver

To install the printer driver, run setup.exe from the driver folder and restart the computer.
The driver supports colour printing and duplex printing on every model of the Acme line.
"""
QUESTION = "How do I install the printer driver?"

# Records, on every change of the page, whether the working indicator is shown and how long the
# newest answer is: the test reads it to see the indicator first, then the answer growing.
WATCH = """
window.__watch = [];
new MutationObserver(() => {
  const answer = document.querySelector('#messages .turn:last-of-type .answer');
  if (!answer) return;
  const seen = {working: !!answer.querySelector('.working'),
                length: answer.querySelector('.text').textContent.length};
  const last = window.__watch[window.__watch.length - 1];
  if (!last || last.working !== seen.working || last.length !== seen.length) window.__watch.push(seen);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


class Hearth:
    def __init__(self, url: str, server: Server, data: Path) -> None:
        self.url, self.server, self.data = url, server, data

    def conversations(self, user: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/conversations", params={"user_id": user}, timeout=30)
        return response.json()["conversations"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hearth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hearth]:
    root = tmp_path_factory.mktemp("webui")
    (root / "guide").mkdir()
    (root / "guide" / "printing.md").write_text(GUIDE)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")},
           "HEARTH_DATA_DIR": str(root / "data"), "HEARTH_MODELS_DIR": str(MODELS),
           "HEARTH_DOCS_DIR": str(root / "guide"), "HEARTH_LLAMACPP_MODEL": SMOLLM,
           "HEARTH_PORT": str(port), "HEARTH_MAX_NEW_TOKENS": "160", "HEARTH_THREADS": "8",
           "HEARTH_MAX_QUESTION_CHARS": "500", "HEARTH_QUESTION_RATE_LIMIT": "3/minute",
           # The modules of this checkout, whatever the installed copy maps.
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    server = Server([str(BIN / "hearth"), "serve"], root / "log", env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), "hearth serve", timeout=240, proc=server.proc)
        yield Hearth(url, server, root / "data")
    finally:
        server.stop()
        print((root / "log").read_text()[-3000:])


REPLY = "To install the printer driver, run setup.exe from the driver folder."


class Quick:
    def __init__(self, url: str, services: Services, app: Any, server: Any) -> None:
        self.url, self.services, self.app, self.server = url, services, app, server

    def turns(self, user: str) -> list[dict[str, Any]]:
        """The turns of the user's newest conversation, as the API gives them."""
        [newest, *_] = httpx.get(f"{self.url}/api/conversations", params={"user_id": user},
                                 timeout=30).json()["conversations"]
        return httpx.get(f"{self.url}/api/conversations/{newest['id']}",  # type: ignore[no-any-return]
                         params={"user_id": user}, timeout=30).json()["turns"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, embeddings: Any) -> Iterator[Quick]:
    """Hearth's app on its own server (`hearth.server.build_server`, waitress) in a thread on
    127.0.0.1, for the tests of the page that need no real answer: the real index (Chroma in
    its data folder, the guide indexed in `default`, an empty public collection `team`), the
    real embedding model, stores and upload jobs, with the fake model of tests/fakes.py
    (FakeLLM: one scripted reply, streamed a character at a time) so that no test waits for
    SmolLM2. An upload request may carry 8 KiB of files at most."""
    root = tmp_path_factory.mktemp("webui-quick")
    (root / "guide").mkdir()
    (root / "guide" / "printing.md").write_text(GUIDE)
    settings = load_settings(_env_file=None, data_dir=root / "data", models_dir=MODELS,
                             max_new_tokens=64, host="127.0.0.1", port=free_port(),
                             upload_max_request_bytes=8192)
    services = build_services(settings, llm=FakeLLM(settings, [REPLY]), embeddings=embeddings)
    ingest_files(services, root / "guide")
    services.access.create("team", "The team's documents", public=True)
    app = create_app(settings, services)
    server = build_server(settings)
    server.app = app
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), "hearth's app")
        yield Quick(url, services, app, server)
    finally:
        server.task_dispatcher.shutdown()
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("the browser tests need Debian's chromium: apt-get install -y chromium")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def requests_made() -> list[Any]:
    return []


def open_page(browser: Any, hearth: Hearth | Quick, requests_made: list[Any],
              **context: Any) -> Any:
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(WATCH)
    page.on("request", lambda request: requests_made.append(request))
    page.goto(hearth.url)
    return page


def sign_in(page: Any, name: str, key: str = "") -> None:
    from playwright.sync_api import expect

    expect(page.locator("#settings")).to_be_visible()
    page.locator("#user-name").fill(name)
    if key:
        page.locator("#api-key").fill(key)
    page.locator("#user-name").press("Enter")
    expect(page.locator("#settings")).to_be_hidden()
    expect(page.locator("#who")).to_have_text(name)


def ask(page: Any, question: str) -> Any:
    """Type the question, send it with Enter, and return the locator of its answer."""
    box = page.locator("#question")
    box.click()
    box.fill(question)
    box.press("Enter")
    return page.locator("#messages .turn").last.locator(".answer")


def finished(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()


def test_ask_see_it_stream_with_sources_find_it_after_reload_and_delete_it(
        browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, hearth, requests_made, viewport={"width": 1200, "height": 800})
    sign_in(page, "Ann")
    expect(page.locator("#list-status")).to_have_text("No conversations yet.")

    answer = ask(page, QUESTION)
    expect(page.locator("#messages .turn").last.locator(".question")).to_have_text(QUESTION)
    expect(page.locator("#stop")).to_be_visible()  # it can be stopped while it streams
    sources = answer.locator(".sources li")
    expect(sources.first).to_be_visible()
    finished(page)

    watch = page.evaluate("window.__watch")
    assert watch[0] == {"working": True, "length": 0}, watch  # the indicator, before any token
    growing = [w["length"] for w in watch if not w["working"]]
    # The answer streamed in, in pieces; the indicator never came back once it had started.
    assert len(set(growing)) >= 3 and max(growing) > growing[0], watch
    assert not any(w["working"] and w["length"] for w in watch), watch
    text = answer.locator(".text").inner_text()
    assert text.strip()
    # How sure SmolLM2 was, as llama.cpp drew its tokens: under the answer, explained on hover.
    sure = re.compile(r"^Model's confidence (0\.\d\d|1\.00)$")
    expect(answer.locator(".confidence")).to_have_text(sure)
    confidence = answer.locator(".confidence").inner_text()
    assert "not the chance" in (answer.locator(".confidence").get_attribute("title") or "")

    # The source: the file's name; its passage on demand.
    expect(sources.first).to_contain_text("printing.md")
    snippet = sources.first.locator("blockquote")
    expect(snippet).to_be_hidden()
    sources.first.get_by_role("button", name="Show passage").click()
    expect(snippet).to_be_visible()
    expect(snippet).to_contain_text("setup.exe")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui-answer.png"))
    assert (ARTIFACTS / "webui-answer.png").stat().st_size > 10_000

    # The conversation list, newest first, with this conversation current.
    [stored] = hearth.conversations("Ann")
    item = page.locator("#conversations li")
    expect(item).to_have_count(1)
    expect(item.first).to_contain_text(QUESTION)
    expect(item.first).to_have_class(re.compile("current"))
    assert stored["title"] == QUESTION and stored["id"] in page.url

    # Reload: the name is remembered; the conversation is in the list and opens with its turn.
    page.reload()
    expect(page.locator("#who")).to_have_text("Ann")
    expect(page.locator("#settings")).to_be_hidden()
    page.get_by_role("button", name="+ New conversation").click()
    expect(page.locator("#messages .turn")).to_have_count(0)
    page.locator("#conversations li .open").first.click()
    expect(page.locator("#messages .turn")).to_have_count(1)
    expect(page.locator("#messages .question")).to_have_text(QUESTION)
    assert page.locator("#messages .answer .text").inner_text() == text
    expect(page.locator("#messages .answer .confidence")).to_have_text(confidence)  # stored
    expect(page.locator("#messages .sources li").first).to_contain_text("printing.md")

    # Delete it, confirming.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Delete conversation: {QUESTION}").click()
    expect(page.locator("#conversations li")).to_have_count(0)
    expect(page.locator("#messages .turn")).to_have_count(0)
    assert hearth.conversations("Ann") == []

    # Privacy: the page asked nothing of any other origin.
    assert requests_made and all(r.url.startswith(f"{hearth.url}/") for r in requests_made)


def test_keyboard_new_line_stop_and_an_api_key_sent_as_bearer(
        browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, hearth, requests_made)
    sign_in(page, "Bea", key="hk-test-key")
    box = page.locator("#question")
    box.click()
    box.type("First line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "First line\nsecond line"
    expect(page.locator("#messages .turn")).to_have_count(0)  # Shift+Enter did not send

    answer = ask(page, "Tell me everything about the printer driver, in detail.")
    expect(answer.locator(".text")).not_to_have_text("")  # the first tokens are in
    box.press("Escape")  # stops the answer, from the keyboard
    expect(answer.locator(".note")).to_contain_text("Stopped")
    finished(page)
    page.wait_for_timeout(2000)
    assert hearth.conversations("Bea") == []  # a stopped answer is not remembered

    asked = [r for r in requests_made if "/api/" in r.url]
    assert asked and all(r.headers.get("authorization") == "Bearer hk-test-key" for r in asked)


def test_errors_are_shown_and_erasing_history_asks_first(
        browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, hearth, requests_made)
    sign_in(page, "Cy")
    too_long = "Why? " * 150  # 750 characters; this server allows 500
    answer = ask(page, too_long)
    alert = answer.get_by_role("alert")
    expect(alert).to_contain_text("Your question is too long")
    expect(alert).to_contain_text("the limit is 500")
    assert page.locator("#question").input_value() == too_long.strip()  # ready to shorten

    answer = ask(page, QUESTION)
    expect(answer.locator(".sources li").first).to_be_visible()
    finished(page)
    expect(page.locator("#conversations li")).to_have_count(1)

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Erase all my history").click()
    expect(page.locator("#conversations li")).to_have_count(1)
    assert len(hearth.conversations("Cy")) == 1

    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Erase all my history").click()
    expect(page.locator("#list-status")).to_have_text("Erased 1 conversation.")
    expect(page.locator("#conversations li")).to_have_count(0)
    assert "cannot be undone" in messages[0]
    assert hearth.conversations("Cy") == []


def test_readable_on_a_phone_sized_screen(
        browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    from playwright.sync_api import expect

    httpx.post(f"{hearth.url}/api/question", timeout=180, json={
        "question": QUESTION, "user_id": "Dee"}).raise_for_status()
    page = open_page(browser, hearth, requests_made, viewport={"width": 390, "height": 844},
                     is_mobile=True, has_touch=True, device_scale_factor=2)
    sign_in(page, "Dee")
    expect(page.locator("#sidebar")).to_be_hidden()  # the list slides in on demand
    page.get_by_role("button", name="Conversations").click()
    expect(page.locator("#sidebar")).to_be_visible()
    page.locator("#conversations li .open").first.click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#messages .question")).to_have_text(QUESTION)
    expect(page.locator("#messages .sources li").first).to_be_visible()
    expect(page.locator("#question")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider
    for selector in ("#messages .answer", "#composer", "#send"):
        box = page.locator(selector).first.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui-phone.png"))


def test_upload_choose_collections_ask_and_export(
        browser: Any, hearth: Hearth, requests_made: list[Any], tmp_path: Path) -> None:
    """My documents: uploaded with a progress bar, indexed, asked about alone (the collections
    chosen are sent and remembered), removed; the conversation exported in both formats. At a
    phone's width the sidebar that holds them fits."""
    from playwright.sync_api import expect

    note = tmp_path / "kayak.md"
    note.write_text("# The kayak\n\nThe kayak is stored in the boathouse; the paddle hangs "
                    "on the hook marked K7.\n")
    bad = tmp_path / "setup.pdf"
    bad.write_bytes(b"MZ" + b"\0" * 64)
    page = open_page(browser, hearth, requests_made, viewport={"width": 390, "height": 844},
                     is_mobile=True, has_touch=True)
    sign_in(page, "Eve")
    page.get_by_role("button", name="Conversations").click()
    page.locator("#upload-files").set_input_files([str(note), str(bad)])
    expect(page.locator("#upload-status")).to_contain_text("setup.pdf: not a PDF")
    expect(page.locator("#upload-status")).to_have_text(
        "Your documents are ready to ask about.", timeout=TIMEOUT_MS)
    expect(page.locator("#documents li")).to_have_count(1)
    expect(page.locator("#documents li .state")).to_have_text("ready")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # Ask only in my documents: the request names that collection, and the source says so.
    labels = page.locator("#collections label")
    expect(labels).to_have_text(["default", "My documents"])
    page.locator("#collections input[value=default]").uncheck()
    page.get_by_role("button", name="Close").click()  # the list covers the header on a phone
    answer = ask(page, "Where does the kayak paddle hang?")
    finished(page)
    expect(answer.locator(".sources li").first).to_contain_text("kayak")
    sent = [r.post_data_json for r in requests_made
            if r.url.endswith("/api/question") and r.method == "POST"]
    mine = [c["name"] for c in httpx.get(f"{hearth.url}/api/collections",
                                         params={"user_id": "Eve"}).json()["collections"]
            if c["mine"]]
    assert sent[-1]["collections"] == mine, sent[-1]
    # Marked wrong, with a comment: kept with the turn.
    page.once("dialog", lambda dialog: dialog.accept("the hook is K7, it said K1"))
    answer.get_by_role("button", name="👎 Wrong").click()
    expect(answer.locator(".thanks")).to_contain_text("Marked wrong")
    conversation = httpx.get(f"{hearth.url}/api/conversations",
                             params={"user_id": "Eve"}).json()["conversations"][0]["id"]
    turn = httpx.get(f"{hearth.url}/api/conversations/{conversation}",
                     params={"user_id": "Eve"}).json()["turns"][0]
    assert turn["feedback"]["rating"] == "wrong"
    assert turn["feedback"]["comment"] == "the hook is K7, it said K1"
    # Reopened, the conversation reads what it read.
    page.reload()
    page.get_by_role("button", name="Conversations").click()
    expect(page.locator("#collections input[value=default]")).not_to_be_checked()
    # Export, Markdown and JSON, sources included.
    page.get_by_role("button", name="Close").click()
    with page.expect_download() as markdown:
        page.get_by_role("button", name="Export Markdown").click()
    text = Path(markdown.value.path()).read_text()
    assert text.startswith("# Where does the kayak paddle hang?") and "kayak.md" in text
    # With what backs the answer (or, withheld, what the documents say closest to the
    # question) and how sure the model was.
    assert re.search(r"^(Evidence|Closest to the question):\n\n- “.*kayak.*” \[1\]$", text,
                     re.M | re.I), text
    assert re.search(r"^Model's confidence( in its draft)?: (0\.\d\d|1\.00)$", text, re.M), text
    with page.expect_download() as exported:
        page.get_by_role("button", name="Export JSON").click()
    assert '"turns"' in Path(exported.value.path()).read_text()
    # Removed: gone from the list.
    page.get_by_role("button", name="Conversations").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Remove document: kayak.md").click()
    expect(page.locator("#documents li")).to_have_count(0)


def test_a_withheld_answer_says_why_with_the_closest_evidence_and_the_draft_folded(
        browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    """The turn is written to the server's own history store, as the chain stores a withheld
    answer: SmolLM2 invents, but not on cue."""
    from playwright.sync_api import expect

    passage = GUIDE.split("\n\n", 2)[2].strip()
    sentence = passage.split(". ")[0] + "."
    turn = Turn(
        question="How many pages a minute does the driver print?",
        answer=withheld_answer(Verdict(False, ["42"], 1, 0.6)),
        sources=[Source("printing.md", None, None, "Installing the printer driver", passage,
                        "c1", 0.61).to_dict()],
        evidence=[{"source": 0, "text": sentence, "start": 0, "end": len(sentence),
                   "score": 3.0}],
        grounded=False, unsupported=["42"], draft="The driver prints **42 pages** a minute.",
        confidence=0.4512)
    SQLiteHistory(hearth.data / "history.sqlite3").add_turn("withheld-1", "Hal", turn)

    page = open_page(browser, hearth, requests_made)
    sign_in(page, "Hal")
    page.locator("#conversations li .open").first.click()
    answer = page.locator("#messages .answer").last
    expect(answer.locator(".text")).to_contain_text("Your documents do not seem to answer this")
    expect(answer).to_have_class(re.compile("refused"))
    evidence = answer.get_by_role("region", name="Closest to your question")
    expect(evidence).to_contain_text("run setup.exe from the driver folder")
    draft = answer.locator("details.draft")
    expect(draft.locator("summary")).to_contain_text("unverified")
    expect(draft.locator(".draft-text")).to_be_hidden()  # folded until asked for
    draft.locator("summary").click()
    expect(draft.locator(".draft-text strong")).to_have_text("42 pages")
    expect(answer.locator(".confidence")).to_have_text("Model's confidence in its draft 0.45")


def test_rate_limited_is_said_so(browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, hearth, requests_made)
    sign_in(page, "Fay")
    too_long = "Why? " * 150  # answered at once (413), but counted: this server allows 3 a minute
    for _ in range(3):
        expect(ask(page, too_long).get_by_role("alert")).to_contain_text("too long")
        page.locator("#question").fill("")
    alert = ask(page, QUESTION).get_by_role("alert")
    expect(alert).to_contain_text("Too many requests for now. Try again in")
    assert page.locator("#question").input_value() == QUESTION  # kept, to send again later


def test_each_question_reads_the_collections_ticked_and_none_ticked_sends_nothing(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """Every question names the collections ticked, every one included: ticking one again in
    an open conversation reads it again (a follow-up that names none reads what its
    conversation read before). With none ticked nothing is sent, and the page says why. The
    fake model answers (see `quick`)."""
    from playwright.sync_api import expect

    page = open_page(browser, quick, requests_made)
    sign_in(page, "Ivy")
    expect(page.locator("#collections label")).to_have_text(["default", "team"])
    default = page.locator("#collections input[value=default]")
    team = page.locator("#collections input[value=team]")

    def sent() -> list[Any]:
        return [r.post_data_json.get("collections", "none sent") for r in requests_made
                if r.url.endswith("/api/question") and r.method == "POST"]

    team.uncheck()
    ask(page, QUESTION)
    finished(page)
    team.check()  # every box ticked again, in the same conversation
    ask(page, "And where is the driver folder?")
    finished(page)
    assert sent() == [["default"], ["default", "team"]]
    assert [t["collections"] for t in quick.turns("Ivy")] == [["default"], ["default", "team"]]

    # None ticked: Send is disabled and says why; Enter in the box sends nothing either.
    page.get_by_role("button", name="+ New conversation").click()
    expect(team).to_be_checked()  # a new conversation reads every one
    team.uncheck()
    default.uncheck()
    send, why = page.locator("#send"), page.locator("#choose-error")
    expect(send).to_be_disabled()
    expect(why).to_have_text("Choose at least one collection under “Ask in” to send a question.")
    box = page.locator("#question")
    box.fill("Anything?")
    box.press("Enter")
    page.wait_for_timeout(500)
    expect(page.locator("#messages .turn")).to_have_count(0)
    assert box.input_value() == "Anything?" and len(sent()) == 2
    default.check()
    expect(send).to_be_enabled()
    expect(why).to_be_hidden()
    box.press("Enter")
    finished(page)
    assert sent()[-1] == ["default"]


def test_focus_follows_send_and_stop_and_the_skip_link_keeps_the_conversation(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """From the keyboard: the button pressed is hidden, so its focus goes on, Send to Stop and
    Stop to the question box; "Skip to the question" focuses the box and leaves the address,
    which names the conversation, as it is. Export shows only with a conversation on screen,
    and the current one is aria-current="true". The fake model answers (see `quick`), slowed
    down the first time so that there is time to stop it."""
    from playwright.sync_api import expect

    page = open_page(browser, quick, requests_made, viewport={"width": 1200, "height": 800})
    sign_in(page, "Jay")
    expect(page.locator("#export")).to_be_hidden()  # no conversation yet
    box, send, stop = page.locator("#question"), page.locator("#send"), page.locator("#stop")
    quick.services.llm.chat_model.sleep = 0.1  # type: ignore[attr-defined]
    try:
        box.fill(QUESTION)
        box.press("Tab")
        expect(send).to_be_focused()
        page.keyboard.press("Enter")
        expect(stop).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#messages .answer .note")).to_contain_text("Stopped")
        expect(box).to_be_focused()
    finally:
        quick.services.llm.chat_model.sleep = None  # type: ignore[attr-defined]

    ask(page, QUESTION)
    finished(page)
    expect(page.locator("#export")).to_be_visible()
    expect(page.locator("#conversations li.current .open")).to_have_attribute("aria-current", "true")
    address = page.url
    assert "#c=" in address
    page.locator("#open-settings").focus()
    page.locator("a.skip").focus()
    page.keyboard.press("Enter")
    expect(box).to_be_focused()
    assert page.url == address
    page.reload()
    expect(page.locator("#messages .turn")).to_have_count(1)  # still the conversation


def test_evidence_marks_in_a_passage_with_emoji_cancel_marks_nothing_and_names_are_checked(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """The server's evidence offsets count characters, as Python does; an emoji is two UTF-16
    units in JavaScript, yet the marks fall on the sentences. The turn is written to the
    server's history store as the chain stores one (no model needed). Cancel on "What was
    wrong?" marks nothing. The name dialog refuses what the API refuses (and dots only)."""
    from playwright.sync_api import expect

    passage = ("😀😀😀😀 Intro 🎉. Visitors use the guest Wi-Fi network called AcmeGuest. "
               "Its password is marigold-42.")
    sentences = ["Visitors use the guest Wi-Fi network called AcmeGuest.",
                 "Its password is marigold-42."]
    evidence = [{"source": 0, "text": s, "start": passage.index(s),
                 "end": passage.index(s) + len(s), "score": 3.0} for s in sentences]
    quick.services.history.add_turn("emoji-1", "Kim", Turn(
        question="What is the guest Wi-Fi password?", answer="It is marigold-42.",
        sources=[Source("wifi.md", "Guest Wi-Fi", None, None, passage, "c1", 0.7).to_dict()],
        evidence=evidence))

    page = open_page(browser, quick, requests_made)
    expect(page.locator("#settings")).to_be_visible()
    name, error = page.locator("#user-name"), page.locator("#settings-error")
    for refused, says in ((" .. ", "only dots"), ("a/b", "“/”"), ("a\tb", "control characters")):
        name.fill(refused)
        name.press("Enter")
        expect(error).to_contain_text(says)
        expect(page.locator("#settings")).to_be_visible()
    sign_in(page, "Kim")

    page.locator("#conversations li .open").first.click()
    answer = page.locator("#messages .answer").last
    answer.get_by_role("button", name="Show passage").click()
    expect(answer.locator(".sources mark")).to_have_text(sentences)

    page.once("dialog", lambda dialog: dialog.dismiss())
    answer.get_by_role("button", name="👎 Wrong").click()
    page.wait_for_timeout(500)
    expect(answer.get_by_role("button", name="👎 Wrong")).to_have_attribute("aria-pressed", "false")
    expect(answer.locator(".thanks")).to_have_text("")
    assert not [r for r in requests_made if r.url.endswith("/feedback")]
    assert quick.turns("Kim")[0]["feedback"] is None


def test_on_a_phone_the_name_signed_in_is_not_cut(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """On a 360-pixel-wide phone the header keeps the name under "You:" whole (the title gives
    way first); a name longer than the button may be is cut with an ellipsis, as it was."""
    page = open_page(browser, quick, requests_made, viewport={"width": 360, "height": 740},
                     is_mobile=True, has_touch=True)
    sign_in(page, "Alexandra")
    button = page.locator("#open-settings")
    assert button.evaluate("e => e.scrollWidth <= e.clientWidth"), button.evaluate(
        "e => [e.scrollWidth, e.clientWidth]")  # "You: Alexandra", not "You: Al…"
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = button.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 360, box


def test_on_a_phone_the_keyboard_goes_into_the_list_and_back_out(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """On a narrow screen (a phone, or a page zoomed in), "Conversations" opened from the
    keyboard puts the focus on the list's first button; Escape or Close hides the list and
    gives the focus back to "Conversations", not to the page's start."""
    from playwright.sync_api import expect

    page = open_page(browser, quick, requests_made, viewport={"width": 390, "height": 844})
    sign_in(page, "Oli")
    toggle = page.get_by_role("button", name="Conversations")
    for close in ("Escape", "Close"):
        toggle.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#sidebar")).to_be_visible()
        expect(page.locator("#new-conversation")).to_be_focused()
        if close == "Close":
            page.locator("#close-list").focus()
        page.keyboard.press(close if close == "Escape" else "Enter")
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(toggle).to_be_focused()
        expect(toggle).to_have_attribute("aria-expanded", "false")


def test_a_flagged_answer_says_what_no_source_says_once(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """With HEARTH_UNSUPPORTED_ANSWERS=flag an answer the grounding check does not pass is
    given with Hearth's note at its end, naming what no source says: the page marks that note
    and adds no second one. The turn is written to the server's history store as the chain
    stores a flagged answer (no model needed)."""
    from playwright.sync_api import expect

    passage = GUIDE.split("\n\n", 2)[2].strip()
    verdict = Verdict(False, ["42"], 0, 0.6)
    note = unsupported_note(verdict).strip()
    quick.services.history.add_turn("flagged-1", "Nia", Turn(
        question="How many pages a minute does the driver print?",
        answer="The driver prints 42 pages a minute." + unsupported_note(verdict),
        sources=[Source("printing.md", None, None, "Installing the printer driver", passage,
                        "c1", 0.61).to_dict()],
        grounded=False, unsupported=["42"]))

    page = open_page(browser, quick, requests_made)
    sign_in(page, "Nia")
    page.locator("#conversations li .open").first.click()
    answer = page.locator("#messages .answer").last
    expect(answer.locator(".text p").last).to_have_text(note)
    assert answer.inner_text().count("Not found in your documents") == 1, answer.inner_text()
    marked = answer.locator(".text p").last.evaluate("e => getComputedStyle(e).borderLeftStyle")
    assert marked == "solid"  # the note stands out from the answer
    assert answer.locator(".text p").first.evaluate(
        "e => getComputedStyle(e).borderLeftStyle") == "none"


def test_a_stream_cut_by_a_shutdown_says_so_not_http_200(
        browser: Any, quick: Quick, requests_made: list[Any]) -> None:
    """A stream that has begun answered 200: the error event that ends it (here the server's
    shutdown, past its grace period) is said in words, with no status. The fake model answers
    (see `quick`), slowed down so that the shutdown comes mid-answer."""
    from playwright.sync_api import expect

    page = open_page(browser, quick, requests_made)
    sign_in(page, "Max")
    quick.services.llm.chat_model.sleep = 0.1  # type: ignore[attr-defined]
    try:
        answer = ask(page, QUESTION)
        expect(answer.locator(".text")).not_to_have_text("")  # the stream has begun
        quick.server.stopping.set()  # as SIGTERM does once the grace period is over
        alert = answer.get_by_role("alert")
        expect(alert).to_have_text("Hearth is shutting down (or restarting): this answer was not "
                                   "finished or saved. Send your question again in a moment.")
    finally:
        quick.server.stopping.clear()
        quick.services.llm.chat_model.sleep = None  # type: ignore[attr-defined]
    finished(page)
    assert page.locator("#question").input_value() == QUESTION  # ready to send again


def contrast(foreground: str, background: str) -> float:
    """WCAG's contrast ratio of two CSS colours written rgb(r, g, b)."""
    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", colour)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_my_documents_follow_indexing_after_a_reload_and_too_large_uploads_say_so(
        browser: Any, quick: Quick, requests_made: list[Any], tmp_path: Path) -> None:
    """A document still indexing when the page loads is followed until it is ready: here the
    one ingestion worker is kept busy (as by another user's job) while the page reloads. An
    upload over the server's limit (8 KiB a request here) is said to be one, in the dark theme
    in a colour that reads on its background. The real index and embedding model index the
    upload (see `quick`); nothing asks the model."""
    from playwright.sync_api import expect

    note = tmp_path / "kayak.md"
    note.write_text("# The kayak\n\nThe paddle hangs on the hook marked K7.\n")
    page = open_page(browser, quick, requests_made, color_scheme="dark")
    sign_in(page, "Lou")
    with quick.app.app_context():
        runner = jobs()
    busy = threading.Event()
    runner._pool.submit(busy.wait, 60)  # the one ingestion worker, taken
    state = page.locator("#documents li .state")
    try:
        page.locator("#upload-files").set_input_files(str(note))
        expect(state).to_have_text("indexing…")
        page.reload()
        expect(state).to_have_text("indexing…")
    finally:
        busy.set()
    expect(state).to_have_text("ready", timeout=15_000)  # without the user doing anything

    def listed() -> int:
        return sum(r.method == "GET" and "/api/collections/mine/documents" in r.url
                   for r in requests_made)

    seen = listed()
    page.wait_for_timeout(2500)
    assert listed() == seen  # none indexing: the page stopped asking

    big = tmp_path / "big.txt"
    big.write_text("hello world\n" * 12_500)  # 150 kB
    page.locator("#upload-files").set_input_files(str(big))
    status = page.locator("#upload-status")
    expect(status).to_have_text(
        "These files are too large to upload at once: send fewer or smaller files.")
    expect(status).to_have_class(re.compile("error"))
    background = page.evaluate("getComputedStyle(document.querySelector('#sidebar')).backgroundColor")
    assert background == "rgb(28, 25, 23)"  # the dark theme
    colour = status.evaluate("e => getComputedStyle(e).color")
    assert contrast(colour, background) >= 4.5, colour


def test_a_backend_that_is_down_is_said_so(
        browser: Any, hearth: Hearth, requests_made: list[Any]) -> None:
    """Last in this module: it stops the server."""
    from playwright.sync_api import expect

    page = open_page(browser, hearth, requests_made)
    sign_in(page, "Eve")
    hearth.server.stop()
    answer = ask(page, QUESTION)
    expect(answer.get_by_role("alert")).to_contain_text("Hearth is not reachable")
    expect(answer.locator(".working")).to_have_count(0)
    finished(page)
    page.get_by_role("button", name="+ New conversation").click()
    page.locator("#open-settings").click()
    page.locator("#user-name").press("Enter")  # reloads the list: that fails visibly too
    expect(page.locator("#list-status")).to_contain_text("Hearth is not reachable")


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_the_page_needs_no_build_and_nothing_from_elsewhere(make_settings: Any) -> None:
    settings: Settings = make_settings()
    app = create_app(settings, build_services(settings))  # nothing is built to serve the page
    if "webui" not in app.blueprints:  # until api.create_app registers it
        app.register_blueprint(webui_blueprint)
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "http" not in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"
    links = Links()
    links.feed(page.get_data(as_text=True))
    assert links.urls
    for url in links.urls:
        if url.startswith("#"):
            continue
        assert url.startswith("/ui/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["Content-Security-Policy"] == policy
    for path in STATIC.iterdir():
        text = path.read_text()
        if path.suffix == ".svg":
            text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "://" not in text and "@import" not in text and "url(" not in text, path.name
    # Plain files, served as they are: nothing to build.
    assert {p.suffix for p in STATIC.iterdir()} == {".html", ".css", ".js", ".svg"}
