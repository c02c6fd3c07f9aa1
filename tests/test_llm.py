"""The three LLM adapters against real engines, or, for Ollama, its replayed API."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from hearth.config import ConfigError, load_settings
from hearth.llm import Generation, LlamaCppLLM, LLMError, LLMTimeout, OllamaLLM, OpenAILLM, build_llm
from tests.conftest import closed_port_url
from tests.ollama_replay import OllamaReplay

MESSAGES = [SystemMessage("Answer in one short sentence."), HumanMessage("What colour is the sky?")]


def test_llamacpp_streams_and_counts_tokens(smollm: LlamaCppLLM) -> None:
    usage = Generation()
    pieces = list(smollm.stream(MESSAGES, usage=usage))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert usage.prompt_tokens > 10
    assert 0 < usage.completion_tokens <= 48
    assert smollm.count_tokens("hello world") == 2
    assert smollm.n_ctx == 2048
    smollm.ping()


def test_llamacpp_settings_are_explicit(smollm: LlamaCppLLM) -> None:
    model = smollm.chat_model
    assert (model.n_ctx, model.n_batch, model.temperature, model.max_tokens) == (2048, 512, 0.2, 48)


def test_llamacpp_same_question_same_answer(smollm: LlamaCppLLM, monkeypatch: Any) -> None:
    # Sampling hot enough that a different seed gives a different answer; the answer must not
    # depend on what the process generated before (llama-cpp-python chains its seeds otherwise).
    monkeypatch.setattr(smollm.chat_model, "temperature", 1.5)
    first = "".join(smollm.stream(MESSAGES))
    smollm.complete([HumanMessage("Name a fruit.")])
    assert "".join(smollm.stream(MESSAGES)) == first


def test_llamacpp_missing_model_says_how_to_fetch_it(make_settings: Any, tmp_path: Any) -> None:
    with pytest.raises(LLMError, match="hearth models fetch qwen2.5-coder-0.5b"):
        build_llm(make_settings(models_dir=tmp_path, llamacpp_model="qwen2.5-coder-0.5b-instruct-q4_k_m"))
    with pytest.raises(LLMError, match="model file not found at /nowhere/x.gguf"):
        build_llm(make_settings(llamacpp_model="/nowhere/x.gguf"))


# The Ollama adapter is tested against a replay of Ollama's documented HTTP API: a contract
# test, since no Ollama server can be installed here.
def test_ollama_contract_streaming_and_not(make_settings: Any, ollama_replay: Any) -> None:
    llm = build_llm(make_settings(llm_backend="ollama", ollama_base_url=ollama_replay.url,
                                  ollama_num_ctx=6144))
    assert isinstance(llm, OllamaLLM)
    llm.ping()
    usage = Generation()
    streamed = "".join(llm.stream(MESSAGES, usage=usage))
    assert streamed.strip() == ollama_replay.answer
    assert (usage.prompt_tokens, usage.completion_tokens) == (26, 282)
    assert llm.complete(MESSAGES) == ollama_replay.answer
    stream_request, plain_request = ollama_replay.chats()
    assert stream_request["stream"] is True and plain_request["stream"] is False
    # Asked for log-probabilities, a server older than 0.12.11 gives none: no confidence.
    assert stream_request["logprobs"] is True
    assert usage.confidence is None and llm.drawn(usage) == []
    for request in (stream_request, plain_request):
        assert request["model"] == "llama3.1:8b"
        # num_ctx must be sent: Ollama silently truncates prompts to its own default otherwise.
        assert request["options"]["num_ctx"] == 6144
        assert request["options"]["temperature"] == 0.2
        assert request["messages"][0] == {"role": "system", "content": MESSAGES[0].content}


def test_ollama_reports_each_tokens_log_probability(make_settings: Any) -> None:
    """Ollama 0.12.11 and later report each drawn token's log-probability when asked (the
    compose profile's 0.17.7 does): every streamed answer asks, and the answer's confidence and
    tokens are the server's figures."""
    with OllamaReplay(logprobs=True) as replay:
        llm = build_llm(make_settings(llm_backend="ollama", ollama_base_url=replay.url))
        usage = Generation(top=2)
        text = "".join(llm.stream(MESSAGES, usage=usage))
        plain = Generation()
        "".join(llm.stream(MESSAGES, usage=plain))
        asked, asked_plain = replay.chats()
    assert (asked["logprobs"], asked["top_logprobs"]) == (True, 2)
    assert asked_plain["logprobs"] is True and not asked_plain.get("top_logprobs")
    drawn = llm.drawn(usage)
    assert len(drawn) == 5 and b"".join(t.piece for t in drawn).decode() == text
    expected = [OllamaReplay.logprob_of(n) for n in range(len(drawn))]
    assert [t.logprob for t in drawn] == usage.logprobs == expected
    assert usage.confidence == pytest.approx(math.exp(sum(expected) / len(expected)))
    assert all([piece for piece, _ in t.top] == [t.piece, b"perhaps "] for t in drawn)
    assert plain.logprobs == expected and all(t.top == [] for t in llm.drawn(plain))


