"""Answer a dataset through Hearth and score every answer.

An `Answerer` turns a question into an `Answered` (the answer, the ranked chunk ids that
retrieval found or the pages the answer cited, refusal, latency, tokens). Three exist: Hearth
in process (its chat service), the model alone, and a running Hearth API by URL. Records
are appended to `records.jsonl` as they are made, so an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.chat import Ask, Chat
from hearth.evaluation.generate import progress_bar
from hearth.evaluation.judge import Judge
from hearth.evaluation.records import JsonlAppender, Question, read_jsonl
from hearth.evaluation.scoring import score_record


@dataclass
class Answered:
    answer: str
    retrieved: list[str] | None  # chunk ids, best first; None when the answerer cannot tell
    refused: bool | None = None
    latency_s: float | None = None
    first_token_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # The answer's sources, best first, each {"source", "page", "chunk_id"}: what a running
    # Hearth tells of its retrieval, one a document page (None in process).
    cited: list[dict[str, Any]] | None = None


Answerer = Callable[[str], Answered]


class ChatAnswerer:
    """Hearth in process: the chat service answers (as every face asks, but storing nothing),
    and the chain's retrieval ranks.

    Retrieval is ranked apart from the answer, `depth` chunks deep, so hit@k can look
    further than the chunks that made it into the prompt.
    """

    def __init__(self, chat: Chat, depth: int = 10) -> None:
        self.chat = chat
        self.depth = depth

    def __call__(self, question: str) -> Answered:
        started = time.perf_counter()
        answer = self.chat.answer(Ask(question, store=False, everything=True)).answer
        latency = time.perf_counter() - started
        ranked = self.chat.services.assistant.retrieve(question, k=self.depth)
        usage = dict(getattr(answer, "usage", None) or {})
        timings = dict(getattr(answer, "timings", None) or {})
        return Answered(
            answer=answer.answer,
            retrieved=[str(s.chunk_id) for s in ranked if getattr(s, "chunk_id", None)],
            refused=bool(answer.refused),
            latency_s=latency,
            first_token_s=timings.get("first_token_s"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )


class ModelAnswerer:
    """The language model alone, without retrieval: the question under Hearth's persona and
    nothing else. What a fine-tuned model knows of the documents is in its weights; this is how
    the study of retrieval against fine-tuning asks it (docs/evaluation.md)."""

    def __init__(self, llm: Any, persona: str, answer_words: int) -> None:
        self.llm = llm
        self.answer_words = answer_words
        self.rules = f"{persona} Answer in at most {answer_words} words."

    def __call__(self, question: str) -> Answered:
        from langchain_core.messages import HumanMessage, SystemMessage

        from hearth.llm import Generation
        from hearth.model import within_words, without_repeats

        usage = Generation()
        pieces: list[str] = []
        first: float | None = None
        started = time.perf_counter()
        # Held to the word budget as the chain holds Hearth's answers, so that the systems of
        # the study differ only in the documents and the adapter, not in how long they talk.
        streamed = self.llm.stream([SystemMessage(self.rules), HumanMessage(question)],
                                   usage=usage)
        for piece in within_words(streamed, self.answer_words):
            first = first if first is not None else time.perf_counter() - started
            pieces.append(piece)
        return Answered(answer=without_repeats("".join(pieces).strip()), retrieved=None,
                        refused=False,
                        latency_s=time.perf_counter() - started, first_token_s=first,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens)


class ApiAnswerer:
    """A running Hearth by URL: POST /api/question, each question a new conversation.

    Ranks come from the answer's sources, which the API merges to one a document and page,
    under the id of the page's best chunk: the expected chunk counts as found where its
    document and page are cited (`scoring.cited_rank`), whichever of the page's chunks led.
    So hit@k here is of pages (of documents, for those without pages) and looks only as deep
    as the server's HEARTH_TOP_K; in process it is of chunks, `depth` deep.
    """

    def __init__(self, url: str, refusal: str, *, user_id: str = "hearth-eval",
                 headers: dict[str, str] | None = None, timeout_s: float = 300.0) -> None:
        import httpx

        self.endpoint = url.rstrip("/") + "/api/question"
        self.refusal = refusal.strip()
        self.user_id = user_id
        self._client = httpx.Client(timeout=timeout_s, headers=headers or {})

    def __call__(self, question: str) -> Answered:
        body = {"question": question, "user_id": self.user_id}
        started = time.perf_counter()
        response = self._client.post(self.endpoint, json=body)
        latency = time.perf_counter() - started
        if response.status_code >= 400:
            raise RuntimeError(f"{self.endpoint} answered {response.status_code}: "
                               f"{response.text[:300]}")
        data = response.json()
        answer = data.get("answer") or ""
        usage = data.get("usage") or {}
        refused = data.get("refused")
        return Answered(
            answer=answer,
            retrieved=None,
            cited=[{"source": s.get("source"), "page": s.get("page"),
                    "chunk_id": s.get("chunk_id")}
                   for s in data.get("sources") or [] if isinstance(s, dict)],
            refused=bool(refused) if refused is not None else answer.strip() == self.refusal,
            latency_s=latency,
            first_token_s=(data.get("timings") or {}).get("first_token_s"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )


class TooManyErrors(RuntimeError):
    """Every question of a row failed: the answerer is down, not one question odd."""


class ErrorStreak:
    """Stops a run, with ``TooManyErrors``, once ``limit`` records in a row hold an error."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_row = limit, 0

    def count(self, record: dict[str, Any]) -> bool:
        """Count ``record``; True when it holds no error."""
        if not record.get("error"):
            self.in_row = 0
            return True
        self.in_row += 1
        if self.in_row >= self.limit:
            raise TooManyErrors(f"{self.in_row} questions in a row failed, the last with "
                                f"{record['error']}")
        return False


