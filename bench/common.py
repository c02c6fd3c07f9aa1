"""What the benchmark scripts share: paths, the machine's description, a real `hearth serve`
on 127.0.0.1, llama.cpp alone with Hearth's parameters, percentiles, tables and JSON results.

Each script imports this module from its own folder (``bench/`` is on ``sys.path`` when a
script runs) and puts the repository root on ``sys.path`` so that Hearth's modules import.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
PLOTS = REPO / "bench" / "plots"
BIN = Path(sys.executable).parent
MODELS = REPO / "models"
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m"
SMOLLM = "smollm2-135m-instruct-q4_1"
PY_DOCS = Path("/usr/share/doc/python3.11/html")

# A benchmark stopped with SIGTERM still stops the servers it started (``finally`` runs).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

# No telemetry from the libraries, no hub lookups, before anything imports them.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def omp_passive(on: bool) -> None:
    """OMP_WAIT_POLICY=PASSIVE for this process and the processes it starts, before llama.cpp
    or torch load an OpenMP runtime: waiting threads sleep instead of spinning.

    Why the benchmarks set it by default: on a machine whose cores other processes share, a
    spinning wait can make llama.cpp's prefill several times slower, and by how much depends on
    which OpenMP runtime the process happened to load and how busy the machine is at that
    moment (measured: a bare llama.cpp process 2x slower than Hearth's server on the same
    prompt; see BENCHMARKS.md). Passive, the raw engine and Hearth run at the same speed, so the
    ratio measures Hearth and not the spin. ``--omp-default`` leaves it unset.
    """
    if on:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def machine() -> dict[str, Any]:
    """The machine and software the figures were taken on."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("llama_cpp", "chromadb", "sentence_transformers", "torch", "flask", "waitress"):
        try:
            versions[package] = __import__(package).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions[package] = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": None, "os": platform.platform(), "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP's default, active)"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hearth_env(**settings: Any) -> dict[str, str]:
    """The environment of a `hearth serve` child: this process's, minus any HEARTH_* variable,
    plus ``settings`` as HEARTH_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update({f"HEARTH_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Server:
    """A running `hearth serve`: its base URL and the CPU time its processes have used."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.proc = url, proc

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process, all threads."""
        import psutil

        master = psutil.Process(self.proc.pid)
        total = 0.0
        for process in [master, *master.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def worker_rss_mib(self) -> float:
        import psutil

        master = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in master.children(recursive=True)) / 2**20


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


@contextmanager
def wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, log: Path,
               timeout_s: float) -> None:
    """Until ``url`` answers 200; an error naming the log if the process exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: see {log}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was not ready after {timeout_s:.0f} s: see {log}")
        time.sleep(0.5)


