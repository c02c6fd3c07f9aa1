"""Focused context (focus.py, ``HEARTH_CONTEXT_FOCUS``): the passages narrowed to their
sentences nearest the question.

Real parts: the embedding model (MiniLM), and for the chain Chroma on disk, the ingest
pipeline and the packaged SmolLM2 (its token counts and prompt), over Hearth's own user guide.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hearth.config import ConfigError
from hearth.focus import GAP, Scored, focused, narrowed, units
from hearth.grounding import check
from hearth.ingest.pipeline import ingest_files
from hearth.model import format_context

DOCS = Path(__file__).resolve().parent.parent / "docs"

TIMEDELTA = """datetime — Basic date and time types › timedelta Objects
A timedelta object represents a duration, the difference between two dates or times.
class datetime.timedelta(days=0, seconds=0, microseconds=0, milliseconds=0, minutes=0)
All arguments are optional and default to 0. Arguments may be integers or floats.
Only days, seconds and microseconds are stored internally. Arguments are converted to those units:
A millisecond is converted to 1000 microseconds.
A minute is converted to 60 seconds.
An hour is converted to 3600 seconds.
Note that normalization of negative values may be surprising at first.
Instance attributes (read-only): days, between -999999999 and 999999999 inclusive.
Supported operations: t1 = t2 + t3, the sum of t2 and t3."""

SLEEP = """time — Time access and conversions › Functions
time.sleep(secs)
Suspend execution of the calling thread for the given number of seconds. The argument may be
a floating point number to indicate a more precise sleep time.
time.monotonic()
Return the value (in fractional seconds) of a monotonic clock, i.e. a clock that cannot go
backwards."""

QUESTION = "How many days at most can a duration between two dates hold in Python?"


def test_units_are_lines_and_sentences() -> None:
    text = "First line. Second sentence, version 3.11.2 kept whole.\n\n  code(x)\n"
    assert [text[a:b] for a, b in units(text)] == [
        "First line.", "Second sentence, version 3.11.2 kept whole.", "code(x)"]


def test_a_wrapped_sentence_and_a_code_block_are_one_unit_each() -> None:
    text = ("To see the answer word by word as it is written, add `stream` to the body (or send\n"
            "the header). Use curl:\n```sh\ncurl -N http://127.0.0.1:8000/\n  -d '{}'\n```\n"
            "Short line\nnext line.")
    assert [text[a:b] for a, b in units(text)] == [
        "To see the answer word by word as it is written, add `stream` to the body (or send\n"
        "the header).", "Use curl:", "```sh\ncurl -N http://127.0.0.1:8000/\n  -d '{}'\n```",
        "Short line", "next line."]


def test_the_whole_passages_at_share_one(embeddings: Any) -> None:
    assert focused(QUESTION, [TIMEDELTA, SLEEP], embeddings, 1.0) == [TIMEDELTA, SLEEP]


@pytest.mark.parametrize("share", [0.5, 0.7])
def test_the_sentences_nearest_the_question_are_kept(embeddings: Any, share: float) -> None:
    kept = focused(QUESTION, [TIMEDELTA, SLEEP], embeddings, share)
    whole = len(TIMEDELTA) + len(SLEEP)
    assert len("".join(kept)) < whole
    # The answer's sentence stays, the unrelated passage shrinks to its heading and best line.
    assert "between -999999999 and 999999999 inclusive" in kept[0]
    assert kept[1].startswith("time — Time access and conversions › Functions")
    assert len(kept[1]) < len(SLEEP)
    for passage, text in zip([TIMEDELTA, SLEEP], kept, strict=True):
        assert text.startswith(passage.splitlines()[0])  # each keeps its heading
        pieces = [p.strip(" …") for p in text.split(GAP)]
        places = [passage.index(p) for p in pieces if p]
        assert places == sorted(places)  # in the passage's order, each piece its own text
        assert text == passage or "…" in text  # what was left out is marked


def test_a_sentence_that_introduces_brings_what_follows() -> None:
    """The selection alone, with scores given (no model): the best sentence ends with ":"."""
    passage = "Title › Section\nThe units:\nA minute is 60 seconds.\nAn hour is 3600 seconds."
    spans = units(passage)
    found = Scored([spans], [(0, n) for n in range(len(spans))],
                   own := np.array([0.0, 0.9, 0.1, 0.2]), own, own)
    kept = narrowed([passage], found, own, 0.1)[0]
    assert kept == "Title › Section\nThe units:\nA minute is 60 seconds. …"


def test_the_chain_reads_the_focused_passages_and_shows_them_whole(
        make_services: Any, tmp_path: Path) -> None:
    question = "How do I get the answer streamed word by word?"
    services = make_services(context_focus=0.5)
    folder = tmp_path / "guide"
    folder.mkdir()
    shutil.copy(DOCS / "asking-questions.md", folder)
    ingest_files(services, folder)
    assistant = services.assistant
    hits = assistant.retrieve(question)
    messages, used = assistant.build_prompt(question, hits, [])
    whole = format_context(hits)
    context = str(messages[-2].content)
    assert '"stream": true' in context
    assert len(context) < len(whole) * 0.75
    assert [u.snippet for u in used] == [h.snippet for h in hits]  # what the user is shown
    # A passage the focus keeps whole (a short section, every sentence of it kept) has no
    # focused text of its own; the others read shorter than they are shown.
    focused = [u for u in used if u.context]
    assert len(focused) >= len(used) - 1
    assert all(len(u.context or "") < len(u.snippet) for u in focused)
    assert all("context" not in u.to_dict() for u in used)
    # The check compares the answer with what the model read: a name only in the part left
    # out is not in its passages.
    read = [format_context([u]) for u in used]
    left_out = next(name for name in re.findall(r"`([A-Za-z_][\w/-]+)`", whole)
                    if not any(name in r for r in read))
    assert not check(f"Send `{left_out}` with `\"stream\": true`.", read).grounded
    assert check('Add `"stream": true` to the body.', read).grounded
    # Focus off: the passages whole.
    plain = make_services(context_focus=1.0).assistant
    messages, used = plain.build_prompt(question, hits, [])
    assert str(messages[-2].content).endswith(whole)
    assert all(not u.context for u in used)


def test_the_focus_setting(make_settings: Any) -> None:
    assert make_settings().context_focus == 1.0
    for wrong in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="HEARTH_CONTEXT_FOCUS"):
            make_settings(context_focus=wrong)
