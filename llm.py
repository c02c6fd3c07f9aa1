"""The language model, one adapter per backend, switched on ``HEARTH_LLM_BACKEND``.

Each adapter wraps a LangChain chat model and adds what the conversation needs from it: the
size of its context window, a token counter for the context budget, a readiness check, and
errors a user can act on instead of a connection traceback.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httpx
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage

from hearth.config import LLMBackend, Settings
from hearth.errors import Unavailable
from hearth.ollama_tags import missing_model
from hearth.weights import (
    ModelError,
    catalog,
    confidence_floor,
    configured_model,
    packaged,
    resolve_model_path,
)

log = logging.getLogger("hearth.llm")

# HTTP statuses with which a server refuses a request it cannot serve as asked.
REFUSALS = {400, 422, 500, 501}


class LLMError(Unavailable):
    """The language model cannot answer; ``code`` and ``status`` say how the API reports it."""

    code = "llm_unavailable"


class LLMTimeout(LLMError):
    code = "llm_timeout"
    status = 504


@dataclass
class Generation:
    """Token counts of one call, filled in as the stream runs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Each drawn token's log-probability under the model's own distribution (its logits, before
    # temperature, penalties and top-p), where the backend gives them: llama.cpp in process.
    logprobs: list[float] = field(default_factory=list)
    # The drawn tokens themselves (their ids), one for each log-probability.
    tokens: list[int] = field(default_factory=list)
    # How many of the likeliest tokens to record at each drawn token's place (OpenAI's
    # ``top_logprobs``), and those recorded: (id, log-probability) pairs, likeliest first.
    top: int = 0
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)
    # The drawn tokens as a server reported them (Ollama, OpenAI-style): their bytes,
    # log-probabilities and alternatives, where the backend has no token ids to give.
    received: list[Drawn] = field(default_factory=list)
    # The prompt without its passages, for context-aware decoding (HEARTH_LLAMACPP_CONTEXT_CONTRAST).
    plain: list[Any] | None = None

    @property
    def confidence(self) -> float | None:
        """How sure the model was of its words: the geometric mean of its tokens'
        probabilities (None where the backend gives none)."""
        return math.exp(statistics.fmean(self.logprobs)) if self.logprobs else None


