"""Answer path: Hearth's time to first token and total time against llama.cpp's own.

For N fixed questions over an indexed real corpus (the Python tutorial from python3.11-doc),
on the same machine, never two at the same time:

1. The pieces, in this process with the same components: embedding the question, the Chroma
   query, Hearth's whole retrieval, building the prompt, writing the turn to SQLite history.
2. Hearth: a real `hearth serve` on 127.0.0.1 answers each question through
   ``POST /api/question``, first as one JSON body, then streamed (SSE); the client times the
   first token and the end. The server's CPU seconds are read from /proc for each answer.
3. The limit: ``llama_cpp.Llama``, in a process of its own that loads nothing else, built
   with the parameters Hearth's adapter gives it, generates the very prompt Hearth sent
   (``Assistant.build_prompt`` over the same sources) with the same sampling, in the same
   order (so llama.cpp's prefix cache helps both alike). Each Hearth answer is paired with
   the raw one taken right before or after it, while the other side sits idle.

Temperature 0 on both sides: the answers must be the same tokens, and the script says whether
they are. Both sides run with OMP_WAIT_POLICY=PASSIVE unless ``--omp-default`` (see
``common.omp_passive``). It prints Hearth ÷ raw ratios and the breakdown, writes
``bench/results/answer_path.json``, draws ``bench/plots/answer_path.png`` and, with
pyinstrument installed, profiles the server side of one streamed answer in process
(``bench/results/answer_path_profile.{txt,html}``).

    .venv/bin/python bench/answer_path.py            # Qwen2.5 0.5B, 4 questions x 2 (~15 min)
    .venv/bin/python bench/answer_path.py --quick    # SmolLM2, 2 questions, short answers
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import common
from common import RESULTS, median, ms, table

QUESTIONS = [
    "How do I create a virtual environment?",
    "What does the break statement do in a loop?",
    "How do I read a file line by line?",
    "What is a list comprehension?",
    "How do I handle an exception with try and except?",
    "What is the difference between a tuple and a list?",
    "How do I define a function with default argument values?",
    "What does the __init__ method of a class do?",
]
WARM_UP = "What is the Python interpreter?"
ANSWER_STAND_IN = "A virtual environment is a self-contained directory tree. " * 10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--omp-default", action="store_true",
                   help="leave OMP_WAIT_POLICY unset (spinning waits) instead of PASSIVE for both sides")
    p.add_argument("--quick", action="store_true", help="SmolLM2, 2 questions, 32 tokens")
    p.add_argument("--model", help=f"model name or .gguf path (default {common.QWEN})")
    p.add_argument("--questions", type=int, help="how many of the fixed questions (default 4)")
    p.add_argument("--max-tokens", type=int, help="answer length cap (default 128)")
    p.add_argument("--n-ctx", type=int, help="context window (default 4096; 2048 with --quick)")
    p.add_argument("--rounds", type=int, help="times each question is asked (default 2; 1 with --quick)")
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: Hearth's default)")
    p.add_argument("--corpus", type=Path, default=common.PY_DOCS / "tutorial")
    p.add_argument("--no-profile", action="store_true", help="skip the pyinstrument profile")
    p.add_argument("--metrics", action="store_true",
                   help="serve with HEARTH_METRICS=true (results *_metrics.json; the pieces' "
                        "own cost: bench/metrics_cost.py)")
    args = p.parse_args()
    args.model = args.model or (common.SMOLLM if args.quick else common.QWEN)
    args.questions = args.questions or (2 if args.quick else 4)
    args.max_tokens = args.max_tokens or (32 if args.quick else 128)
    args.n_ctx = args.n_ctx or (2048 if args.quick else 4096)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.questions > len(QUESTIONS):
        p.error(f"at most {len(QUESTIONS)} questions")
    return args


def hearth_settings(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The settings of both the server and the in-process components (HEARTH_* names)."""
    return {
        "data_dir": data_dir, "docs_dir": common.REPO / "docs", "llamacpp_model": args.model,
        "llamacpp_n_ctx": args.n_ctx, "llamacpp_n_batch": args.n_batch,
        "llamacpp_n_threads": args.threads, "temperature": 0, "max_new_tokens": args.max_tokens,
        # The bench asks faster than a person: no rate limit may refuse it.
        "rate_limit": "100000/minute", "question_rate_limit": "100000/minute",
        "metrics": args.metrics,
    }


