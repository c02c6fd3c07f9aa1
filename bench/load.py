"""Load: 16 and 64 concurrent users on loopback, mixing questions and history reads.

A bounded load generator (one thread per user, httpx, a fixed time and request budget,
127.0.0.1 only) drives a real `hearth serve` with SmolLM2. Each user, in a loop with a short
think time, either asks a question (streamed: time to first token and to the end) or reads its
history (its conversation list, then one conversation). The server keeps its defaults for
threads and the generation queue (one answer at a time, 8 waiting, 60 s at most in the queue):
a question that finds the queue full gets 503 ``busy`` with ``Retry-After``, which the user
honours; the script counts those as queueing, not as failures. Errors are anything else that
is not a success (5xx, a broken stream, a timeout).

The limit: llama.cpp alone answering the same questions one after another in the same run
(answers/s), measured right before and after each level; Hearth's answers/s under load is
divided by it. History reads are compared with the same reads in process (SQLite, no HTTP) and
over HTTP with the server idle. Fairness: answers per user (Jain's index) and
whether the queue served questions in arrival order.

    .venv/bin/python bench/load.py            # 16 and 64 users, 120 s each (~6 min)
    .venv/bin/python bench/load.py --quick    # 16 and 64 users, 30 s each
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from answer_path import QUESTIONS, sse_events
from common import RESULTS, median, percentile, table


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--omp-default", action="store_true",
                   help="leave OMP_WAIT_POLICY unset (spinning waits) instead of PASSIVE for both sides")
    p.add_argument("--quick", action="store_true", help="30 s a level")
    p.add_argument("--users", default="16,64", help="comma-separated concurrency levels")
    p.add_argument("--duration", type=float, default=120.0, help="seconds a level")
    p.add_argument("--question-share", type=float, default=0.2,
                   help="share of a user's requests that are questions (the rest read history)")
    p.add_argument("--think-s", type=float, default=0.5, help="mean pause between a user's requests")
    p.add_argument("--max-requests", type=int, default=2000, help="per user and level, at most")
    p.add_argument("--model", default=common.SMOLLM)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--top-k", type=int, default=1,
                   help="chunks in each prompt (1 keeps an answer to seconds on a CPU)")
    p.add_argument("--corpus", default=str(common.PY_DOCS / "tutorial"))
    args = p.parse_args()
    if args.quick:
        args.duration = 30.0
    return args


@dataclass
class Record:
    kind: str  # "question", "history"
    user: int
    started: float
    status: int = 0  # HTTP status; 0 when the request failed before one came
    latency_s: float = 0.0
    ttft_s: float | None = None
    first_token_at: float | None = None
    retry_after: str | None = None
    error: str | None = None
    server: dict[str, float] = field(default_factory=dict)  # the answer's timings, from "done"


@dataclass
class User:
    n: int
    url: str
    conversations: list[str]
    question_share: float
    think_s: float
    deadline: float
    max_requests: int
    records: list[Record] = field(default_factory=list)

    def run(self) -> None:
        import httpx

        rng = random.Random(self.n)
        with httpx.Client(timeout=180) as client:
            for i in range(self.max_requests):
                if time.monotonic() >= self.deadline:
                    return
                if rng.random() < self.question_share:
                    record = self.ask(client, QUESTIONS[(self.n + i) % len(QUESTIONS)])
                else:
                    record = self.read_history(client, rng)
                self.records.append(record)
                pause = rng.uniform(0, 2 * self.think_s)
                if record.status == 503 and record.retry_after:
                    pause = max(pause, float(record.retry_after))  # as a well-behaved client does
                time.sleep(max(0.0, min(pause, self.deadline - time.monotonic())))

    def timed(self, kind: str, call: Callable[[Record], None]) -> Record:
        record = Record(kind, self.n, time.monotonic())
        try:
            call(record)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
            record.error = f"{type(exc).__name__}: {exc}"[:200]
        record.latency_s = time.monotonic() - record.started
        return record

    def read_history(self, client: Any, rng: random.Random) -> Record:
        def call(record: Record) -> None:
            user = f"user-{self.n}"
            listing = client.get(f"{self.url}/api/conversations", params={"user_id": user})
            record.status = listing.status_code
            if listing.status_code == 200:
                one = client.get(f"{self.url}/api/conversations/{rng.choice(self.conversations)}",
                                 params={"user_id": user})
                record.status = one.status_code

        return self.timed("history", call)

    def ask(self, client: Any, question: str) -> Record:
        def call(record: Record) -> None:
            body = {"question": question, "user_id": f"user-{self.n}", "stream": True}
            with client.stream("POST", f"{self.url}/api/question", json=body) as response:
                record.status = response.status_code
                record.retry_after = response.headers.get("Retry-After")
                if response.status_code != 200:
                    response.read()
                    return
                for event, data in sse_events(response.iter_lines()):
                    if event == "token" and record.ttft_s is None:
                        record.first_token_at = time.monotonic()
                        record.ttft_s = record.first_token_at - record.started
                    elif event == "error":
                        raise RuntimeError(f"error event: {data[:100]}")
                    elif event == "done":
                        record.server = json.loads(data).get("timings", {})
                        return
                raise RuntimeError("the stream ended without a done event")

        return self.timed("question", call)


def seed_history(settings: Any, users: int) -> dict[int, list[str]]:
    """Three conversations of two turns for each user, written straight to the SQLite store."""
    from hearth.conversations import Turn
    from hearth.history import build_history
    from hearth.model import Source

    store = build_history(settings)
    answer = "A list comprehension builds a list from an iterable in one expression. " * 4
    source = Source(source="/usr/share/doc/python3.11/html/tutorial/datastructures.html",
                    title="5. Data Structures", page=None, section="5.1.3. List Comprehensions",
                    snippet=answer * 2, chunk_id="0" * 64, score=0.61).to_dict()
    conversations: dict[int, list[str]] = {}
    for n in range(users):
        conversations[n] = []
        for c in range(3):
            cid = f"load-{n}-{c}"
            conversations[n].append(cid)
            store.delete(cid)
            for q in QUESTIONS[c:c + 2]:
                store.add_turn(cid, f"user-{n}", Turn(question=q, answer=answer, sources=[source],
                                                      model="llamacpp:bench", timings={"total_s": 1.0},
                                                      usage={"prompt_tokens": 300, "completion_tokens": 16}))
    return conversations


def in_process_history(settings: Any, conversations: dict[int, list[str]], n: int = 200) -> float:
    """One history read (list, then one conversation) in process: SQLite without HTTP."""
    from hearth.history import build_history

    store = build_history(settings)
    times = []
    for i in range(n):
        started = time.perf_counter()
        store.list(f"user-{i % len(conversations)}")
        store.get(conversations[i % len(conversations)][0])
        times.append(time.perf_counter() - started)
    return median(times)


class RawAnswers:
    """llama.cpp alone on the prompts Hearth builds for the same questions, one after another:
    measured right before each level and after the last, as the machine drifts."""

    def __init__(self, services: Any) -> None:
        settings = services.settings
        self.llama = common.RawEngine(services.llm)
        self.prompts = []
        for question in QUESTIONS[:4]:
            hits = [h for h in services.assistant.retrieve(question) if h.score >= settings.min_relevance]
            self.prompts.append(services.assistant.build_prompt(question, hits, [])[0])
        self.llama.generate(self.prompts[-1])  # warm-up

    def service_s(self) -> float:
        return median([self.llama.generate(p)["total_s"] for p in self.prompts])


def idle_history(url: str, conversations: dict[int, list[str]], n: int = 100) -> float:
    """One history read (two requests) over HTTP with nothing else running: the HTTP cost."""
    import httpx

    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            user = i % len(conversations)
            started = time.perf_counter()
            client.get(f"{url}/api/conversations", params={"user_id": f"user-{user}"}).raise_for_status()
            client.get(f"{url}/api/conversations/{conversations[user][0]}",
                       params={"user_id": f"user-{user}"}).raise_for_status()
            times.append(time.perf_counter() - started)
    return median(times)


def level(url: str, users: int, conversations: dict[int, list[str]], args: argparse.Namespace,
          server: Any) -> dict[str, Any]:
    started = time.monotonic()
    cpu = server.cpu_seconds()
    deadline = started + args.duration
    crowd = [User(n, url, conversations[n], args.question_share, args.think_s, deadline,
                  args.max_requests) for n in range(users)]
    threads = [threading.Thread(target=u.run, daemon=True) for u in crowd]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline + 240 - time.monotonic()))
    elapsed = time.monotonic() - started
    stuck = sum(t.is_alive() for t in threads)
    records = [r for u in crowd for r in u.records]
    return summarise(records, users, elapsed, stuck, server.cpu_seconds() - cpu)


def pcts(values: list[float]) -> dict[str, float]:
    return {p: percentile(values, q) * 1000 for p, q in (("p50", 50), ("p95", 95), ("p99", 99))} | \
        {"max": max(values, default=float("nan")) * 1000}


def jain(counts: list[int]) -> float:
    """Jain's fairness index: 1 when every user got the same, 1/n when one got everything."""
    total = sum(counts)
    return total * total / (len(counts) * sum(c * c for c in counts)) if total else float("nan")


