"""`hearth eval generate` -> `run` (in process, then against the HTTP API) -> `compare`, on a
small real corpus: chunks of the origin's blog (its published reference answers), indexed in a
real Chroma with the real embedding model, answered and judged by SmolLM2 under llama.cpp.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from hearth.api import create_app
from hearth.evaluation.cli import eval_cli
from hearth.evaluation.records import RECORDS_FILE, load_questions, load_results, read_jsonl
from hearth.services import Services
from tests.conftest import MODELS, QWEN, SMOLLM
from tests.test_evaluation_origin import RAG, origin_file

PNG = b"\x89PNG\r\n\x1a\n"
FOOTER = ("Copyright 2023 Brian Keng. Powered by Nikola. Contents licensed under a Creative "
          "Commons Attribution 4.0 International License. Subscribe via RSS or follow on "
          "Twitter and GitHub for more posts like this one.")


def blog_chunks(n: int) -> list[tuple[str, str]]:
    """The first n distinct chunks of the origin's blog, with ids."""
    seen: dict[str, None] = {}
    for record in json.loads(origin_file(RAG).read_text()):
        seen.setdefault(" ".join(record["reference"].split()))
        if len(seen) == n:
            break
    return [(f"blog-{i}", text) for i, text in enumerate(seen)]


@pytest.fixture
def indexed(make_services: Any) -> Services:
    services = make_services()
    chunks = blog_chunks(10)
    texts = [text for _, text in chunks] + [FOOTER, FOOTER, "Posted in Life."]
    ids = [chunk_id for chunk_id, _ in chunks] + ["footer-1", "footer-2", "tiny"]
    services.vectorstore.langchain.add_texts(
        texts, ids=ids,
        metadatas=[{"source": f"https://bjlkeng.io/{i}.html", "title": f"Post {i}"}
                   for i in ids],
    )
    return services


