"""OCR of a PDF page that has no text layer: poppler's ``pdftoppm`` renders the page to an
image, ``tesseract`` reads the image (Debian's ``poppler-utils`` and ``tesseract-ocr``).

Both are run as programs, one page at a time, rather than through ``unstructured``'s
``ocr_only`` strategy (which runs the same two programs, through pdf2image and its own copy of
pytesseract, over a whole document at once): a program can be killed, so each page gets a
deadline (``HEARTH_INGEST_OCR_TIMEOUT_S``) and one bad page costs that page only; and only the
pages without text are read, so the pages with text keep the fast path.

Pages are rendered at 300 dpi (what tesseract is trained for), and less for a page so large
that the image would pass ``MAX_SIDE_PX`` pixels a side, so no page size can fill the memory.
tesseract runs on one thread (``OMP_THREAD_LIMIT=1``): measured on two shared cores, its
OpenMP threads made a page take 12 s instead of 2.5 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

DPI = 300
MAX_SIDE_PX = 5000
LANGUAGE = "eng"  # Debian's tesseract-ocr-eng
TOOLS = (("tesseract", "tesseract-ocr"), ("pdftoppm", "poppler-utils"))


class OcrFailed(Exception):
    """A page OCR could not read; the message says why, in words for the summary."""

    def __init__(self, reason: str, *, lasting: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        # False when it may read next time (a timeout): such a result is not cached.
        self.lasting = lasting


def unavailable() -> str | None:
    """Why OCR cannot run on this machine (a program not installed), or None."""
    for program, package in TOOLS:
        if shutil.which(program) is None:
            return f"OCR is not available: {program} is not installed (apt-get install {package})"
    return None


def dpi_for(width_pt: float, height_pt: float) -> int:
    """The resolution to render a page of that size (in points, 1/72 in) at: ``DPI``, or less
    for a page whose image would pass ``MAX_SIDE_PX`` a side."""
    longest = max(width_pt, height_pt, 1.0)
    return max(1, min(DPI, int(MAX_SIDE_PX * 72 / longest)))


def read_page(path: Path, page: int, *, dpi: int, timeout_s: float) -> str:
    """The text OCR reads on ``page`` (1-based) of the PDF at ``path``, within ``timeout_s``
    seconds for rendering and reading together; OcrFailed otherwise."""
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="hearth-ocr-") as folder:
        image = Path(folder) / "page"
        _run(["pdftoppm", "-f", str(page), "-l", str(page), "-r", str(dpi), "-gray", "-png",
              "-singlefile", str(path), str(image)], deadline, timeout_s)
        if not image.with_suffix(".png").is_file():
            raise OcrFailed("OCR failed: the page could not be rendered")
        out = _run(["tesseract", str(image.with_suffix(".png")), "stdout", "-l", LANGUAGE],
                   deadline, timeout_s, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    return out.decode("utf-8", errors="replace").replace("\f", "").strip()


def _run(argv: list[str], deadline: float, timeout_s: float,
         env: dict[str, str] | None = None) -> bytes:
    left = deadline - time.monotonic()
    too_long = OcrFailed(f"OCR took longer than {timeout_s:g} s (HEARTH_INGEST_OCR_TIMEOUT_S)",
                         lasting=False)
    if left <= 0:
        raise too_long
    try:
        done = subprocess.run(argv, capture_output=True, timeout=left, env=env, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise too_long from None
    except OSError as exc:  # removed since unavailable() looked, or not executable
        raise OcrFailed(f"OCR failed: cannot run {argv[0]}: {exc.strerror}", lasting=False) \
            from None
    if done.returncode != 0:
        raise OcrFailed(f"OCR failed: {argv[0]}: {_last_line(done.stderr)}")
    return done.stdout


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return (lines[-1] if lines else "exit status not 0")[:200]