def inversions(admitted: list[Record]) -> tuple[int, int]:
    """Pairs served out of arrival order, among answers that both waited in the queue."""
    waited = sorted((r for r in admitted if r.first_token_at is not None), key=lambda r: r.started)
    bad = pairs = 0
    for i, a in enumerate(waited):
        for b in waited[i + 1:]:
            if b.started - a.started < 0.05:
                continue  # arrivals this close race on the network, not in the queue
            pairs += 1
            bad += b.first_token_at < a.first_token_at  # type: ignore[operator]
    return bad, pairs


def summarise(records: list[Record], users: int, elapsed: float, stuck: int,
              server_cpu_s: float) -> dict[str, Any]:
    history = [r for r in records if r.kind == "history"]
    questions = [r for r in records if r.kind == "question"]
    ok_history = [r for r in history if r.status == 200 and not r.error]
    admitted = [r for r in questions if r.status == 200 and not r.error]
    busy = [r for r in questions if r.status == 503 and not r.error]
    limited = [r for r in records if r.status == 429 and not r.error]
    errors = [r for r in records if r.error or r.status not in (200, 429, 503)
              or (r.status == 503 and r.kind != "question")]
    per_user = [sum(1 for r in admitted if r.user == n) for n in range(users)]
    bad, pairs = inversions(admitted)
    # Inside the gate, before the model starts. Since the gate is taken only when the model is
    # needed (the server reports queue_s), that is the follow-up's rewrite alone; before, it was
    # embedding the question, Chroma and the prompt too. The model idles meanwhile, so under
    # load this is throughput lost.
    in_gate = [r.server.get("condense_s", 0) if "queue_s" in r.server else
               r.server.get("retrieve_s", 0) + r.server.get("prompt_s", 0)
               + r.server.get("condense_s", 0) for r in admitted if r.server]
    queue_wait = [r.server["queue_s"] if "queue_s" in r.server else
                  r.ttft_s - r.server["first_token_s"] for r in admitted
                  if r.ttft_s is not None and "first_token_s" in r.server]
    # Admitted questions asked by a user within 3 s of their own previous answer ending: the
    # place in the queue that answer freed goes, most of the time, to whoever asks first.
    follow_ups = 0
    for n in range(users):
        ends = [r.started + r.latency_s for r in admitted if r.user == n]
        follow_ups += sum(1 for r in admitted if r.user == n
                          and any(0 <= r.started - end < 3.0 for end in ends))
    return {
        "users": users, "elapsed_s": elapsed, "requests": len(records),
        "throughput_rps": (len(ok_history) + len(admitted)) / elapsed,
        "server_cpu_share": server_cpu_s / elapsed,
        "history": {"ok": len(ok_history), "rps": len(ok_history) / elapsed,
                    "latency_ms": pcts([r.latency_s for r in ok_history])},
        "question": {"asked": len(questions), "answered": len(admitted),
                     "answers_per_s": len(admitted) / elapsed,
                     "busy_503": len(busy), "busy_with_retry_after": sum(1 for r in busy if r.retry_after),
                     "busy_latency_ms": pcts([r.latency_s for r in busy]),
                     "ttft_ms": pcts([r.ttft_s for r in admitted if r.ttft_s is not None]),
                     "total_ms": pcts([r.latency_s for r in admitted]),
                     "answers_per_user_jain": jain(per_user),
                     "users_answered": sum(1 for c in per_user if c), "most_answers_one_user": max(per_user),
                     "answered_within_3s_of_own_answer": follow_ups,
                     "fifo_inversions": bad, "fifo_pairs": pairs,
                     "queue_wait_ms": pcts(queue_wait),
                     "before_model_in_gate_ms": pcts(in_gate),
                     "before_model_share_of_elapsed": sum(in_gate) / elapsed},
        "rate_limited_429": len(limited), "errors": len(errors), "stuck_users": stuck,
        "error_samples": sorted({f"{r.kind} {r.status} {r.error}" for r in errors})[:5],
    }


