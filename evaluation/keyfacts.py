"""Scoring Hearth on the hand-written key-fact sets (`evaluation/sets/*.jsonl`).

Right answers, not just right passages. Each answerable question names the page that answers it
(`source`, and `page` for a PDF) and the key facts a correct answer must state; unanswerable
questions must be declined. This module loads those sets, answers them through Hearth (in
process or by URL), and scores every answer:

- **hit@k / MRR**: the expected page among the answer's sources, in the order the user sees
  them; and, in process, among the retrieval ranks (`depth` chunks deep). A *page hit* is the
  expected page (HTML: the file; PDF: the file and the 1-based physical `page`, strictly); a
  *document hit* is the right file at any page, reported apart.
- **key-fact recall**: the share of a question's facts present in the answer (case-insensitive,
  whitespace-normalised, spacing around punctuation ignored: `col.names = NA` matches
  `col.names=NA`; a whole number up to 20 also spelled out: `5` matches "five"; a fact
  written as a list of ways is stated by any of them); a refused answer states none. Also
  the share of questions with every fact, and (in process) the facts present in the top
  passages, "facts retrievable", and the facts present in what the model read (its passages
  as the prompt gave them, neighbours or continuation included, none where the relevance
  gate declined), "facts read": together they separate what retrieval lost from what
  generation lost.
- **refusals**: the refusal rate on the unanswerable questions, false refusals on answerable
  ones, and wrong answers presented as grounded (answerable, not refused, a fact missing, and a
  `grounded` verdict that is not false; without any verdict in the run, every such answer
  counts, labelled so); likewise unanswerable questions answered as grounded.
- **latency**: median and p90 of the whole answer, and of the first token when known.

Every figure is given overall and per corpus (`python-docs`, `r-manuals`, `unanswerable`).
A run folder holds `config.json` (the system, written as the run starts, so that another
system is refused the folder) and `records.jsonl` (appended as answers come, so a run resumes),
then `results.json` and `summary.md`.
"""

from __future__ import annotations

import json
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from hearth.chat import Ask, Chat
from hearth.evaluation.generate import progress_bar
from hearth.evaluation.records import RESULTS_FILE, EvalDataError, JsonlAppender, read_jsonl
from hearth.evaluation.report import SUMMARY_FILE
from hearth.evaluation.run import ErrorStreak
from hearth.evaluation.scoring import _percentile
from hearth.model import Assistant, Source
from hearth.services import Services

FACTS_RESULTS_KIND = "hearth-eval-facts-results"
DEFAULT_KS = (1, 4)
DEFAULT_DEPTH = 10
PASSAGES_FOR_FACTS = 4  # "facts retrievable": the facts present in this many top passages
UNANSWERABLE = "unanswerable"
OVERALL = "overall"
NO_VERDICT_LABEL = "wrong answers presented as answers (no grounding verdict yet)"
VERDICT_LABEL = "wrong answers presented as grounded"


# --- the sets ------------------------------------------------------------------------------


@dataclass
class FactQuestion:
    id: str
    question: str
    answerable: bool
    corpus: str  # python-docs, r-manuals; "unanswerable" for the unanswerable ones
    source: str | None = None
    page: int | None = None
    key_facts: list[Fact] = field(default_factory=list)
    alt_sources: list[Any] = field(default_factory=list)  # "path" or {"source", "page"}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _question(data: Any, where: str) -> FactQuestion:
    if not isinstance(data, Mapping):
        raise EvalDataError(f"{where}: a question must be a JSON object")
    if not isinstance(data.get("id"), str) or not data["id"]:
        raise EvalDataError(f"{where}: missing id")
    if not isinstance(data.get("question"), str) or not data["question"].strip():
        raise EvalDataError(f"{where}: missing question")
    answerable = data.get("answerable")
    if answerable is None:  # a set without the field: facts make it answerable
        answerable = bool(data.get("key_facts") or data.get("source"))
    elif not isinstance(answerable, bool):  # "false", a string, is true
        raise EvalDataError(f"{where}: answerable must be true or false")
    if not answerable:
        return FactQuestion(data["id"], data["question"], False, UNANSWERABLE)
    source, facts, page = data.get("source"), data.get("key_facts"), data.get("page")
    if not isinstance(source, str) or not source:
        raise EvalDataError(f"{where}: an answerable question needs its source")
    if not isinstance(facts, list) or not facts or not all(valid_fact(f) for f in facts):
        raise EvalDataError(f"{where}: key_facts must be a non-empty list of strings (or of "
                            "lists of two or more strings: one fact, stated any of their ways)")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int)):
        raise EvalDataError(f"{where}: page must be a number")
    alt = data.get("alt_sources") or []
    if not isinstance(alt, list):
        raise EvalDataError(f"{where}: alt_sources must be a list")
    for other in alt:  # a page that is not a number would match every page
        if not (isinstance(other, str) and other) and not (
                isinstance(other, Mapping) and isinstance(other.get("source"), str)
                and (other.get("page") is None or (isinstance(other["page"], int)
                                                   and not isinstance(other["page"], bool)))):
            raise EvalDataError(f"{where}: each alt source must be a path, or an object with "
                                "its source and a page number")
    return FactQuestion(data["id"], data["question"], True, str(data.get("corpus") or "answerable"),
                        source, page, list(facts), list(alt))


