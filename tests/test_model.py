"""The conversation chain: context budget, refusal without the model, cited sources."""

from __future__ import annotations

from typing import Any

import pytest

from hearth.conversations import Turn
from hearth.model import Answer, Assistant, QuestionTooLong, Source, cited
from tests.conftest import closed_port_url


def source(n: int, text: str, page: int | None = None, path: str | None = None) -> Source:
    return Source(source=path or f"doc{n}.md", title=f"Doc {n}", page=page, section=None,
                  snippet=text, chunk_id=f"c{n}", score=0.9 - n / 100)


@pytest.fixture
def assistant(make_services: Any) -> Assistant:
    return make_services().assistant


def test_history_is_trimmed_oldest_first_to_fit_the_window(assistant: Assistant) -> None:
    long = "word " * 120
    history = [Turn(question=f"question {n} {long}", answer=f"answer {n} {long}")
               for n in range(30)]
    chunks = [source(n, f"chunk {n} " + "fact " * 80) for n in range(4)]
    messages, used = assistant.build_prompt("What now?", chunks, history)
    window = assistant.llm.n_ctx - assistant.settings.max_new_tokens
    assert assistant.llm.count_message_tokens(messages) <= window
    assert used == chunks  # the chunks come first
    kept = [m.content for m in messages[1:-2]][::2]  # between the rules and the context
    assert kept, "some history fits"
    assert len(kept) < 30
    # What is kept is the newest turns, in order.
    assert kept == [t.question for t in history[-len(kept):]]


def test_chunks_that_do_not_fit_are_dropped_lowest_rank_first(assistant: Assistant) -> None:
    chunks = [source(n, f"chunk {n} " + "fact " * 500) for n in range(4)]
    messages, used = assistant.build_prompt("What now?", chunks, [])
    assert used == chunks[:len(used)] and 0 < len(used) < 4
    assert assistant.llm.count_message_tokens(messages) <= assistant.llm.n_ctx


def test_a_question_larger_than_the_window_is_refused(assistant: Assistant) -> None:
    with pytest.raises(QuestionTooLong, match="ask a shorter question"):
        assistant.build_prompt("why " * 3000, [source(1, "fact")], [])


def test_nothing_relevant_refuses_without_calling_the_model(make_services: Any) -> None:
    # The model is an Ollama server that is down: any call to it would raise.
    services = make_services(llm_backend="ollama", ollama_base_url=closed_port_url())
    services.vectorstore.langchain.add_texts(["Bananas are a yellow tropical fruit."],
                                             metadatas=[{"source": "fruit.md"}], ids=["1"])
    answer = services.assistant.answer("How do I configure the VPN client?")
    assert isinstance(answer, Answer)
    assert (answer.answer, answer.refused, answer.sources) == (
        "I am not programmed to answer that.", True, [])


def test_an_empty_index_refuses(assistant: Assistant) -> None:
    assert assistant.answer("Anything at all?").refused


def test_sources_are_cited_once_per_document_page() -> None:
    sources = [source(1, "alpha", page=2, path="a.pdf"), source(2, "beta", page=2, path="a.pdf"),
               source(3, "gamma", page=3, path="a.pdf"), source(4, "delta", path="b.md")]
    merged = cited(sources)
    assert [(s.source, s.page) for s in merged] == [("a.pdf", 2), ("a.pdf", 3), ("b.md", None)]
    assert merged[0].snippet == "alpha … beta"
    assert merged[0].chunk_id == "c1"


def echoing_services(make_services: Any, ollama_replay: Any) -> Any:
    services = make_services(llm_backend="ollama", ollama_base_url=ollama_replay.url)
    services.vectorstore.langchain.add_texts(
        ["To install a package, run python -m pip install followed by its name."],
        metadatas=[{"source": "pip.md"}], ids=["1"])
    return services


def test_an_answer_that_only_echoes_the_question_is_generated_again(
    make_services: Any, ollama_replay: Any
) -> None:
    services = echoing_services(make_services, ollama_replay)
    ollama_replay.script = ["How do I install a package with pip?",
                            "Run python -m pip install and the package's name."]
    tokens = [e.text for e in services.assistant.stream("How do I install a package with pip?")
              if not isinstance(e, Answer)]
    assert "".join(tokens).strip() == "Run python -m pip install and the package's name."
    assert len(ollama_replay.chats()) == 2