def report(result: dict[str, Any]) -> None:
    rows = []
    for lv in result["levels"]:
        h, q = lv["history"], lv["question"]
        rows.append([lv["users"], f"{lv['throughput_rps']:.1f}", h["ok"], f"{h['latency_ms']['p50']:.0f}",
                     f"{h['latency_ms']['p95']:.0f}", f"{h['latency_ms']['p99']:.0f}", q["asked"],
                     q["answered"],
                     f"{q['answers_per_s']:.3f}", f"{lv['raw_answers_per_s']:.3f}",
                     f"{q['answers_per_s'] / lv['raw_answers_per_s']:.2f}" + ("" if q["busy_503"] else "*"),
                     f"{q['ttft_ms']['p50'] / 1000:.1f}", f"{q['ttft_ms']['p95'] / 1000:.1f}",
                     f"{q['ttft_ms']['p99'] / 1000:.1f}", f"{q['ttft_ms']['max'] / 1000:.1f}",
                     q["busy_503"], lv["rate_limited_429"], lv["errors"]])
    print(table("Load: users on loopback mixing questions and history reads "
                f"({result['args']['duration']} s a level)",
                ["users", "req/s", "history", "p50 ms", "p95", "p99", "questions", "answered", "answers/s",
                 "raw", "÷ raw", "TTFT p50 s", "p95", "p99", "max", "busy 503", "429", "errors"], rows))
    print("raw: llama.cpp alone answering the same questions one after another (same model, prompts, "
          "settings), measured right before and after each level; * the queue was never full, so demand, "
          "not the engine, set the rate")
    print(f"a history read (list + one conversation): {result['history_in_process_ms']:.2f} ms in process "
          f"(SQLite), {result['history_idle_http_ms']:.1f} ms over HTTP with the server idle")
    for lv in result["levels"]:
        q = lv["question"]
        slower = lv["history"]["latency_ms"]["p50"] / result["history_idle_http_ms"]
        print(f"{lv['users']} users: busy answers came with Retry-After: {q['busy_with_retry_after']} of "
              f"{q['busy_503']} (in {q['busy_latency_ms']['p50']:.0f} ms, p50); answers per user, Jain's "
              f"index {q['answers_per_user_jain']:.2f} ({q['users_answered']} users had one or more, one "
              f"had {q['most_answers_one_user']}; {q['answered_within_3s_of_own_answer']} answers went to a "
              f"question asked < 3 s after the same user's previous answer); "
              f"out of arrival order: {q['fifo_inversions']} of "
              f"{q['fifo_pairs']} pairs; server CPU {100 * lv['server_cpu_share']:.0f}% of one core; "
              f"history p50 ÷ idle: {slower:.1f}")
        wait, before = q["queue_wait_ms"], q["before_model_in_gate_ms"]
        print(f"  queue wait p50 {wait['p50'] / 1000:.1f} s, max {wait['max'] / 1000:.1f} s; inside the gate "
              f"before the model starts (embedding, Chroma, prompt) p50 {before['p50']:.0f} ms = "
              f"{100 * q['before_model_share_of_elapsed']:.1f}% of the level's time with the model idle")
        for sample in lv["error_samples"]:
            print(f"  error: {sample}")