def load_fact_sets(paths: Iterable[Path]) -> list[FactQuestion]:
    """The questions of one or more set files, in order; ids must be unique across them."""
    questions: list[FactQuestion] = []
    seen: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise EvalDataError(f"question set {path} not found")
        # A set is written by hand: its last line, broken, is a mistake, not a torn write.
        for number, data in enumerate(read_jsonl(path, torn_tail=False), 1):
            where = f"{path}:{number}"
            question = _question(data, where)
            if question.id in seen:
                raise EvalDataError(f"{where}: id {question.id!r} already used at "
                                    f"{seen[question.id]}")
            seen[question.id] = where
            questions.append(question)
    if not questions:
        raise EvalDataError("the question sets hold no question")
    return questions


def select(questions: Sequence[FactQuestion], *, sample: int | None = None, seed: int = 0,
           limit: int | None = None) -> list[FactQuestion]:
    """A random sample of `sample` questions (kept in file order, fixed by `seed`), then the
    first `limit` of them."""
    chosen = list(questions)
    if sample is not None and sample < len(chosen):
        keep = sorted(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [chosen[i] for i in keep]
    return chosen[:limit] if limit is not None else chosen


# --- where a source points -----------------------------------------------------------------

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def location_path(location: str) -> str:
    """The path part of a source: a file path or URL without `file://`, scheme and host,
    `#fragment` or `?query`; `/` separators; a URL to a folder names its `index.html`."""
    text = location.strip()
    if text.lower().startswith("file://"):
        text = text[len("file://"):].split("#", 1)[0]
    elif _SCHEME.match(text):
        text = urlsplit(text).path or "/"
        if text.endswith("/"):
            text += "index.html"
    else:
        text = text.split("#", 1)[0]
    return unquote(text).replace("\\", "/")


def same_document(location: str, expected: str) -> bool:
    """Whether `location` (a source's path or URL) is the file `expected` (a path relative to
    the documents' root, or a file name): equal, or ending with it after a `/`."""
    path = location_path(location)
    want = location_path(expected).lstrip("/")
    if want.startswith("./"):
        want = want[2:]
    return bool(want) and (path == want or path.endswith("/" + want))


def _expected(question: FactQuestion) -> list[tuple[str, int | None]]:
    places: list[tuple[str, int | None]] = []
    if question.source:
        places.append((question.source, question.page))
    for alt in question.alt_sources:
        if isinstance(alt, str):
            places.append((alt, None))
        elif isinstance(alt, Mapping) and isinstance(alt.get("source"), str):
            page = alt.get("page")
            places.append((alt["source"], page if isinstance(page, int) else None))
    # A Sphinx site ships each page's reST source beside it (`_sources/library/os.rst.txt`
    # for `library/os.html`): ingesting the whole folder indexes both, the same text.
    for source, page in list(places):
        if source.endswith(".html") and not source.startswith("_sources/"):
            places.append(("_sources/" + source.removesuffix(".html") + ".rst.txt", page))
    return places


def match_source(question: FactQuestion, location: str, page: int | None) -> str | None:
    """"page" when the source is an expected page, "document" when it is an expected file at
    another page, None otherwise. A page is matched strictly: a PDF's 1-based physical page."""
    level = None
    for source, want_page in _expected(question):
        if not same_document(location, source):
            continue
        if want_page is None or page == want_page:
            return "page"
        level = "document"
    return level


def ranks(question: FactQuestion, sources: Sequence[Mapping[str, Any]] | None
          ) -> tuple[int | None, int | None]:
    """1-based (page rank, document rank) of the first hit among `sources` (dicts with
    `source` and `page`); None where none hits, or when there are no sources to look at."""
    page_rank = doc_rank = None
    for n, s in enumerate(sources or (), 1):
        level = match_source(question, str(s.get("source") or ""), _page(s.get("page")))
        if level is None:
            continue
        doc_rank = doc_rank or n
        if level == "page":
            page_rank = n
            break
    return page_rank, doc_rank


def _page(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) or None


# --- key facts -----------------------------------------------------------------------------

# A key fact is a string, or a list of the ways it may be stated (`["-u", "PYTHONUNBUFFERED"]`
# for "how do I turn off buffering?": the option or the environment variable answers it).
Fact = str | list[str]


def fact_ways(fact: Fact) -> list[str]:
    """The strings that state a fact: itself, or each of its ways."""
    return [fact] if isinstance(fact, str) else list(fact)


def valid_fact(fact: Any) -> bool:
    """A non-empty string, or a list of two or more of them."""
    if isinstance(fact, list):
        return len(fact) >= 2 and all(isinstance(w, str) and w.strip() for w in fact)
    return isinstance(fact, str) and bool(fact.strip())


_STRAIGHT = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
    "\u00a0": " ", "\u200b": "",
})
_SPACED_PUNCTUATION = re.compile(r" ?([^\w\s]) ?")
_NUMBER = re.compile(r"[\d.,]+")
_GROUPED = re.compile(r"\d{1,3}(,\d{3})+")
_EXPONENT = re.compile(r"(\d(?:\.\d+)?e[+-]?)0*(\d+)")
# A short option is matched with its case: `-b` is not `-B` (a different option).
_OPTION = re.compile(r"--?[a-z]", re.IGNORECASE)
# Beside a fact of punctuation alone (`>`, `..`), these make another operator: `->`, `...`.
_OPERATOR = re.escape("-<>=!~+*/|&^%.:")
SHORT_FACT = 4  # facts this short (or numbers) must stand as whole words: "5" not in "15"
# A small whole number is as right spelled out: "5" is stated by "five seconds" (from two:
# "one" and "zero" are as often a pronoun or part of a word, "no one", "zero-copy").
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen", "nineteen", "twenty")