def test_an_answer_that_starts_like_the_question_streams_whole_and_once(
    make_services: Any, ollama_replay: Any
) -> None:
    services = echoing_services(make_services, ollama_replay)
    ollama_replay.script = ["How do I install a package with pip? Run python -m pip install."]
    answer = services.assistant.answer("How do I install a package with pip?")
    assert answer.answer == "How do I install a package with pip? Run python -m pip install."
    assert len(ollama_replay.chats()) == 1


def test_a_follow_up_the_model_answers_instead_of_rewriting_is_asked_with_what_it_follows(
    make_services: Any, ollama_replay: Any
) -> None:
    services = echoing_services(make_services, ollama_replay)
    earlier = Turn("How do I install a package with pip?", "Run python -m pip install NAME.")
    # The rewrite comes back as the start of an answer, not a question: it is not used.
    ollama_replay.script = ["To upgrade it, you can follow these steps:",
                            "Run python -m pip install followed by its name."]
    answer = services.assistant.answer("And how do I upgrade it?", [earlier])
    assert answer.standalone_question == "And how do I upgrade it?"
    assert answer.answer == "Run python -m pip install followed by its name."
    messages = ollama_replay.chats()[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "user"]  # no turns to repeat
    passages, question = messages[-2]["content"], messages[-1]["content"]
    assert question.strip().startswith(
        "Question: And how do I upgrade it? (This follows the earlier question: "
        "How do I install a package with pip?)")
    assert "pip install" in passages  # retrieved with the earlier question


def test_a_rewritten_follow_up_is_asked_with_the_conversation(
    make_services: Any, ollama_replay: Any
) -> None:
    services = echoing_services(make_services, ollama_replay)
    earlier = Turn("How do I install a package with pip?", "Run python -m pip install NAME.")
    ollama_replay.script = ["How do I upgrade a package with pip?", "Add --upgrade."]
    answer = services.assistant.answer("And how do I upgrade it?", [earlier])
    assert answer.standalone_question == "How do I upgrade a package with pip?"
    messages = ollama_replay.chats()[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "user"]
    assert messages[-1]["content"].startswith("Question: How do I upgrade a package with pip?")


def test_the_persona_word_budget_and_refusal_reach_the_prompt(
    make_services: Any, ollama_replay: Any
) -> None:
    services = make_services(llm_backend="ollama", ollama_base_url=ollama_replay.url,
                             persona="You are Pip, the help desk of the Acme printer team.",
                             answer_words=30, refusal="Ask the Acme help desk instead.")
    services.vectorstore.langchain.add_texts(
        ["To install a package, run python -m pip install followed by its name."],
        metadatas=[{"source": "pip.md"}], ids=["1"])
    ollama_replay.script = ["Run python -m pip install NAME."]
    services.assistant.answer("How do I install a package with pip?")
    system = ollama_replay.chats()[-1]["messages"][0]["content"]
    assert system.startswith("You are Pip, the help desk of the Acme printer team.\n")
    assert "at most 30 words" in system
    assert 'reply exactly "Ask the Acme help desk instead."' in system


def test_context_aware_decoding_contrasts_the_prompt_without_its_passages(
    make_services: Any
) -> None:
    """With HEARTH_LLAMACPP_CONTEXT_CONTRAST, the answer is decoded against the same prompt
    less its passages' message: the rules and the question, not a word of the passages."""
    services = make_services(llamacpp_context_contrast=1.0)
    services.vectorstore.langchain.add_texts(
        ["To install a package, run python -m pip install followed by its name."],
        metadatas=[{"source": "pip.md"}], ids=["1"])
    answer = services.assistant.answer("How do I install a package with pip?")
    assert answer.answer.strip() and answer.sources
    plain = services.llm._plain
    read = plain.detokenize(list(plain.input_ids[:plain.n_tokens]), special=True).decode()
    read = read[:read.index("<|im_start|>assistant")]  # the prompt, not the tokens drawn after it
    assert services.settings.persona in read and "using only the context" in read
    assert "Question: How do I install a package with pip?" in read
    assert "Context:" not in read and "followed by its name" not in read


def test_an_answer_that_quotes_the_refusal_is_not_one(
    make_services: Any, ollama_replay: Any
) -> None:
    services = echoing_services(make_services, ollama_replay)
    ollama_replay.script = [
        'Run python -m pip install NAME. When the documents do not say, Hearth replies "I am not '
        'programmed to answer that."',
        "I am not programmed to answer that.",
    ]
    quoting = services.assistant.answer("How do I install a package with pip?")
    assert not quoting.refused and [s.source for s in quoting.sources] == ["pip.md"]
    refusing = services.assistant.answer("How do I install a package with pip?")
    assert refusing.refused and refusing.sources == []