class LocalServer:
    """An HTTP server of a test's own on 127.0.0.1, an OpenAI-style ``url``, served from a
    thread for the ``with`` block."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class TricklingOpenAI(LocalServer):
    """An OpenAI-style server on 127.0.0.1 whose answer (streamed or not) comes a byte every
    ``trickle`` seconds: never silent for as long as a read's timeout."""

    def __init__(self, trickle: float) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                message = {"role": "assistant", "content": "Hearth answers from your documents."}
                if body.get("stream"):
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0,
                             "model": body["model"], "choices": [
                                 {"index": 0, "delta": message, "finish_reason": None}]}
                    data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                    kind = "text/event-stream"
                else:
                    data = json.dumps({"id": "c", "object": "chat.completion", "created": 0,
                                       "model": body["model"], "choices": [
                                           {"index": 0, "message": message,
                                            "finish_reason": "stop"}]}).encode()
                    kind = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for n in range(len(data)):
                    self.wfile.write(data[n:n + 1])
                    self.wfile.flush()
                    time.sleep(trickle)

        super().__init__(Handler)


@pytest.mark.parametrize("backend", ["ollama", "openai"])
@pytest.mark.parametrize("streamed", [False, True])
def test_an_answer_that_trickles_ends_at_llm_timeout(make_settings: Any, backend: str,
                                                     streamed: bool) -> None:
    """A server that sends a byte every 0.1 s is never silent for a read's timeout: the
    answer, streamed or not, is still cut at HEARTH_LLM_TIMEOUT_S (here 1.5 s), not held
    for the half minute the trickle takes."""
    server = OllamaReplay(trickle=0.1) if backend == "ollama" else TricklingOpenAI(trickle=0.1)
    with server:
        llm = build_llm(make_settings(llm_backend=backend, llm_timeout_s=1.5,
                                      **{f"{backend}_base_url": server.url}))
        started = time.monotonic()
        with pytest.raises(LLMTimeout, match="HEARTH_LLM_TIMEOUT_S"):
            if streamed:
                list(llm.stream(MESSAGES))
            else:
                llm.complete(MESSAGES)
        assert time.monotonic() - started < 6


def test_ollama_model_not_pulled_says_to_pull_it(make_settings: Any, ollama_replay: Any) -> None:
    llm = build_llm(make_settings(llm_backend="ollama", ollama_base_url=ollama_replay.url,
                                  ollama_model="llama3.2:1b"))
    with pytest.raises(LLMError, match=r"run `ollama pull llama3.2:1b`"):
        llm.ping()
    with pytest.raises(LLMError, match=r"run `ollama pull llama3.2:1b`"):
        list(llm.stream(MESSAGES))


def test_ollama_unreachable_says_to_start_it(make_settings: Any) -> None:
    llm = build_llm(make_settings(llm_backend="ollama", ollama_base_url=closed_port_url()))
    with pytest.raises(LLMError, match="not reachable.*ollama serve"):
        llm.ping()
    with pytest.raises(LLMError, match="not reachable.*ollama serve"):
        llm.complete(MESSAGES)