def normalize_text(text: str, *, lower: bool = True) -> str:
    """Lower case, NFKC, straight quotes and dashes, single spaces, and no space beside
    punctuation (so `col.names = NA`, `col.names=NA` and `` `col.names = NA` `` compare alike)."""
    text = unicodedata.normalize("NFKC", text).translate(_STRAIGHT)
    text = " ".join((text.lower() if lower else text).split())
    return _SPACED_PUNCTUATION.sub(r"\1", text)


def _number_forms(wanted: str) -> list[str]:
    """The other ways a number is written: 10,000 and 10000; 1e-09 and 1e-9."""
    forms = []
    if _GROUPED.fullmatch(wanted):
        forms.append(wanted.replace(",", ""))
    elif wanted.isdigit() and len(wanted) > 3 and not wanted.startswith("0"):
        forms.append(f"{int(wanted):,}")
    exponent = _EXPONENT.fullmatch(wanted)
    if exponent:
        digits = exponent[2]
        forms += [exponent[1] + d for d in {digits, digits.zfill(2)} if exponent[1] + d != wanted]
    if wanted.isdigit() and 2 <= int(wanted) < len(_NUMBER_WORDS):
        forms.append(_NUMBER_WORDS[int(wanted)])
    return forms


def _fact_patterns(fact: str) -> list[re.Pattern[str]]:
    cased = bool(_OPTION.fullmatch(fact.strip()))
    wanted = normalize_text(fact, lower=not cased)
    forms = [wanted, *_number_forms(wanted)]
    number = bool(_NUMBER.fullmatch(wanted))
    whole = len(wanted) <= SHORT_FACT or number
    patterns = []
    for form in forms:
        pattern = re.escape(form)
        if form[:1].isalnum():  # a word's start: `count` is not in "account"
            pattern = r"(?<![a-zA-Z0-9])" + pattern
            if number:  # nor 5 in 0.5 or 3.5 (a comma before may be a list's: 10, 20)
                pattern = r"(?<![0-9]\.)" + pattern
        if whole and form[-1:].isalnum():
            pattern += r"(?![a-zA-Z0-9])"
            if number:  # 5 is not 5,000; nor 5.5 (a fact with its own point may go on: 3.11.2)
                pattern += r"(?!,\d{3}(?!\d))" + ("" if "." in form else r"(?!\.\d)")
        if not any(c.isalnum() for c in form):
            pattern = rf"(?<![{_OPERATOR}])" + pattern + rf"(?![{_OPERATOR}])"
        patterns.append(re.compile(pattern))
    return patterns


def _cased(way: str) -> bool:
    return bool(_OPTION.fullmatch(way.strip()))


def fact_present(fact: Fact, text: str, *, normalized: bool = False) -> bool:
    """Whether `text` states the fact (any of its ways). ``normalized``: `text` is what
    normalize_text gave, with its case kept (a short option is matched with its case)."""
    kept = text if normalized else normalize_text(text, lower=False)
    lowered = kept.lower()
    return any(p.search(kept if _cased(way) else lowered)
               for way in fact_ways(fact) for p in _fact_patterns(way))