def answer_record(question: Question, answerer: Answerer) -> dict[str, Any]:
    record: dict[str, Any] = question.to_json()
    try:
        answered = answerer(question.question)
    except Exception as exc:  # one bad question must not lose a long run
        record |= {"hypothesis": "", "error": f"{type(exc).__name__}: {exc}"}
        return record
    record |= {
        "hypothesis": answered.answer,
        "retrieved": answered.retrieved,
        "cited": answered.cited,
        "refused": answered.refused,
        "latency_s": answered.latency_s,
        "first_token_s": answered.first_token_s,
        "prompt_tokens": answered.prompt_tokens,
        "completion_tokens": answered.completion_tokens,
    }
    return record


def judge_record(record: dict[str, Any], judge: Judge) -> dict[str, Any]:
    try:
        judgement = judge.rate(record["question"], record["reference"], record["hypothesis"])
        result = judgement.to_json()
    except Exception as exc:
        result = {"rating": None, "distribution": None, "output": "", "method": "none",
                  "error": f"{type(exc).__name__}: {exc}"}
    record.setdefault("judges", {})[judge.name] = result
    return record


def run_eval(
    questions: Sequence[Question],
    answerer: Answerer,
    *,
    judge: Judge | None = None,
    records_path: Path | None = None,
    progress: bool = False,
    max_consecutive_errors: int = 5,
) -> list[dict[str, Any]]:
    """Answer, score and judge every question; returns the records in dataset order.

    With `records_path`, each record is appended as it is made and a later call resumes: a
    question that failed (its record holds an `error`) is asked again, and its new record
    replaces the old.
    """
    done: dict[str, dict[str, Any]] = {}
    if records_path is not None and records_path.exists():
        # a later line for an id replaces an earlier one
        done = {str(r["id"]): r for r in read_jsonl(records_path)}
    todo = [q for q in questions if q.id not in done or done[q.id].get("error")]
    writer = JsonlAppender(records_path) if records_path is not None else None
    streak = ErrorStreak(max_consecutive_errors)
    try:
        for question in progress_bar(todo, progress, "answers"):
            record = score_record(answer_record(question, answerer))
            if streak.count(record) and judge is not None:
                judge_record(record, judge)
            done[question.id] = record
            if writer is not None:
                writer.write(record)
    finally:
        if writer is not None:
            writer.close()
    return [done[q.id] for q in questions if q.id in done]


def rescore(records: list[dict[str, Any]], judge: Judge | None = None,
            progress: bool = False) -> list[dict[str, Any]]:
    """Score existing answers again (ROUGE always, the judge if one is given); a failed
    question has no answer to score."""
    for record in progress_bar(records, progress, "records"):
        score_record(record)
        if judge is not None and not record.get("error"):
            judge_record(record, judge)
    return records
