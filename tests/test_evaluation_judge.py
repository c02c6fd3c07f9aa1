"""The LLM judge on real backends: llama.cpp in process, llama.cpp's OpenAI-compatible server,
and the replayed Ollama API (no Ollama server can run here: see tests/ollama_replay.py).

SmolLM2-135M is a poor judge (a quarter of its first-token mass is on a rating); what these
tests check is the arithmetic on real log-probabilities, not the judge's taste.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.config import load_settings
from hearth.evaluation.cli import eval_cli
from hearth.evaluation.judge import JUDGE_PROMPT, LlamaCppJudge, OllamaJudge, OpenAIJudge, build_judge
from hearth.evaluation.records import RATINGS
from tests.conftest import MODELS, SMOLLM
from tests.ollama_replay import OllamaReplay

QUESTION = 'Is 2022 feeling more like a "normal" year for you?'
REFERENCE = ("Thankfully 2022 has felt a bit more like a normal year. I saw slightly more people "
             "in person, got into a groove at work, and continued to play and have fun with my "
             "daughter.")
HYPOTHESIS = "Yes, 2022 is feeling more like a normal year: more people, a groove at work."


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> LlamaCppJudge:
    settings = load_settings(_env_file=None, models_dir=MODELS, judge_model=SMOLLM,
                             llamacpp_n_ctx=2048, llamacpp_n_threads=1,
                             data_dir=tmp_path_factory.mktemp("data"))
    built = build_judge(settings)
    assert isinstance(built, LlamaCppJudge)
    return built


@pytest.mark.real  # SmolLM2 through llama.cpp
def test_expected_value_from_real_llamacpp_logprobs(judge: LlamaCppJudge) -> None:
    judgement = judge.rate(QUESTION, REFERENCE, HYPOTHESIS)
    assert judgement.method == "logprobs"
    assert judgement.distribution is not None
    assert set(judgement.distribution) == set(RATINGS)
    assert sum(judgement.distribution.values()) == pytest.approx(1.0)
    assert judgement.rating == pytest.approx(
        sum(int(r) * p for r, p in judgement.distribution.items()))
    assert 0 < judgement.rating < 10
    assert judgement.mass is not None and 0 < judgement.mass <= 1

    # The log-probabilities are llama-cpp-python's own: its top 20 for the first token agree.
    tokens = judge.prompt_tokens(QUESTION, REFERENCE, HYPOTHESIS)
    judge.llama.reset()  # the prompt in one pass, as the judge evaluates it (batching moves logits)
    out = judge.llama.create_completion(tokens, max_tokens=1, temperature=0.0, logprobs=20)
    top = out["choices"][0]["logprobs"]["top_logprobs"][0]
    assert sum(t in RATINGS for t in top) >= 2, top  # SmolLM2 keeps ratings in its top 20
    logprobs = judge.next_token_logprobs(tokens)
    for text, logprob in top.items():
        ids = judge.llama.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) == 1:
            assert float(logprobs[ids[0]]) == pytest.approx(float(logprob), abs=1e-4), text
    # Each rating's probability is the mass of the tokens that spell it ("8", " 8"),
    # normalised over the ratings.
    mass = {r: sum(math.exp(float(logprobs[t])) for t in ids)
            for r, ids in judge.rating_tokens.items()}
    ratings = [r for r in RATINGS if r not in ("1", "10")]
    for r in ratings:
        assert judgement.distribution[r] / judgement.distribution["0"] == pytest.approx(
            mass[r] / mass["0"], rel=1e-6)
    assert judgement.mass == pytest.approx(sum(mass.values()), rel=1e-6)


@pytest.mark.real  # SmolLM2 through llama.cpp
def test_ten_written_as_two_tokens_takes_the_mass_of_a_1_followed_by_0(
        judge: LlamaCppJudge) -> None:
    assert judge.ten_splits  # SmolLM2 spells numbers digit by digit
    judgement = judge.rate(QUESTION, REFERENCE, HYPOTHESIS)
    assert judgement.distribution is not None
    one, ten = judgement.distribution["1"], judgement.distribution["10"]
    assert one + ten > 0
    # P("0" | the judge wrote "1"), from evaluating the prompt and "1" afresh.
    tokens = judge.prompt_tokens(QUESTION, REFERENCE, HYPOTHESIS)
    p_zero = math.exp(float(judge.next_token_logprobs([*tokens, *judge._one])[judge._zero[0]]))
    assert ten / (one + ten) == pytest.approx(p_zero, rel=1e-4)


def test_judge_behind_an_openai_compatible_server(llama_server: str) -> None:
    judgement = OpenAIJudge(llama_server, "smollm2").rate(QUESTION, REFERENCE, HYPOTHESIS)
    assert judgement.method == "logprobs"
    assert judgement.distribution is not None
    assert judgement.rating == pytest.approx(
        sum(int(r) * p for r, p in judgement.distribution.items()))
    assert judgement.output


def test_judge_behind_ollama_without_logprobs_reads_the_number() -> None:
    # The replay answers as an Ollama older than 0.12.11 does: no logprobs field.
    with OllamaReplay(models=("qwen2.5:7b",), answer="7") as replay:
        judgement = OllamaJudge(replay.url, "qwen2.5:7b").rate(QUESTION, REFERENCE, HYPOTHESIS)
        [sent] = replay.chats()
    assert (judgement.rating, judgement.method, judgement.distribution) == (7.0, "number", None)
    assert sent["stream"] is False and sent["logprobs"] is True and sent["top_logprobs"] == 20
    assert sent["messages"][-1]["content"] == JUDGE_PROMPT.format(
        question=QUESTION, reference=REFERENCE, hypothesis=HYPOTHESIS)
    assert sent["messages"][-1]["content"].endswith(
        "Can you rate the PROPOSED ANSWER to the above QUESTION from 0 (not even close) to 10 "
        "(exact meaning) on whether or not it matches ANSWER? Only output the number.")


def test_a_judge_model_not_fetched_says_how_to_fetch_it(tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text('{"question": "Q?", "reference": "A.", "hypothesis": "A."}\n')
    monkeypatch.setenv("HEARTH_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("HEARTH_JUDGE_MODEL", "qwen2.5-coder-1.5b-instruct-q4_k_m")
    result = CliRunner().invoke(eval_cli, ["score", str(results), "--judge", "-o",
                                           str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "hearth models fetch qwen2.5-coder-1.5b-instruct-q4_k_m" in result.output
