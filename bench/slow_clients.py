"""How long /healthz and a history read take while slow or idle connections are held open.

    .venv/bin/python bench/slow_clients.py [--counts 16,100,300] [--before DIR]

Starts a real `hearth serve` on 127.0.0.1 (SmolLM2, default threads and deadlines, no guide
indexed), then for each kind of slow client (a partial request line, partial headers, a
partial body with a large Content-Length, a connection that sends nothing) and each count N:
opens N such connections, waits a second, and times GET /healthz and GET /api/conversations
(10 s at most each), then closes them. With ``--before DIR`` (a checkout of commit d29ac2e,
gunicorn's gthread worker: `git worktree add DIR d29ac2e`), the same against that server, run
from DIR through a folder holding a `hearth` symlink on PYTHONPATH. Prints one table.
Loopback only; every loop is bounded and the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOLLM = "smollm2-135m-instruct-q4_1"
KINDS = {
    "partial request line": b"GET /healt",
    "partial headers": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow",
    "partial body": b"POST /api/question HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"q",
    "idle": b"",
}
WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(name: str, before: Path | None, folder: Path) -> Iterator[str]:
    """`hearth serve` (this checkout's, or the one in ``before``) on a free loopback port."""
    port = free_port()
    env = {**os.environ, "HEARTH_DATA_DIR": str(folder / "data"),
           "HEARTH_MODELS_DIR": str(REPO / "models"), "HEARTH_LLAMACPP_MODEL": SMOLLM,
           "HEARTH_PORT": str(port)}
    argv = [str(BIN / "hearth"), "serve", "--no-index-docs"]
    if before is not None:
        pkg = folder / "pkg"
        pkg.mkdir()
        (pkg / "hearth").symlink_to(before.resolve())
        env["PYTHONPATH"] = str(pkg)
        argv = [sys.executable, "-c", "from hearth.cli import main; main()", "serve",
                "--no-index-docs"]
    log = (folder / "log").open("wb")
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while timed(f"{url}/healthz", 2) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: see {folder / 'log'}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def timed(url: str, timeout: float) -> float | None:
    """Seconds GET ``url`` took to answer 200, or None when it did not within ``timeout``."""
    started = time.perf_counter()
    try:
        ok = httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return None
    return time.perf_counter() - started if ok else None


def measure(url: str, kind: str, count: int) -> tuple[float | None, float | None]:
    port = int(url.rsplit(":", 1)[1])
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            if KINDS[kind]:
                sock.sendall(KINDS[kind])
        time.sleep(1)
        return (timed(f"{url}/healthz", WAIT_S),
                timed(f"{url}/api/conversations?user_id=ann", WAIT_S))
    finally:
        for sock in socks:
            sock.close()
        time.sleep(1)  # the server notices the closed connections


def shown(seconds: float | None) -> str:
    return f">{WAIT_S:.0f} s (no answer)" if seconds is None else f"{seconds * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="16,100,300")
    parser.add_argument("--before", type=Path, help="a checkout of d29ac2e (gunicorn gthread)")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    servers: list[tuple[str, Path | None]] = [("waitress + deadlines (now)", None)]
    if args.before:
        servers.insert(0, ("gunicorn gthread (d29ac2e)", args.before))
    rows = []
    for name, before in servers:
        with tempfile.TemporaryDirectory() as tmp, server(name, before, Path(tmp)) as url:
            for kind in KINDS:
                for count in counts:
                    healthz, history = measure(url, kind, count)
                    rows.append((name, kind, count, shown(healthz), shown(history)))
                    print(*rows[-1], sep=" | ", file=sys.stderr)
    print("| server | slow connections | N | GET /healthz | GET /api/conversations |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    main()