def facts_present(facts: Sequence[Fact], text: str) -> list[Fact]:
    """The facts (as written in the set) that `text` states."""
    kept = normalize_text(text, lower=False)
    return [f for f in facts if fact_present(f, kept, normalized=True)]


# --- answering -----------------------------------------------------------------------------

FactsAnswerer = Callable[[FactQuestion], dict[str, Any]]


def _source_json(s: Any) -> dict[str, Any]:
    get = s.get if isinstance(s, Mapping) else (lambda name: getattr(s, name, None))
    out = {"source": str(get("source") or ""), "page": _page(get("page")),
           "chunk_id": get("chunk_id"), "score": get("score")}
    return out


def _token_json(token: Any) -> list[Any]:
    """A drawn token as a record keeps it: [text, log-probability], and where recorded the
    likeliest tokens at its place, [[text, log-probability], ...]."""
    out: list[Any] = [token.text, round(token.logprob, 4)]
    if token.top:
        out.append([[piece.decode("utf-8", "replace"), round(lp, 4)] for piece, lp in token.top])
    return out


class InProcessAnswerer:
    """Hearth in process: the chat service answers (storing nothing), and the question is also
    retrieved apart, `depth` chunks deep, for the retrieval ranks and "facts retrievable".

    With `retrieval_only`, nothing is generated: the ranks alone, and whether the relevance
    gate would have declined (no chunk of the top HEARTH_TOP_K reaches HEARTH_MIN_RELEVANCE).
    """

    def __init__(self, services: Services, *, depth: int = DEFAULT_DEPTH,
                 retrieval_only: bool = False, passages: int = PASSAGES_FOR_FACTS,
                 alternatives: int = 0) -> None:
        self.services = services
        self.alternatives = alternatives  # the likeliest tokens recorded at each drawn one
        self.settings = services.settings
        self.depth = max(depth, passages)
        self.passages = passages
        self.retrieval_only = retrieval_only
        self.chat = None if retrieval_only else Chat(services)
        if retrieval_only and not self.settings.query_expansion:
            # Retrieval needs only the index: the model is not loaded (Assistant.retrieve never
            # touches it). With HEARTH_QUERY_EXPANSION it drafts what retrieval searches with.
            assistant = Assistant(cast(Any, None), services.vectorstore, services.settings,
                                  services.reranker)
        else:
            assistant = services.assistant
        self.retrieve: Callable[..., list[Source]] = assistant.retrieve
        self.expand: Callable[[str], str] = assistant.expand

    @property
    def mode(self) -> str:
        return "retrieval" if self.retrieval_only else "answer"

    def __call__(self, question: FactQuestion) -> dict[str, Any]:
        result: dict[str, Any] = {}
        expansion = ""
        if self.chat is not None:
            started = time.perf_counter()
            answer = self.chat.answer(Ask(question.question, store=False, everything=True,
                                          alternatives=self.alternatives)).answer
            latency = time.perf_counter() - started
            expansion = getattr(answer, "expansion", "") or ""
            timings = dict(getattr(answer, "timings", None) or {})
            usage = dict(getattr(answer, "usage", None) or {})
            result |= {
                "hypothesis": answer.answer, "refused": bool(answer.refused),
                "grounded": getattr(answer, "grounded", None),
                "unsupported": list(getattr(answer, "unsupported", None) or []),
                "draft": getattr(answer, "draft", "") or "",
                "read": list(getattr(answer, "read", None) or []),
                "confidence": getattr(answer, "confidence", None),
                "tokens": [_token_json(t) for t in getattr(answer, "tokens", [])],
                "sources": [_source_json(s) for s in answer.sources],
                "latency_s": round(latency, 4), "first_token_s": timings.get("first_token_s"),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
            }
        elif self.settings.query_expansion:
            expansion = self.expand(question.question)
        started = time.perf_counter()
        # Ranked as the answer's passages were: with the same draft, when there is one.
        ranked = self.retrieve(question.question, k=self.depth, expansion=expansion)
        retrieval_s = time.perf_counter() - started
        if expansion:
            result["expansion"] = expansion
        result |= {
            "retrieved": [_source_json(s) for s in ranked],
            "passages": [s.snippet for s in ranked[:self.passages]],
            "retrieval_s": round(retrieval_s, 4),
        }
        if self.retrieval_only:
            top = ranked[:self.settings.top_k]
            result |= {"refused": not any(s.score >= self.settings.min_relevance for s in top),
                       "latency_s": round(retrieval_s, 4)}
        return result