def test_openai_adapter_against_llama_cpp_server(make_settings: Any, llama_server: str) -> None:
    llm = build_llm(make_settings(llm_backend="openai", openai_base_url=llama_server,
                                  openai_model="smollm2"))
    assert isinstance(llm, OpenAILLM)
    llm.ping()
    usage = Generation()
    text = "".join(llm.stream(MESSAGES, usage=usage))
    assert text.strip()
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert llm.complete(MESSAGES).strip()
    # The server reports each token it drew, with its log-probability: the answer's confidence.
    drawn = llm.drawn(usage)
    assert b"".join(t.piece for t in drawn).decode() == text
    assert [t.logprob for t in drawn] == usage.logprobs and all(x <= 0 for x in usage.logprobs)
    assert usage.confidence == pytest.approx(math.exp(sum(usage.logprobs) / len(usage.logprobs)))
    assert all(t.top == [] for t in drawn)  # none asked
    usage = Generation(top=3)
    text = "".join(llm.stream(MESSAGES, usage=usage))
    drawn = llm.drawn(usage)
    assert drawn and b"".join(t.piece for t in drawn).decode() == text
    for t in drawn:  # the likeliest three, likeliest first; the drawn one is no likelier
        assert len(t.top) == 3 and t.top[0][1] >= t.top[1][1] >= t.top[2][1]
        assert t.top[0][1] >= t.logprob - 1e-6


def test_openai_extra_body_reaches_the_server(make_settings: Any, llama_server: str) -> None:
    # A field of llama.cpp's server that OpenAI's API lacks, with an effect no answer has by
    # chance: a grammar that allows one answer only. The documented example rides along.
    llm = build_llm(make_settings(
        llm_backend="openai", openai_base_url=llama_server, openai_model="smollm2",
        openai_extra_body={"grammar": 'root ::= "forty-two"', "repeat_penalty": 1.1}))
    usage = Generation()
    assert "".join(llm.stream(MESSAGES, usage=usage)) == "forty-two"
    assert b"".join(t.piece for t in llm.drawn(usage)) == b"forty-two"
    assert llm.complete(MESSAGES) == "forty-two"


@pytest.mark.parametrize("value, error", [
    ('{"repeat_penalty": 1.1', "not JSON"),
    ('["repeat_penalty", 1.1]', "give a JSON object"),
    ('{"temperature": 0, "max_tokens": 9}', "Hearth sets max_tokens, temperature itself"),
])
def test_openai_extra_body_that_is_not_an_object_of_the_servers_own_fields_is_refused(
        monkeypatch: pytest.MonkeyPatch, value: str, error: str) -> None:
    monkeypatch.setenv("HEARTH_OPENAI_EXTRA_BODY", value)
    with pytest.raises(ConfigError, match=f"HEARTH_OPENAI_EXTRA_BODY: .*{re.escape(error)}"):
        load_settings()
    monkeypatch.setenv("HEARTH_OPENAI_EXTRA_BODY", ' {"repeat_penalty": 1.1} ')
    assert load_settings().openai_extra_body == {"repeat_penalty": 1.1}


class RefusingServer(LocalServer):
    """An OpenAI-style server on 127.0.0.1 that refuses log-probabilities with a 400, as servers
    without them do, and passes every other request to a real one: a stand-in (no such server
    runs here). With ``refuse_all``, it refuses everything (a server that is failing); with
    ``status`` 500, it refuses log-probabilities as llama_cpp.server does; with ``busy`` N, it
    answers the next N requests 500 whatever they ask (a server busy for a moment), and with
    ``busy`` -1 it passes log-probabilities on."""

    def __init__(self, upstream: str) -> None:
        self.asked: list[bool] = []  # whether each chat request asked for log-probabilities
        self.refuse_all = False
        self.status = 400
        self.busy = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                proxy.asked.append("logprobs" in body)
                if proxy.busy > 0:
                    proxy.busy -= 1
                    self._send(500, b'{"error": {"message": "busy"}}', "application/json")
                    return
                if ("logprobs" in body and proxy.busy == 0) or proxy.refuse_all:
                    self._send(proxy.status, json.dumps({"error": {
                        "message": "logprobs are not supported", "type": "invalid_request_error",
                    }}).encode(), "application/json")
                    return
                reply = httpx.post(upstream + self.path.removeprefix("/v1"), json=body, timeout=60)
                self._send(reply.status_code, reply.content, reply.headers["content-type"])

        super().__init__(Handler)


