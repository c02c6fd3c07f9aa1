"""The default model answers correctly from a real document, and cites it: Qwen2.5-Coder-1.5B,
which ``HEARTH_LLAMACPP_MODEL=auto`` chooses from 2 physical cores (docs/evaluation.md).

The document is a page of the Python 3.11 tutorial (Debian's python3.11-doc), which nobody here
wrote. These tests take a minute or two on two cores: they are the ones that show Hearth works.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from hearth.ingest.pipeline import ingest_files
from hearth.services import Services
from tests.conftest import QWEN_1_5B

TUTORIAL = Path("/usr/share/doc/python3.11/html/tutorial")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TUTORIAL.is_dir(), reason="needs Debian's python3.11-doc"),
]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, embeddings: Any) -> Services:
    from hearth.config import load_settings
    from hearth.services import build_services
    from tests.conftest import MODELS

    root = tmp_path_factory.mktemp("quality")
    (root / "docs").mkdir()
    for page in ("venv.html", "errors.html"):
        shutil.copy(TUTORIAL / page, root / "docs" / page)
    services = build_services(
        load_settings(_env_file=None, data_dir=root / "data", models_dir=MODELS,
                      llamacpp_model=QWEN_1_5B),
        embeddings=embeddings,
    )
    summary = ingest_files(services, root / "docs")
    assert summary.added == 2
    return services


def test_a_correct_cited_answer_from_a_real_document(services: Services) -> None:
    answer = services.assistant.answer("How do I create a virtual environment?")
    assert not answer.refused, (answer.unsupported, answer.draft)
    assert "venv" in answer.answer
    assert answer.sources[0].source.endswith("venv.html")
    assert answer.sources[0].title and "Virtual Environments" in answer.sources[0].title
    assert answer.timings["first_token_s"] < answer.timings["total_s"]


def test_the_question_is_answered_not_echoed(services: Services) -> None:
    # With the bare question as the last message, the 0.5B replied with the question itself.
    question = "How do I install a package with pip?"
    answer = services.assistant.answer(question)
    assert answer.answer.strip().lower() != question.lower()
    assert "pip install" in answer.answer


def test_a_follow_up_is_understood_in_context(services: Services) -> None:
    first_question = "How do I create a virtual environment?"
    first = services.assistant.answer(first_question)
    follow_up = services.assistant.answer("How do I activate it?", [first.turn(first_question)])
    assert not follow_up.refused
    assert "activate" in follow_up.answer
    assert any(s.source.endswith("venv.html") for s in follow_up.sources)


def test_a_question_the_documents_do_not_answer_is_refused(services: Services) -> None:
    answer = services.assistant.answer("What is the population of Lisbon?")
    assert answer.refused and answer.sources == []


@pytest.fixture(scope="module")
def hearth_docs(tmp_path_factory: pytest.TempPathFactory, embeddings: Any) -> Services:
    """What ``make run`` serves on a fresh machine: Hearth's own docs/, the default model."""
    from hearth.config import load_settings
    from hearth.services import build_services
    from tests.conftest import DOCS, MODELS

    services = build_services(
        load_settings(_env_file=None, data_dir=tmp_path_factory.mktemp("docs") / "data",
                      models_dir=MODELS, llamacpp_model=QWEN_1_5B),
        embeddings=embeddings,
    )
    assert ingest_files(services, DOCS).added >= 10
    return services


def test_the_first_run_answers_from_hearths_own_docs(hearth_docs: Services) -> None:
    question = "How do I ask Hearth a question?"
    first = hearth_docs.assistant.answer(question)
    assert not first.refused, first.answer
    assert "/api/question" in first.answer or "question" in first.sources[0].snippet
    assert any(Path(s.source).name in {"api.md", "asking-questions.md", "getting-started.md"}
               for s in first.sources), [s.source for s in first.sources]
    follow_up = hearth_docs.assistant.answer("And how do I get the answer streamed?",
                                             [first.turn(question)])
    assert not follow_up.refused, follow_up.answer
    assert any("stream" in s.snippet.lower() for s in follow_up.sources)
    # Answered from the docs: not the question echoed nor the first answer repeated, which is
    # what a 0.5B model did when given the earlier turn as messages.
    assert re.search(r"/api/question|\bstream\b|event-stream", follow_up.answer), follow_up.answer