def index_corpus(services: Any, corpus: Path) -> dict[str, Any]:
    from hearth.ingest.pipeline import ingest_files

    started = time.perf_counter()
    summary = ingest_files(services, corpus)
    return {"corpus": str(corpus), "chunks_in_index": services.vectorstore.count(),
            "chunks_added": summary.chunks_added, "seconds": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------------------------------------
# Phase 1: Hearth over HTTP


def ask_json(client: Any, url: str, question: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.post(f"{url}/api/question", json={"question": question, "user_id": "bench"})
    total = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    return {"question": question, "total_s": total, "answer": body["answer"],
            "server": body["timings"], "usage": body["usage"], "refused": body["refused"]}


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def ask_stream(client: Any, url: str, question: str) -> dict[str, Any]:
    started = time.perf_counter()
    first = None
    pieces: list[str] = []
    done: dict[str, Any] = {}
    body = {"question": question, "user_id": "bench", "stream": True}
    with client.stream("POST", f"{url}/api/question", json=body) as response:
        response.raise_for_status()
        for event, data in sse_events(response.iter_lines()):
            if event == "token":
                first = first or time.perf_counter() - started
                pieces.append(json.loads(data)["text"])
            elif event == "done":
                done = json.loads(data)
            elif event == "error":
                raise RuntimeError(f"the stream failed: {data}")
    total = time.perf_counter() - started
    return {"question": question, "ttft_s": first, "total_s": total,
            "answer": "".join(pieces).strip(), "server": done.get("timings", {}),
            "usage": done.get("usage", {}), "tokens": len(pieces)}


def paired_phase(settings: dict[str, Any], llama: Any, prompts: list[list[Any]],
                 warm_up: list[Any], questions: list[str], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Each question through Hearth, then the same prompt through llama.cpp alone, in turn.

    Pairing each Hearth answer with a raw one taken right before or after it keeps the drift
    (other processes on shared cores) out of the ratio. Both engines see the same sequence of
    prompts: all questions as JSON, then all streamed, so llama.cpp's prefix cache helps both
    alike; the server is idle while the raw engine runs, and the other way round.
    """
    import httpx

    log = RESULTS / "answer_path_server.log"
    out: dict[str, list[dict[str, Any]]] = {"json": [], "stream": [], "raw_json": [], "raw_stream": []}
    with common.hearth_server(log, **settings) as server, httpx.Client(timeout=600) as client:
        url = server.url
        ask_json(client, url, WARM_UP)
        llama.generate(warm_up)
        for _ in range(rounds):
            for mode, ask in (("json", ask_json), ("stream", ask_stream)):
                for n, (question, messages) in enumerate(zip(questions, prompts, strict=True)):
                    def via_hearth(q: str = question, ask: Any = ask) -> dict[str, Any]:
                        cpu = server.cpu_seconds()
                        answer = ask(client, url, q)
                        return {**answer, "cpu_s": server.cpu_seconds() - cpu}

                    def alone(m: list[Any] = messages) -> dict[str, Any]:
                        return llama.generate(m)  # type: ignore[no-any-return]

                    # Who goes first alternates, so that a trend on the machine favours neither.
                    if n % 2 == 0:
                        hearth, raw = via_hearth(), alone()
                    else:
                        raw, hearth = alone(), via_hearth()
                    out[mode].append(hearth)
                    out[f"raw_{mode}"].append(raw)
                    print(f"  {mode:6} {question[:40]:40} hearth {hearth['total_s']:6.2f} s "
                          f"({hearth['cpu_s']:6.2f} s CPU), raw {raw['total_s']:6.2f} s "
                          f"({raw['cpu_s']:6.2f} s CPU)", flush=True)
        out["http"] = [http_round_trip(client, url)]
        if settings.get("metrics"):  # what the server counted: every answer, by outcome
            scraped = client.get(f"{url}/metrics").text
            out["metrics"] = [{"questions": [line for line in scraped.splitlines()
                                             if line.startswith("hearth_questions_total")]}]
            print("  /metrics: " + "; ".join(out["metrics"][0]["questions"]), flush=True)
    return out


def http_round_trip(client: Any, url: str, n: int = 50) -> dict[str, float]:
    """The cost of one HTTP exchange with the server and Flask: GET /healthz (median of n)."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.get(f"{url}/healthz").raise_for_status()
        times.append(time.perf_counter() - started)
    return {"healthz_s": median(times)}


# ---------------------------------------------------------------------------------------------
# Phase 2: the pieces, in process


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, Any]:
    """The median time of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return median(times), result


def pieces_phase(services: Any, questions: list[str]) -> list[dict[str, Any]]:
    """Each step Hearth takes besides generating, timed alone (median of 5), and the prompt."""
    from hearth.conversations import Turn
    from hearth.history import SQLiteHistory

    assistant = services.assistant
    embeddings = services.embeddings
    collection = services.vectorstore.collection
    k = services.settings.top_k
    scratch = Path(tempfile.mkdtemp(prefix="hearth-bench-history-"))
    history = SQLiteHistory(scratch / "history.sqlite3")
    rows = []
    try:
        for n, question in enumerate(questions):
            embed_s, vector = timed(lambda q=question: embeddings.embed_query(q))
            query_s, _ = timed(lambda v=vector: collection.query(
                query_embeddings=[v], n_results=k, include=["documents", "metadatas", "distances"]))
            retrieve_s, hits = timed(lambda q=question: assistant.retrieve(q))
            relevant = [h for h in hits if h.score >= services.settings.min_relevance]
            prompt_s, (messages, used) = timed(
                lambda q=question, r=relevant: assistant.build_prompt(q, r, []))
            # A turn of an answer's shape: the text is a stand-in of typical length.
            turn = Turn(question=question, answer=ANSWER_STAND_IN, sources=[s.to_dict() for s in used],
                        model="llamacpp:bench", timings={"total_s": 1.0},
                        usage={"prompt_tokens": 900, "completion_tokens": 128})
            history_s, _ = timed(lambda n=n, t=turn: history.add_turn(f"bench-{n}-{time.time_ns()}",
                                                                       "bench", t))
            rows.append({"question": question, "embed_s": embed_s, "chroma_query_s": query_s,
                         "retrieve_s": retrieve_s, "prompt_s": prompt_s, "history_write_s": history_s,
                         "messages": messages, "sources": len(used)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Phase 3: llama.cpp alone


# ---------------------------------------------------------------------------------------------
# The profile


def profile_answer(services: Any, question: str, name: str) -> dict[str, Any] | None:
    """pyinstrument over the server side of one streamed answer (Flask app in process)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("(no profile: install pyinstrument into the venv: .venv/bin/pip install "
              "-c constraints.txt pyinstrument)")
        return None
    from hearth.api import create_app

    app = create_app(services.settings, services)
    client = app.test_client()
    profiler = Profiler(interval=0.0005)
    profiler.start()
    response = client.post("/api/question", json={"question": question, "user_id": "profile",
                                                  "stream": True})
    body = b"".join(response.response)  # type: ignore[arg-type]
    response.close()
    session = profiler.stop()
    assert b"event: done" in body, body[-500:]
    (RESULTS / f"{name}_profile.txt").write_text(profiler.output_text(unicode=True, show_all=False))
    (RESULTS / f"{name}_profile.html").write_text(profiler.output_html())
    by_package, top = self_time_by_package(session.root_frame())
    return {"duration_s": session.duration, "by_package": by_package, "top_outside_engines": top}


PACKAGES = [
    ("llama.cpp (C, via llama_cpp)", ("/llama_cpp/",)),
    ("embedding model (torch, sentence-transformers, transformers)",
     ("/torch/", "/sentence_transformers/", "/transformers/", "/tokenizers/")),
    ("Chroma", ("/chromadb/",)),
    ("LangChain", ("/langchain_core/", "/langchain_community/", "/langchain_chroma/",
                   "/langchain_huggingface/", "/langsmith/")),
    ("Flask, Werkzeug, flask-limiter", ("/flask/", "/werkzeug/", "/flask_limiter/", "/limits/")),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("history store (history.py, SQLite)", ("/history.py", "/sqlite3/")),
]


ENGINES = ("llama.cpp (C, via llama_cpp)", "embedding model (torch, sentence-transformers, transformers)",
           "Chroma")


def self_time_by_package(root: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of self time (time in the function itself, or in C it calls) per package, and
    per function outside the three engines."""
    totals: dict[str, float] = {}
    functions: dict[str, float] = {}

    def package(path: str) -> str:
        for label, marks in PACKAGES:
            if any(mark in path for mark in marks):
                return label
        if path.startswith(str(common.REPO)) and "-packages" not in path:
            return "Hearth (api, model, llm, vectorstore, history, throttle)"
        return "other (Python, other libraries)"

    def visit(frame: Any, inherited: str, caller: str) -> None:
        # Self time sits in synthetic "[self]" frames, and C functions have no file of their
        # own: both count for the Python code that called them.
        python = bool(frame.file_path) and not frame.file_path.startswith("<")
        path = frame.file_path if python else inherited
        where = f"{frame.function} ({frame.file_path_short}:{frame.line_no})" if python else caller
        own = frame.time - sum(c.time for c in frame.children)
        if own > 0:
            name = package(path)
            totals[name] = totals.get(name, 0.0) + own
            if name not in ENGINES:
                functions[where] = functions.get(where, 0.0) + own
        for child in frame.children:
            visit(child, path, where)

    if root is not None:
        visit(root, "", "?")
    top = dict(sorted(functions.items(), key=lambda kv: -kv[1])[:12])
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])), top


# ---------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarise(runs: dict[str, list[dict[str, Any]]], pieces: list[dict[str, Any]],
              profile: dict[str, Any] | None) -> dict[str, Any]:
    """Per answer pair: Hearth, raw, ratio; medians; the breakdown of a streamed answer."""
    raw_stream = runs["raw_stream"]
    per_question = []
    for i in range(len(runs["json"])):
        hj, hs, rj, rs = runs["json"][i], runs["stream"][i], runs["raw_json"][i], raw_stream[i]
        p = pieces[i % len(pieces)]
        engines = p["embed_s"] + p["chroma_query_s"]
        per_question.append({
            "question": hj["question"],
            "hearth_stream_ttft_s": hs["ttft_s"], "raw_ttft_s": rs["ttft_s"],
            "hearth_stream_total_s": hs["total_s"], "raw_stream_total_s": rs["total_s"],
            "hearth_json_total_s": hj["total_s"], "raw_json_total_s": rj["total_s"],
            "ttft_ratio": ratio(hs["ttft_s"], rs["ttft_s"]),
            "stream_total_ratio": ratio(hs["total_s"], rs["total_s"]),
            "json_total_ratio": ratio(hj["total_s"], rj["total_s"]),
            "stream_total_ratio_vs_all_engines": ratio(hs["total_s"], rs["total_s"] + engines),
            "hearth_stream_cpu_s": hs["cpu_s"], "raw_stream_cpu_s": rs["cpu_s"],
            "hearth_json_cpu_s": hj["cpu_s"], "raw_json_cpu_s": rj["cpu_s"],
            "stream_cpu_ratio": ratio(hs["cpu_s"], rs["cpu_s"]),
            "json_cpu_ratio": ratio(hj["cpu_s"], rj["cpu_s"]),
            "same_answer_json": hj["answer"] == rj["answer"],
            "same_answer_stream": hs["answer"] == rs["answer"],
            "tokens": rs["tokens"], "hearth_tokens": hs["tokens"],
            "context_tokens": rs["context_tokens"], "sources": p["sources"],
            "server_timings_stream": hs["server"], "server_timings_json": hj["server"],
        })
    m = {key: median([row[key] for row in per_question if row[key] is not None])
         for key in per_question[0] if key.endswith(("_s", "_ratio", "_engines"))}
    # Pairs are the honest ratio on a shared machine: each Hearth answer against the raw one
    # taken right after it.
    for key in ("ttft", "stream_total", "json_total", "stream_cpu", "json_cpu"):
        m[f"paired_{key}_ratio"] = median([r[f"{key}_ratio"] for r in per_question if r[f"{key}_ratio"]])
    spread = [r["stream_total_ratio"] for r in per_question] + [r["json_total_ratio"] for r in per_question]
    m["pair_ratio_min"], m["pair_ratio_max"] = min(spread), max(spread)

    # The breakdown, each piece measured on its own: the engines' work, then Hearth's.
    breakdown = {
        "embed question": median([p["embed_s"] for p in pieces]),
        "Chroma query": median([p["chroma_query_s"] for p in pieces]),
        "LLM prefill (to first token)": m["raw_ttft_s"],
        "LLM decode": median([r["total_s"] - r["ttft_s"] for r in raw_stream]),
        "rest of retrieval (Hearth)": max(0.0, median([p["retrieve_s"] - p["embed_s"] - p["chroma_query_s"]
                                                       for p in pieces])),
        "prompt building": median([p["prompt_s"] for p in pieces]),
        "history write (SQLite)": median([p["history_write_s"] for p in pieces]),
        "HTTP exchange (server)": runs["http"][0]["healthz_s"],
    }
    if profile:
        framework = ("LangChain", "Flask, Werkzeug, flask-limiter", "pydantic",
                     "other (Python, other libraries)")
        breakdown["LangChain, Flask, pydantic, SSE (profile)"] = sum(
            profile["by_package"].get(k, 0.0) for k in framework)
    engines_s = sum(list(breakdown.values())[:4])
    own_s = sum(list(breakdown.values())[4:])
    server_stream = [row["server_timings_stream"] for row in per_question]
    # What the server spends between the prompt being ready and the first token, beyond what
    # llama.cpp alone takes for it: LangChain's ChatLlamaCpp and Hearth's LLM adapter.
    llm_adapter = median([s["first_token_s"] - s.get("retrieve_s", 0) - s.get("prompt_s", 0)
                          - s.get("condense_s", 0) - r["ttft_s"]
                          for s, r in zip(server_stream, raw_stream, strict=True)
                          if "first_token_s" in s])
    result = {"per_question": per_question, "median": m, "breakdown_s": breakdown,
              "engines_s": engines_s, "hearth_own_s": own_s,
              "hearth_own_vs_llm": own_s / m["raw_stream_total_s"],
              "hearth_own_vs_engines": own_s / engines_s,
              "server_side_llm_adapter_ttft_overhead_s": llm_adapter,
              "http": runs["http"][0], "profile": profile,
              "identical_answers": sum(r["same_answer_json"] and r["same_answer_stream"]
                                       for r in per_question)}
    if profile:
        by = profile["by_package"]
        engine_time = sum(by.get(k, 0.0) for k in ENGINES)
        result["profile_own_vs_engines"] = (profile["duration_s"] - engine_time) / engine_time
    return result


def report(result: dict[str, Any]) -> None:
    m = result["median"]
    rows = []
    for row in result["per_question"]:
        rows.append([row["question"][:44], ms(row["hearth_stream_ttft_s"]), ms(row["raw_ttft_s"]),
                     row["ttft_ratio"], ms(row["hearth_stream_total_s"]), ms(row["raw_stream_total_s"]),
                     row["stream_total_ratio"], ms(row["hearth_json_total_s"]),
                     ms(row["raw_json_total_s"]), row["json_total_ratio"], row["stream_cpu_ratio"],
                     row["tokens"], "yes" if row["same_answer_json"] and row["same_answer_stream"] else "NO"])
    rows.append(["median (ratios: of the pairs)", ms(m["hearth_stream_ttft_s"]), ms(m["raw_ttft_s"]),
                 f"{m['paired_ttft_ratio']:.3f}", ms(m["hearth_stream_total_s"]), ms(m["raw_stream_total_s"]),
                 f"{m['paired_stream_total_ratio']:.3f}", ms(m["hearth_json_total_s"]),
                 ms(m["raw_json_total_s"]), f"{m['paired_json_total_ratio']:.3f}",
                 f"{m['paired_stream_cpu_ratio']:.3f}", "", ""])
    print(table("Answer path: Hearth (HTTP) vs llama.cpp alone, same prompt (ms; ratio = Hearth / raw)",
                ["question", "TTFT", "raw", "ratio", "stream", "raw", "ratio", "JSON", "raw", "ratio",
                 "CPU ratio", "tokens", "same"], rows))
    breakdown = result["breakdown_s"]
    total = sum(breakdown.values())
    print(table("Where a streamed answer's time goes (median ms, each piece measured on its own)",
                ["step", "ms", "share"],
                [[k, ms(v), f"{100 * v / total:.2f}%"] for k, v in breakdown.items()]
                + [["sum of the pieces", ms(total), "100%"],
                   ["measured end to end (streamed, HTTP)", ms(m["hearth_stream_total_s"]), ""]]))
    print(f"\nHearth's own work (everything but the three engines): {ms(result['hearth_own_s'])} ms per "
          f"answer = {100 * result['hearth_own_vs_llm']:.2f}% of llama.cpp's time, "
          f"{100 * result['hearth_own_vs_engines']:.2f}% of the engines' time")
    if result.get("profile_own_vs_engines") is not None:
        print(f"profile (server side, one answer): {100 * result['profile_own_vs_engines']:.2f}% of the "
              f"time outside llama.cpp, the embedding model and Chroma")
    print(f"end to end, median of the pairs: Hearth / raw = {m['paired_stream_total_ratio']:.3f} "
          f"(streamed), {m['paired_json_total_ratio']:.3f} (JSON), {m['paired_ttft_ratio']:.3f} "
          f"(first token); pairs ranged {m['pair_ratio_min']:.3f}-{m['pair_ratio_max']:.3f}")
    print(f"CPU seconds, server process / raw engine's process: {m['paired_stream_cpu_ratio']:.3f} "
          f"(streamed), {m['paired_json_cpu_ratio']:.3f} (JSON)")
    print(f"server side, before the first token, beyond llama.cpp's own time: "
          f"{ms(result['server_side_llm_adapter_ttft_overhead_s'])} ms (noise: the pairs' spread)")
    print(f"identical answers (temperature 0): {result['identical_answers']} of "
          f"{len(result['per_question'])}")
    if result.get("profile"):
        prof = result["profile"]
        print(table(f"Profile of one streamed answer, server side ({prof['duration_s']:.2f} s)",
                    ["where (self time)", "ms", "share"],
                    [[k, ms(v), f"{100 * v / prof['duration_s']:.2f}%"]
                     for k, v in prof["by_package"].items()]))
        print(table("Outside the engines, the functions that take the most (self time)",
                    ["function (file:line)", "ms"],
                    [[k[:100], ms(v)] for k, v in prof["top_outside_engines"].items()]))


def main() -> None:
    args = parse_args()
    common.omp_passive(not args.omp_default)
    common.require_model(args.model)
    if not args.corpus.is_dir():
        sys.exit(f"no corpus at {args.corpus}: install python3.11-doc (apt-get install python3.11-doc)")
    from hearth.config import load_settings
    from hearth.services import build_services

    info = common.machine()
    questions = QUESTIONS[:args.questions]
    key = hashlib.sha256(str(args.corpus.resolve()).encode()).hexdigest()[:10]
    data_dir = RESULTS / f"answer-path-data-{key}"
    values = hearth_settings(args, data_dir)
    settings = load_settings(_env_file=None, models_dir=common.MODELS, **values)
    n_threads = settings.n_threads
    print(f"{info['cpu']}, {info['cores']} cores, no GPU; model {args.model}, n_ctx {args.n_ctx}, "
          f"n_batch {args.n_batch}, {n_threads} thread(s), {args.max_tokens} tokens at most; "
          f"OMP_WAIT_POLICY {info['omp_wait_policy']}")

    services = build_services(settings)
    indexed = index_corpus(services, args.corpus)
    print(f"index: {indexed['chunks_in_index']} chunks of {args.corpus} ({indexed['seconds']} s)")

    print("the pieces, in process: embedding, Chroma, retrieval, prompt, history write ...", flush=True)
    pieces = pieces_phase(services, questions)
    warm_up, _ = services.assistant.build_prompt(
        WARM_UP, [h for h in services.assistant.retrieve(WARM_UP)
                  if h.score >= settings.min_relevance], [])
    llama = common.RawEngine(services.llm)
    print(f"Hearth over HTTP and llama.cpp alone, in turn: {len(questions)} questions x "
          f"{args.rounds} round(s), JSON then streamed ...", flush=True)
    runs = paired_phase(values, llama, [p["messages"] for p in pieces], warm_up, questions, args.rounds)
    llama.close()

    name = ("answer_path_quick" if args.quick else "answer_path") + ("_metrics" if args.metrics else "")
    profile = None
    if not args.no_profile:
        print("profile: one streamed answer, server side, under pyinstrument ...", flush=True)
        profile = profile_answer(services, questions[0], name)
    result = summarise(runs, pieces, profile)
    result.update({"machine": info, "index": indexed, "args": {k: str(v) for k, v in vars(args).items()},
                   "n_threads": n_threads, "answers": {"hearth": [r["answer"] for r in runs["stream"]],
                                                       "raw": [r["answer"] for r in runs["raw_stream"]]}})
    report(result)
    path = common.save(name, result)
    import plots

    png = plots.answer_path(result, RESULTS if args.quick or args.metrics else None)
    print(f"\nresults: {path}\nplot: {png}")


if __name__ == "__main__":
    main()