class AloneAnswerer:
    """The language model alone, no retrieval (`hearth eval facts --no-retrieval`): what a
    model, fine-tuned or not, states of the documents from its weights. There are no sources,
    so no ranks and no grounding verdict; key-fact recall is what it measures."""

    mode = "answer"

    def __init__(self, llm: Any, persona: str, answer_words: int) -> None:
        from hearth.evaluation.run import ModelAnswerer

        self.ask = ModelAnswerer(llm, persona, answer_words)

    def __call__(self, question: FactQuestion) -> dict[str, Any]:
        answered = self.ask(question.question)
        return {
            "hypothesis": answered.answer, "refused": False, "grounded": None,
            "unsupported": [], "draft": "", "sources": None, "retrieved": None,
            "passages": None, "latency_s": round(answered.latency_s, 4),
            "first_token_s": answered.first_token_s,
            "prompt_tokens": answered.prompt_tokens,
            "completion_tokens": answered.completion_tokens,
        }


class UrlAnswerer:
    """A running Hearth by URL: POST /api/question, each question a new conversation of a
    fresh user (`user_id` fixed: every question as that one user, e.g. for a user's key).
    Ranks come from the answer's sources only (what the user sees)."""

    mode = "answer"

    def __init__(self, url: str, refusal: str, *, headers: dict[str, str] | None = None,
                 user_id: str | None = None, timeout_s: float = 300.0) -> None:
        import httpx

        self.endpoint = url.rstrip("/") + "/api/question"
        self.refusal = refusal.strip()
        self.user_id = user_id
        self._run = uuid.uuid4().hex[:8]
        self._client = httpx.Client(timeout=timeout_s, headers=headers or {})

    def __call__(self, question: FactQuestion) -> dict[str, Any]:
        user = self.user_id or f"hearth-eval-{self._run}-{question.id}"[:128]
        started = time.perf_counter()
        response = self._client.post(self.endpoint,
                                     json={"question": question.question, "user_id": user})
        latency = time.perf_counter() - started
        if response.status_code >= 400:
            raise RuntimeError(f"{self.endpoint} answered {response.status_code}: "
                               f"{response.text[:300]}")
        data = response.json()
        answer = data.get("answer") or ""
        refused = data.get("refused")
        usage = data.get("usage") or {}
        return {
            "hypothesis": answer,
            "refused": bool(refused) if refused is not None else answer.strip() == self.refusal,
            "grounded": data.get("grounded"),
            "unsupported": list(data.get("unsupported") or []),
            "draft": data.get("draft") or "",
            "sources": [_source_json(s) for s in data.get("sources") or []
                        if isinstance(s, Mapping)],
            "retrieved": None, "passages": None,
            "latency_s": round(latency, 4),
            "first_token_s": (data.get("timings") or {}).get("first_token_s"),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }


# --- per record ----------------------------------------------------------------------------


def score_fact_record(record: dict[str, Any]) -> dict[str, Any]:
    """Add the scores to a record (in place) from what it holds: the question's fields, and
    `hypothesis`, `refused`, `grounded`, `sources`, `retrieved`, `passages` as answered."""
    question = FactQuestion(
        id=str(record.get("id")), question=str(record.get("question") or ""),
        answerable=bool(record.get("answerable")), corpus=str(record.get("corpus") or ""),
        source=record.get("source"), page=_page(record.get("page")),
        key_facts=list(record.get("key_facts") or []),
        alt_sources=list(record.get("alt_sources") or []))
    scores: dict[str, Any] = {}
    if record.get("error"):
        record["scores"] = scores
        return record
    answered = record.get("mode", "answer") == "answer"
    refused = bool(record.get("refused"))
    if question.answerable:
        if record.get("sources") is not None:
            scores["answer_rank"], scores["answer_doc_rank"] = ranks(question, record["sources"])
        if record.get("retrieved") is not None:
            scores["retrieval_rank"], scores["retrieval_doc_rank"] = ranks(
                question, record["retrieved"])
        facts = question.key_facts
        if answered:
            found = [] if refused else facts_present(facts, record.get("hypothesis") or "")
            scores |= {"facts_found": found,
                       "fact_recall": len(found) / len(facts),
                       "all_facts": len(found) == len(facts)}
            grounded = record.get("grounded")
            scores["wrong_presented"] = (not refused and len(found) < len(facts)
                                         and grounded is not False)
            scores["presented_grounded"] = not refused and grounded is not False
            # An answer withheld by the grounding check: what its draft said tells what the
            # check cost (a right draft withheld) and what it saved (a wrong one).
            draft = record.get("draft") or ""
            said = draft if refused and draft else ("" if refused else
                                                    record.get("hypothesis") or "")
            in_draft = facts_present(facts, said)
            scores |= {"withheld": bool(refused and draft),
                       "draft_fact_recall": len(in_draft) / len(facts),
                       "withheld_right": bool(refused and draft) and len(in_draft) == len(facts)}
        if record.get("passages") is not None:
            in_passages = facts_present(facts, "\n".join(record["passages"]))
            scores["facts_retrievable"] = len(in_passages) / len(facts)
        if answered and record.get("read") is not None:
            # What the model was given, as its prompt gave it: a fact here and not in the
            # draft was lost by the model; one not here, before it.
            in_read = facts_present(facts, "\n".join(record["read"]))
            scores["facts_read"] = len(in_read) / len(facts)
    record["scores"] = scores
    return record


