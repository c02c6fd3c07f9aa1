"""Shared fixtures: settings isolated in a temporary folder, and the real servers tests use.

Everything here is real: a Chroma server (`chroma run`), a MongoDB wire-protocol server
(`secantusd-py`), an OpenAI-compatible llama.cpp server, the embedding model and llama.cpp
models from their PyPI packages. The one stand-in is the Ollama replay (no Ollama server can be
installed on these machines): see tests/ollama_replay.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import Settings, load_settings
from hearth.embeddings import build_embeddings
from hearth.services import Services, build_services
from tests.ollama_replay import OllamaReplay

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODELS = REPO / "models"
DOCS = REPO / "docs"
SMOLLM = "smollm2-135m-instruct-q4_1"
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m"
QWEN_1_5B = "qwen2.5-coder-1.5b-instruct-q4_k_m"  # the default from 2 physical cores


# Fixtures that bring a real part: a test that uses one is in the real tier, not the fast one.
REAL_FIXTURES = {"embeddings", "smollm", "make_services", "chroma_server", "mongo", "mongo_server",
                 "llama_server", "ollama_replay"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Two tiers: `pytest -m "not real"` runs the logic in seconds (fakes allowed and named);
    `real` tests use real parts (models, servers, documents); `slow` ones are also real."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if (uses & REAL_FIXTURES or item.get_closest_marker("slow")) \
                and not item.get_closest_marker("real"):
            item.add_marker(pytest.mark.real)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer's .env or HEARTH_* variable leaks into a test; no test writes the repo."""
    for name in list(os.environ):
        if name.startswith("HEARTH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def embeddings() -> Any:
    """The real embedding model, loaded once for the session."""
    return build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data", "models_dir": MODELS, "docs_dir": DOCS,
            "llamacpp_model": SMOLLM, "llamacpp_n_ctx": 2048, "max_new_tokens": 48,
        }
        values.update(overrides)
        return load_settings(_env_file=None, **values)

    return make


@pytest.fixture(scope="session")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2-135M in process: tiny and fast, for plumbing (its answers are poor)."""
    from hearth.llm import LlamaCppLLM

    return LlamaCppLLM(load_settings(
        _env_file=None, models_dir=MODELS, llamacpp_model=SMOLLM, llamacpp_n_ctx=2048,
        max_new_tokens=48, data_dir=tmp_path_factory.mktemp("unused"),
    ))


@pytest.fixture
def make_services(make_settings: Callable[..., Settings], embeddings: Any,
                  smollm: Any) -> Callable[..., Services]:
    """Services over a fresh data folder, sharing the loaded embedding model and SmolLM2."""
    def make(**overrides: Any) -> Services:
        settings = make_settings(**overrides)
        ready: dict[str, Any] = {"embeddings": embeddings}
        if settings.llm_backend.value == "llamacpp" and settings.llamacpp_model == SMOLLM \
                and settings.llamacpp_n_ctx == 2048 and settings.max_new_tokens == 48 \
                and not settings.llamacpp_context_contrast:
            ready["llm"] = smollm
        return build_services(settings, **ready)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} was not ready after {timeout:.0f} s")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


class Server:
    """A server process of the test session, stopped (and reaped) at the end."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            env=env, cwd=cwd,
        )

    def stop(self) -> None:
        """Stop the server and every process it started (its own session)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (`chroma run`) on 127.0.0.1; yields its base URL."""
    folder = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    server = Server([str(BIN / "chroma"), "run", "--path", str(folder / "db"),
                     "--host", "127.0.0.1", "--port", str(port)], folder / "log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/api/v2/heartbeat"), "chroma run", proc=server.proc)
        yield url
    finally:
        server.stop()


class MongoServer:
    """A real MongoDB wire-protocol server (secantusdb) that tests may stop and start."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.server: Server | None = None

    def start(self) -> None:
        self.server = Server([str(BIN / "secantusd-py"), "--host", "127.0.0.1",
                              "--port", str(self.port), "--storage-path", str(self.folder / "db")],
                             self.folder / "log")

        def pings() -> bool:
            import pymongo

            client: pymongo.MongoClient[Any] = pymongo.MongoClient(
                self.uri, serverSelectionTimeoutMS=1000)
            try:
                return bool(client.admin.command("ping")["ok"])
            finally:
                client.close()

        wait_until(pings, "secantusd-py", proc=self.server.proc)

    def stop(self) -> None:
        if self.server:
            self.server.stop()


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo_server(mongo: MongoServer) -> str:
    """A MongoDB URI on the session's wire server, restarted if a test stopped it."""
    if mongo.server is None or mongo.server.proc.poll() is not None:
        mongo.start()
    return mongo.uri


@pytest.fixture
def ollama_replay() -> Iterator[OllamaReplay]:
    """The replayed Ollama API (a contract-test stand-in); ``.url`` is its base URL."""
    with OllamaReplay() as replay:
        yield replay


def start_llama_server(folder: Path) -> tuple[Server, str]:
    """A real llama.cpp OpenAI-compatible server with SmolLM2, and its /v1 base URL."""
    port = free_port()
    server = Server([sys.executable, "-m", "llama_cpp.server",
                     "--model", str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"),
                     "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                     "--n_ctx", "2048", "--n_threads", "1"], folder / "llama-server.log")
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: http_ok(f"{url}/models"), "llama_cpp.server", proc=server.proc)
    except BaseException:
        server.stop()
        raise
    return server, url


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's llama.cpp server; yields its /v1 base URL."""
    server, url = start_llama_server(tmp_path_factory.mktemp("llama-server"))
    try:
        yield url
    finally:
        server.stop()


def closed_port_url(scheme: str = "http") -> str:
    """An address on 127.0.0.1 where nothing listens: a backend that is down."""
    return f"{scheme}://127.0.0.1:{free_port()}"
