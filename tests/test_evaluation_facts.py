"""`hearth eval facts`: scoring Hearth on the key-fact sets (evaluation/keyfacts.py).

The fast tier scores hand-made records and runs the runner over the chat service with the fake
model and a fake index (tests/fakes.py) whose sources are named like the Python docs' files.
The `real` test ingests three real pages with the real embedding model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.evaluation import keyfacts as kf
from hearth.evaluation.cli import eval_cli
from hearth.evaluation.records import EvalDataError
from hearth.evaluation.run import TooManyErrors
from tests.fakes import fake_services

REPO = Path(__file__).resolve().parents[1]
SETS = REPO / "evaluation" / "sets"
PY_DOCS = Path("/usr/share/doc/python3.11/html")
HTML = "/usr/share/doc/python3.11/html/"


def question(**fields: Any) -> kf.FactQuestion:
    base: dict[str, Any] = {"id": "q", "question": "?", "answerable": True,
                            "corpus": "python-docs", "source": "library/datetime.html"}
    return kf.FactQuestion(**(base | fields))


# --- loading the sets ----------------------------------------------------------------------------


def test_the_shipped_sets_load_mixed_and_in_order() -> None:
    questions = kf.load_fact_sets(sorted(SETS.glob("*.jsonl")))
    assert len(questions) == 119 + 47 + 25
    by_corpus = {q.corpus for q in questions}
    assert by_corpus == {"python-docs", "r-manuals", "unanswerable"}
    unanswerable = [q for q in questions if not q.answerable]
    assert len(unanswerable) == 25 and all(not q.key_facts for q in unanswerable)
    r = next(q for q in questions if q.id == "r-data-1")
    assert (r.source, r.page, r.key_facts) == ("R-data.pdf", 9, ["col.names = NA"])


def test_loading_rejects_duplicate_ids_and_answerable_questions_without_facts(
        tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    line = {"id": "x", "question": "q?", "answerable": True, "source": "a.html",
            "key_facts": ["f"]}
    a.write_text(json.dumps(line) + "\n")
    b.write_text(json.dumps(line) + "\n")
    with pytest.raises(EvalDataError, match="already used"):
        kf.load_fact_sets([a, b])
    b.write_text(json.dumps(line | {"id": "y", "key_facts": []}) + "\n")
    with pytest.raises(EvalDataError, match="key_facts"):
        kf.load_fact_sets([a, b])
    with pytest.raises(EvalDataError, match="not found"):
        kf.load_fact_sets([tmp_path / "missing.jsonl"])
    # A set is written by hand: a broken last line is named, not skipped as a torn write
    # would be (the question on it would silently go unasked).
    a.write_text(json.dumps(line) + '\n{"id": "z", "question": \n')
    with pytest.raises(EvalDataError, match=r"a\.jsonl:2: not JSON"):
        kf.load_fact_sets([a])
    # A field of the wrong type is named, not read as something else: "false" (a string)
    # made the question answerable, and a page "3" (a string) matched every page.
    for bad, what in (({"answerable": "false"}, "answerable must be true or false"),
                      ({"alt_sources": [{"source": "b.pdf", "page": "3"}]}, "alt source"),
                      ({"alt_sources": [7]}, "alt source")):
        a.write_text(json.dumps(line | bad) + "\n")
        with pytest.raises(EvalDataError, match=what):
            kf.load_fact_sets([a])


def test_a_sample_is_fixed_by_its_seed_and_keeps_file_order() -> None:
    questions = [question(id=str(n)) for n in range(20)]
    one = kf.select(questions, sample=5, seed=3)
    assert [q.id for q in one] == [q.id for q in kf.select(questions, sample=5, seed=3)]
    assert [int(q.id) for q in one] == sorted(int(q.id) for q in one)
    assert [q.id for q in kf.select(questions, sample=5, seed=3, limit=2)] == \
        [q.id for q in one[:2]]
    assert [q.id for q in kf.select(questions, limit=3)] == ["0", "1", "2"]


# --- where a source points -----------------------------------------------------------------------


@pytest.mark.parametrize("location", [
    HTML + "library/datetime.html",
    HTML + "library/datetime.html#datetime.MAXYEAR",
    "file://" + HTML + "library/datetime.html",
    "https://docs.python.org/3.11/library/datetime.html#module-datetime",
    "http://127.0.0.1:8080/library/datetime.html",
    "library/datetime.html",
    HTML + "_sources/library/datetime.rst.txt",  # the page's reST source, shipped beside it
])
def test_an_html_source_hits_its_page_by_path_or_url(location: str) -> None:
    assert kf.match_source(question(), location, None) == "page"


@pytest.mark.parametrize("location", [
    HTML + "library/time.html",
    HTML + "library/xdatetime.html",   # not a path segment
    HTML + "mylibrary/datetime.html",
    "https://docs.python.org/3.11/library/",
    HTML + "_sources/library/time.rst.txt",
])
def test_other_html_sources_miss(location: str) -> None:
    assert kf.match_source(question(), location, None) is None


def test_alt_sources_count_and_a_folder_url_names_its_index() -> None:
    q = question(source="tutorial/venv.html", alt_sources=["library/venv.html"])
    assert kf.match_source(q, HTML + "library/venv.html", None) == "page"
    assert kf.match_source(question(source="library/index.html"),
                           "https://docs.python.org/3.11/library/", None) == "page"


def test_a_pdf_hits_only_its_exact_page_and_else_counts_a_document_hit() -> None:
    q = question(corpus="r-manuals", source="R-data.pdf", page=9)
    assert kf.match_source(q, "/docs/R/R-data.pdf", 9) == "page"
    assert kf.match_source(q, "/docs/R/R-data.pdf", 10) == "document"
    assert kf.match_source(q, "/docs/R/R-data.pdf", None) == "document"
    assert kf.match_source(q, "/docs/R/R-exts.pdf", 9) is None
    assert kf.match_source(q, "/docs/R/xR-data.pdf", 9) is None


def test_ranks_are_the_first_page_and_document_hits() -> None:
    q = question(corpus="r-manuals", source="R-exts.pdf", page=20)
    sources = [{"source": "/m/R-admin.pdf", "page": 20}, {"source": "/m/R-exts.pdf", "page": 3},
               {"source": "/m/R-exts.pdf", "page": 20}]
    assert kf.ranks(q, sources) == (3, 2)
    assert kf.ranks(q, sources[:2]) == (None, 2)
    assert kf.ranks(q, []) == (None, None)


# --- key facts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fact", "answer"), [
    ("col.names = NA", "Call write.table(x, col.names=NA)."),
    ("col.names = NA", "use `col.names = NA`"),
    ("R (>=", "Depends: R(>= 4.1.0)"),
    ("fill = TRUE", "pass FILL=true"),
    ("python -m venv", "Run  python\n -m   venv  .venv"),
    ("MAXYEAR", "It is datetime.MAXYEAR, i.e. 9999."),
    ("%f", "Use the %f directive."),
    ("UTF-8-BOM", "fileEncoding = \u201cUTF\u20118\u2011BOM\u201d"),  # curly quotes, hyphens
    ("10,000", "at most 10000 rows"),
    ("semicolon", "fields separated by semicolons"),
    ("5", "It waits five seconds."),   # a small whole number, spelled out
    ("999999999", "up to 999,999,999 days"),  # a number grouped in the answer, not the fact
    ("4300", "limited to 4,300 digits"),
    ("1e-09", "rel_tol defaults to 1e-9"),  # an exponent with or without its zero
    ("1e-9", "rel_tol=1e-09"),
    ("3.11", "new in Python 3.11.2"),
    ("20", "levels 10, 20, 30"),         # a list of numbers is not one grouped number
    ("-B", "run python -B script.py"),   # a short option, with its case
    ("count", "it counts the lines"),     # a word's start, any ending
    (">", "use `>` for big-endian"),
])
def test_a_fact_is_found_whatever_the_spacing_case_and_typography(fact: str, answer: str) -> None:
    assert kf.fact_present(fact, answer)


@pytest.mark.parametrize(("fact", "answer"), [
    ("5", "at most 15 retries"),    # a short fact stands as a whole word
    ("rb", "verbose output"),
    ("else", "elsewhere"),
    ("999999999", "9999999999"),    # numbers too
    ("col.names = NA", "col.names = TRUE"),
    ("5", "the fivefold cost"),      # a spelled-out number stands as a whole word too
    ("50", "fifty"),                 # only up to twenty
    ("0", "a zero-copy view"),       # zero and one, spelled out, are too often something else
    ("1", "no one knows"),
    ("5", "after 0.5 seconds"),      # nor a number inside a decimal or a grouped one
    ("5", "Python 3.5 added it"),
    ("5", "at most 5,000 rows"),
    ("5", "wait 5.5 seconds"),
    ("-B", "run python -b script.py"),  # -b is another option (bytes warnings)
    ("-u", "pip install -U pkg"),
    ("count", "an account of it"),   # nor a word inside another one
    (">", "def f() -> int"),          # nor punctuation inside another operator
    ("..", "and so on..."),
])
def test_a_fact_inside_another_word_or_number_is_not_found(fact: str, answer: str) -> None:
    assert not kf.fact_present(fact, answer)


def test_a_fact_given_several_ways_is_stated_by_any_of_them(tmp_path: Path) -> None:
    """"How do I turn off buffering?" is answered by the option or by the environment
    variable: a key fact written as a list counts once, stated any of its ways."""
    fact = ["-u", "PYTHONUNBUFFERED"]
    assert kf.fact_present(fact, "Run it as python -u script.py.")
    assert kf.fact_present(fact, "Set PYTHONUNBUFFERED=1 in the environment.")
    assert not kf.fact_present(fact, "Call sys.stdout.flush() after each print.")
    assert not kf.fact_present(fact, "python -uX script.py")  # each way as it is matched alone
    assert kf.facts_present([fact, "-B"], "PYTHONUNBUFFERED=1 python -B x.py") == [fact, "-B"]
    assert kf.facts_present([fact, "-B"], "python -B x.py") == ["-B"]

    # A record scores it as one fact of one.
    record = {"id": "q", "question": "q?", "answerable": True, "source": "using/cmdline.html",
              "key_facts": [fact], "hypothesis": "Use python -u.", "refused": False,
              "grounded": True}
    assert kf.score_fact_record(record)["scores"]["fact_recall"] == 1.0

    # A list of ways must have two or more non-empty strings.
    path = tmp_path / "a.jsonl"
    line = {"id": "x", "question": "q?", "answerable": True, "source": "a.html"}
    path.write_text(json.dumps(line | {"key_facts": [fact, "-B"]}) + "\n")
    assert kf.load_fact_sets([path])[0].key_facts == [fact, "-B"]
    for bad in ([["-u"]], [["-u", ""]], [[]], [["-u", 1]]):
        path.write_text(json.dumps(line | {"key_facts": bad}) + "\n")
        with pytest.raises(EvalDataError, match="key_facts"):
            kf.load_fact_sets([path])


def test_normalised_text_drops_space_beside_punctuation() -> None:
    assert kf.normalize_text("  Col.Names  =  NA ,  x ( y )") == "col.names=na,x(y)"


# --- scoring records and the summary -------------------------------------------------------------


def answered(id_: str, corpus: str, *, facts: list[str] | None = None, answer: str = "",
             sources: list[tuple[str, int | None]] | None = None, refused: bool = False,
             retrieved: list[tuple[str, int | None]] | None = None, passages: list[str] | None = None,
             latency: float | None = 1.0, first: float | None = None, grounded: bool | None = None,
             source: str | None = None, page: int | None = None, error: str | None = None,
             mode: str = "answer", draft: str = "") -> dict[str, Any]:
    answerable = corpus != "unanswerable"
    record: dict[str, Any] = {
        "id": id_, "question": "?", "answerable": answerable, "corpus": corpus,
        "source": source, "page": page, "key_facts": facts or [], "alt_sources": [],
        "mode": mode, "hypothesis": answer, "refused": refused, "grounded": grounded,
        "sources": [{"source": s, "page": p} for s, p in sources or []]
        if mode == "answer" else None,
        "retrieved": None if retrieved is None else [{"source": s, "page": p}
                                                     for s, p in retrieved],
        "passages": passages, "latency_s": latency, "first_token_s": first, "draft": draft,
    }
    if error:
        record = {k: record[k] for k in ("id", "question", "answerable", "corpus", "source",
                                         "page", "key_facts", "alt_sources", "mode")}
        record["error"] = error
    return kf.score_fact_record(record)


def tiny_set() -> list[dict[str, Any]]:
    dt = "library/datetime.html"
    return [
        # right page first, both facts: a correct answer
        answered("p1", "python-docs", source=dt, facts=["MAXYEAR", "9999"],
                 answer="date.max is MAXYEAR, 9999.", sources=[(HTML + dt, None)],
                 retrieved=[(HTML + dt, None), (HTML + "a.html", None)],
                 passages=["MAXYEAR is 9999"], latency=1.0, first=0.2),
        # right page second, one fact of two: a wrong answer presented
        answered("p2", "python-docs", source=dt, facts=["%f", "microsecond"],
                 answer="Use %f.", sources=[(HTML + "time.html", None), (HTML + dt, None)],
                 retrieved=[(HTML + "time.html", None), (HTML + "x.html", None),
                            (HTML + "y.html", None), (HTML + dt, None)],
                 passages=["%f"], latency=2.0, first=0.4),
        # refused although answerable: a false refusal, no sources, no facts
        answered("p3", "python-docs", source=dt, facts=["timedelta"], refused=True,
                 answer="I am not programmed to answer that.", retrieved=[(HTML + "z.html", None)],
                 passages=["nothing"], latency=3.0),
        # R: the right file at another page (a document hit only), fact present
        answered("r1", "r-manuals", source="R-data.pdf", page=9, facts=["col.names = NA"],
                 answer="Set col.names=NA.", sources=[("/m/R-data.pdf", 10)], latency=4.0),
        # unanswerable: one refused, one answered
        answered("u1", "unanswerable", refused=True, latency=0.5),
        answered("u2", "unanswerable", answer="Sure: use Path.walk().",
                 sources=[(HTML + "library/os.html", None)], latency=0.5),
        # an error: counted, left out of every figure
        answered("e1", "python-docs", source=dt, facts=["x"], error="RuntimeError: boom"),
    ]


def value(figure: dict[str, Any] | None) -> float | None:
    return None if figure is None else figure["value"]


def test_every_summary_figure_is_computed_on_a_tiny_set() -> None:
    summary = kf.summarize_facts(tiny_set(), ks=(1, 4))
    overall, py, r, un = (summary["groups"][n] for n in
                          ("overall", "python-docs", "r-manuals", "unanswerable"))
    assert (overall["questions"], overall["answerable"], overall["unanswerable"],
            overall["errors"]) == (7, 4, 2, 1)
    # answer's sources: p1 rank 1, p2 rank 2, p3 none, r1 none (document only)
    assert overall["hit@1"] == {"value": 0.25, "hits": 1, "n": 4}
    assert value(overall["hit@4"]) == 0.5
    assert value(overall["doc_hit@1"]) == 0.5 and value(overall["doc_hit@4"]) == 0.75
    assert value(overall["mrr"]) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    # retrieval ranks exist for the three python questions only
    assert py["retrieval_hit@1"] == {"value": 1 / 3, "hits": 1, "n": 3}
    assert value(py["retrieval_hit@4"]) == pytest.approx(2 / 3)
    assert value(py["retrieval_mrr"]) == pytest.approx((1 + 0.25 + 0) / 3)
    assert "retrieval_hit@1" not in r
    # facts: p1 2/2, p2 1/2, p3 refused 0/1, r1 1/1
    assert value(overall["fact_recall"]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert overall["all_facts"] == {"value": 0.5, "hits": 2, "n": 4}
    assert value(py["facts_retrievable"]) == pytest.approx((1 + 0.5 + 0) / 3)
    # refusals
    assert un["refusal_rate_unanswerable"] == {"value": 0.5, "hits": 1, "n": 2}
    assert overall["refusal_rate_unanswerable"] == un["refusal_rate_unanswerable"]
    assert overall["false_refusals"] == {"value": 0.25, "hits": 1, "n": 4}
    assert py["false_refusals"]["hits"] == 1 and r["false_refusals"]["hits"] == 0
    assert py["refusal_rate_unanswerable"] is None
    # wrong answers presented: p2 only (p3 refused, p1 and r1 complete); u2 answered
    assert overall["wrong_presented"] == {"value": 0.25, "hits": 1, "n": 4}
    assert un["unanswerable_presented"] == {"value": 0.5, "hits": 1, "n": 2}
    # latency over the six answered: 0.5 0.5 1 2 3 4
    assert overall["latency_s"]["median"] == pytest.approx(1.5)
    assert overall["latency_s"]["p90"] == pytest.approx(3.5)
    assert overall["first_token_s"] == {"median": pytest.approx(0.3),
                                        "p90": pytest.approx(0.38), "n": 2}
    assert summary["errors"] == [{"id": "e1", "error": "RuntimeError: boom"}]
    assert summary["grounding_verdict"] is False
    table = kf.summary_table(summary)
    assert kf.NO_VERDICT_LABEL in table and "| hit@4 (expected page among the answer's sources) " \
        "| 0.500 (2/4) |" in table
    assert "e1" in table


def test_a_grounding_verdict_counts_only_answers_presented_as_grounded() -> None:
    dt = "library/datetime.html"
    records = [
        answered("a", "python-docs", source=dt, facts=["x", "y"], answer="x", grounded=True),
        answered("b", "python-docs", source=dt, facts=["x", "y"], answer="x", grounded=False),
        answered("c", "python-docs", source=dt, facts=["x"], answer="x", grounded=True),
    ]
    records += [answered("u1", "unanswerable", answer="Sure.", grounded=False),
                answered("u2", "unanswerable", answer="Sure.", grounded=True)]
    assert [r["scores"]["wrong_presented"] for r in records[:3]] == [True, False, False]
    summary = kf.summarize_facts(records)
    assert summary["grounding_verdict"] is True
    assert summary["groups"]["overall"]["wrong_presented"]["hits"] == 1
    assert summary["groups"]["overall"]["unanswerable_presented"] == {"value": 0.5, "hits": 1,
                                                                      "n": 2}
    assert kf.VERDICT_LABEL in kf.summary_table(summary)


def test_withheld_answers_count_as_refused_and_their_drafts_say_what_the_check_cost() -> None:
    dt = "library/datetime.html"
    withheld = "Your documents do not seem to answer this: ..."
    records = [
        # the check withheld a right draft, and a wrong one; passed a right answer
        answered("a", "python-docs", source=dt, facts=["x", "y"], answer=withheld,
                 refused=True, grounded=False, draft="x and y"),
        answered("b", "python-docs", source=dt, facts=["x", "y"], answer=withheld,
                 refused=True, grounded=False, draft="z"),
        answered("c", "python-docs", source=dt, facts=["x"], answer="x", grounded=True),
        # the model declined by itself: refused, no draft
        answered("d", "python-docs", source=dt, facts=["x"], refused=True, grounded=True,
                 answer="I am not programmed to answer that."),
        answered("u1", "unanswerable", answer=withheld, refused=True, grounded=False,
                 draft="Sure: 42."),
        answered("u2", "unanswerable", answer="I am not programmed to answer that.",
                 refused=True, grounded=True),
    ]
    overall = kf.summarize_facts(records)["groups"]["overall"]
    assert value(overall["fact_recall"]) == pytest.approx(1 / 4)  # withheld scores 0
    assert overall["false_refusals"]["hits"] == 3
    assert overall["presented_grounded"] == {"value": 0.25, "hits": 1, "n": 4}
    assert overall["withheld"] == {"value": 0.5, "hits": 2, "n": 4}
    assert overall["withheld_right"] == {"value": 0.25, "hits": 1, "n": 4}
    assert value(overall["draft_fact_recall"]) == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert overall["refusal_rate_unanswerable"]["hits"] == 2
    assert overall["withheld_unanswerable"] == {"value": 0.5, "hits": 1, "n": 2}
    assert overall["wrong_presented"]["hits"] == 0
    assert "withheld although the draft had every key fact | 0.250 (1/4)" in \
        kf.summary_table(kf.summarize_facts(records))


def test_a_retrieval_only_record_has_ranks_and_retrievable_facts_but_no_answer_figures() -> None:
    dt = "library/datetime.html"
    records = [
        answered("a", "python-docs", source=dt, facts=["9999"], mode="retrieval",
                 retrieved=[(HTML + dt, None)], passages=["MAXYEAR is 9999."]),
        answered("u", "unanswerable", mode="retrieval", retrieved=[], passages=[], refused=True),
    ]
    summary = kf.summarize_facts(records)
    overall = summary["groups"]["overall"]
    assert value(overall["retrieval_hit@1"]) == 1.0 and value(overall["facts_retrievable"]) == 1.0
    assert "hit@1" not in overall and overall["fact_recall"] is None
    assert overall["wrong_presented"] is None and overall["unanswerable_presented"] is None
    table = kf.summary_table(summary)
    assert "declined by the relevance gate" in table and kf.NO_VERDICT_LABEL not in table


# --- the runner over the chat service (fake model, fake index) -----------------------------------

PASSAGES = {
    HTML + "library/datetime.html": "The largest year a date object holds is MAXYEAR, 9999.",
    HTML + "library/secrets.html": "secrets.token_hex returns a random text string in hexadecimal.",
}
QUESTIONS = [
    question(id="py-1", question="What is the largest year a date object holds?",
             key_facts=["MAXYEAR", "9999"]),
    question(id="py-2", question="Which secrets function returns a random hexadecimal string?",
             source="library/secrets.html", key_facts=["token_hex"]),
    kf.FactQuestion("un-1", "Zebra quokka wombat?", False, "unanswerable"),
]


def write_set(path: Path, questions: list[kf.FactQuestion]) -> Path:
    """The questions as a set file, one JSON line each, as `hearth eval facts` reads them."""
    path.write_text("".join(json.dumps(q.to_json()) + "\n" for q in questions))
    return path


def test_the_runner_answers_through_the_chat_service_and_scores(tmp_path: Path) -> None:
    services = fake_services(tmp_path, replies=["The largest year is MAXYEAR, that is 9999.",
                                                "Use secrets.token_urlsafe."],
                             passages=PASSAGES)
    answerer = kf.InProcessAnswerer(services, depth=4)
    records = kf.run_facts(QUESTIONS, answerer, records_path=tmp_path / "run" / "records.jsonl")
    assert [r["id"] for r in records] == ["py-1", "py-2", "un-1"]
    py1, py2, un1 = records
    assert py1["scores"]["answer_rank"] == 1 and py1["scores"]["retrieval_rank"] == 1
    assert py1["scores"]["all_facts"] and not py1["scores"]["wrong_presented"]
    assert py2["scores"]["retrieval_rank"] == 1 and py2["scores"]["fact_recall"] == 0
    assert py2["scores"]["facts_retrievable"] == 1.0  # retrieval found it, generation lost it
    # ... and the model read it: the passage as its prompt gave it, heading line first
    assert py2["read"][0].startswith("[1] ") and "secrets.token_hex" in py2["read"][0]
    assert py2["scores"]["facts_read"] == 1.0
    # a wrong answer is presented unless the chain's grounding verdict flags it
    assert py2["scores"]["wrong_presented"] is (py2.get("grounded") is not False)
    assert un1["refused"] is True and un1["sources"] == []  # no passage is relevant
    assert un1["read"] == [] and "facts_read" not in un1["scores"]  # the model read nothing
    summary = kf.summarize_facts(records)
    assert summary["groups"]["python-docs"]["facts_read"] == {"value": 1.0, "n": 2}
    assert "key facts in what the model read" in kf.summary_table(summary)
    assert summary["groups"]["overall"]["refusal_rate_unanswerable"]["value"] == 1.0
    assert summary["groups"]["python-docs"]["hit@1"]["value"] == 1.0


def test_a_run_resumes_and_retries_only_failed_questions(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    asked: list[str] = []

    def flaky(q: kf.FactQuestion) -> dict[str, Any]:
        asked.append(q.id)
        if q.id == "py-2" and asked.count("py-2") == 1:
            raise RuntimeError("model went away")
        return {"hypothesis": "MAXYEAR 9999", "refused": False, "sources": [],
                "retrieved": None, "passages": None, "latency_s": 0.1}

    first = kf.run_facts(QUESTIONS, flaky, records_path=path)
    assert first[1]["error"] == "RuntimeError: model went away" and first[1]["scores"] == {}
    assert kf.summarize_facts(first)["groups"]["overall"]["errors"] == 1
    second = kf.run_facts(QUESTIONS, flaky, records_path=path)
    assert asked == ["py-1", "py-2", "un-1", "py-2"]
    assert not second[1].get("error")
    # a run in another mode asks everything again
    kf.run_facts(QUESTIONS[:1], flaky, mode="retrieval", records_path=path)
    assert asked[-1] == "py-1"
    # and so does a question edited since, or another set's question under the same id
    from dataclasses import replace

    edited = [replace(QUESTIONS[0], question="What is the largest year?"),
              replace(QUESTIONS[1], key_facts=["something else"]), QUESTIONS[2]]
    asked.clear()
    third = kf.run_facts(edited, flaky, records_path=path)
    assert asked == ["py-1", "py-2"]
    assert third[0]["question"] == "What is the largest year?"
    assert third[1]["key_facts"] == ["something else"]


def test_a_row_of_failures_stops_the_run(tmp_path: Path) -> None:
    def down(q: kf.FactQuestion) -> dict[str, Any]:
        raise ConnectionError("refused")

    with pytest.raises(TooManyErrors):
        kf.run_facts(QUESTIONS, down, records_path=tmp_path / "r.jsonl", max_consecutive_errors=2)
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_retrieval_only_never_builds_the_model_and_applies_the_relevance_gate(
        tmp_path: Path) -> None:
    services = fake_services(tmp_path, passages=PASSAGES)
    answerer = kf.InProcessAnswerer(services, retrieval_only=True)
    records = kf.run_facts(QUESTIONS, answerer, mode=answerer.mode)
    assert "llm" not in services._built or services._built["llm"].prompts == []
    assert [r["refused"] for r in records] == [False, False, True]
    assert records[0]["scores"]["retrieval_rank"] == 1 and "fact_recall" not in records[0]["scores"]
    assert records[0]["scores"]["facts_retrievable"] == 1.0


def test_the_cli_runs_in_process_and_writes_the_report(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import hearth.services

    services = fake_services(tmp_path, replies=["MAXYEAR is 9999."], passages=PASSAGES)
    monkeypatch.setattr(hearth.services, "build_services", lambda settings: services)
    sets = write_set(tmp_path / "set.jsonl", QUESTIONS)
    out = tmp_path / "run"
    result = CliRunner().invoke(eval_cli, ["facts", str(sets), "--retrieval-only", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "hit@1 (retrieval ranks)" in result.output
    # Nothing was answered, so nothing was checked: no row says the check withheld nothing.
    keys = [k for k, _ in kf._rows({"ks": [1], "modes": ["retrieval"], "grounding_verdict": False})]
    assert "hit@1" in keys and not set(keys) & {"withheld_unanswerable", "presented_grounded"}
    document = json.loads((out / "results.json").read_text())
    assert document["kind"] == kf.FACTS_RESULTS_KIND and len(document["records"]) == 3
    assert document["config"]["mode"] == "retrieval"
    # The run says which passages its figures are of.
    retrieval = document["config"]["retrieval"]
    assert (retrieval["retrieval"], retrieval["reranker"], retrieval["page_support"]) == (
        "hybrid", "none", 0.0)
    assert (out / "summary.md").read_text() in result.output
    result = CliRunner().invoke(eval_cli, ["facts", str(sets), "--retrieval-only",
                                           "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "--retrieval-only" in result.output
    # Resumed by another system (here a deeper retrieval), the run's answers are not its own.
    result = CliRunner().invoke(eval_cli, ["facts", str(sets), "--retrieval-only", "--depth",
                                           "40", "-o", str(out)])
    assert result.exit_code == 1 and "was made with other retrieval_depth" in result.output
    # A set that is not UTF-8, or has a line that is not an object: one clear line.
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "x", "question": "Caf\xe9?"}\n'.encode("latin-1"))
    (tmp_path / "list.jsonl").write_text('[1, 2]\n{"id": "y"}\n')
    for bad, words in (("latin1.jsonl", "not UTF-8 text"), ("list.jsonl", ":1: not a JSON object")):
        result = CliRunner().invoke(eval_cli, ["facts", str(tmp_path / bad), "--retrieval-only"])
        assert result.exit_code == 1 and words in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_killed_run_is_not_resumed_by_another_system(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import hearth.services

    services = fake_services(tmp_path, passages=PASSAGES)
    search = services.vectorstore.search

    def stopped(query: str, *args: Any, **options: Any) -> Any:
        if "secrets" in query:
            raise KeyboardInterrupt  # the run is stopped at its second question
        return search(query, *args, **options)

    monkeypatch.setattr(services.vectorstore, "search", stopped)
    monkeypatch.setattr(hearth.services, "build_services", lambda settings: services)
    sets = write_set(tmp_path / "set.jsonl", QUESTIONS)
    out = tmp_path / "run"
    killed = CliRunner().invoke(eval_cli, ["facts", str(sets), "--retrieval-only", "-o", str(out)])
    assert killed.exit_code == 1 and not (out / "results.json").exists()
    assert len((out / "records.jsonl").read_text().splitlines()) == 1
    # Resumed with a deeper retrieval: refused, though the killed run wrote no results.json.
    result = CliRunner().invoke(eval_cli, ["facts", str(sets), "--retrieval-only", "--depth",
                                           "40", "-o", str(out)])
    assert result.exit_code == 1 and "was made with other retrieval_depth" in result.output
    assert len((out / "records.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "config.json").read_text())["retrieval_depth"] == 10
    monkeypatch.setattr(services.vectorstore, "search", search)
    result = CliRunner().invoke(eval_cli, ["facts", str(sets), "--retrieval-only", "-o", str(out)])
    assert result.exit_code == 0 and "Resuming the run" in result.output, result.output
    assert len(json.loads((out / "results.json").read_text())["records"]) == 3


def test_the_model_alone_is_scored_on_facts_without_sources(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Fast tier: a scripted fake model (tests/fakes.py) stands in for the engine.
    import hearth.llm
    from hearth.config import load_settings
    from tests.fakes import FakeLLM

    settings = load_settings(_env_file=None, data_dir=tmp_path)
    llm = FakeLLM(settings, ["MAXYEAR is 9999.", "Try random.random().", "No idea."])
    monkeypatch.setattr(hearth.llm, "build_llm", lambda settings: llm)
    sets = write_set(tmp_path / "set.jsonl", QUESTIONS)
    out = tmp_path / "alone"
    result = CliRunner().invoke(eval_cli, ["facts", str(sets), "--no-retrieval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["answerer"] == "the model alone, no retrieval"
    py1, py2, _ = document["records"]
    assert py1["scores"]["all_facts"] and py2["scores"]["fact_recall"] == 0
    assert "answer_rank" not in py1["scores"] and py1["sources"] is None  # nothing retrieved
    assert [m[1].content for m in llm.prompts] == [q.question for q in QUESTIONS]
    overall = document["summary"]["groups"]["overall"]
    assert overall["fact_recall"]["value"] == 0.5 and overall.get("hit@1") is None
    both = CliRunner().invoke(eval_cli, ["facts", str(sets), "--no-retrieval",
                                         "--retrieval-only"])
    assert both.exit_code == 2 and "--no-retrieval" in both.output


def test_compare_adds_each_systems_key_fact_recall(tmp_path: Path) -> None:
    from hearth.evaluation.records import write_results
    from hearth.evaluation.scoring import score_record, summarize

    def facts_run(name: str, answers: list[str]) -> str:
        records = [q.to_json() | {"mode": "answer", "hypothesis": a, "refused": False,
                                  "sources": None, "latency_s": 1.0}
                   for q, a in zip(QUESTIONS, answers, strict=True)]
        records = [kf.score_fact_record(r) for r in records]
        kf.write_facts_report(tmp_path / name, records, kf.summarize_facts(records), {})
        return str(tmp_path / name)

    runs, facts = [], []
    for name, answer, facts_answers in (("base", "no", ["no", "no", "no"]),
                                        ("rag", "yes", ["MAXYEAR 9999", "no", "no"]),
                                        ("both", "yes", ["MAXYEAR 9999", "token_hex", "no"])):
        records = [score_record({"id": "1", "reference": "yes", "hypothesis": answer})]
        write_results(tmp_path / f"run-{name}", records, summarize(records), {"name": name})
        runs.append(str(tmp_path / f"run-{name}"))
        facts.append(facts_run(f"facts-{name}", facts_answers))
    args = ["compare", *runs, "--no-plots", "-o", str(tmp_path / "c")]
    result = CliRunner().invoke(eval_cli, args + [f"--facts={f}" for f in facts])
    assert result.exit_code == 0, result.output
    assert "| key-fact recall (the set's questions, `--facts`) | 0.0000 | 0.5000 | 1.0000 |" \
        in result.output
    two = CliRunner().invoke(eval_cli, ["compare", *runs[:2], "--no-plots", "-o",
                                        str(tmp_path / "c2"), "--facts", facts[0],
                                        "--facts", facts[1]])
    assert two.exit_code == 0 and "| 0.0000 | 0.5000 | +0.5000 |" in two.output
    short = CliRunner().invoke(eval_cli, args + ["--facts", facts[0]])
    assert short.exit_code == 2 and "one key-fact run for each of the 3 runs" in short.output
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = CliRunner().invoke(eval_cli, ["compare", *runs[:2], "--facts", facts[0],
                                            "--facts", str(empty)])
    assert missing.exit_code == 1 and "no key-fact run here" in missing.output


# --- real: three real pages, the real embedding model --------------------------------------------

REAL_PAGES = ["library/tomllib.html", "library/secrets.html", "library/copy.html"]


@pytest.mark.real
@pytest.mark.skipif(not PY_DOCS.is_dir(), reason="needs Debian's python3.11-doc")
def test_a_retrieval_only_run_over_three_real_pages(tmp_path: Path, make_services: Any) -> None:
    from hearth.ingest.pipeline import ingest_files

    docs = tmp_path / "html"
    for page in REAL_PAGES:
        (docs / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PY_DOCS / page, docs / page)
    services = make_services()
    ingest_files(services, docs)
    questions = [q for q in kf.load_fact_sets([SETS / "python-docs.jsonl"])
                 if q.source in REAL_PAGES]
    assert 3 <= len(questions) <= 5
    answerer = kf.InProcessAnswerer(services, retrieval_only=True)
    records = kf.run_facts(questions, answerer, mode=answerer.mode)
    assert not any(r.get("error") for r in records)
    assert all(r["retrieved"][0]["source"].startswith(str(docs)) for r in records)
    summary = kf.summarize_facts(records)["groups"]["overall"]
    assert summary["retrieval_hit@4"]["n"] == len(questions)
    assert summary["retrieval_hit@4"]["value"] > 0


@pytest.mark.real
@pytest.mark.skipif(not PY_DOCS.is_dir(), reason="needs Debian's python3.11-doc")
def test_an_answered_run_records_each_token_with_its_alternatives(tmp_path: Path,
                                                                  make_services: Any) -> None:
    """`hearth eval facts --alternatives N` (llama.cpp in process): each record keeps the
    tokens the model drew, each with its log-probability and the N likeliest at its place."""
    from hearth.ingest.pipeline import ingest_files

    docs = tmp_path / "html"
    (docs / "library").mkdir(parents=True)
    shutil.copy(PY_DOCS / "library/secrets.html", docs / "library/secrets.html")
    services = make_services()
    ingest_files(services, docs)
    question = next(q for q in kf.load_fact_sets([SETS / "python-docs.jsonl"])
                    if q.source == "library/secrets.html")
    for alternatives in (0, 2):
        answerer = kf.InProcessAnswerer(services, alternatives=alternatives)
        record, = kf.run_facts([question], answerer)
        assert not record.get("error") and record["tokens"], record
        draft = record["draft"] or record["hypothesis"]
        assert draft.startswith("".join(t[0] for t in record["tokens"]).strip()[:40])
        for token in record["tokens"]:
            assert token[1] <= 0
            if not alternatives:
                assert len(token) == 2
                continue
            text, logprob, top = token
            assert len(top) == 2 and top[0][1] >= top[1][1] and top[0][1] >= logprob - 1e-4


def test_the_offline_grader_reads_a_run_as_its_report_does(tmp_path: Path) -> None:
    """bench/grounding_check.py, whose figures docs/evaluation.md gives, counted a question
    asked again on resuming twice, and failed on a torn last line (a run killed mid-write)."""
    import subprocess
    import sys

    passage = "The Ellery ferry leaves the mainland at 7:40 and returns at 18:10."
    base = {"answerable": True, "key_facts": ["7:40"], "passages": [passage], "mode": "answer",
            "question": "When does the ferry leave?", "refused": False}
    lines = [json.dumps(base | {"id": "q1", "hypothesis": "It leaves at 9:15."}),
             json.dumps(base | {"id": "q2", "hypothesis": "It leaves at 7:40."}),
             json.dumps(base | {"id": "q1", "hypothesis": "It leaves at 7:40."}),  # asked again
             '{"id": "q3", "answerable": tr']  # torn
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text("\n".join(lines))
    script = Path(__file__).parents[1] / "bench" / "grounding_check.py"
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "answerable 2: key-fact recall over answers presented as grounded 1.000" in out.stdout