@pytest.fixture
def api_url(make_services: Any, indexed: Services) -> Iterator[str]:
    """Hearth's API on a real HTTP server, over the same index, citing one chunk only."""
    services = make_services(top_k=1)
    server = make_server("127.0.0.1", 0, create_app(services.settings, services), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def hearth_eval(*args: str) -> str:
    result = CliRunner().invoke(eval_cli, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, indexed: Services) -> None:
    """What `hearth` reads from the environment: the test's index and SmolLM2 for all roles."""
    for name, value in {
        "DATA_DIR": str(indexed.settings.data_dir), "MODELS_DIR": str(MODELS),
        "LLAMACPP_MODEL": SMOLLM, "JUDGE_MODEL": SMOLLM, "LLAMACPP_N_CTX": "2048",
        "MAX_NEW_TOKENS": "48", "LLAMACPP_N_THREADS": "1",
    }.items():
        monkeypatch.setenv(f"HEARTH_{name}", value)


def test_generate_run_compare(tmp_path: Path, cli_env: None, api_url: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, finetune = tmp_path / "questions.jsonl", tmp_path / "finetune.jsonl"

    # generate: three content chunks, never the footer or the one-liner. The questions are
    # written by the default model: SmolLM2 writes statements, which are not kept.
    monkeypatch.setenv("HEARTH_LLAMACPP_MODEL", QWEN)
    output = hearth_eval("generate", "-n", "3", "--seed", "1", "-o", str(dataset),
                         "--finetune", str(finetune))
    assert "3 questions written" in output
    assert "2 repeated" in output and "1 short" in output
    questions = load_questions(dataset)
    assert len(questions) == 3
    chunks = dict(blog_chunks(10))
    for q in questions:
        assert q.chunk_id in chunks and q.reference == chunks[q.chunk_id]
        assert q.question.endswith("?") and q.source == f"https://bjlkeng.io/{q.chunk_id}.html"
    tuned = [json.loads(line) for line in finetune.read_text().splitlines()]
    assert tuned[0] == {"prompt": f"QUESTION: {questions[0].question}\n\n###\n\n",
                        "completion": f" {questions[0].reference} END"}
    assert "0 questions written, 3 already there" in hearth_eval(
        "generate", "-n", "3", "--seed", "1", "-o", str(dataset))
    monkeypatch.setenv("HEARTH_LLAMACPP_MODEL", SMOLLM)

    # run in process, judged by the llama.cpp judge.
    run_a = tmp_path / "in-process"
    output = hearth_eval("run", str(dataset), "-o", str(run_a), "--name", "in-process")
    assert "ROUGE-1 F1 (rouge, as published by the origin)" in output
    records, config = load_results(run_a)
    assert config["answerer"] == "in process" and config["judge"] == SMOLLM
    assert len(records) == 3
    for record in records:
        assert record["hypothesis"] and record["latency_s"] > 0
        assert record["refused"] or record["completion_tokens"] > 0
        assert 0 < len(record["retrieved"]) <= 10
        assert record["rank"] is None or record["retrieved"][record["rank"] - 1] == \
            record["chunk_id"]
        assert set(record["rouge"]) == {"rouge-score", "rouge"}
        judgement = record["judges"][SMOLLM]
        assert judgement["method"] == "logprobs"
        assert sum(judgement["distribution"].values()) == pytest.approx(1.0)
        assert 0 <= judgement["rating"] <= 10
    summary = json.loads((run_a / "results.json").read_text())["summary"]
    retrieval = summary["retrieval"]
    assert retrieval["n"] == 3 and 0 <= retrieval["hit@1"] <= retrieval["hit@5"] <= 1
    assert retrieval["mrr"] > 0  # the question is about its own chunk: it is found
    assert summary["refusal_rate"] is not None and summary["latency_s"]["p95"] > 0
    for plot in ("rouge.png", f"judge-{SMOLLM}.png", "latency.png"):
        assert (run_a / plot).read_bytes()[:8] == PNG, plot

    # Run again into the same folder: everything is there already, nothing is answered.
    lines = (run_a / RECORDS_FILE).read_text()
    result = CliRunner().invoke(eval_cli, ["run", str(dataset), "-o", str(run_a), "--no-plots"])
    assert result.exit_code == 0 and "Resuming" in result.output
    assert (run_a / RECORDS_FILE).read_text() == lines

    # run against the HTTP API: ranks come from the cited sources.
    run_b = tmp_path / "api"
    hearth_eval("run", str(dataset), "--url", api_url, "-o", str(run_b), "--name", "api-top1")
    records_b = list(read_jsonl(run_b / RECORDS_FILE))
    assert len(records_b) == 3
    assert all(not r.get("error") and len(r["cited"]) <= 1 for r in records_b)
    assert all(isinstance(r["refused"], bool) for r in records_b)

    # compare: every question is a win, a tie or a loss.
    report = tmp_path / "compare"
    output = hearth_eval("compare", str(run_a), str(run_b), "-o", str(report))
    comparison = json.loads((report / "compare.json").read_text())
    assert (comparison["label_a"], comparison["label_b"]) == ("in-process", "api-top1")
    [tally] = comparison["tallies"]
    assert tally["judge"] == SMOLLM
    assert tally["wins"] + tally["ties"] + tally["losses"] == 3
    assert f"| {SMOLLM} | {tally['wins']} | {tally['ties']} | {tally['losses']} |" in output
    assert "judge/" + SMOLLM in comparison["deltas"]
    assert (report / f"scatter-{SMOLLM}.png").read_bytes()[:8] == PNG


HARBOUR = [  # (chunk id, page, text): two chunks on page 2 of one PDF, one on page 1
    ("harbour-1", 1, "The harbour town lies on the north coast and its ferry leaves at noon."),
    ("harbour-2a", 2, "The harbour museum opens at 9 in the morning, every day but Monday."),
    ("harbour-2b", 2, "The harbour museum holds ropes, charts, lamps, lenses and the keeper's "
                      "boots, which visitors may look at but not touch."),
]


def test_through_the_api_a_chunk_is_found_on_its_cited_page(
        tmp_path: Path, make_services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API cites one source a page, under its best chunk's id: the page's other chunk, read
    # by the answer as much as the first, is found too, as in process it would be. One
    # question both chunks answer, once for each: one of them is always behind the other.
    services = make_services(top_k=3, min_relevance=0.0)
    services.vectorstore.langchain.add_texts(
        [text for _, _, text in HARBOUR], ids=[chunk_id for chunk_id, _, _ in HARBOUR],
        metadatas=[{"source": "/docs/harbour.pdf", "page": page, "title": "Harbour"}
                   for _, page, _ in HARBOUR])
    server = make_server("127.0.0.1", 0, create_app(services.settings, services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dataset = tmp_path / "harbour.jsonl"
    dataset.write_text("".join(json.dumps(
        {"id": chunk_id, "question": "When does the harbour museum open, and what does it hold?",
         "reference": text, "source": "/docs/harbour.pdf", "page": page, "chunk_id": chunk_id}
    ) + "\n" for chunk_id, page, text in HARBOUR[1:]))
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "cli-data"))
    run = tmp_path / "api"
    try:
        hearth_eval("run", str(dataset), "--url", f"http://127.0.0.1:{server.server_port}",
                    "--no-judge", "--no-plots", "-o", str(run))
    finally:
        server.shutdown()
    records, _ = load_results(run)
    assert [r["rank"] for r in records] == [1, 1], records
    summary = json.loads((run / "results.json").read_text())["summary"]
    assert summary["retrieval"]["hit@1"] == 1.0 and summary["retrieval"]["n"] == 2
    for record in records:  # one source for page 2, first, under one chunk's id
        pages = [(c["source"], c["page"]) for c in record["cited"]]
        assert pages[0] == ("/docs/harbour.pdf", 2) and pages.count(pages[0]) == 1, record
