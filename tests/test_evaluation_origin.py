"""The origin's published evaluation, reproduced from its own result files.

The files are the bjlkengbot repository's `finetune/measure-results-*.json` (669 questions,
RAG vs the best fine-tuned model), vendored with their MIT licence in evaluation/origin/;
BJLKENGBOT_DATA_DIR points elsewhere. `hearth eval score` and
`hearth eval compare` must give the tables of the blog post "LLM Fun: Building a Q&A Bot
of Myself".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.evaluation.cli import eval_cli
from hearth.evaluation.records import load_results
from hearth.evaluation.scoring import rouge_package_scores, rouge_score_scores

pytestmark = pytest.mark.real  # the origin's real published results: 2 x 669 answers scored

ORIGIN = Path(os.environ.get("BJLKENGBOT_DATA_DIR")
              or Path(__file__).resolve().parents[1] / "evaluation" / "origin")
RAG = ORIGIN / "measure-results-qa-gpt.json"
FINETUNED = ORIGIN / "measure-results-finetune-gpt.json"


def origin_file(path: Path) -> Path:
    assert path.is_file(), (f"the origin's results are not at {path}: they ship in "
                            "evaluation/origin/ "
                            "(or set BJLKENGBOT_DATA_DIR)")
    return path


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`hearth eval score` on both published files, once for the module."""
    out = tmp_path_factory.mktemp("scored")
    runs = {}
    for name, path in (("rag", RAG), ("finetuned", FINETUNED)):
        result = CliRunner().invoke(eval_cli, ["score", str(origin_file(path)),
                                               "-o", str(out / name)])
        assert result.exit_code == 0, result.output
        runs[name] = out / name
    return runs


def summary_of(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "results.json").read_text())["summary"])


def test_worked_example_rouge_1() -> None:
    # The origin's worked example, lowercased as the origin did before calling `rouge`.
    hypothesis = "AI accelerators facilitate extensive text processing in large language models"
    reference = "Large language models use AI accelerators for improved processing and training."
    origin = rouge_package_scores(hypothesis.lower(), reference.lower())["rouge-1"]
    assert origin["r"] == pytest.approx(6 / 11)
    assert origin["p"] == pytest.approx(0.6)
    assert origin["f"] == pytest.approx(0.57, abs=0.005)
    # rouge-score lowercases by itself and agrees on unigrams.
    google = rouge_score_scores(hypothesis, reference)["rouge1"]
    assert (google["r"], google["p"]) == pytest.approx((6 / 11, 0.6))
    assert google["f"] == pytest.approx(2 * 0.6 * (6 / 11) / (0.6 + 6 / 11))


def test_published_rouge_of_the_rag_system(scored: dict[str, Path]) -> None:
    summary = summary_of(scored["rag"])
    assert summary["n"] == 669
    origin = summary["rouge"]
    assert round(origin["rouge-1_f"], 4) == 0.3311
    assert round(origin["rouge-2_f"], 4) == 0.1455
    assert round(origin["rouge-l_f"], 4) == 0.3055
    # The same answers under rouge-score: other values, labelled apart.
    google = summary["rouge-score"]
    assert round(google["rouge1_f"], 4) == 0.3719
    assert round(google["rouge2_f"], 4) == 0.1681
    assert round(google["rougeL_f"], 4) == 0.2446


def test_per_question_rouge_matches_what_the_origin_stored() -> None:
    raw = json.loads(origin_file(RAG).read_text())
    for record in raw[:50]:
        ours = rouge_package_scores(record["hypothesis"], record["reference"])
        for kind in ("rouge-1", "rouge-2", "rouge-l"):
            assert ours[kind] == pytest.approx(record["rouge"][kind], abs=1e-12)


def test_published_judge_ratings(scored: dict[str, Path]) -> None:
    rag, finetuned = summary_of(scored["rag"]), summary_of(scored["finetuned"])
    # GPT-3.5: the expected value over the stored probabilities of the ratings 0..10.
    assert rag["judges"]["gpt35"]["method"] == "logprobs"
    assert round(rag["judges"]["gpt35"]["mean"], 3) == 8.746
    assert round(finetuned["judges"]["gpt35"]["mean"], 3) == 8.048
    # GPT-4: the number it wrote ("7." included).
    assert rag["judges"]["gpt4"]["method"] == "number"
    assert round(rag["judges"]["gpt4"]["mean"], 3) == 7.643
    assert round(finetuned["judges"]["gpt4"]["mean"], 3) == 4.871
    assert rag["judges"]["gpt4"]["n"] == finetuned["judges"]["gpt4"]["n"] == 669


def test_score_writes_the_run_folder(scored: dict[str, Path]) -> None:
    run = scored["rag"]
    markdown = (run / "summary.md").read_text()
    assert "| ROUGE-1 F1 (rouge, as published by the origin) | 0.3311 |" in markdown
    assert "| ROUGE-1 F1 (rouge-score) | 0.3719 |" in markdown
    assert "| gpt35 | 8.746 |" in markdown
    records, config = load_results(run)
    assert config["scored_from"] == str(RAG)
    assert len(records) == 669
    first = records[0]
    assert first["question"] == 'Is 2022 feeling more like a "normal" year for you?'
    assert set(first["judges"]["gpt35"]["distribution"]) == {str(r) for r in range(11)}
    for plot in ("rouge.png", "judge-gpt35.png", "judge-gpt4.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def test_published_wins_ties_and_losses(scored: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(eval_cli, ["compare", str(scored["rag"]),
                                           str(scored["finetuned"]), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "c" / "compare.json").read_text())
    gpt4 = next(t for t in comparison["tallies"] if t["judge"] == "gpt4")
    assert (gpt4["wins"], gpt4["ties"], gpt4["losses"]) == (486, 102, 81)
    assert comparison["n"] == 669
    assert comparison["deltas"]["judge/gpt4"] == pytest.approx(4.871 - 7.643, abs=1e-3)
    assert "| gpt4 | 486 | 102 | 81 |" in result.output
    assert (tmp_path / "c" / "scatter-gpt4.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_reads_the_published_files_directly(tmp_path: Path) -> None:
    a, _ = load_results(origin_file(RAG))
    b, _ = load_results(origin_file(FINETUNED))
    from hearth.evaluation.compare import tally

    pairs = list(zip(a, b, strict=True))
    t = tally(pairs, "gpt4")
    assert (t.wins, t.ties, t.losses) == (486, 102, 81)