# --- the run -------------------------------------------------------------------------------


def run_facts(
    questions: Sequence[FactQuestion],
    answerer: FactsAnswerer,
    *,
    mode: str = "answer",
    records_path: Path | None = None,
    progress: bool = False,
    max_consecutive_errors: int = 5,
) -> list[dict[str, Any]]:
    """Answer and score every question; returns the records in the questions' order.

    With `records_path`, each record is appended as it is made and a later call resumes: a
    question already answered in the same `mode` without an error is not asked again. One
    failing question is recorded with its `error`; `max_consecutive_errors` in a row stop the
    run (the answerer is down) with `TooManyErrors`.
    """
    done: dict[str, dict[str, Any]] = {}
    if records_path is not None and records_path.exists():
        for line in read_jsonl(records_path):  # a later line for an id replaces an earlier one
            done[str(line.get("id"))] = line
    # A record is this question's answer only if the question is the same, word for word and
    # fact for fact: a set edited since (or another set with the same ids) is asked again.
    todo = [q for q in questions
            if not ((r := done.get(q.id)) and not r.get("error") and r.get("mode") == mode
                    and all(r.get(k) == v for k, v in q.to_json().items()))]
    writer = JsonlAppender(records_path) if records_path is not None else None
    streak = ErrorStreak(max_consecutive_errors)
    try:
        for question in progress_bar(todo, progress, "questions"):
            record: dict[str, Any] = question.to_json() | {"mode": mode}
            try:
                record |= answerer(question)
            except Exception as exc:  # one bad question must not lose a long run
                record |= {"error": f"{type(exc).__name__}: {exc}"}
            score_fact_record(record)
            done[question.id] = record
            if writer is not None:
                writer.write(record)
            streak.count(record)
    finally:
        if writer is not None:
            writer.close()
    records = [done[q.id] for q in questions if q.id in done]
    for record in records:
        score_fact_record(record)  # resumed ones too, as this version scores
    return records


# --- the summary ---------------------------------------------------------------------------


def _share(hits: int, n: int) -> dict[str, Any] | None:
    return {"value": hits / n, "hits": hits, "n": n} if n else None


def _mean(values: Sequence[float]) -> dict[str, Any] | None:
    return {"value": sum(values) / len(values), "n": len(values)} if values else None


def _rank_figures(prefix: str, answerable: list[dict[str, Any]], key: str,
                  ks: Sequence[int]) -> dict[str, Any]:
    with_ranks = [r for r in answerable if f"{key}_rank" in r["scores"]]
    if not with_ranks:
        return {}
    n = len(with_ranks)
    page = [r["scores"][f"{key}_rank"] for r in with_ranks]
    doc = [r["scores"][f"{key}_doc_rank"] for r in with_ranks]
    figures: dict[str, Any] = {}
    for k in ks:
        figures[f"{prefix}hit@{k}"] = _share(sum(1 for x in page if x and x <= k), n)
    for k in ks:
        figures[f"{prefix}doc_hit@{k}"] = _share(sum(1 for x in doc if x and x <= k), n)
    figures[f"{prefix}mrr"] = _mean([1 / x if x else 0.0 for x in page])
    return figures


