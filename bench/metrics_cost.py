"""What HEARTH_METRICS=true costs a question: the instrumentation's own work, timed piece by piece.

The end-to-end ratio (``bench/answer_path.py --metrics`` against a run without) cannot see a
cost this small: its pairs spread by tens of percent on a shared machine. So each piece that
metrics add to a question is timed here on its own, in process, with the real app and the
real SQLite history store (no model: the model's time is what the cost is compared with):

1. each piece against the same work without it, in alternating blocks: a request's count and
   duration, and every before- and after-request hook of the app (Flask's request context,
   no view), metrics off and on; a history-store call through the timing wrapper (a real
   SQLite store); a streamed answer of 128 tokens through the chat service's wrapper, with
   the answer's records (outcome, first token, generation, retrieval, tokens); a wait in
   the queue;
2. whole requests through the app (Flask's test client), metrics off and on: ``GET /healthz``
   and ``GET /api/conversations`` (one history call), to show that the machine's spread hides
   the pieces;
3. one scrape of ``/metrics`` (once per scrape interval, not per question).

A question costs one request's hooks, three history-store calls (ping, get or none, add_turn),
one answer through the wrapper and one wait; that sum is set against the answer times of the
last answer-path run (bench/results/answer_path*.json) or, without one, BENCHMARKS.md's medians
(Qwen2.5 0.5B, 128 tokens).

    .venv/bin/python bench/metrics_cost.py        # about 1 minute
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import median, table

# BENCHMARKS.md, answer path: a streamed 128-token answer, and its first token (median).
DOCUMENTED_ANSWER_S = 21.26
DOCUMENTED_TTFT_S = 13.67


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=400, help="requests per block")
    p.add_argument("--blocks", type=int, default=8, help="blocks per side (alternating)")
    return p.parse_args()


def app_pair(data_dir: Path) -> tuple[Any, Any]:
    """Two apps over the same data folder (history, keys): metrics off, metrics on. Each has
    services of its own, since metrics wrap the history store of theirs."""
    from hearth.api import create_app
    from hearth.config import load_settings
    from hearth.services import build_services

    apps = []
    for metrics in (False, True):
        settings = load_settings(_env_file=None, data_dir=data_dir, metrics=metrics,
                                 rate_limit="1000000/minute", client_rate_limit="1000000/minute")
        apps.append(create_app(settings, build_services(settings)).test_client())
    return apps[0], apps[1]


def per_request(client: Any, path: str, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        response = client.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)
    return (time.perf_counter() - started) / n


def alternate(off: Callable[[], float], on: Callable[[], float], blocks: int) -> dict[str, float]:
    """Blocks taken in turn (off, on, on, off, ...) so that a trend favours neither side."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    for block in range(blocks):
        order = [("off", off), ("on", on)] if block % 2 == 0 else [("on", on), ("off", off)]
        for side, run in order:
            times[side].append(run())
    result = {side: median(values) for side, values in times.items()}
    result["added"] = result["on"] - result["off"]
    return result