def hearth_server(log: Path, timeout_s: float = 600.0, **settings: Any) -> Iterator[Server]:
    """A real `hearth serve` (waitress, one process) on 127.0.0.1.

    It runs from an empty folder so that no developer's ``.env`` applies; every path given in
    ``settings`` must be absolute.
    """
    port = free_port()
    cwd = Path(tempfile.mkdtemp(prefix="hearth-bench-cwd-"))
    log.parent.mkdir(parents=True, exist_ok=True)
    env = hearth_env(host="127.0.0.1", port=port, models_dir=MODELS, **settings)
    proc = subprocess.Popen([str(BIN / "hearth"), "serve", "--no-index-docs"], cwd=cwd, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/readyz", "hearth serve", log, timeout_s)
        yield Server(url, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        shutil.rmtree(cwd, ignore_errors=True)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns right-aligned but the first."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "-" * len(line(cells[0]))
    return "\n".join([f"\n{title}", rule, line(cells[0]), rule, *map(line, cells[1:]), rule])


def save(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/NAME.json`` (git-ignored); the plots are drawn from it. A quick
    run's NAME ends in ``_quick``, so that it never stands in for a full run's figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def require_model(name: str) -> Path:
    """The model file, or an exit with the command that fetches it."""
    from hearth.weights import ModelError, resolve_model_path

    try:
        return resolve_model_path(name, MODELS)
    except ModelError as exc:
        sys.exit(f"{exc}\n(fetch it with: .venv/bin/hearth models fetch {name})")


# ---------------------------------------------------------------------------------------------
# llama.cpp alone: the limit Hearth is measured against

# The Llama's context parameters the raw engine copies from Hearth's, and checks.
CHECKED = ("n_ctx", "n_batch", "n_threads", "n_threads_batch", "rope_freq_base", "rope_freq_scale")
# The sampling parameters the raw engine copies from Hearth's chat model (temperature is 0).
SAMPLING = ("top_p", "top_k", "repeat_penalty")


def as_dicts(messages: list[Any]) -> list[dict[str, str]]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": str(m.content)} for m in messages]


class RawEngine:
    """llama_cpp.Llama alone, in a process of its own that loads nothing else (no torch, no
    Chroma, no Flask), built with the parameters Hearth's adapter gives it, and checked
    against them. ``generate`` sends it a prompt and gets its timings back."""

    def __init__(self, hearth_llm: Any) -> None:
        # Everything is read from the Llama and the chat model Hearth built, so that the raw
        # engine follows any change to Hearth's adapter.
        client, chat_model = hearth_llm.chat_model.client, hearth_llm.chat_model
        params = {"model_path": str(hearth_llm.model_path), "n_gpu_layers": 0, "verbose": False,
                  "chat_format": client.chat_format, "last_n_tokens_size": client.last_n_tokens_size,
                  "seed": chat_model.seed, **{f: getattr(client.context_params, f) for f in CHECKED}}
        self.sampling = {"temperature": chat_model.temperature, "max_tokens": chat_model.max_tokens,
                         **{name: getattr(chat_model, name) for name in SAMPLING},
                         **hearth_llm.per_call}
        self.proc = subprocess.Popen([sys.executable, __file__, "--raw-engine"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        ready = self._call(params)
        for field in CHECKED:
            theirs = getattr(client.context_params, field)
            if ready[field] != theirs:
                sys.exit(f"the raw engine's {field} is {ready[field]}, Hearth's is {theirs}: fix the bench")

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the raw engine exited with {self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def generate(self, messages: list[Any]) -> dict[str, Any]:
        """Time to first token, total time, CPU seconds, the answer, for one prompt."""
        return self._call({"messages": as_dicts(messages), "sampling": self.sampling})

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            self.proc.wait(30)


def raw_engine_process() -> None:
    """The raw engine's process: JSON lines in (the Llama's parameters, then prompts), JSON out."""
    from llama_cpp import Llama

    params = json.loads(sys.stdin.readline())
    llama = Llama(params.pop("model_path"), **params)
    print(json.dumps({f: getattr(llama.context_params, f) for f in CHECKED}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        cpu = cpu_seconds()
        started = time.perf_counter()
        first = None
        pieces: list[str] = []
        for chunk in llama.create_chat_completion(request["messages"], stream=True, stop=[],
                                                  **request["sampling"]):
            text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if text:
                first = first or time.perf_counter() - started
                pieces.append(text)
        total = time.perf_counter() - started
        print(json.dumps({"ttft_s": first, "total_s": total, "cpu_s": cpu_seconds() - cpu,
                          "answer": "".join(pieces).strip(), "tokens": len(pieces),
                          "context_tokens": llama.n_tokens}), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--raw-engine"]:
    raw_engine_process()


def drafts(run: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """The answered records of a `hearth eval facts` run folder, each with its draft: the
    model's text before the grounding check withheld it ("" where the model declined). As
    the run's own report reads them: a later line for a question replaces an earlier one (a
    question asked again on resuming), and a torn last line (a run killed mid-write) is left
    out."""
    from hearth.evaluation.records import read_jsonl

    latest = {}
    for record in read_jsonl(run / "records.jsonl"):
        if record.get("mode", "answer") == "answer":
            latest[record["id"]] = record
    for record in latest.values():
        if not record.get("error"):
            yield record, record.get("draft") or ("" if record.get("refused") else record["hypothesis"])


def answerable_on_index(parser: Any, sets: Sequence[Path]) -> tuple[Any, Any, list[Any], Any]:
    """For a retrieval benchmark over evaluation sets: the settings, the services, the sets'
    answerable questions and an Assistant without a model (retrieval needs none), against the
    index the settings name; ``parser.error`` when a set is missing or the index is empty."""
    from hearth.config import load_settings
    from hearth.evaluation.keyfacts import load_fact_sets
    from hearth.model import Assistant
    from hearth.services import build_services

    for path in sets:
        if not path.is_file():
            parser.error(f"no evaluation set at {path}")
    settings = load_settings()
    services = build_services(settings)
    if services.vectorstore.count() == 0:
        parser.error(f"the index at {settings.data_dir} is empty: ingest the documents first "
                     "(evaluation/sets/README.md)")
    questions = [q for q in load_fact_sets(sets) if q.answerable]
    return settings, services, questions, Assistant(None, services.vectorstore, settings)
