"""The whole of Hearth's flow, run by tests/test_privacy.py under strace in a loopback-only
network namespace: serve, ingest a folder and a local website, ask, stream, read history.

Exits non-zero if any step fails; what it connects to is strace's to report.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def main(root: Path, port: int) -> None:
    (root / "files").mkdir()
    (root / "files" / "guide.md").write_text(
        "# Backups\n\nTo back up the index, copy the data folder while Hearth is stopped.\n")
    (root / "site").mkdir()
    (root / "site" / "index.html").write_text(
        "<html><head><title>Release notes</title></head><body><main><h1>Release notes</h1>"
        "<p>Version 2 adds streaming answers.</p><a href='more.html'>more</a></main></body></html>")
    (root / "site" / "more.html").write_text(
        "<html><head><title>More</title></head><body><main><p>Version 3 adds a web page."
        "</p></main></body></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root / "site"))  # noqa: E731
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    site_url = f"http://127.0.0.1:{site.server_address[1]}/index.html"

    env = {**os.environ, "HEARTH_DATA_DIR": str(root / "data"), "HEARTH_PORT": str(port),
           "HEARTH_INGEST_ALLOW_HOSTS": "127.0.0.1"}
    run = lambda *args: subprocess.run([str(BIN / "hearth"), *args], env=env, check=True,  # noqa: E731
                                       timeout=600)
    run("ingest", "files", str(root / "files"))
    run("ingest", "web", site_url, "--no-sitemap")
    run("ask", "How do I back up the index?")

    server = subprocess.Popen([str(BIN / "hearth"), "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        answer = httpx.post(f"{base}/api/question", timeout=300, json={
            "question": "What does version 2 add?", "user_id": "ann"})
        answer.raise_for_status()
        with httpx.stream("POST", f"{base}/api/question", timeout=300, json={
                "question": "How do I back up the index?", "user_id": "ann",
                "stream": True}) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("event: ")]
        assert events[-1] == "event: done", events
        listed = httpx.get(f"{base}/api/conversations", params={"user_id": "ann"}).json()
        assert len(listed["conversations"]) == 2, listed
        print("flow ok")
    finally:
        server.terminate()
        server.wait(30)
        site.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