def summarize_group(records: Sequence[dict[str, Any]], ks: Sequence[int] = DEFAULT_KS
                    ) -> dict[str, Any]:
    ok = [r for r in records if not r.get("error")]
    answerable = [r for r in ok if r.get("answerable")]
    unanswerable = [r for r in ok if not r.get("answerable")]
    answered = [r for r in answerable if "fact_recall" in r["scores"]]
    summary: dict[str, Any] = {
        "questions": len(records), "answerable": len(answerable),
        "unanswerable": len(unanswerable), "errors": len(records) - len(ok),
    }
    summary |= _rank_figures("", answerable, "answer", ks)
    summary |= _rank_figures("retrieval_", answerable, "retrieval", ks)
    summary["fact_recall"] = _mean([r["scores"]["fact_recall"] for r in answered])
    summary["all_facts"] = _share(sum(1 for r in answered if r["scores"]["all_facts"]),
                                  len(answered))
    retrievable = [r["scores"]["facts_retrievable"] for r in answerable
                   if "facts_retrievable" in r["scores"]]
    summary["facts_retrievable"] = _mean(retrievable)
    summary["facts_read"] = _mean([r["scores"]["facts_read"] for r in answered
                                   if "facts_read" in r["scores"]])
    summary["refusal_rate_unanswerable"] = _share(
        sum(1 for r in unanswerable if r.get("refused")), len(unanswerable))
    summary["withheld_unanswerable"] = _share(
        sum(1 for r in unanswerable if r.get("refused") and r.get("draft")), len(unanswerable))
    summary["false_refusals"] = _share(sum(1 for r in answerable if r.get("refused")),
                                       len(answerable))
    summary["wrong_presented"] = _share(
        sum(1 for r in answered if r["scores"]["wrong_presented"]), len(answered))
    summary["presented_grounded"] = _share(
        sum(1 for r in answered if r["scores"].get("presented_grounded")), len(answered))
    summary["draft_fact_recall"] = _mean(
        [r["scores"]["draft_fact_recall"] for r in answered if "draft_fact_recall" in r["scores"]])
    summary["withheld"] = _share(sum(1 for r in answered if r["scores"].get("withheld")),
                                 len(answered))
    summary["withheld_right"] = _share(
        sum(1 for r in answered if r["scores"].get("withheld_right")), len(answered))
    generated = [r for r in unanswerable if r.get("mode", "answer") == "answer"]
    summary["unanswerable_presented"] = _share(
        sum(1 for r in generated if not r.get("refused") and r.get("grounded") is not False),
        len(generated))
    latency = [float(r["latency_s"]) for r in ok if r.get("latency_s") is not None]
    first = [float(r["first_token_s"]) for r in ok if r.get("first_token_s") is not None]
    summary["latency_s"] = {"median": _percentile(latency, 0.5), "p90": _percentile(latency, 0.9),
                            "n": len(latency)} if latency else None
    summary["first_token_s"] = {"median": _percentile(first, 0.5), "p90": _percentile(first, 0.9),
                                "n": len(first)} if first else None
    return summary


def summarize_facts(records: Sequence[dict[str, Any]], ks: Sequence[int] = DEFAULT_KS
                    ) -> dict[str, Any]:
    """The figures overall and per corpus (in the order corpora first appear)."""
    ks = sorted(set(ks))
    corpora: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        corpora.setdefault(str(r.get("corpus") or UNANSWERABLE), []).append(r)
    modes = sorted({str(r.get("mode", "answer")) for r in records})
    verdict = any(r.get("grounded") is not None for r in records)
    return {
        "ks": ks, "modes": modes, "grounding_verdict": verdict,
        "groups": {OVERALL: summarize_group(records, ks)}
        | {name: summarize_group(rs, ks) for name, rs in corpora.items()},
        "errors": [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")],
    }


def load_facts_run(path: Path) -> list[dict[str, Any]]:
    """The records of a `hearth eval facts` run folder (or its records.jsonl or results.json),
    scored as this version scores; a later line for an id replaces an earlier one."""
    from hearth.evaluation.records import RECORDS_FILE

    folder = path if path.is_dir() else None
    if folder is not None:
        path = folder / RESULTS_FILE if (folder / RESULTS_FILE).exists() else folder / RECORDS_FILE
    if not path.exists():
        raise EvalDataError(f"{path}: no key-fact run here (run `hearth eval facts` first)")
    if path.suffix == ".json":
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("kind") != FACTS_RESULTS_KIND:
            raise EvalDataError(f"{path}: not the results of `hearth eval facts`")
        lines = document.get("records") or []
    else:
        lines = list(read_jsonl(path))
    by_id = {str(line.get("id")): line for line in lines if isinstance(line, dict)}
    return [score_fact_record(dict(record)) for record in by_id.values()]


FACT_METRICS = ("fact_recall", "all_facts")


def fact_metrics(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, float]]:
    """For `hearth eval compare --facts`: each key-fact run's recall and share of answers with
    every fact, over the answerable questions every run answered without an error."""
    ids = set.intersection(*({str(r["id"]) for r in records if not r.get("error")
                              and r.get("answerable")} for records in runs))
    if not ids:
        raise EvalDataError("the key-fact runs share no answered question: they do not come "
                            "from the same question set")
    metrics = []
    for records in runs:
        group = summarize_group([r for r in records if str(r["id"]) in ids])
        metrics.append({f"facts/{key}": group[key]["value"] for key in FACT_METRICS
                        if group.get(key)} | {"facts/questions": float(len(ids))})
    return metrics