@pytest.fixture
def refusing_server(llama_server: str) -> Iterator[RefusingServer]:
    with RefusingServer(llama_server) as server:
        yield server


def test_a_server_that_refuses_log_probabilities_still_answers(
        make_settings: Any, refusing_server: RefusingServer, caplog: Any) -> None:
    llm = build_llm(make_settings(llm_backend="openai", openai_base_url=refusing_server.url,
                                  openai_model="smollm2"))
    with caplog.at_level(logging.WARNING, logger="hearth.llm"):
        usage = Generation()
        text = "".join(llm.stream(MESSAGES, usage=usage))
    assert text.strip() and usage.completion_tokens > 0
    assert usage.confidence is None and llm.drawn(usage) == []
    assert "openai:smollm2 refused to report log-probabilities" in caplog.text
    assert "".join(llm.stream(MESSAGES)).strip()
    assert refusing_server.asked == [True, False, False]  # refused once, not asked again


def test_a_failing_server_is_not_taken_for_one_that_refuses_log_probabilities(
        make_settings: Any, refusing_server: RefusingServer) -> None:
    refusing_server.refuse_all = True
    llm = build_llm(make_settings(llm_backend="openai", openai_base_url=refusing_server.url,
                                  openai_model="smollm2"))
    with pytest.raises(LLMError, match="the OpenAI-compatible server failed"):
        list(llm.stream(MESSAGES))
    assert refusing_server.asked == [True, False]  # asked again without, and that failed too
    refusing_server.refuse_all = False
    usage = Generation()
    assert "".join(llm.stream(MESSAGES, usage=usage)).strip()
    assert refusing_server.asked == [True, False, True, False]  # still asked first


def test_one_busy_500_does_not_give_up_log_probabilities_for_good(
        make_settings: Any, refusing_server: RefusingServer) -> None:
    """A 500 may be a busy moment, not a refusal: log-probabilities (and with them the
    confidence floor) were given up for the life of the process after one. They are now
    given up when a 500 comes twice in a row, as llama_cpp.server's refusal does."""
    llm = build_llm(make_settings(llm_backend="openai", openai_base_url=refusing_server.url,
                                  openai_model="smollm2"))
    refusing_server.busy = 1
    assert "".join(llm.stream(MESSAGES)).strip()  # answered without, this once
    refusing_server.busy = -1  # the server reports them now
    usage = Generation()
    assert "".join(llm.stream(MESSAGES, usage=usage)).strip()
    assert refusing_server.asked == [True, False, True]
    assert usage.confidence is not None

    refusing_server.busy, refusing_server.status = 0, 500  # refused with a 500, every time
    refusing_server.asked.clear()
    for _ in range(3):
        assert "".join(llm.stream(MESSAGES)).strip()
    assert refusing_server.asked == [True, False, True, False, False]


def test_openai_adapter_server_down(make_settings: Any) -> None:
    llm = build_llm(make_settings(llm_backend="openai", openai_base_url=closed_port_url() + "/v1"))
    with pytest.raises(LLMError, match="not reachable"):
        llm.ping()
    with pytest.raises(LLMError, match="not reachable"):
        list(llm.stream(MESSAGES))


