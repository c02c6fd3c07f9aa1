"""Stand-ins for the fast tier, where no model or index is the point of the test.

- ``FakeLLM``: Hearth's LLM adapter over LangChain's ``FakeListChatModel``, which replies with
  scripted texts in order (streamed a character at a time); it records every prompt, and
  reports ``logprobs`` (scripted) for each answer, as llama.cpp in process does.
- ``FakeIndex``: a vector store over a handful of passages, scored by word overlap.

Everything else in ``fake_services`` is real: the SQLite history and key stores in a
temporary folder, the generation gate, the chain (``model.Assistant``), the chat service.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage

from hearth.config import LLMBackend, Settings, load_settings
from hearth.llm import LLM, Generation, LLMError
from hearth.services import Services, build_services


class FakeLLM(LLM):
    backend = LLMBackend.openai
    model_name = "fake"

    def __init__(self, settings: Settings, replies: Sequence[str], n_ctx: int = 2048,
                 fail_after: int | None = None, logprobs: Sequence[float] = (),
                 strict_window: bool = False) -> None:
        super().__init__(settings)
        self.n_ctx = n_ctx
        # As llama.cpp does: a prompt and the answer's tokens past the window are refused.
        self.strict_window = strict_window
        self.chat_model = FakeListChatModel(responses=list(replies) or ["(no reply scripted)"])
        self.prompts: list[list[BaseMessage]] = []
        self.fail_after = fail_after  # raise LLMError after this many streamed pieces
        self.logprobs = list(logprobs)  # reported for every answer; none: a backend that can't

    def stream(self, messages: Sequence[BaseMessage], *, stop: list[str] | None = None,
               usage: Generation | None = None) -> Iterator[str]:
        self._fits(messages)
        self.prompts.append(list(messages))
        usage = usage if usage is not None else Generation()
        for n, piece in enumerate(super().stream(messages, stop=stop, usage=usage)):
            if self.fail_after is not None and n >= self.fail_after:
                raise LLMError("the fake model went away mid-answer")
            yield piece
        usage.logprobs[:] = self.logprobs

    def complete(self, messages: Sequence[BaseMessage], *, stop: list[str] | None = None) -> str:
        self._fits(messages)
        self.prompts.append(list(messages))
        return super().complete(messages, stop=stop)

    def _fits(self, messages: Sequence[BaseMessage]) -> None:
        wanted = self.count_message_tokens(messages) + self.settings.max_new_tokens
        if self.strict_window and wanted > self.n_ctx:
            raise LLMError(f"Requested tokens ({wanted}) exceed context window of {self.n_ctx}")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


class FakeIndex:
    """Passages scored by the share of the question's words they contain."""

    where = "fake index"

    def __init__(self, passages: dict[str, str]) -> None:
        self.passages = passages  # source -> text
        self.searches: list[str] = []

    def search(self, query: str, k: int, collections: Sequence[str] = ("default",),
               where: dict[str, Any] | None = None,
               vector: Sequence[float] | None = None) -> list[tuple[Document, float, str]]:
        """VectorStore.search's signature; the words of ``query`` score, never ``vector``."""
        self.searches.append(query)
        asked = words(query)
        scored = []
        for n, (source, text) in enumerate(self.passages.items()):
            score = len(asked & words(text)) / max(1, len(asked))
            scored.append((Document(page_content=text, metadata={"source": source}), score,
                           f"chunk-{n}"))
        return sorted(scored, key=lambda hit: -hit[1])[:k]

    def count(self) -> int:
        return len(self.passages)

    def scrub(self) -> None:
        """Nothing on disk to scrub."""

    def ping(self) -> None:
        pass


def fake_services(tmp_path: Path, replies: Sequence[str] = (),
                  passages: dict[str, str] | None = None, **overrides: Any) -> Services:
    llm_options = {k: overrides.pop(k) for k in ("n_ctx", "fail_after", "logprobs", "strict_window")
                   if k in overrides}
    # The fake index scores words only, as one side: hybrid retrieval is tested on the real
    # index (tests/test_retrieval.py).
    overrides.setdefault("retrieval", "dense")
    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", max_new_tokens=64,
                             **overrides)
    llm = FakeLLM(settings, replies, **llm_options)
    index = FakeIndex(passages if passages is not None else PASSAGES)
    return build_services(settings, llm=llm, vectorstore=index, embeddings=None)


PASSAGES = {
    "wifi.md": "Visitors use the guest Wi-Fi network called AcmeGuest. Its password is marigold-42.",
    "printer.md": "To install the printer driver, run setup.exe from the driver folder.",
}
