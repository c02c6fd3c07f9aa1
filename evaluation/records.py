"""The files the toolkit reads and writes: datasets, per-question results, fine-tuning data.

A dataset is JSONL, one `Question` a line. A run's results are a JSON document
(`results.json`: config, summary, records) beside an append-only `records.jsonl` that makes
runs resumable, and `config.json`, the system that made them, written as the run starts.
`load_results` also reads the origin's published files (a JSON list with `reference`,
`hypothesis`, `training_data` and judge fields), so they can be re-scored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_KIND = "hearth-eval-results"
RESULTS_FILE = "results.json"
RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"  # the system a run asks, written before its first question

# The origin's fine-tuning format (OpenAI's legacy prompt/completion files).
FINETUNE_PROMPT = "QUESTION: {question}\n\n###\n\n"
FINETUNE_COMPLETION = " {reference} END"

# Keys of a result record that are not judge ratings, whatever their shape.
_RECORD_KEYS = {
    "id", "question", "reference", "hypothesis", "source", "chunk_id", "title", "page",
    "refused", "latency_s", "first_token_s", "prompt_tokens", "completion_tokens",
    "retrieved", "cited", "rank", "rouge", "judges", "error", "training_data",
}
RATINGS = tuple(str(r) for r in range(11))
_JUDGE_KEY = re.compile(r"gpt|judge|rating|llm|claude|llama|qwen|mistral", re.IGNORECASE)
ROUGE_IMPLEMENTATIONS = ("rouge-score", "rouge")


class EvalDataError(ValueError):
    """A dataset or results file cannot be read; the message says which and why."""


@dataclass
class Question:
    """One generated question, with the chunk that answers it."""

    id: str
    question: str
    reference: str
    source: str | None = None
    chunk_id: str | None = None
    title: str | None = None
    page: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "") -> Question:
        missing = [k for k in ("id", "question", "reference") if not data.get(k)]
        if missing:
            raise EvalDataError(f"{where}: missing {', '.join(missing)}")
        wrong = [k for k in ("id", "question", "reference", "source", "chunk_id", "title")
                 if data.get(k) is not None and not isinstance(data[k], str)]
        page = data.get("page")
        if page is not None and (not isinstance(page, int) or isinstance(page, bool)):
            wrong.append("page")
        if wrong:
            raise EvalDataError(f"{where}: {', '.join(wrong)} must be "
                                f"{'text' if wrong != ['page'] else 'a number'}")
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


# --- JSONL ---------------------------------------------------------------------------------


def read_jsonl(path: Path, *, torn_tail: bool = True) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file. A torn last line (a run killed mid-write) is skipped,
    unless ``torn_tail`` is false: a file a person wrote, where it is a mistake to point at."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise EvalDataError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8"
                            ) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and number == len(lines):
                return
            raise EvalDataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise EvalDataError(f"{path}:{number}: not a JSON object, one to a line")
        yield data


class JsonlAppender:
    """Appends one object a line, flushed at once, so an interrupted job loses one line at most."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(path)
        self._file = path.open("a", encoding="utf-8")

    def write(self, obj: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


# --- datasets ------------------------------------------------------------------------------


def load_questions(path: Path) -> list[Question]:
    """The questions of a dataset, in order. Ids must be unique: a run keys its records by id,
    so a second question under one id would never be asked, or would take the first's answer."""
    if not path.exists():
        raise EvalDataError(f"dataset {path} not found: write one with `hearth eval generate`")
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for i, obj in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        question = Question.from_json(obj, where)
        if question.id in seen:
            raise EvalDataError(f"{where}: id {question.id!r} already used at "
                                f"{seen[question.id]}")
        seen[question.id] = where
        questions.append(question)
    if not questions:
        raise EvalDataError(f"dataset {path} is empty")
    return questions


def finetune_example(question: str, reference: str) -> dict[str, str]:
    return {
        "prompt": FINETUNE_PROMPT.format(question=question),
        "completion": FINETUNE_COMPLETION.format(reference=reference),
    }


def write_finetune(questions: Iterable[Question], path: Path) -> int:
    """Write the dataset in the origin's fine-tuning format; returns the number of examples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for q in questions:
            out.write(json.dumps(finetune_example(q.question, q.reference), ensure_ascii=False))
            out.write("\n")
            n += 1
    return n


# --- results -------------------------------------------------------------------------------


def load_results(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read results in any supported shape; returns (records, the run's config or {}).

    `path` may be a run folder, a `results.json`, a `records.jsonl`, or a JSON list of records
    such as the origin's `measure-results-*.json`.
    """
    if path.is_dir():
        for name in (RESULTS_FILE, RECORDS_FILE):
            if (path / name).exists():
                return load_results(path / name)
        raise EvalDataError(f"{path} holds no {RESULTS_FILE} or {RECORDS_FILE}")
    if not path.exists():
        raise EvalDataError(f"results file {path} not found")
    if path.suffix == ".jsonl":
        raw: Any = list(read_jsonl(path))
        config: dict[str, Any] = {}
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvalDataError(f"{path}: not JSON ({exc.msg})") from None
        config = {}
        if isinstance(raw, dict):
            config = dict(raw.get("config") or {})
            raw = raw.get("records", raw.get("data"))
    if not isinstance(raw, list) or not raw:
        raise EvalDataError(f"{path}: expected a non-empty list of records")
    records = [normalize_record(r, i, f"{path}[{i}]") for i, r in enumerate(raw)]
    return records, config


def normalize_record(raw: Any, index: int, where: str) -> dict[str, Any]:
    """Bring a record to Hearth's shape: question, reference, hypothesis, judges{name: {...}}."""
    if not isinstance(raw, Mapping):
        raise EvalDataError(f"{where}: a record must be an object")
    missing = [k for k in ("reference", "hypothesis") if not isinstance(raw.get(k), str)]
    if missing:
        raise EvalDataError(f"{where}: missing {', '.join(missing)}")
    record = {k: v for k, v in raw.items() if k in _RECORD_KEYS}
    if not set(record.get("rouge") or {}) <= set(ROUGE_IMPLEMENTATIONS):
        del record["rouge"]  # stored in another shape (the origin's); scoring recomputes it
    record.setdefault("id", str(index))
    record["id"] = str(record["id"])
    if not record.get("question"):
        prompt = (raw.get("training_data") or {}).get("prompt", "")
        record["question"] = question_from_finetune_prompt(prompt)
    judges = dict(record.get("judges") or {})
    # Foreign files hold ratings under their own keys (the origin: gpt35, gpt4): a distribution
    # over "0".."10" under any key, a plain number under a key that names a judge.
    for key, value in raw.items():
        if key in _RECORD_KEYS or (judgement := judgement_from_value(value)) is None:
            continue
        if judgement["distribution"] is not None or _JUDGE_KEY.search(key):
            judges[key] = judgement
    record["judges"] = judges
    return record


def question_from_finetune_prompt(prompt: str) -> str:
    text = prompt.removeprefix("QUESTION: ")
    return text.removesuffix("\n\n###\n\n").strip()


def expected_rating(distribution: Mapping[str, float]) -> float | None:
    """Sum of rating x probability over "0".."10", renormalised; None without any mass."""
    total = sum(distribution.values())
    if total <= 0:
        return None
    return sum(int(r) * p for r, p in distribution.items()) / total


def judgement_from_value(value: Any) -> dict[str, Any] | None:
    """A stored rating: a distribution over "0".."10" (expected value) or a plain number."""
    if isinstance(value, Mapping) and value and set(value) <= set(RATINGS):
        distribution = {str(k): float(v) for k, v in value.items()}
        return {
            "rating": expected_rating(distribution),
            "distribution": distribution,
            "method": "logprobs",
        }
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:
            rating = float(str(value).strip())
        except ValueError:
            return None
        if math.isfinite(rating) and 0 <= rating <= 10:
            return {"rating": rating, "distribution": None, "method": "number"}
    return None


def write_config(run_dir: Path, config: Mapping[str, Any]) -> Path:
    """The run's config, written as it starts: a run killed before `results.json` still says
    which system made its records, so that another is not resumed into them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    path.write_text(json.dumps(dict(config), ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_results(
    run_dir: Path, records: list[dict[str, Any]], summary: Mapping[str, Any],
    config: Mapping[str, Any],
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS_FILE
    document = {"kind": RESULTS_KIND, "config": dict(config), "summary": dict(summary),
                "records": records}
    path.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