def test_llamacpp_records_each_drawn_tokens_log_probability(smollm: LlamaCppLLM) -> None:
    """The answer's confidence comes from llama.cpp's own logits: the recorder reads, for each
    drawn token, the same log-probability llama-cpp-python reports itself when it keeps every
    position's logits (which Hearth does not: that would slow the prompt); sampled at 0.7,
    so the drawn tokens are not always the likeliest."""
    from llama_cpp import Llama, LogitsProcessorList

    from hearth.llm import TokenLogprobs

    reference = Llama(model_path=str(smollm.model_path), n_ctx=512, logits_all=True,
                      verbose=False, seed=0)
    recorded: list[float] = []
    ids: list[int] = []
    alternatives: list[list[tuple[int, float]]] = []
    out = reference.create_chat_completion(
        messages=[{"role": "user", "content": "Name three fruits."}], logprobs=True,
        top_logprobs=3, temperature=0.7, max_tokens=20, seed=0,
        logits_processor=LogitsProcessorList([TokenLogprobs(recorded, ids, 3, alternatives)]))
    content = out["choices"][0]["logprobs"]["content"]
    reported = [float(t["logprob"]) for t in content]
    assert len(recorded) == len(reported) - 1 >= 5  # the last token drawn is not read
    assert recorded == pytest.approx(reported[:-1], abs=1e-4)
    # And which token each was, as llama-cpp-python names them.
    assert [reference.detokenize([i]).decode() for i in ids] == [t["token"] for t in content[:-1]]
    assert min(reported) < -0.5  # some drawn tokens were far from sure: a real comparison
    # The likeliest tokens at each place, likeliest first, as llama-cpp-python ranks them.
    assert len(alternatives) == len(recorded)
    for mine, theirs in zip(alternatives, content, strict=False):
        assert [reference.detokenize([i]).decode() for i, _ in mine] == [
            t["token"] for t in theirs["top_logprobs"]]
        assert [lp for _, lp in mine] == pytest.approx(
            [t["logprob"] for t in theirs["top_logprobs"]], abs=1e-4)

    # Hearth's adapter records them with every streamed answer, anew each time.
    usage = Generation()
    text = "".join(smollm.stream(MESSAGES, usage=usage))
    assert text and len(usage.logprobs) >= usage.completion_tokens - 1 > 0
    assert all(x <= 0 for x in usage.logprobs)
    assert usage.confidence == pytest.approx(math.exp(sum(usage.logprobs) / len(usage.logprobs)))
    # The drawn tokens spell the answer (all but the last, the end of the answer, usually).
    assert len(usage.tokens) == len(usage.logprobs) and not usage.alternatives  # none asked
    drawn = smollm.drawn(usage)
    assert [t.logprob for t in drawn] == usage.logprobs and all(t.top == [] for t in drawn)
    assert text.encode().startswith(b"".join(t.piece for t in drawn).strip())
    first = list(usage.logprobs)
    "".join(smollm.stream(MESSAGES, usage=usage))
    assert usage.logprobs == first and len(usage.tokens) == len(first)  # counted once
    assert Generation().confidence is None  # a backend that reports nothing

    # Asked for, the likeliest two at each place, with their own bytes.
    usage = Generation(top=2)
    "".join(smollm.stream(MESSAGES, usage=usage))
    drawn = smollm.drawn(usage)
    assert drawn and all(len(t.top) == 2 and t.top[0][1] >= t.top[1][1] for t in drawn)
    assert all(t.top[0][1] >= t.logprob - 1e-9 for t in drawn)


def _logits_after(model_path: Any, *batches: list[int]) -> Any:
    """The next token's logits after the tokens of ``batches``, from a context of their own
    fed them batch by batch (llama.cpp's sums differ a little with the batches' sizes)."""
    import numpy as np
    from llama_cpp import Llama

    fresh = Llama(model_path=str(model_path), n_ctx=512, verbose=False)
    for tokens in batches:
        fresh.eval(tokens)
    return np.ctypeslib.as_array(fresh._ctx.get_logits(), shape=(fresh.n_vocab(),)).copy()