def main() -> None:
    args = parse_args()
    common.omp_passive(not args.omp_default)
    common.require_model(args.model)
    from hearth.config import load_settings
    from hearth.ingest.pipeline import ingest_files
    from hearth.services import build_services

    info = common.machine()
    levels = [int(x) for x in args.users.split(",")]
    data_dir = RESULTS / "load-data"
    values = {"data_dir": data_dir, "docs_dir": common.REPO / "docs", "llamacpp_model": args.model,
              "llamacpp_n_ctx": 2048, "temperature": 0, "max_new_tokens": args.max_tokens,
              "top_k": args.top_k, "rate_limit": "100000/minute", "question_rate_limit": "100000/minute",
              # One address (127.0.0.1) sends every user's requests: the per-address limit is
              # not what is measured.
              "client_rate_limit": "100000/minute"}
    settings = load_settings(_env_file=None, models_dir=common.MODELS, **values)
    print(f"{info['cpu']}, {info['cores']} cores, no GPU; {args.model}, top-{args.top_k}, "
          f"{args.max_tokens} tokens; server: {settings.threads} threads, "
          f"{settings.max_concurrent_generations} answer at a time, {settings.max_queued_generations} "
          f"queued, {settings.queue_timeout_s:.0f} s queue timeout; "
          f"OMP_WAIT_POLICY {info['omp_wait_policy']}")
    services = build_services(settings)
    ingest_files(services, Path(args.corpus))
    conversations = seed_history(settings, max(levels))
    history_ms = in_process_history(settings, conversations) * 1000
    raw = RawAnswers(services)
    results = []
    with common.hearth_server(RESULTS / "load_server.log", **values) as server:
        idle_ms = idle_history(server.url, conversations) * 1000
        before = raw.service_s()
        for users in levels:
            print(f"{users} users for {args.duration:.0f} s (llama.cpp alone: {before:.2f} s an "
                  "answer just before) ...", flush=True)
            results.append(level(server.url, users, conversations, args, server))
            after = raw.service_s()
            results[-1]["raw_service_s"] = {"before": before, "after": after}
            results[-1]["raw_answers_per_s"] = 2 / (before + after)
            before = after
    raw.llama.close()
    result = {"machine": info, "args": vars(args), "history_in_process_ms": history_ms,
              "history_idle_http_ms": idle_ms,
              "server": {"threads": settings.threads, "max_concurrent_generations":
                         settings.max_concurrent_generations,
                         "max_queued_generations": settings.max_queued_generations,
                         "queue_timeout_s": settings.queue_timeout_s},
              "levels": results}
    report(result)
    path = common.save("load_quick" if args.quick else "load", result)
    import plots

    print(f"\nresults: {path}\nplot: {plots.load(result, RESULTS if args.quick else None)}")


if __name__ == "__main__":
    main()
