"""Hearth scaled out on one machine, for real, on loopback: HAProxy in front of several
`hearth serve` workers (separate processes) that share a MongoDB wire server, a Chroma server
(`chroma run`) and an OpenAI-compatible llama.cpp server (`llama-server --parallel N`).

It is the recipe of docs/scaling.md, the harness of tests/test_scale_out.py and of
bench/scale_out.py. Each part is a real server; two are stand-ins for what a team would run
(named as such): secantusdb for MongoDB (a replica set in production) and SmolLM2 for the
served model (Llama 3.1 8B under vLLM or Ollama in production).

    .venv/bin/python deploy/scale-out/stack.py --workers 3 --slots 4

prints the proxy's address and an administrator's key, and keeps everything up until Ctrl-C.
`llama-server` is built by `scripts/bootstrap.sh test` (scripts/build-llama-server.sh); set
HEARTH_LLAMA_SERVER to use another build. `haproxy` comes from Debian.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LLAMA_VERSION = "0.3.36"  # the llama.cpp of this llama-cpp-python release (scripts/bootstrap.sh)
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# The model server shares its cores with the API workers here: OpenMP threads that spin while
# they wait for each other lose their core to a worker and then everything crawls (prompt
# processing fell from 165 to 63 tokens/s, decoding from 50 to 2, with one busy neighbour).
PASSIVE = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


class StackError(RuntimeError):
    """A part of the stack is missing or did not start; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def llama_server_binary() -> Path:
    """The llama.cpp server built by scripts/build-llama-server.sh (or HEARTH_LLAMA_SERVER)."""
    named = os.environ.get("HEARTH_LLAMA_SERVER")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hearth"
    path = Path(named) if named else cache / f"llama-server-{LLAMA_VERSION}-native-off" / "llama-server"
    if not path.is_file():
        raise StackError(f"no llama.cpp server at {path}: run scripts/build-llama-server.sh "
                         "(scripts/bootstrap.sh test does), or set HEARTH_LLAMA_SERVER")
    return path


def model_path() -> Path:
    """SmolLM2, as `hearth models fetch smollm2-135m-instruct-q4_1` places it."""
    found = sorted(ROOT.glob(f"models/**/{MODEL_FILE}"))
    if not found:
        raise StackError(f"no {MODEL_FILE} under models/: run "
                         "`hearth models fetch smollm2-135m-instruct-q4_1`")
    return found[0]