@dataclass
class Drawn:
    """A token the model drew: its bytes (a character may take several tokens), its
    log-probability, and where recorded the likeliest tokens at its place, likeliest first."""

    piece: bytes
    logprob: float
    top: list[tuple[bytes, float]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.piece.decode("utf-8", "replace")


def _entry(item: Any, key: str) -> Any:
    # Ollama's client gives its own models (subscriptable), OpenAI's streams plain dicts.
    try:
        return item[key]
    except (KeyError, TypeError, IndexError):
        return None


def _piece(item: Any) -> bytes:
    raw = _entry(item, "bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    return str(_entry(item, "token") or "").encode("utf-8")


def reported_tokens(logprobs: Any, top: int = 0) -> list[Drawn]:
    """The tokens a server reported with a piece of an answer: Ollama's ``logprobs`` (a list
    of {token, logprob, bytes, top_logprobs}) or OpenAI's (the same list under ``content``),
    each with at most ``top`` alternatives. Entries without a log-probability are left out."""
    if isinstance(logprobs, dict):
        logprobs = logprobs.get("content")
    drawn: list[Drawn] = []
    for item in logprobs if isinstance(logprobs, list) else ():
        logprob = _entry(item, "logprob")
        if not isinstance(logprob, int | float) or isinstance(logprob, bool):
            continue
        alternatives = [(_piece(t), float(_entry(t, "logprob")))
                        for t in _entry(item, "top_logprobs") or ()
                        if isinstance(_entry(t, "logprob"), int | float)]
        drawn.append(Drawn(_piece(item), float(logprob), alternatives[:top]))
    return drawn


def log_sum_exp(row: Any) -> float:
    """The log of the sum of ``exp(row)``, computed stably: a row of logits' normaliser."""
    import numpy as np

    top = float(row.max())
    return top + math.log(float(np.exp(row - top).sum()))


class TokenLogprobs:
    """A llama.cpp logits processor that changes nothing and records, into ``into``, the
    log-probability of each token the model draws, under its logits as they are before
    sampling: each step it keeps the normalised row, and the next step, which sees the drawn
    token at the end of ``input_ids``, reads that token's entry. The last token drawn (the end
    of the answer, usually) is not read. A few milliseconds a token (a log-sum-exp over the
    vocabulary: 3 ms measured on 2 busy cores, against some 240 ms to draw a 1.5B token).
    With ``top``, the ``top`` likeliest tokens of each read row go into ``alternatives``."""

    def __init__(self, into: list[float], tokens: list[int] | None = None, top: int = 0,
                 alternatives: list[list[tuple[int, float]]] | None = None) -> None:
        self.into = into
        self.tokens = tokens  # where given, each drawn token's id as well
        self.top = top if alternatives is not None else 0
        self.alternatives = alternatives
        self._last: tuple[Any, float] | None = None

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        if self._last is not None:
            row, norm = self._last
            drawn = int(input_ids[-1])
            self.into.append(float(row[drawn]) - norm)
            if self.tokens is not None:
                self.tokens.append(drawn)
            if self.top and self.alternatives is not None:
                best = np.argpartition(row, -self.top)[-self.top:]
                best = best[np.argsort(-row[best], kind="stable")]
                self.alternatives.append([(int(i), float(row[i]) - norm) for i in best])
        row = np.asarray(logits, dtype=np.float64)  # a copy: llama.cpp reuses its buffer
        self._last = (row, log_sum_exp(row))
        return logits


class ContextContrast:
    """A llama.cpp logits processor for context-aware decoding: each step, the logits of the
    prompt with its passages are pushed away from those of the same prompt without them,
    ``(1 + alpha) * with - alpha * without``, among the tokens the passages' prompt finds
    plausible (within ``beta`` of its likeliest), so that what the passages say outweighs
    what the model would say from memory. ``plain`` is a second llama.cpp context of the
    same model, fed the prompt without passages and then each drawn token."""

    def __init__(self, plain: Any, tokens: list[int], alpha: float, beta: float = 0.1) -> None:
        self.plain, self.tokens, self.alpha = plain, tokens, alpha
        self.floor = math.log(beta)
        self.start: int | None = None

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        if self.start is None:
            # The plain prompt shares its start (the system message) with the last one's:
            # what the context holds already is kept, the rest evaluated again.
            self.start, kept = len(input_ids), 0
            held = self.plain.input_ids[:self.plain.n_tokens]
            for had, token in zip(held, self.tokens[:-1], strict=False):
                if had != token:
                    break
                kept += 1
            self.plain.n_tokens = kept
        wanted = self.tokens + [int(t) for t in input_ids[self.start:]]
        self.plain.eval(wanted[self.plain.n_tokens:])
        without = np.ctypeslib.as_array(self.plain._ctx.get_logits(), shape=(len(logits),))
        with_ = np.asarray(logits, dtype=np.float64)
        mixed = ((1 + self.alpha) * (with_ - log_sum_exp(with_))
                 - self.alpha * (without - log_sum_exp(without)))
        mixed[with_ - with_.max() < self.floor] = -np.inf
        return mixed.astype(np.float32)


def chat_tokens(llama: Any, messages: list[dict[str, Any]]) -> list[int] | None:
    """The tokens ``llama`` is prompted with for ``messages``, in its chat format (the GGUF
    file's own template, or the named format's); None for a format that has no text form."""
    from llama_cpp import llama_chat_format

    name = llama.chat_format or ""
    if name.startswith("chat_template."):
        def text(token: int) -> str:
            return llama._model.token_get_text(token) if token != -1 else ""

        key = "tokenizer.chat_template" + ("" if name == "chat_template.default" else name[13:])
        formatter: Any = llama_chat_format.Jinja2ChatFormatter(
            template=llama.metadata[key], eos_token=text(llama.token_eos()),
            bos_token=text(llama.token_bos()))
    else:
        formatter = getattr(llama_chat_format, "format_" + name.replace("-", "_"), None)
        if formatter is None:
            return None
    prompt = formatter(messages=messages)
    return list(llama.tokenize(prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special,
                               special=True))


# Where a request's deadline is kept (``deadline_hooks``): the client passes it to the
# transport, which ignores it.
DEADLINE = "hearth.deadline"


def deadline_hooks(limit_s: float) -> dict[str, list[Callable[[Any], None]]]:
    """An HTTP client's event hooks that give each response ``limit_s`` from its request to
    its last byte, streamed or not. httpx's timeouts bound each read, not a whole response: a
    server that sends a byte now and then (a stuck proxy, a server gone wrong) would hold a
    request for good. A server silent meanwhile is still cut by the read timeout. For httpx's
    clients and its fork httpx2's (openai's since 3.0) alike: each its own classes."""

    def started(request: Any) -> None:
        request.extensions[DEADLINE] = time.monotonic() + limit_s

    def answered(response: Any) -> None:
        http = sys.modules[type(response).__module__.partition(".")[0]]
        deadline = response.request.extensions[DEADLINE]
        if time.monotonic() > deadline:  # its headers came too slowly
            raise late(http, limit_s, response.request)
        response.stream = deadline_stream(http)(response.stream, deadline, limit_s,
                                                response.request)

    return {"request": [started], "response": [answered]}


def late(http: ModuleType, limit_s: float, request: Any) -> Exception:
    error: Exception = http.ReadTimeout(f"the answer did not come whole in {limit_s:g} s "
                                        "(HEARTH_LLM_TIMEOUT_S)", request=request)
    return error


@functools.cache
def deadline_stream(http: ModuleType) -> type:
    """A response body of ``http``'s (httpx or httpx2) cut once its deadline has passed."""

    class DeadlineStream(http.SyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, body: Any, deadline: float, limit_s: float, request: Any) -> None:
            self.body, self.deadline, self.limit_s, self.request = body, deadline, limit_s, request

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.body:
                if time.monotonic() > self.deadline:
                    raise late(http, self.limit_s, self.request)
                yield chunk

        def close(self) -> None:
            self.body.close()

    return DeadlineStream


class LLM:
    """Common behaviour; subclasses build ``chat_model`` and translate their errors."""

    backend: LLMBackend
    model_name: str
    n_ctx: int
    chat_model: BaseChatModel
    # The model's own confidence floor (catalog.json), for HEARTH_MIN_ANSWER_CONFIDENCE unset:
    # none where the backend reports no confidence or no one measured the model's scale.
    confidence_floor: float = 0.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_new_tokens = settings.max_new_tokens

    # One generation at a time where the engine is not thread-safe (llama.cpp in process).
    def _guard(self) -> AbstractContextManager[Any]:
        return nullcontext()

    @property
    def name(self) -> str:
        return f"{self.backend.value}:{self.model_name}"

    def count_tokens(self, text: str) -> int:
        # A conservative estimate where the backend's tokenizer is out of reach: English text
        # averages about four characters a token; three over-counts, so the budget holds.
        return len(text) // 3 + 1

    def count_message_tokens(self, messages: Sequence[BaseMessage]) -> int:
        # Each message costs its text plus a few template tokens (role markers, separators).
        return sum(self.count_tokens(str(m.content)) + 6 for m in messages) + 3

    def ping(self) -> None:
        """Raise LLMError unless the model can be used now."""

    def translate(self, exc: Exception) -> Exception:
        return exc

    def stream(
        self, messages: Sequence[BaseMessage], *, stop: list[str] | None = None,
        usage: Generation | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated; ``usage`` receives the token counts."""
        usage = usage if usage is not None else Generation()
        usage.logprobs.clear()  # an answer generated again (an echo) is read anew
        usage.tokens.clear()
        usage.alternatives.clear()
        usage.received.clear()
        pieces: list[str] = []
        # The whole answer gets llm_timeout_s: HTTP backends also time out a silent server, but
        # only this stops a model in process (or a server) that goes on generating too slowly.
        limit = self.settings.llm_timeout_s
        deadline = time.monotonic() + limit
        asked = self.asks_logprobs
        refused = False  # the server refused to report log-probabilities: asked again without
        with self._guard():
            chunks = self.chat_model.stream(list(messages), stop=stop, **self.per_call,
                                            **self.recording(usage))
            try:
                for chunk in chunks:
                    if isinstance(chunk, AIMessageChunk) and chunk.usage_metadata:
                        usage.prompt_tokens = chunk.usage_metadata.get("input_tokens", 0)
                        usage.completion_tokens = chunk.usage_metadata.get("output_tokens", 0)
                    if asked and isinstance(chunk, AIMessageChunk) and chunk.response_metadata:
                        received = reported_tokens(chunk.response_metadata.get("logprobs"),
                                                   usage.top)
                        usage.received.extend(received)
                        usage.logprobs.extend(t.logprob for t in received)
                    text = chunk.content if isinstance(chunk.content, str) else ""
                    if text:
                        pieces.append(text)
                        yield text
                    if time.monotonic() > deadline:
                        raise LLMTimeout(f"{self.name} did not finish its answer in {limit:g} s "
                                         "(HEARTH_LLM_TIMEOUT_S)")
            except LLMError:
                raise
            except GeneratorExit:
                raise
            except Exception as exc:  # translated: the caller sees an actionable error
                # A server without log-probabilities may refuse the request (400, 422, or
                # 500 as llama_cpp.server does for a non-streamed one without logits_all):
                # nothing was said yet, so ask again without them.
                status = getattr(exc, "status_code", None)
                refused = asked and not pieces and status in REFUSALS
                if not refused:
                    raise self.translate(exc) from exc
            finally:  # stop the engine before another generation may take the guard
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        if refused:
            self.asks_logprobs = False
            try:
                yield from self.stream(messages, stop=stop, usage=usage)
            except LLMError:
                self.asks_logprobs = True  # it failed for another reason: ask next time
                raise
            # A 500 may be a busy server's, not a refusal of log-probabilities: they are given
            # up only when it comes twice in a row (llama_cpp.server's answer every time).
            self._logprob_refusals += 1
            if status == 500 and self._logprob_refusals < 2:
                self.asks_logprobs = True
                return
            log.warning("%s refused to report log-probabilities: answers from it have no "
                        "confidence", self.name)
            return
        if asked:
            self._logprob_refusals = 0
        if not usage.completion_tokens:  # the backend reported none: count them here
            usage.prompt_tokens = self.count_message_tokens(messages)
            usage.completion_tokens = self.count_tokens("".join(pieces))

    # Extra arguments that make the backend answer in one response instead of a stream.
    non_streaming: dict[str, Any] = {}
    # Extra arguments of every call (streamed or not).
    per_call: dict[str, Any] = {}

    # Whether streamed calls ask the server to report each token's log-probability (Ollama
    # 0.12.11 and later, OpenAI-style servers); off from the first refusal (a 500: the second
    # in a row, ``_logprob_refusals``).
    asks_logprobs = False
    _logprob_refusals = 0

    def recording(self, usage: Generation) -> dict[str, Any]:
        """Extra arguments of a streamed call that fill ``usage.logprobs``, where the backend
        can: a server is asked to report them (and ``usage.top`` alternatives)."""
        if not self.asks_logprobs:
            return {}
        return {"logprobs": True, **({"top_logprobs": usage.top} if usage.top else {})}

    def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The bytes of each of ``usage.tokens`` (none where the backend records none)."""
        return []

    def drawn(self, usage: Generation) -> list[Drawn]:
        """The tokens ``usage`` recorded, each with its log-probability and alternatives."""
        if usage.received:  # a server's report
            return list(usage.received)
        pieces = self.token_bytes(usage.tokens)
        tops = [list(zip(self.token_bytes([i for i, _ in top]), [lp for _, lp in top], strict=True))
                for top in usage.alternatives]
        return [Drawn(piece, logprob, tops[n] if n < len(tops) else [])
                for n, (piece, logprob) in enumerate(zip(pieces, usage.logprobs, strict=False))]

    def complete(self, messages: Sequence[BaseMessage], *, stop: list[str] | None = None) -> str:
        """The whole answer in one response (short calls: rewriting a follow-up question)."""
        with self._guard():
            try:
                message = self.chat_model.invoke(list(messages), stop=stop, **self.non_streaming,
                                                 **self.per_call)
            except LLMError:
                raise
            except Exception as exc:
                raise self.translate(exc) from exc
        return message.content if isinstance(message.content, str) else ""


class LlamaCppLLM(LLM):
    backend = LLMBackend.llamacpp
    # The sampler's seed, given with every call: without it llama-cpp-python derives each
    # call's seed from the one before, so an answer depended on how many calls the process had
    # made (the same question, asked twice, was answered differently). Ollama and OpenAI-style
    # servers take the seed with each request already.
    per_call: dict[str, Any] = {"seed": 0}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        try:
            from langchain_community.chat_models import ChatLlamaCpp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise LLMError("llama-cpp-python is not installed: run `make run` to build it") from exc
        name, why = configured_model(settings.llamacpp_model)
        try:
            path = resolve_model_path(name, settings.models_dir)
        except ModelError as exc:
            raise LLMError(str(exc)) from exc
        if why:
            log.info("model %s, %s: HEARTH_LLAMACPP_MODEL chooses another", name, why)
        self.model_path = path
        self.model_name = path.stem
        self.confidence_floor = confidence_floor(name)
        if settings.min_answer_confidence is None and self.confidence_floor:
            log.info("answers %s is less sure of than %.2f are withheld (its measured floor: "
                     "HEARTH_MIN_ANSWER_CONFIDENCE=0 turns it off)", name, self.confidence_floor)
        self.contrast = settings.llamacpp_context_contrast
        self.n_ctx = settings.llamacpp_n_ctx
        self._lock = threading.Lock()
        chat_format = None  # a GGUF file of one's own: its embedded chat template
        if name in catalog():
            chat_format = packaged(name).chat_format
        try:
            chat_model = ChatLlamaCpp(
                model_path=str(path),
                n_ctx=settings.llamacpp_n_ctx,
                n_batch=settings.llamacpp_n_batch,
                n_threads=settings.n_threads,
                n_gpu_layers=0,
                temperature=settings.temperature,
                max_tokens=settings.max_new_tokens,
                top_p=0.95,
                repeat_penalty=1.1,
                seed=0,
                streaming=True,
                verbose=False,
                model_kwargs={"chat_format": chat_format} if chat_format else {},
            )
        except Exception as exc:  # llama.cpp names no reason: a damaged file, or not a model
            raise LLMError(f"llama.cpp cannot load the model file {path} ({type(exc).__name__}): "
                           "it may be damaged or not a GGUF model; `hearth models verify` checks "
                           "a packaged one") from exc
        self.chat_model = chat_model
        self._llama = chat_model.client
        self._plain: Any = None  # the context without passages (HEARTH_LLAMACPP_CONTEXT_CONTRAST)
        self._no_contrast = False

    def _guard(self) -> AbstractContextManager[Any]:
        return self._lock

    def recording(self, usage: Generation) -> dict[str, Any]:
        from llama_cpp import LogitsProcessorList

        processors: list[Any] = [TokenLogprobs(
            usage.logprobs, usage.tokens, usage.top, usage.alternatives)]
        contrast = None
        if self.contrast and usage.plain:
            contrast = self._contrast(usage.plain)
        if contrast:
            processors.append(contrast)
        return {"logits_processor": LogitsProcessorList(processors)}

    def _contrast(self, plain: list[Any]) -> ContextContrast | None:
        from langchain_community.chat_models.llamacpp import _convert_message_to_dict
        from llama_cpp import Llama

        tokens = chat_tokens(self._llama, [_convert_message_to_dict(m) for m in plain])
        if tokens is None:
            if not self._no_contrast:
                log.warning("HEARTH_LLAMACPP_CONTEXT_CONTRAST: the chat format %s has no text form to "
                            "prompt a second context with; decoding as usual",
                            self._llama.chat_format)
                self._no_contrast = True
            return None
        if self._plain is None:
            # The same weights (mapped, not copied), a context of their own: about the
            # memory of the first context's cache again.
            self._plain = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx,
                                n_batch=self.settings.llamacpp_n_batch,
                                n_threads=self.settings.n_threads, n_gpu_layers=0, verbose=False)
        return ContextContrast(self._plain, tokens, self.contrast)

    def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        # One at a time: each token's own bytes (a character may take several); the end of
        # the answer, among the alternatives, by its name (<|im_end|>), not as nothing.
        return [self._llama.detokenize([t], special=True) for t in tokens]

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def translate(self, exc: Exception) -> Exception:
        if "exceed context window" in str(exc):
            return LLMError(f"the prompt does not fit the model's window: {exc}")
        return LLMError(f"llama.cpp failed: {exc}")


class OllamaLLM(LLM):
    backend = LLMBackend.ollama
    non_streaming = {"stream": False}
    asks_logprobs = True  # older servers than 0.12.11 ignore the question

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from langchain_ollama import ChatOllama

        self.base_url = settings.ollama_base_url.rstrip("/")
        self.model_name = settings.ollama_model
        self.n_ctx = settings.ollama_num_ctx
        self.chat_model = ChatOllama(
            base_url=self.base_url,
            model=settings.ollama_model,
            # Ollama silently truncates a prompt longer than num_ctx: set it, and budget for it.
            num_ctx=settings.ollama_num_ctx,
            num_predict=settings.max_new_tokens,
            temperature=settings.temperature,
            seed=0,
            client_kwargs={"timeout": settings.llm_timeout_s},
            # The whole answer gets llm_timeout_s, streamed or not (``complete``): the timeout
            # above is each read's, which a server trickling bytes never reaches.
            sync_client_kwargs={"event_hooks": deadline_hooks(settings.llm_timeout_s)},
        )

    def ping(self) -> None:
        why = missing_model(self.base_url, self.model_name, self.settings.backend_timeout_s)
        if why:
            raise LLMError(why)

    def translate(self, exc: Exception) -> Exception:
        if isinstance(exc, httpx.TimeoutException):
            return LLMTimeout(f"Ollama at {self.base_url} did not answer in time "
                              f"(HEARTH_LLM_TIMEOUT_S: {self.settings.llm_timeout_s:g} s)")
        if isinstance(exc, httpx.ConnectError | ConnectionError):
            return LLMError(
                f"Ollama is not reachable at {self.base_url}: start it with `ollama serve`"
            )
        text = str(exc)
        if "not found" in text and "model" in text:
            return LLMError(
                f"Ollama has no model {self.model_name!r}: run `ollama pull {self.model_name}`"
            )
        return LLMError(f"Ollama failed: {text}")


class OpenAILLM(LLM):
    backend = LLMBackend.openai
    asks_logprobs = True

    def recording(self, usage: Generation) -> dict[str, Any]:
        # At least one alternative: llama_cpp.server reports nothing for `logprobs` alone
        # (OpenAI's own API does); the alternatives not asked for are not kept.
        if not self.asks_logprobs:
            return {}
        return {"logprobs": True, "top_logprobs": max(usage.top, 1)}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        import openai
        from langchain_openai import ChatOpenAI

        self.base_url = settings.openai_base_url.rstrip("/")
        self.model_name = settings.openai_model
        self.n_ctx = settings.openai_n_ctx
        self.chat_model = ChatOpenAI(
            base_url=self.base_url,
            api_key=settings.openai_api_key,  # type: ignore[arg-type]
            model=settings.openai_model,
            temperature=settings.temperature,
            max_completion_tokens=settings.max_new_tokens,
            timeout=settings.llm_timeout_s,  # each read's: the whole answer's is the hooks'
            http_client=openai.DefaultHttpxClient(
                event_hooks=deadline_hooks(settings.llm_timeout_s)),
            max_retries=0,
            stream_usage=True,
            seed=0,
            extra_body=settings.openai_extra_body or None,
        )

    def ping(self) -> None:
        try:
            response = httpx.get(
                f"{self.base_url}/models",
                headers={"Authorization": f"Bearer {self.settings.openai_api_key}"},
                timeout=self.settings.backend_timeout_s,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise LLMError(
                f"the OpenAI-compatible server at {self.base_url} is not reachable "
                f"({exc.__class__.__name__})"
            ) from exc

    def translate(self, exc: Exception) -> Exception:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return LLMTimeout(f"the server at {self.base_url} did not answer in time "
                              f"(HEARTH_LLM_TIMEOUT_S: {self.settings.llm_timeout_s:g} s)")
        if isinstance(exc, openai.APIConnectionError):
            return LLMError(f"the OpenAI-compatible server at {self.base_url} is not reachable")
        return LLMError(f"the OpenAI-compatible server failed: {exc}")


class TransformersLLM(LLM):
    """A Hugging Face model in process (docs/transformers.md): quantized by bitsandbytes, with a
    LoRA adapter from `hearth tune` when one is configured."""

    backend = LLMBackend.transformers
    asks_logprobs = True  # hf_models.TransformersChat records them when asked

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from hearth import hf_models

        try:
            folder = hf_models.resolve_model_folder(settings.transformers_model, settings.models_dir)
            adapter = None
            if settings.transformers_adapter:
                adapter = hf_models.resolve_adapter_folder(settings.transformers_adapter,
                                                           settings.models_dir)
            self.loaded = hf_models.load(
                folder, quantization=settings.transformers_quantization.value,
                device=settings.transformers_device.value, adapter=adapter)
        except hf_models.HFModelError as exc:
            raise LLMError(str(exc)) from exc
        self.model_name = folder.name + (f"+{adapter.name}" if adapter else "")
        self.n_ctx = min(self.loaded.n_ctx, settings.transformers_n_ctx)
        self.tokenizer = self.loaded.tokenizer
        self._lock = threading.Lock()
        self.chat_model = hf_models.TransformersChat(
            lm=self.loaded.model, tokenizer=self.tokenizer,
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            max_time=settings.llm_timeout_s)

    def _guard(self) -> AbstractContextManager[Any]:
        return self._lock  # one generate at a time: the model and its caches are shared

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_message_tokens(self, messages: Sequence[BaseMessage]) -> int:
        from hearth.hf_models import encode_chat

        if not messages:
            return 0  # no earlier turns: templates refuse an empty chat, and it costs nothing
        return int(encode_chat(self.tokenizer, messages).shape[-1])  # the template's own cost

    def translate(self, exc: Exception) -> Exception:
        return LLMError(f"transformers failed: {exc.__class__.__name__}: {exc}")


ADAPTERS: dict[LLMBackend, type[LLM]] = {
    LLMBackend.llamacpp: LlamaCppLLM,
    LLMBackend.ollama: OllamaLLM,
    LLMBackend.openai: OpenAILLM,
    LLMBackend.transformers: TransformersLLM,
}


def build_llm(settings: Settings) -> LLM:
    if settings.llamacpp_context_contrast and settings.llm_backend is not LLMBackend.llamacpp:
        log.warning("HEARTH_LLAMACPP_CONTEXT_CONTRAST applies to the model llama.cpp runs in process: "
                    "%s decodes its own way", settings.llm_backend.value)
    return ADAPTERS[settings.llm_backend](settings)