def per_call(fn: Callable[[], Any], n: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def answer_times() -> tuple[float, float, str]:
    """(streamed answer, first token) seconds of the latest answer-path run, else the doc's."""
    for name in ("answer_path", "answer_path_quick"):
        result = common.load(name)
        if result:
            m = result["median"]
            return m["hearth_stream_total_s"], m["hearth_stream_ttft_s"], f"bench/results/{name}.json"
    return DOCUMENTED_ANSWER_S, DOCUMENTED_TTFT_S, "BENCHMARKS.md (Qwen2.5 0.5B, 128 tokens)"


def hooks_of(client: Any) -> Callable[[], None]:
    """Every before- and after-request hook of the app, for one request, without the view."""
    from flask import Response

    app = client.application

    def once() -> None:
        with app.test_request_context("/healthz"):
            app.preprocess_request()
            app.process_response(Response("ok"))

    return once


def stream_of(tokens: int, reply: Any) -> Any:
    from hearth.model import Token

    def events() -> Any:
        for _ in range(tokens):
            yield Token("word ")
        yield reply

    return events()


def drain(stream: Any) -> None:
    for _ in stream:
        pass
    stream.close()


def main() -> None:
    args = parse_args()
    from hearth.chat import Reply, ReplyStream
    from hearth.model import Answer
    from hearth.monitoring import Timed

    info = common.machine()
    print(f"{info['cpu']}, {info['cores']} cores; {args.blocks} blocks of {args.requests} "
          "requests per side", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        off, on = app_pair(Path(tmp))
        for client in (off, on):  # warm both: imports, the SQLite connection, the first rule
            per_request(client, "/healthz", 50)
            per_request(client, "/api/conversations?user_id=bench", 50)
        n = args.requests
        health = alternate(lambda: per_request(off, "/healthz", n),
                           lambda: per_request(on, "/healthz", n), args.blocks)
        listing = alternate(lambda: per_request(off, "/api/conversations?user_id=bench", n),
                            lambda: per_request(on, "/api/conversations?user_id=bench", n),
                            args.blocks)
        scrape = median([per_request(on, "/metrics", 20) for _ in range(5)])

        # The pieces alone, each against the same work without it.
        chat = on.application.extensions["hearth.chat"]
        metrics = on.application.extensions["hearth.metrics"]
        store = off.application.extensions["hearth"].history  # not wrapped
        timed_store = Timed(store, metrics.history)
        history = alternate(lambda: per_call(store.ping, 5000),
                            lambda: per_call(timed_store.ping, 5000), args.blocks)
        answer = Answer(answer="x" * 400, sources=[], standalone_question="q", refused=False,
                        model="m", usage={"prompt_tokens": 900, "completion_tokens": 128},
                        timings={"condense_s": 0.0, "retrieve_s": 0.05, "prompt_s": 0.01,
                                 "first_token_s": 1.2, "generate_s": 20.0, "total_s": 20.1})
        reply = Reply(answer, "c")
        tokens = 128

        def plain() -> None:
            drain(ReplyStream(stream_of(tokens, reply), lambda: None))

        def observed() -> None:
            inner = ReplyStream(stream_of(tokens, reply), lambda: None)
            drain(ReplyStream(chat._observe(inner, time.perf_counter(), None), inner.close))

        streaming = alternate(lambda: per_call(plain, 500), lambda: per_call(observed, 500),
                              args.blocks)
        request = per_call(lambda: metrics.request_done("/api/question", "POST", 200, 0.1))
        hook_off, hook_on = hooks_of(off), hooks_of(on)
        hooks = alternate(lambda: per_call(hook_off, 2000), lambda: per_call(hook_on, 2000),
                          args.blocks)
        wait = per_call(lambda: metrics.queue_wait.observe(0.01))

    question = hooks["added"] + 3 * history["added"] + streaming["added"] + wait
    answer_s, ttft_s, source = answer_times()
    us = 1e6
    rows = [
        ["a request's count and duration (route, method, status)", "", "", f"{us * request:.1f}"],
        ["a request's hooks, all told (every before/after hook of the app, no view)",
         f"{us * hooks['off']:.1f}", f"{us * hooks['on']:.1f}", f"{us * hooks['added']:.1f}"],
        ["a history-store call, timed (SQLite ping)", f"{us * history['off']:.1f}",
         f"{us * history['on']:.1f}", f"{us * history['added']:.1f}"],
        [f"a streamed answer of {tokens} tokens through the wrapper, and its records",
         f"{us * streaming['off']:.1f}", f"{us * streaming['on']:.1f}",
         f"{us * streaming['added']:.1f}"],
        ["a wait in the queue", "", "", f"{us * wait:.1f}"],
        ["a question: hooks + 3 history calls + answer + wait", "", "", f"{us * question:.1f}"],
    ]
    print(table("What metrics add to a question, piece by piece (microseconds; medians of "
                "alternating blocks)", ["piece", "without", "with", "added"], rows))
    print(table("The same seen through whole requests (Flask test client; the spread of the "
                "machine hides it)", ["request", "off", "on", "on - off"],
                [["GET /healthz", f"{us * health['off']:.0f}", f"{us * health['on']:.0f}",
                  f"{us * health['added']:.0f}"],
                 ["GET /api/conversations (one history call)", f"{us * listing['off']:.0f}",
                  f"{us * listing['on']:.0f}", f"{us * listing['added']:.0f}"]]))
    print(f"\none scrape of /metrics: {1e3 * scrape:.2f} ms (once per scrape interval)")
    print(f"a question's instrumentation: {us * question:.0f} us = "
          f"{100 * question / answer_s:.4f}% of a streamed answer ({answer_s:.2f} s), "
          f"{100 * question / ttft_s:.4f}% of the time to its first token ({ttft_s:.2f} s), "
          f"from {source}")
    path = common.save("metrics_cost", {
        "machine": info, "healthz": health, "conversations": listing, "request_s": request,
        "hooks_s": hooks,
        "history_call": history, "stream_128_tokens": streaming, "queue_wait_s": wait,
        "question_s": question, "scrape_s": scrape, "answer_s": answer_s, "ttft_s": ttft_s,
        "answer_times_from": source, "share_of_answer": question / answer_s,
        "share_of_ttft": question / ttft_s})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
