"""The evaluation toolkit's parts that need no model: files, sampling, metrics, judge maths."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from hearth.evaluation.compare import compare, tally
from hearth.evaluation.generate import (
    BoilerplateFilter,
    Chunk,
    RateLimiter,
    clean_question,
    content_chunks,
    generate,
    sample_chunks,
)
from hearth.evaluation.judge import (
    expected_rating,
    judgement_from_token_steps,
    parse_rating,
    rating_distribution,
)
from hearth.evaluation.records import (
    JsonlAppender,
    Question,
    finetune_example,
    judgement_from_value,
    load_questions,
    normalize_record,
    read_jsonl,
    write_finetune,
)
from hearth.evaluation.scoring import (
    flatten,
    rank_of,
    retrieval_summary,
    rouge_package_scores,
    score_record,
    summarize,
)

PROSE = ("Thankfully this year has felt a bit more like a normal year. I saw slightly more "
         "people in person, got into a groove at work, and continued to play and have fun with "
         "my daughter. It is not quite like it was before but it does not feel strange.")


# --- the judge's expected value ------------------------------------------------------------------


def test_expected_rating_is_the_probability_weighted_mean() -> None:
    assert expected_rating({"7": 0.5, "9": 0.5}) == 8.0
    assert expected_rating({"10": 0.2, "0": 0.2}) == 5.0  # renormalised
    assert expected_rating({"3": 0.0}) is None


def test_distribution_from_top_logprobs_sums_spellings_and_ignores_other_tokens() -> None:
    first = {"8": math.log(0.5), " 8": math.log(0.1), "9": math.log(0.2), "The": math.log(0.2)}
    distribution = rating_distribution(first)
    assert distribution is not None
    assert distribution["8"] == pytest.approx(0.75)
    assert distribution["9"] == pytest.approx(0.25)
    assert sum(distribution.values()) == pytest.approx(1.0)
    assert rating_distribution({"The": -0.1}) is None


def test_a_first_one_is_split_between_1_and_10_by_the_next_token() -> None:
    first = {"1": math.log(0.6), "9": math.log(0.4)}
    distribution = rating_distribution(first, after_one={"0": math.log(0.75), "<eos>": -2.0})
    assert distribution is not None
    assert distribution["10"] == pytest.approx(0.45)
    assert distribution["1"] == pytest.approx(0.15)
    assert expected_rating(distribution) == pytest.approx(0.15 + 4.5 + 3.6)


@pytest.mark.parametrize(("text", "rating"), [
    ("8", 8.0), ("7.", 7.0), ("10", 10.0), ("Rating: 9/10", 9.0), ("8.5", 8.5), ("none", None),
    ("42", None),
])
def test_plain_numbers_when_there_are_no_logprobs(text: str, rating: float | None) -> None:
    assert parse_rating(text) == rating


def test_openai_shaped_logprobs_give_the_expected_value() -> None:
    # The shape of OpenAI's chat completion `logprobs.content` (and of Ollama's `logprobs`).
    steps = [
        {"token": "1", "logprob": math.log(0.5), "top_logprobs": [
            {"token": "1", "logprob": math.log(0.5)}, {"token": "8", "logprob": math.log(0.5)}]},
        {"token": "0", "logprob": math.log(0.9), "top_logprobs": [
            {"token": "0", "logprob": math.log(0.9)}, {"token": "<|im_end|>",
                                                       "logprob": math.log(0.1)}]},
    ]
    judgement = judgement_from_token_steps("10", steps)
    assert judgement.method == "logprobs"
    assert judgement.distribution is not None
    assert judgement.distribution["10"] == pytest.approx(0.45)
    assert judgement.rating == pytest.approx(0.05 * 1 + 0.45 * 10 + 0.5 * 8)
    assert judgement_from_token_steps("7", None).rating == 7.0


def test_stored_ratings_are_read_from_foreign_files() -> None:
    stored = judgement_from_value({"0": 0.0, "7": 0.25, "10": 0.75})
    assert stored is not None and stored["rating"] == pytest.approx(9.25)
    assert judgement_from_value("7.") == {"rating": 7.0, "distribution": None, "method": "number"}
    assert judgement_from_value("very good") is None
    assert judgement_from_value({"rouge-1": {"f": 0.3}}) is None
    record = normalize_record({
        "reference": "r", "hypothesis": "h", "training_data": {"prompt": "QUESTION: Q?\n\n###\n\n"},
        "gpt4": "8", "my_judge": 6, "p_rating": {"9": 1.0}, "index": 3, "bleu": 0.2,
        "rouge": {"rouge-1": {"f": 0.3, "p": 0.3, "r": 0.3}},
    }, 0, "test")
    assert record["question"] == "Q?"
    assert set(record["judges"]) == {"gpt4", "my_judge", "p_rating"}
    assert "rouge" not in record  # the origin's stored shape; scoring recomputes it


# --- files -----------------------------------------------------------------------------------------


def test_jsonl_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": "a"})
    path.write_text(path.read_text() + '{"id": "b", "quest')  # killed mid-write
    assert [r["id"] for r in read_jsonl(path)] == ["a"]
    with JsonlAppender(path) as out:  # appending drops the torn line first
        out.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "c"]


def test_fine_tuning_format_is_the_origins(tmp_path: Path) -> None:
    assert finetune_example("Why?", "Because.") == {
        "prompt": "QUESTION: Why?\n\n###\n\n", "completion": " Because. END"}
    path = tmp_path / "ft.jsonl"
    assert write_finetune([Question("1", "Why?", "Because.")], path) == 1
    assert json.loads(path.read_text())["completion"] == " Because. END"


def test_datasets_name_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "question": "Q?"}\n')
    with pytest.raises(ValueError, match="missing reference"):
        load_questions(path)
    with pytest.raises(ValueError, match="hearth eval generate"):
        load_questions(tmp_path / "absent.jsonl")


def test_a_dataset_with_an_id_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "q1", "question": "A?", "reference": "a"}\n'
                    '{"id": "q2", "question": "B?", "reference": "b"}\n'
                    '{"id": "q1", "question": "C?", "reference": "c"}\n')
    with pytest.raises(ValueError, match=f"{path}:3: id 'q1' already used at {path}:1"):
        load_questions(path)


# --- generation without a model ---------------------------------------------------------------------


def test_boilerplate_is_left_out() -> None:
    footer = "Copyright 2023 Brian Keng. All rights reserved. Powered by Nikola and Bootstrap."
    chunks = [
        Chunk("prose", PROSE),
        Chunk("short", "Posted in life."),
        Chunk("related", "Related Posts " + PROSE),
        Chunk("table", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26"),
        Chunk("footer-1", footer * 3),
        Chunk("footer-2", footer * 3),
        Chunk("marked", PROSE + " again", {"boilerplate": True}),
    ]
    kept, skipped = content_chunks(chunks, BoilerplateFilter())
    assert [c.id for c in kept] == ["prose"]
    assert skipped == {"short": 1, "pattern": 1, "not prose": 1, "repeated": 2, "marked": 1}


def test_the_sample_depends_on_the_seed_not_the_order() -> None:
    chunks = [Chunk(f"c{i}", PROSE) for i in range(30)]
    first = [c.id for c in sample_chunks(chunks, 5, seed=1)]
    assert [c.id for c in sample_chunks(list(reversed(chunks)), 5, seed=1)] == first
    assert [c.id for c in sample_chunks(chunks, 5, seed=2)] != first
    assert len(sample_chunks(chunks, None, seed=1)) == 30


@pytest.mark.parametrize(("raw", "question"), [
    ("What year felt normal?", "What year felt normal?"),
    ('Question: "Did 2022 feel normal to you?"\nThis asks about...', "Did 2022 feel normal to you?"),
    ("\n**Q:** How was work?", "How was work?"),
    ("", ""),
    # What a 0.5B model wrote for chunks of the Python tutorial: a heading, an answer, a number.
    ("5. Data Structures — Python 3.11.2 documentation › 5.5. Dictionaries", ""),
    ("The continue statement continues with the next iteration of the loop.", ""),
    ("0.1", ""),
    ("4.3. The range() Function\nHow do I iterate over a sequence of numbers?",
     "How do I iterate over a sequence of numbers?"),
])
def test_questions_are_cleaned(raw: str, question: str) -> None:
    assert clean_question(raw) == question


def test_rate_limit_spaces_calls() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(per_minute=30, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [2.0, 2.0]


def test_generation_from_an_empty_index_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ingest documents first"):
        generate([], lambda p: "Q?", tmp_path / "q.jsonl")
    with pytest.raises(ValueError, match="all boilerplate"):
        generate([Chunk("a", "Too short.")], lambda p: "Q?", tmp_path / "q.jsonl")


def test_a_chunk_that_gives_no_question_is_replaced_by_the_next(tmp_path: Path) -> None:
    chunks = [Chunk(f"c{i}", f"{PROSE} Number {i}.") for i in range(6)]
    replies = iter(["A heading", "Still a heading", "What is asked here?", "And here?", "Why?",
                    "How about this one?"])
    out = tmp_path / "q.jsonl"
    report = generate(chunks, lambda p: next(replies), out, n=2, seed=3)
    assert (report.written, report.failed) == (2, 1)  # the first chunk failed twice
    assert [q.question for q in load_questions(out)] == ["What is asked here?", "And here?"]


def test_generation_resumes_where_it_stopped(tmp_path: Path) -> None:
    chunks = [Chunk(f"c{i}", f"{PROSE} Number {i}.", {"source": f"/blog/{i}.html"})
              for i in range(6)]
    prompts: list[str] = []

    def write_question(prompt: str) -> str:
        prompts.append(prompt)
        if len(prompts) == 3:
            raise KeyboardInterrupt  # the user stops the run
        return f"Question {len(prompts)}?"

    out = tmp_path / "q.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate(chunks, write_question, out, n=4, seed=3)
    assert len(list(read_jsonl(out))) == 2
    assert prompts[0].startswith("Write a concise question in as few words as possible to the "
                                 "author in the second person that has the following TEXT as "
                                 "the answer.\n\n### TEXT ###\n")
    report = generate(chunks, lambda p: "Question again?", out, n=4, seed=3)
    assert (report.resumed, report.written) == (2, 2)
    questions = load_questions(out)
    assert len({q.chunk_id for q in questions}) == 4
    assert all(q.reference.startswith(PROSE) and q.source for q in questions)


# --- metrics -----------------------------------------------------------------------------------------


def test_hit_at_k_and_mrr() -> None:
    records = [
        {"chunk_id": "a", "retrieved": ["a", "b", "c"]},
        {"chunk_id": "b", "retrieved": ["a", "c", "b"]},
        {"chunk_id": "z", "retrieved": ["a", "b", "c"]},
        {"chunk_id": "q"},  # not answered in process: no ranking
    ]
    assert rank_of("b", ["a", "c", "b"]) == 3
    summary = retrieval_summary(records, ks=(1, 3))
    assert summary == {"n": 3, "hit@1": 1 / 3, "hit@3": 2 / 3, "mrr": (1 + 1 / 3) / 3, "depth": 3}


def test_rouge_of_long_single_sentence_texts() -> None:
    # The `rouge` package recurses once a word in ROUGE-L: 3,000 words outgrow Python's limit.
    reference = " ".join(f"w{i % 300}" for i in range(3000))
    scores = rouge_package_scores(reference[:2000], reference)
    assert scores["rouge-l"]["p"] == pytest.approx(1.0)
    assert rouge_package_scores("", reference)["rouge-1"]["f"] == 0.0


def test_summary_covers_refusals_latency_and_tokens() -> None:
    records = [
        score_record({"id": "1", "reference": "the cat sat", "hypothesis": "the cat sat",
                      "refused": False, "latency_s": 1.0, "completion_tokens": 10}),
        score_record({"id": "2", "reference": "the cat sat", "hypothesis": "",
                      "refused": True, "latency_s": 3.0, "completion_tokens": 0}),
    ]
    summary = summarize(records)
    assert summary["refusal_rate"] == 0.5
    assert summary["latency_s"]["mean"] == 2.0
    assert summary["completion_tokens"]["mean"] == 5.0
    assert summary["rouge"]["rouge-1_f"] == pytest.approx(0.5, abs=1e-6)
    assert flatten(summary)["rouge-score/rouge1_f"] == pytest.approx(0.5)


def test_compare_counts_wins_with_a_tie_margin() -> None:
    def run(ratings: list[float]) -> list[dict]:
        return [score_record({"id": str(i), "reference": "r", "hypothesis": "r",
                              "judges": {"j": {"rating": x}}}) for i, x in enumerate(ratings)]

    a, b = run([8, 5, 7.2, 3]), run([6, 5, 7.0, 9])
    pairs = list(zip(a, b, strict=True))
    assert (tally(pairs, "j").wins, tally(pairs, "j").ties, tally(pairs, "j").losses) == (2, 1, 1)
    assert tally(pairs, "j", tie_margin=0.5).ties == 2
    result = compare(a, b)
    assert result.deltas["judge/j"] == pytest.approx((27 - 23.2) / 4)
    with pytest.raises(ValueError, match="same dataset"):
        compare(a, [{**r, "reference": "other"} for r in b])


def test_compare_many_runs_side_by_side_and_pair_by_pair(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hearth.evaluation.cli import eval_cli
    from hearth.evaluation.compare import compare_many
    from hearth.evaluation.records import write_results

    def run(ratings: list[float], answer: str) -> list[dict]:
        return [score_record({"id": str(i), "reference": "the cat sat on the mat",
                              "hypothesis": answer, "judges": {"j": {"rating": x}}})
                for i, x in enumerate(ratings)]

    base, tuned, rag = (run([5, 5, 5, 5], "a dog"), run([4, 5, 6, 2], "the cat"),
                        run([9, 8, 5, 9], "the cat sat on the mat"))
    multi = compare_many([(base, "base"), (tuned, "tuned"), (rag[:3], "rag")])
    assert multi.n == 3  # only the questions every run answered
    assert [(c.label_a, c.label_b) for c in multi.pairs] == [
        ("base", "tuned"), ("base", "rag"), ("tuned", "rag")]
    base_vs_rag = multi.pairs[1].tallies[0]
    assert (base_vs_rag.wins, base_vs_rag.ties, base_vs_rag.losses) == (0, 1, 2)
    assert [m["judge/j"] for m in multi.metrics] == pytest.approx([5, 5, 22 / 3])
    assert multi.metrics[2]["rouge-score/rougeL_f"] == pytest.approx(1.0)

    folders = []
    for records, name in ((base, "base"), (tuned, "tuned"), (rag, "rag"), (rag, "rag")):
        folder = tmp_path / f"{name}-{len(folders)}"
        write_results(folder, records, summarize(records), {"name": name})
        folders.append(str(folder))
    result = CliRunner().invoke(eval_cli, ["compare", *folders, "-o", str(tmp_path / "c"),
                                           "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "| judge j: mean rating (0-10) | 5.0000 | 4.2500 | 7.7500 | 7.7500 |" in result.output
    assert "| j | A:base | C:rag | 0 | 1 | 3 |" in result.output  # same names: told apart
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert saved["labels"] == ["A:base", "B:tuned", "C:rag", "D:rag"] and len(saved["pairs"]) == 6
    lone = CliRunner().invoke(eval_cli, ["compare", folders[0]])
    assert lone.exit_code == 2 and "two runs or more" in lone.output


def test_the_model_alone_answers_without_retrieval(tmp_path: Path) -> None:
    # Fast tier: a scripted fake model (tests/fakes.py) stands in for the engine.
    from hearth.config import load_settings
    from hearth.evaluation.records import Question
    from hearth.evaluation.run import ModelAnswerer, run_eval
    from tests.fakes import FakeLLM

    settings = load_settings(_env_file=None, data_dir=tmp_path)
    llm = FakeLLM(settings, ["Use python -m venv NAME."])
    answerer = ModelAnswerer(llm, settings.persona, settings.answer_words)
    [record] = run_eval([Question("q1", "How do I make a virtual environment?",
                                  "python -m venv creates one.", source="venv.html")], answerer)
    assert record["hypothesis"] == "Use python -m venv NAME."
    assert record["retrieved"] is None and record["refused"] is False
    assert record["completion_tokens"] > 0 and record["rouge"]
    [system, human] = llm.prompts[0]
    assert system.content.startswith(settings.persona) and "80 words" in system.content
    assert human.content == "How do I make a virtual environment?"  # no documents


def test_the_model_alone_is_held_to_the_word_budget(tmp_path: Path) -> None:
    # Fast tier: a scripted fake model (tests/fakes.py) stands in for the engine.
    from hearth.config import load_settings
    from hearth.evaluation.run import ModelAnswerer
    from tests.fakes import FakeLLM

    settings = load_settings(_env_file=None, data_dir=tmp_path, answer_words=10)
    rambling = " ".join(f"Sentence number {n} says four more words." for n in range(20))
    answered = ModelAnswerer(FakeLLM(settings, [rambling]), settings.persona, 10)("Why?")
    assert answered.answer == "Sentence number 0 says four more words. Sentence number 1 says " \
        "four more words."  # it ends at the first sentence end past 10 words, as the chain's do


def test_a_failed_question_is_left_out_of_every_figure_and_asked_again(tmp_path: Path) -> None:
    from hearth.evaluation.report import summary_markdown
    from hearth.evaluation.run import Answered, run_eval

    questions = [Question("q1", "What does a timedelta store?", "days seconds microseconds"),
                 Question("q2", "What is the default socket timeout?", "None blocks forever")]
    asked: list[str] = []

    def flaky(question: str) -> Answered:
        asked.append(question)
        if question == questions[1].question and len(asked) == 2:
            raise RuntimeError("the server answered 500")
        answer = next(q.reference for q in questions if q.question == question)
        return Answered(answer=answer, retrieved=None, refused=False, latency_s=1.0)

    path = tmp_path / "run" / "records.jsonl"
    first = run_eval(questions, flaky, records_path=path)
    assert first[1]["error"] == "RuntimeError: the server answered 500"
    assert "rouge" not in first[1] and "rank" not in first[1]
    summary = summarize(first)
    assert summary["errors"] == 1 and summary["n"] == 2
    assert summary["rouge-score"]["rouge1_f"] == 1.0  # the one answer, not the failure as 0
    assert summary["latency_s"]["mean"] == 1.0
    assert "1 questions failed to answer, left out of every figure" in summary_markdown(summary)
    # Resumed: the failed question is asked again, the answered one is not.
    second = run_eval(questions, flaky, records_path=path)
    assert asked == [q.question for q in questions] + [questions[1].question]
    assert not second[1].get("error") and second[1]["hypothesis"] == questions[1].reference
    assert summarize(second)["errors"] == 0
    assert summarize(second)["rouge-score"]["rouge1_f"] == 1.0


def test_a_run_is_not_resumed_by_another_system(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Fast tier: a scripted fake model (tests/fakes.py) stands in for the engine.
    from click.testing import CliRunner

    import hearth.llm
    from hearth.config import load_settings
    from hearth.evaluation.cli import eval_cli
    from tests.conftest import closed_port_url
    from tests.fakes import FakeLLM

    class Stopped(FakeLLM):
        """Stopped by the user (Ctrl+C) at its second question."""

        def stream(self, messages: Any, **options: Any) -> Any:
            if self.prompts:
                raise KeyboardInterrupt
            yield from super().stream(messages, **options)

    settings = load_settings(_env_file=None, data_dir=tmp_path)
    monkeypatch.setattr(hearth.llm, "build_llm",
                        lambda settings_: Stopped(settings, ["Days, seconds, microseconds."]))
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    dataset = tmp_path / "questions.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"q{n}", "question": f"Question {n}?",
                                           "reference": "An answer."}) + "\n" for n in (1, 2)))
    out = tmp_path / "run"
    alone = ["run", str(dataset), "--no-retrieval", "--no-judge", "--no-plots", "-o", str(out)]
    killed = CliRunner().invoke(eval_cli, alone)
    assert killed.exit_code == 1 and not (out / "results.json").exists()
    assert len((out / "records.jsonl").read_text().splitlines()) == 1
    # Resumed by a running Hearth: its answers are not the model alone's. Refused, asking nothing.
    other = CliRunner().invoke(eval_cli, ["run", str(dataset), "--url", closed_port_url(),
                                          "--no-judge", "--no-plots", "-o", str(out)])
    assert other.exit_code == 1, other.output
    assert f"the run in {out} was made with other answerer" in other.output
    assert len((out / "records.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "config.json").read_text())["answerer"] == \
        "the model alone, no retrieval"  # written as the killed run started, and kept
    # The same system resumes it.
    monkeypatch.setattr(hearth.llm, "build_llm",
                        lambda settings_: FakeLLM(settings, ["Days, seconds, microseconds."]))
    same = CliRunner().invoke(eval_cli, alone)
    assert same.exit_code == 0 and "Resuming the run" in same.output, same.output
    assert len(json.loads((out / "results.json").read_text())["records"]) == 2