def test_context_contrast_pushes_the_passages_logits_from_the_plain_prompts(
        smollm: LlamaCppLLM) -> None:
    """Each step of context-aware decoding against its formula, computed from fresh contexts
    of the same model: ``(1 + a) * log p(y | passages) - a * log p(y | no passages)`` over the
    tokens within a tenth of the likeliest. The plain context is kept between answers, its
    shared start (the system message) not evaluated again, and must still hold exactly the
    plain prompt and the tokens drawn since."""
    import numpy as np
    from llama_cpp import Llama

    from hearth.llm import ContextContrast, chat_tokens

    def log_softmax(x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        return x - x.max() - np.log(np.exp(x - x.max()).sum())

    system = {"role": "system", "content": "Answer from the context only, in one sentence."}
    plain = Llama(model_path=str(smollm.model_path), n_ctx=512, verbose=False)
    evaluated: list[int] = []
    real_eval = plain.eval
    plain.eval = lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1]  # type: ignore[method-assign]
    for question, passage in [("What is the capital of France?", "The capital of France is Lyon."),
                              ("What colour is the sky?", "On this planet the sky is green.")]:
        asked = {"role": "user", "content": f"Question: {question}"}
        passages = {"role": "user", "content": f"Context:\n{passage}"}
        full = chat_tokens(smollm._llama, [system, passages, asked])
        bare = chat_tokens(smollm._llama, [system, asked])
        assert full and bare and len(bare) < len(full)
        contrast = ContextContrast(plain, bare, alpha=1.0)
        evaluated.clear()
        drawn: list[int] = []
        for _ in range(3):  # the prompt, then each drawn token
            with_ = _logits_after(smollm.model_path, full + drawn)
            mixed = contrast(np.array(full + drawn), with_.copy())
            kept = len(bare) - evaluated[0]
            without = _logits_after(smollm.model_path, bare[:kept], bare[kept:],
                                    *([d] for d in drawn))
            expected = 2 * log_softmax(with_) - log_softmax(without)
            plausible = with_ - with_.max() >= math.log(0.1)
            assert np.isneginf(mixed[~plausible]).all() and plausible.sum() >= 1
            assert mixed[plausible] == pytest.approx(expected[plausible], abs=2e-3)
            drawn.append(int(np.argmax(mixed)))
        assert evaluated[1:] == [1, 1]  # one token more each step
        assert list(plain.input_ids[:plain.n_tokens]) == bare + drawn[:-1]
    # The second answer's plain prompt shares the system message with the first's: kept.
    assert 0 < evaluated[0] < len(bare)


@pytest.mark.parametrize("chat_format", ["chatml", None])
def test_chat_tokens_are_the_prompt_the_chat_handler_gives_the_model(
        smollm: LlamaCppLLM, chat_format: str | None) -> None:
    """The plain prompt of context-aware decoding is formatted as the model's own chat handler
    formats an answer's: by the named format, or by the template in the GGUF file."""
    from llama_cpp import Llama

    from hearth.llm import chat_tokens

    llama = Llama(model_path=str(smollm.model_path), n_ctx=512, verbose=False,
                  chat_format=chat_format)
    messages = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "Context:\nThe sky is green here."},
                {"role": "user", "content": "Question: What colour is the sky?"}]
    tokens = chat_tokens(llama, messages)
    out = llama.create_chat_completion(messages=messages, max_tokens=1, temperature=0)
    assert tokens and out["usage"]["prompt_tokens"] == len(tokens)  # type: ignore[index]
    assert list(llama.input_ids[:len(tokens)]) == tokens


def test_context_contrast_decodes_an_answer_beside_a_plain_context(make_settings: Any) -> None:
    """The adapter feeds a second context of the same model the prompt without its passages,
    then each token it draws; without a plain prompt it decodes as usual."""
    llm = LlamaCppLLM(make_settings(llamacpp_context_contrast=1.0))
    passages = [SystemMessage("Answer from the context only."),
                HumanMessage("Context:\nThe sky over Hearth's town is green."),
                HumanMessage("Question: What colour is the sky?")]
    usage = Generation(plain=[passages[0], passages[2]])
    text = "".join(llm.stream(passages, usage=usage))
    assert text.strip() and len(usage.tokens) >= 2
    from langchain_community.chat_models.llamacpp import _convert_message_to_dict

    from hearth.llm import chat_tokens

    bare = chat_tokens(llm._llama, [_convert_message_to_dict(m) for m in usage.plain or []])
    # Each drawn token but the last (no step reads it), as the recorder names them.
    assert bare and list(llm._plain.input_ids[:llm._plain.n_tokens]) == bare + usage.tokens
    held = llm._plain.n_tokens
    assert "".join(llm.stream(MESSAGES)).strip()  # no plain prompt: the second context idles
    assert llm._plain.n_tokens == held


def test_context_contrast_set_for_a_server_backend_is_said_not_to_apply(
        make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hearth.llm"):
        build_llm(make_settings(llm_backend="ollama", llamacpp_context_contrast=1.0))
    assert "HEARTH_LLAMACPP_CONTEXT_CONTRAST applies to the model llama.cpp runs in process" \
        in caplog.text
