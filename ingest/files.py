"""A folder of documents, walked recursively: PDF, Markdown, plain text, HTML and Word.

Every file becomes a ``Parsed`` document or a ``Skipped`` notice with the reason; one bad file
never stops the walk. Hidden files and folders (``.git``) are left alone; files of other types
are counted in the summary's ``ignored``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hearth.ingest.cache import ParseCache
from hearth.ingest.documents import Block, IngestError, Parsed, Skipped
from hearth.ingest.progress import Progress

KINDS = {
    ".pdf": "pdf",
    ".md": "markdown", ".markdown": "markdown",
    ".txt": "text", ".text": "text", ".rst": "text",
    ".html": "html", ".htm": "html",
    ".docx": "docx",
}
MAX_TEXT_BYTES = 50 * 1024 * 1024  # a larger "text" file is data, not a document
# Bump when parsing changes, so cached results of the old parser are not reused.
PARSER_VERSION = 1


def find_files(root: Path, ignored: dict[str, int] | None = None) -> list[Path]:
    """Readable files under ``root``, in a stable order; symlinked folders are not followed
    (and ``load_folder`` skips a linked file whose target lies outside ``root``)."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if path.suffix.lower() in KINDS:
                found.append(path)
            elif ignored is not None:
                key = f"{path.suffix.lower() or 'extensionless'} files"
                ignored[key] = ignored.get(key, 0) + 1
    return found


def _cache_key(path: Path, options: str) -> str:
    digest = hashlib.sha256(f"files|{PARSER_VERSION}|{options}|".encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_cache(data: dict[str, Any], source: str, name: str) -> Parsed | Skipped:
    if "skipped" in data:
        return Skipped(name, data["skipped"])
    return Parsed(source, data["title"], [Block(**b) for b in data["blocks"]], data["kind"])


def _to_cache(item: Parsed | Skipped) -> dict[str, Any]:
    if isinstance(item, Skipped):
        return {"skipped": item.reason}
    return {"title": item.title, "kind": item.kind, "blocks": [asdict(b) for b in item.blocks]}


def load_folder(root: Path, *, progress: Progress | None = None,
                ignored: dict[str, int] | None = None, cache: ParseCache | None = None,
                pdf_char_margin: float) -> Iterator[Parsed | Skipped]:
    files = find_files(root, ignored)
    if progress:
        progress.begin("files parsed", total=len(files))
    options = f"char_margin={pdf_char_margin}"
    inside = root.resolve()
    for path in files:
        name = str(path.relative_to(root))
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            yield Skipped(name, "a link to a file outside the folder: not followed")
            continue
        try:
            key = _cache_key(path, options) if cache else ""
            cached = cache.get(key) if cache else None
            if cached is not None:
                yield _from_cache(cached, str(path), name)
                continue
            item = parse_file(path, name, pdf_char_margin=pdf_char_margin)
            if cache:
                cache.put(key, _to_cache(item))
            yield item
        except IngestError:
            raise
        except Exception as exc:  # one unreadable file never stops the others
            yield Skipped(name, f"could not be read: {type(exc).__name__}: {exc}"[:240])


def parse_file(path: Path, name: str, *, pdf_char_margin: float) -> Parsed | Skipped:
    kind = KINDS[path.suffix.lower()]
    if kind == "pdf":
        from hearth.ingest.pdf import parse_pdf

        return parse_pdf(path, name, char_margin=pdf_char_margin)
    if kind == "docx":
        return _docx(path, name)
    if path.stat().st_size > MAX_TEXT_BYTES:
        return Skipped(name, f"larger than {MAX_TEXT_BYTES // 2**20} MiB")
    raw = path.read_bytes()
    if kind == "html":
        from hearth.ingest.html import parse_html

        page = parse_html(raw, path.as_uri())
        return Parsed(str(path), page.title or path.stem, page.blocks, kind)
    if b"\x00" in raw[:8192]:
        return Skipped(name, "binary content in a text file")
    text = raw.decode("utf-8", errors="replace")
    if kind == "markdown":
        return _markdown(path, text)
    return Parsed(str(path), path.stem, [Block(text)], kind)


_MD_HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


def _markdown(path: Path, text: str) -> Parsed:
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    text = _FRONT_MATTER.sub("", text)
    splitter = MarkdownHeaderTextSplitter(_MD_HEADERS, strip_headers=False)
    blocks, title = [], ""
    for part in splitter.split_text(text):
        headers = [part.metadata[key] for _, key in _MD_HEADERS if key in part.metadata]
        title = title or part.metadata.get("h1", "")
        blocks.append(Block(part.page_content, section=headers[-1] if headers else ""))
    return Parsed(str(path), title or path.stem, blocks, "markdown")


def _docx(path: Path, name: str) -> Parsed | Skipped:
    import docx
    from docx.table import Table

    try:
        document: Any = docx.Document(str(path))
    except Exception as exc:
        return Skipped(name, f"corrupt Word file: {type(exc).__name__}: {exc}"[:240])
    blocks: list[Block] = []
    section = ""
    title = (document.core_properties.title or "").strip()
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in item.rows]
            blocks.append(Block("\n".join(rows), section=section, table=True))
            continue
        text = item.text.strip()
        style = (item.style.name or "") if item.style is not None else ""
        if style.startswith("Heading") or style == "Title":
            section = text or section
            title = title or (text if style in ("Title", "Heading 1") else "")
        if text:
            blocks.append(Block(text, section=section))
    return Parsed(str(path), title or path.stem, blocks, "docx")