# --- the report ----------------------------------------------------------------------------


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of each figure, in report order."""
    ks = summary["ks"]
    retrieval_only = summary["modes"] == ["retrieval"]
    refused = "declined by the relevance gate" if retrieval_only else "refused"
    rows = [("questions", "questions"), ("answerable", "answerable"),
            ("unanswerable", "unanswerable")]
    rows += [(f"hit@{k}", f"hit@{k} (expected page among the answer's sources)") for k in ks]
    rows += [(f"doc_hit@{k}", f"document hit@{k} (answer's sources, any page)") for k in ks]
    rows += [("mrr", "MRR (answer's sources)")]
    rows += [(f"retrieval_hit@{k}", f"hit@{k} (retrieval ranks)") for k in ks]
    rows += [(f"retrieval_doc_hit@{k}", f"document hit@{k} (retrieval ranks)") for k in ks]
    rows += [("retrieval_mrr", "MRR (retrieval ranks)"),
             ("fact_recall", "key-fact recall (mean share of facts in the answer)"),
             ("all_facts", "answers with every key fact"),
             ("facts_retrievable",
              f"facts retrievable (in the top {PASSAGES_FOR_FACTS} passages)"),
             ("facts_read", "key facts in what the model read (its passages as the prompt "
              "gave them)"),
             ("refusal_rate_unanswerable", f"unanswerable questions {refused}"),
             ("false_refusals", f"answerable questions {refused} (false refusals)"),
             ("wrong_presented",
              VERDICT_LABEL if summary["grounding_verdict"] else NO_VERDICT_LABEL),
             ("presented_grounded", "answerable questions answered as grounded"),
             ("draft_fact_recall", "key-fact recall of the model's drafts (before the check)"),
             ("withheld", "answerable questions withheld by the grounding check"),
             ("withheld_right", "... withheld although the draft had every key fact"),
             ("withheld_unanswerable", "unanswerable questions withheld by the grounding check"),
             ("unanswerable_presented",
              "unanswerable questions answered as grounded" if summary["grounding_verdict"]
              else "unanswerable questions answered (no grounding verdict yet)"),
             ("latency_s", "retrieval latency, s" if retrieval_only else "latency, s (total)"),
             ("first_token_s", "first token, s"),
             ("errors", "errors (left out of every figure)")]
    if retrieval_only:  # nothing was answered, so nothing was checked or withheld
        rows = [row for row in rows if row[0] not in ANSWER_ONLY]
    return rows


ANSWER_ONLY = {"wrong_presented", "presented_grounded", "draft_fact_recall", "withheld",
               "withheld_right", "withheld_unanswerable", "unanswerable_presented",
               "first_token_s"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if "median" in value:
        return f"{value['median']:.2f} / p90 {value['p90']:.2f}"
    if "hits" in value:
        return f"{value['value']:.3f} ({value['hits']}/{value['n']})"
    return f"{value['value']:.3f} (n={value['n']})"


def summary_table(summary: Mapping[str, Any], title: str = "Key facts") -> str:
    groups = summary["groups"]
    names = list(groups)
    lines = [f"# {title}", "", "| figure | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for key, label in _rows(summary):
        cells = [groups[name].get(key) for name in names]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(c) for c in cells) + " |")
    notes = []
    if summary["modes"] == ["retrieval"]:
        notes.append("Retrieval only: nothing was generated; \"declined by the relevance gate\" "
                     "means no chunk of the top HEARTH_TOP_K reached HEARTH_MIN_RELEVANCE.")
    if not summary["grounding_verdict"] and summary["modes"] != ["retrieval"]:
        notes.append("Answers carry no grounding verdict yet: every answer that was not "
                     "refused and misses a key fact counts as a wrong answer presented.")
    if summary["errors"]:
        notes.append(f"{len(summary['errors'])} questions failed: "
                     + ", ".join(e["id"] for e in summary["errors"][:10])
                     + (" ..." if len(summary["errors"]) > 10 else "")
                     + " (see `error` in results.json).")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def write_facts_report(run_dir: Path, records: list[dict[str, Any]], summary: Mapping[str, Any],
                       config: Mapping[str, Any], title: str = "Key facts") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    document = {"kind": FACTS_RESULTS_KIND, "config": dict(config), "summary": dict(summary),
                "records": records}
    (run_dir / RESULTS_FILE).write_text(json.dumps(document, ensure_ascii=False, indent=1),
                                        encoding="utf-8")
    (run_dir / SUMMARY_FILE).write_text(summary_table(summary, title), encoding="utf-8")
