"""An LLM rates each answer 0-10 against the reference, with the origin's prompt.

Where the judge backend exposes log-probabilities, the rating is the expected value over
the probabilities of the answers "0".."10" (the origin's GPT-3.5 judge; steadier than one
sampled number), else the number the judge writes. llama.cpp in process always exposes
them; OpenAI-compatible servers and Ollama (0.12.11 and later) do when asked.

Many tokenizers (Qwen's, SmolLM's) write "10" as two tokens, "1" then "0": the mass of a
first token "1" is then split between 1 and 10 by the probability of "0" coming next.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hearth.evaluation.records import RATINGS, expected_rating

if TYPE_CHECKING:
    from hearth.config import Settings

JUDGE_SYSTEM = "You are a helpful assistant."
JUDGE_PROMPT = (
    "QUESTION: {question}\n\n"
    "ANSWER: {reference}\n\n"
    "PROPOSED ANSWER: {hypothesis}\n\n"
    "Can you rate the PROPOSED ANSWER to the above QUESTION from 0 (not even close) to 10 "
    "(exact meaning) on whether or not it matches ANSWER? Only output the number."
)
TOP_LOGPROBS = 20  # OpenAI's maximum; the ratings the judge considers at all are in it
# Below this probability of a first "1", whether "0" follows is not worth another call.
_MIN_P_ONE = 1e-3
_NUMBER = re.compile(r"(?<![\d.])(10|\d)(?:\.\d+)?(?![\d])")


class JudgeError(RuntimeError):
    """The judge cannot be built or called; the message says what to do."""


@dataclass
class Judgement:
    rating: float | None  # expected value (logprobs) or the number written; None if neither
    distribution: dict[str, float] | None  # P(rating) for "0".."10", when logprobs were used
    output: str  # what the judge wrote (in process: its most likely first token)
    method: str  # "logprobs", "number" or "none"
    mass: float | None = None  # P(first token is a rating): low means the judge rambles

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    name: str

    def rate(self, question: str, reference: str, hypothesis: str) -> Judgement: ...


def judge_messages(question: str, reference: str, hypothesis: str,
                   prompt: str = JUDGE_PROMPT) -> list[dict[str, str]]:
    content = prompt.format(question=question, reference=reference, hypothesis=hypothesis)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


# --- the expected value ----------------------------------------------------------------------


def rating_of_token(token: str) -> str | None:
    # Byte-level BPE and SentencePiece mark a leading space with these.
    text = token.replace("\u0120", " ").replace("\u2581", " ").strip()
    return text if text in RATINGS else None


def rating_distribution(
    first: Mapping[str, float], after_one: Mapping[str, float] | None = None
) -> dict[str, float] | None:
    """P(rating) from the top log-probabilities of the judge's first answer token.

    `first` maps token text to log-probability at the first position; `after_one` the same
    at the position after a first "1", which splits its mass between 1 and 10 when "10" is
    not one token. Returns None when no rating is among the tokens.
    """
    probs = dict.fromkeys(RATINGS, 0.0)
    for token, logprob in first.items():
        rating = rating_of_token(token)
        if rating is not None and logprob is not None:
            probs[rating] += math.exp(logprob)
    if after_one is not None and probs["1"] > 0:
        p_zero = sum(math.exp(lp) for t, lp in after_one.items() if t == "0" and lp is not None)
        p_one = probs["1"]
        probs["1"], probs["10"] = p_one * (1.0 - p_zero), probs["10"] + p_one * p_zero
    total = sum(probs.values())
    if total <= 0:
        return None
    return {r: p / total for r, p in probs.items()}


def parse_rating(text: str) -> float | None:
    """The first number 0..10 in what the judge wrote ("8", "8.", "Rating: 7/10" -> 7)."""
    match = _NUMBER.search(text or "")
    return float(match.group(0)) if match and 0 <= float(match.group(0)) <= 10 else None


def judgement_from_logprobs(
    output: str, first: Mapping[str, float] | None, after_one: Mapping[str, float] | None
) -> Judgement:
    distribution = rating_distribution(first, after_one) if first else None
    if distribution is not None:
        mass = sum(math.exp(lp) for t, lp in (first or {}).items() if rating_of_token(t))
        return Judgement(expected_rating(distribution), distribution, output, "logprobs", mass)
    rating = parse_rating(output)
    return Judgement(rating, None, output, "number" if rating is not None else "none")


# --- llama.cpp in process --------------------------------------------------------------------


class LlamaCppJudge:
    """A judge on a `llama_cpp.Llama` in process, built with `logits_all=True`.

    The prompt is evaluated once and the probabilities of the rating tokens are read from the
    full log-softmax of the next-token logits: the same numbers as the top log-probabilities
    `create_completion(logprobs=N)` reports (see the tests), for every rating token and not
    only those in the top N, and without sampling anything.
    """

    def __init__(self, llama: Any, name: str, prompt: str = JUDGE_PROMPT) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise JudgeError(f"judge model {name} has no chat template in its GGUF metadata")
        self.llama = llama
        self.name = name
        self.prompt = prompt
        # The rendering llama-cpp-python's create_chat_completion uses for GGUF templates; done
        # here so that the judge's answer can be continued after a "1".
        self._formatter: Any = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llama.token_eos()),
            bos_token=self._token_text(llama.token_bos()),
        )
        # Token ids spelling each rating alone, with or without a leading space.
        self.rating_tokens: dict[str, list[int]] = {}
        for rating in RATINGS:
            ids = {tuple(llama.tokenize(v.encode(), add_bos=False, special=False))
                   for v in (rating, " " + rating)}
            self.rating_tokens[rating] = sorted(i[0] for i in ids if len(i) == 1)
        self._one = llama.tokenize(b"1", add_bos=False, special=False)
        self._zero = llama.tokenize(b"0", add_bos=False, special=False)
        self.ten_splits = not self.rating_tokens["10"]

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def prompt_tokens(self, question: str, reference: str, hypothesis: str) -> list[int]:
        messages = judge_messages(question, reference, hypothesis, self.prompt)
        rendered = self._formatter(messages=messages)
        return list(self.llama.tokenize(rendered.prompt.encode("utf-8"),
                                        add_bos=not rendered.added_special, special=True))

    def next_token_logprobs(self, tokens: Sequence[int], *, continue_: bool = False) -> Any:
        """Log-probabilities over the vocabulary of the token after `tokens`.

        With `continue_`, `tokens` extend what was evaluated last instead of replacing it.
        """
        from llama_cpp import Llama

        if not continue_:
            self.llama.reset()
        if self.llama.n_tokens + len(tokens) > self.llama.n_ctx():
            raise JudgeError(f"the judge prompt of {self.llama.n_tokens + len(tokens)} tokens "
                             f"exceeds the judge's window of {self.llama.n_ctx()}: raise "
                             "HEARTH_LLAMACPP_N_CTX")
        self.llama.eval(list(tokens))
        return Llama.logits_to_logprobs(self.llama.scores[self.llama.n_tokens - 1])

    def rate(self, question: str, reference: str, hypothesis: str) -> Judgement:
        logprobs = self.next_token_logprobs(self.prompt_tokens(question, reference, hypothesis))
        first = {  # rating -> log P(the first token spells it)
            rating: math.log(sum(math.exp(float(logprobs[t])) for t in ids) or 1e-300)
            for rating, ids in self.rating_tokens.items() if ids
        }
        output = self._token_text(int(logprobs.argmax()))
        after_one = None
        if self.ten_splits and math.exp(first["1"]) > _MIN_P_ONE:
            continued = self.next_token_logprobs(self._one, continue_=True)
            after_one = {"0": float(continued[self._zero[0]])}
        return judgement_from_logprobs(output, first, after_one)


# --- HTTP backends -----------------------------------------------------------------------------


def _top_dict(entries: Sequence[Mapping[str, Any]] | None) -> dict[str, float]:
    top: dict[str, float] = {}
    for entry in entries or ():
        token, logprob = entry.get("token"), entry.get("logprob")
        if isinstance(token, str) and isinstance(logprob, int | float):
            top[token] = max(top.get(token, -math.inf), float(logprob))
    return top


def judgement_from_token_steps(output: str, steps: Sequence[Mapping[str, Any]] | None) -> Judgement:
    """From the OpenAI/Ollama shape: [{token, logprob, top_logprobs: [{token, logprob}]}]."""
    if not steps:
        return judgement_from_logprobs(output, None, None)
    first = _top_dict(steps[0].get("top_logprobs"))
    first.setdefault(steps[0].get("token", ""), steps[0].get("logprob", -math.inf))
    after_one = None
    if rating_of_token(steps[0].get("token", "")) == "1" and len(steps) > 1:
        after_one = _top_dict(steps[1].get("top_logprobs"))
        after_one.setdefault(steps[1].get("token", ""), steps[1].get("logprob", -math.inf))
    # A "1" the judge did not write stays 1: the server cannot be asked to continue it.
    return judgement_from_logprobs(output, first, after_one)


class OpenAIJudge:
    """A judge behind an OpenAI-compatible /chat/completions (llama_cpp.server, vLLM, ...)."""

    def __init__(self, base_url: str, model: str, api_key: str = "not-needed",
                 timeout_s: float = 120.0, prompt: str = JUDGE_PROMPT) -> None:
        import httpx

        self.name = model
        self.model = model
        self.prompt = prompt
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.Client(timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {api_key}"})
        self._logprobs = True

    def rate(self, question: str, reference: str, hypothesis: str) -> Judgement:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": judge_messages(question, reference, hypothesis, self.prompt),
            "temperature": 0,
            "max_tokens": 3,
        }
        if self._logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        response = self._client.post(self._url, json=body)
        if response.status_code >= 400 and self._logprobs:
            # Servers without logprobs refuse them (400, or llama_cpp.server without
            # logits_all: 500). If the plain request works, plain numbers from now on.
            self._logprobs = False
            try:
                return self.rate(question, reference, hypothesis)
            except JudgeError:
                self._logprobs = True
                raise
        _raise_for_status(response, self._url)
        choice = response.json()["choices"][0]
        output = (choice.get("message") or {}).get("content") or ""
        return judgement_from_token_steps(output, (choice.get("logprobs") or {}).get("content"))


class OllamaJudge:
    """A judge behind Ollama's /api/chat; logprobs where the server has them (0.12.11+)."""

    def __init__(self, base_url: str, model: str, timeout_s: float = 120.0,
                 prompt: str = JUDGE_PROMPT) -> None:
        import httpx

        self.name = model
        self.model = model
        self.prompt = prompt
        self._url = base_url.rstrip("/") + "/api/chat"
        self._client = httpx.Client(timeout=timeout_s)

    def rate(self, question: str, reference: str, hypothesis: str) -> Judgement:
        body = {
            "model": self.model,
            "messages": judge_messages(question, reference, hypothesis, self.prompt),
            "stream": False,
            "options": {"temperature": 0, "num_predict": 3},
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        response = self._client.post(self._url, json=body)
        _raise_for_status(response, self._url)
        data = response.json()
        output = (data.get("message") or {}).get("content") or ""
        return judgement_from_token_steps(output, data.get("logprobs"))


def _raise_for_status(response: Any, url: str) -> None:
    if response.status_code >= 400:
        raise JudgeError(f"judge at {url} answered {response.status_code}: {response.text[:300]}")


# --- from the settings -------------------------------------------------------------------------


def build_judge(settings: Settings, *, backend: str | None = None, model: str | None = None,
                base_url: str | None = None) -> Judge:
    """The judge the settings name (HEARTH_JUDGE_*), apart from the answering model."""
    from hearth.config import LLMBackend

    kind = LLMBackend(backend or settings.judge_backend)
    model = model or settings.judge_model
    if kind is LLMBackend.transformers:
        raise JudgeError("the judge runs on llamacpp, ollama or openai (it reads the rating's "
                         "probabilities): set HEARTH_JUDGE_BACKEND to one of them")
    if kind is LLMBackend.llamacpp:
        return load_llamacpp_judge(settings, model)
    if kind is LLMBackend.openai:
        return OpenAIJudge(base_url or settings.judge_base_url or settings.openai_base_url, model,
                           settings.openai_api_key, settings.llm_timeout_s)
    return OllamaJudge(base_url or settings.judge_base_url or settings.ollama_base_url, model,
                       settings.llm_timeout_s)


def load_llamacpp_judge(settings: Settings, model: str) -> LlamaCppJudge:
    from hearth.weights import resolve_model_path

    path = resolve_model_path(model, settings.models_dir)
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise JudgeError("the llama.cpp judge needs llama-cpp-python: install hearth[llamacpp]"
                         ) from exc
    llama = Llama(
        model_path=str(path),
        n_ctx=settings.llamacpp_n_ctx,
        n_batch=settings.llamacpp_n_batch,
        n_threads=settings.n_threads,
        logits_all=True,  # llama-cpp-python returns logprobs only then
        verbose=False,
    )
    return LlamaCppJudge(llama, Path(model).stem if model.endswith(".gguf") else model)
