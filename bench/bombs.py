"""Memory and outcome of reading each bomb, with the bounds of this tree and with an older tree.

    .venv/bin/python bench/bombs.py                    # this tree only
    .venv/bin/python bench/bombs.py --before d29ac2e   # and the code of that commit, "before"

Each bomb is read by the loader alone (``load_folder`` or ``crawl``; no embedding, no index),
in a process of its own (limited to 8 GiB of address space, killed after ``--timeout`` s), with
the default settings; the table gives each process's peak RSS (``getrusage``) above what it
held once its libraries were imported, the seconds it took, and what became of the bomb. ``--before COMMIT``
extracts that commit with ``git archive`` into a temporary folder (the working tree and the
repository are not touched) and imports it as ``hearth`` through PYTHONPATH. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20

# What runs in each measured process: argv = kind ("files" or "web"), folder or URL.
READER = r"""
import json, resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))
import docx, pypdf, unstructured.partition.pdf  # imported before the baseline
import hearth
from hearth.ingest.documents import Skipped
from hearth.ingest.files import load_folder
from hearth.ingest.web import crawl
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    if sys.argv[1] == "files":
        items = list(load_folder(Path(sys.argv[2]), pdf_char_margin=30.0))
    else:
        items = list(crawl(sys.argv[2], max_depth=1, max_pages=10, concurrency=1, timeout_s=10))
    skipped = [f"{i.name.split(' ')[0].rsplit('/', 1)[-1] or '/'}: {i.reason}"
               for i in items if isinstance(i, Skipped)]
    outcome = "; ".join(skipped) or f"read whole ({len(items)} documents)"
except BaseException as exc:
    outcome = f"{type(exc).__name__}: {exc}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak, "outcome": outcome[:160],
                  "seconds": time.monotonic() - started,
                  "package": hearth.__file__}))
"""


def _deflated(size: int, wbits: int, byte: bytes = b" ") -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = byte * MiB
    return b"".join(packer.compress(block) for _ in range(size // MiB)) + packer.flush()


def _site(routes: dict[str, tuple[str, str, bytes]]) -> tuple[str, ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            ctype, encoding, body = routes.get(self.path, ("text/plain", "", b""))
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", ctype)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


START = ("text/html", "", b"<html><title>Start</title><body><p>The start page.</p>"
         b"<a href='/bomb.html'>bomb</a></body></html>")


def web_bombs(gzip_bomb: bytes) -> dict[str, tuple[str, str, int]]:
    """Each web bomb: (kind, start URL, bytes on the wire)."""
    cases = {
        "sitemap.xml gzip, 1 GiB unpacked": {"/": START, "/sitemap.xml":
                                              ("application/xml", "gzip", gzip_bomb)},
        "robots.txt gzip, 1 GiB unpacked": {"/": START, "/robots.txt":
                                             ("text/plain", "gzip", gzip_bomb)},
        "page gzip, 1 GiB unpacked": {"/": START, "/bomb.html":
                                       ("text/html", "gzip", gzip_bomb)},
    }
    found = {}
    for name, routes in cases.items():
        url, _ = _site(routes)
        found[name] = ("web", url, len(gzip_bomb))
    return found


def file_bombs(folder: Path) -> dict[str, tuple[str, str, int]]:
    """Each file bomb in a folder of its own: (kind, folder, bytes on disk)."""
    import zipfile

    from pypdf import PdfWriter

    def make(name: str, build: Callable[[Path], None]) -> Path:
        (folder / name).mkdir(parents=True)
        path = folder / name / {"docx": "bomb.docx", "pdf": "long.pdf", "fifo": "notes.txt",
                                "text": "huge.txt"}[name]
        build(path)
        return path

    def docx(path: Path) -> None:
        """A real Word file whose document.xml holds 300 MiB of spaces inside its body."""
        import io

        import docx as python_docx

        blank = io.BytesIO()
        python_docx.Document().save(blank)
        with zipfile.ZipFile(blank) as source, \
                zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in source.infolist():
                data = source.read(member)
                if member.filename != "word/document.xml":
                    archive.writestr(member, data)
                    continue
                head, tail = data.split(b"<w:body>", 1)
                with archive.open("word/document.xml", "w", force_zip64=True) as part:
                    part.write(head + b"<w:body>")
                    for _ in range(300):
                        part.write(b" " * MiB)
                    part.write(tail)

    def pdf(path: Path) -> None:
        writer = PdfWriter()
        for _ in range(2500):
            writer.add_blank_page(200, 200)
        with path.open("wb") as f:
            writer.write(f)

    def text(path: Path) -> None:
        with path.open("wb") as f:
            f.truncate(200 * MiB)  # sparse

    made = {
        ".docx zip bomb, 300 MiB unpacked": make("docx", docx),
        "PDF of 2,500 blank pages": make("pdf", pdf),
        "text file of 200 MiB (sparse)": make("text", text),
        "FIFO named notes.txt": make("fifo", os.mkfifo),
    }
    return {name: ("files", str(path.parent), 0 if name.startswith("FIFO") else
                   path.stat().st_size) for name, path in made.items()}


def measure(kind: str, target: str, pythonpath: str | None, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    try:
        done = subprocess.run([sys.executable, "-c", READER, kind, target], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return {"peak": None, "outcome": f"hung: killed after {timeout:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"peak": None, "outcome": f"died ({done.returncode}): {done.stderr[-160:]}"}
    result = json.loads(lines[-1])
    return {"peak": (result["peak_kib"] - result["base_kib"]) / 1024, "outcome": result["outcome"],
            "seconds": result["seconds"], "package": result["package"]}


def before_tree(commit: str, into: Path) -> str:
    """``commit`` extracted under ``into``/hearth (git archive: nothing in the repository
    changes); the PYTHONPATH that imports it as ``hearth``."""
    tree = into / "hearth"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return str(into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", metavar="COMMIT", help="also measure the code of COMMIT")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per bomb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hearth-bombs-") as tmp:
        work = Path(tmp)
        bombs = {**web_bombs(_deflated(1024 * MiB, zlib.MAX_WBITS | 16)),
                 **file_bombs(work / "files")}
        before = before_tree(args.before, work / "before") if args.before else None
        rows = []
        for name, (kind, target, size) in bombs.items():
            timeout = 20.0 if name.startswith("FIFO") else args.timeout
            after = measure(kind, target, None, timeout)
            old = measure(kind, target, before, timeout) if before else None
            if old is not None:
                assert old.get("package", before or "").startswith(before or ""), old
            rows.append((name, size, old, after))
        _table(rows)


def _mib(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result["peak"] is None:
        return "-"
    return f"{result['peak']:,.0f} MiB {result['seconds']:.0f}s"


def _table(rows: list[tuple[str, int, dict[str, Any] | None, dict[str, Any]]]) -> None:
    print(f"{'bomb':<36} {'size':>11} {'peak, time before':>18} {'peak, time after':>17}  "
          "outcome")
    for name, size, old, new in rows:
        size_text = f"{size / 1024:,.0f} KiB" if size else "-"
        print(f"{name:<36} {size_text:>11} {_mib(old):>18} {_mib(new):>17}  "
              f"after: {new['outcome']}")
        if old is not None:
            print(f"{'':<86}before: {old['outcome']}")


if __name__ == "__main__":
    main()