@dataclass
class Part:
    """One server process of the stack, in a session of its own (so a kill reaches it all)."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=ROOT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        self.kill(signal.SIGKILL)
        self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Worker:
    part: Part
    port: int
    metrics_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass
class Stack:
    """The parts, started in order by ``start`` and stopped by ``stop`` (or ``with``)."""

    root: Path
    workers: int = 3
    slots: int = 4
    ctx_per_slot: int = 2048
    threads: int = 0  # llama-server's threads; 0: every core
    settings: dict[str, str] = field(default_factory=dict)  # HEARTH_* for every worker
    mongodb_uri: str | None = None  # an existing MongoDB; None: start the stand-in
    parts: list[Part] = field(default_factory=list)
    api: list[Worker] = field(default_factory=list)
    url: str = ""
    llm_url: str = ""
    chroma_url: str = ""

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting ------------------------------------------------------------------------------

    def _part(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Part:
        part = Part(name, argv, self.root / "logs" / f"{name}.log", env)
        self.parts.append(part)
        part.start()
        return part

    def _wait(self, part: Part, ready: Callable[[], bool], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not part.alive():
                raise StackError(f"{part.name} exited before it was ready:\n{part.tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.3)
        raise StackError(f"{part.name} was not ready after {timeout:.0f} s:\n{part.tail()}")

    def start(self) -> Stack:
        for folder in ("logs", "data", "chroma", "mongo"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise StackError("no haproxy on PATH: apt-get install haproxy "
                             "(scripts/bootstrap.sh test does)")
        llama = llama_server_binary()
        model = model_path()

        # The engines every worker shares.
        if self.mongodb_uri is None:
            port = free_port()
            mongo = self._part("mongodb", [str(BIN / "secantusd-py"), "--host", "127.0.0.1",
                                           "--port", str(port), "--storage-path",
                                           str(self.root / "mongo")])
            self.mongodb_uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
            self._wait(mongo, lambda: listening(port))
        port = free_port()
        chroma = self._part("chroma", [str(BIN / "chroma"), "run", "--path",
                                       str(self.root / "chroma"), "--host", "127.0.0.1",
                                       "--port", str(port)],
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        self.chroma_url = f"http://127.0.0.1:{port}"
        self._wait(chroma, lambda: httpx.get(f"{self.chroma_url}/api/v2/heartbeat",
                                             timeout=2).status_code == 200)
        port = free_port()
        threads = self.threads or os.cpu_count() or 1
        llm = self._part("llama-server", [
            str(llama), "--model", str(model), "--alias", "smollm2", "--host", "127.0.0.1",
            "--port", str(port), "--parallel", str(self.slots),
            "--ctx-size", str(self.ctx_per_slot * self.slots), "--threads", str(threads),
            "--threads-http", str(max(4, self.slots * 2)), "--no-webui", "--cont-batching"],
            env=PASSIVE)
        self.llm_url = f"http://127.0.0.1:{port}/v1"
        self._wait(llm, lambda: httpx.get(f"http://127.0.0.1:{port}/health",
                                          timeout=2).status_code == 200)

        # The API workers: the same settings, each its own process and port.
        for i in range(self.workers):
            port, metrics_port = free_port(), free_port()
            part = self._part(f"worker-{i}", [str(BIN / "hearth"), "serve", "--no-index-docs"],
                              env=self.worker_env(port, metrics_port))
            self.api.append(Worker(part, port, metrics_port))
        for worker in self.api:
            self._wait(worker.part, lambda w=worker: httpx.get(  # type: ignore[misc]
                f"{w.url}/readyz", timeout=5).status_code == 200, timeout=300)

        # The proxy in front of them.
        port = free_port()
        config = self.root / "haproxy.cfg"
        config.write_text(haproxy_config(port, [w.port for w in self.api]))
        check = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True,
                               text=True)
        if check.returncode:
            raise StackError(f"haproxy rejects {config}: {check.stderr or check.stdout}")
        proxy = self._part("haproxy", [haproxy, "-db", "-f", str(config)])
        self.url = f"http://127.0.0.1:{port}"
        self._wait(proxy, lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200)
        return self

    def worker_env(self, port: int, metrics_port: int) -> dict[str, str]:
        """What every worker is told: the compose profile's engines, on loopback."""
        per_worker = max(1, math.ceil(self.slots / self.workers))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        env.update({
            "HEARTH_HOST": "127.0.0.1", "HEARTH_PORT": str(port),
            "HEARTH_DATA_DIR": str(self.root / "data"),  # shared: uploads and their records
            "HEARTH_MONGODB_URI": str(self.mongodb_uri), "HEARTH_CHROMA_URL": self.chroma_url,
            "HEARTH_LLM_BACKEND": "openai", "HEARTH_OPENAI_BASE_URL": self.llm_url,
            "HEARTH_OPENAI_MODEL": "smollm2", "HEARTH_OPENAI_N_CTX": str(self.ctx_per_slot),
            # Sampled as the embedded model samples: the server applies no penalty unasked.
            "HEARTH_OPENAI_EXTRA_BODY": '{"repeat_penalty": 1.1}',
            # A worker lets through its share of the server's slots; the rest wait in its queue.
            "HEARTH_MAX_CONCURRENT_GENERATIONS": str(per_worker),
            "HEARTH_AUTH": "true", "HEARTH_TRUSTED_PROXIES": "127.0.0.1",
            "HEARTH_METRICS": "true", "HEARTH_METRICS_PORT": str(metrics_port),
            "ANONYMIZED_TELEMETRY": "False", "OMP_WAIT_POLICY": "PASSIVE",
        })
        env.update(self.settings)
        return env

    def hearth(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `hearth` CLI against the stack's stores (keys, collections, ingestion)."""
        return subprocess.run([str(BIN / "hearth"), *args], capture_output=True, text=True,
                              env=self.worker_env(8000, 0), cwd=ROOT, timeout=600, check=False)

    def admin_key(self, user: str = "root") -> str:
        made = self.hearth("keys", "create", "--user", user, "--admin")
        token = next((w for w in made.stdout.split() if w.startswith("hearth_")), None)
        if made.returncode or token is None:
            raise StackError(f"hearth keys create failed: {made.stderr or made.stdout}")
        return token

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()


def haproxy_config(port: int, workers: list[int]) -> str:
    """Round robin over the workers, each health-checked on /healthz every second; a request
    that cannot connect to one (a killed worker) is sent to another, and nothing else is
    retried (a question is not idempotent: it would be asked twice); streams pass unbuffered;
    each answer says which worker served it (X-Served-By: the server's name, not a user's)."""
    servers = "\n".join(f"    server w{i} 127.0.0.1:{p} check" for i, p in enumerate(workers))
    return f"""global
    maxconn 2048

defaults
    mode http
    timeout connect 2s
    timeout client 600s
    timeout server 600s
    timeout http-request 30s
    retries 3
    option redispatch
    retry-on conn-failure
    option http-server-close

frontend hearth
    bind 127.0.0.1:{port}
    option forwardfor
    default_backend workers

backend workers
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    http-response set-header X-Served-By %s
{servers}
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--slots", type=int, default=4, help="llama-server's parallel slots")
    p.add_argument("--root", type=Path, default=Path("/tmp/hearth-scale-out"),
                   help="where the stack keeps its data and logs")
    p.add_argument("--mongodb-uri", help="an existing MongoDB (default: start the stand-in)")
    args = p.parse_args()
    with Stack(args.root, workers=args.workers, slots=args.slots,
               mongodb_uri=args.mongodb_uri) as stack:
        print(f"Hearth at {stack.url} ({args.workers} workers, llama-server with {args.slots} "
              f"slots); administrator's key: {stack.admin_key()}")
        for w in stack.api:
            print(f"  worker {w.url}  metrics {w.metrics_url}")
        print(f"logs in {args.root / 'logs'}; Ctrl-C stops everything")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
