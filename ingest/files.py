"""A folder of documents, walked recursively: PDF, Markdown, plain text, HTML and Word.

Every file becomes a ``Parsed`` document or a ``Skipped`` notice with the reason; one bad file
never stops the walk. Hidden files and folders (``.git``) are left alone, and so are the files
and folders the user's patterns exclude (``Exclusions``); files of other types and what the
patterns excluded are counted in the summary's ``ignored``. A link is read only if its target
is a file in the folder that these rules would read too: a link cannot reach what they leave
out.

A document that names no title of its own (a text file, Markdown without a level-1 heading, a
PDF without one) is titled after the name its file goes by (``title_from_name``), found again
at each read: the name is not the content's, so the parse cache does not keep it.

Reading is bounded (``ReadLimits``, from the settings), so no file can take the process's
memory or hang it: what is not a regular file (a FIFO named ``notes.txt``, a socket, a device)
is skipped before it is opened; a file larger than ``HEARTH_INGEST_MAX_FILE_BYTES`` is skipped
before it is read; a .docx (a zip) that unpacks past ``HEARTH_INGEST_MAX_UNPACKED_BYTES`` and a
PDF of more than ``HEARTH_INGEST_MAX_PDF_PAGES`` pages are skipped. Running out of memory
anyway stops the ingestion (``MemoryError``): it is not one bad file.

What is parsed is kept in the parse cache, except a result that may change by itself: a PDF
whose scanned pages were skipped because OCR is not installed, or took too long, is parsed
again next time.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from hearth.ingest.cache import ParseCache
from hearth.ingest.documents import (
    Block,
    IngestError,
    Parsed,
    ReadLimits,
    Skipped,
    SkippedForNow,
    SkippedPages,
)
from hearth.ingest.progress import Progress

KINDS = {
    ".pdf": "pdf",
    ".md": "markdown", ".markdown": "markdown",
    ".txt": "text", ".text": "text", ".rst": "text",
    ".html": "html", ".htm": "html",
    ".docx": "docx",
}
_KINDS_OF_FILE = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISDIR, "a folder"))
# Bump when parsing changes, so cached results of the old parser are not reused.
# 2: scanned PDF pages are read by OCR (version 1 cached them as skipped).
# 3: blocks carry their heading path (HTML, Markdown).
PARSER_VERSION = 3
# And per kind, for a change to one kind's parsing, so that the others' cached results stay
# (a PDF's scanned pages are not read by OCR again for a change to text files).
# text, markdown, html 1: UTF-16 and -32 read by their byte-order mark (cached as skipped
# before), and NUL bytes without one skip an HTML file (cached as a page of noise before).
KIND_VERSIONS = {"text": 1, "markdown": 1, "html": 1}
# The most bytes of a name file (``name_file``) read.
MAX_NAME_BYTES = 1024


EXCLUDED_FILES = "files excluded by a pattern"
EXCLUDED_FOLDERS = "folders excluded by a pattern"
MAX_EXCLUSIONS = 100
MAX_EXCLUSION_CHARS = 200


class Exclusions:
    """Glob patterns of files and folders not to read, written as in a ``.gitignore``: matched
    case-sensitively against the path under the folder, with ``/`` between names. ``*`` and
    ``?`` never cross a ``/``; ``**`` crosses any number of folders. A pattern without a ``/``
    matches a name at any depth (``*.docx``, ``drafts``, ``~$*``); one with a ``/`` matches
    the path from the folder's top (``archive/2019``, ``notes/**/*.txt``, ``/todo.md``); a
    trailing ``/`` matches folders only (``build/``). A folder that matches is not walked into.

    Raises ``InvalidExclusion`` (an ``IngestError``) for an empty pattern, or too many or too
    long ones."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        if len(patterns) > MAX_EXCLUSIONS:
            raise InvalidExclusion(f"{len(patterns)} exclusion patterns: at most "
                                   f"{MAX_EXCLUSIONS}")
        self._rules: list[tuple[tuple[str, ...], bool]] = []  # (names, folders only)
        for pattern in patterns:
            if len(pattern) > MAX_EXCLUSION_CHARS:
                raise InvalidExclusion(f"an exclusion pattern of {len(pattern)} characters: "
                                       f"at most {MAX_EXCLUSION_CHARS}")
            names = tuple(name for name in pattern.strip().split("/") if name)
            if not names:
                raise InvalidExclusion(f"an empty exclusion pattern: {pattern!r}")
            if "/" not in pattern.strip().rstrip("/"):
                names = ("**", *names)  # a bare name: at any depth ("/name": the top only)
            self._rules.append((names, pattern.strip().endswith("/")))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def excludes(self, relative: str, *, folder: bool = False) -> bool:
        """Whether the file (or ``folder``) at ``relative`` (``/``-separated, under the
        folder ingested) matches a pattern."""
        names = tuple(relative.split("/"))
        return any(_glob(rule, names) for rule, folders_only in self._rules
                   if folder or not folders_only)

    def leaves_out(self, relative: str) -> bool:
        """Whether the file at ``relative`` is left out, by a pattern that matches it or one
        of the folders above it (which the walk does not enter)."""
        names = relative.split("/")
        return self.excludes(relative) or any(
            self.excludes("/".join(names[:depth]), folder=True) for depth in range(1, len(names)))


class InvalidExclusion(IngestError):
    code = "invalid_request"


def _glob(rule: tuple[str, ...], names: tuple[str, ...]) -> bool:
    if not rule:
        return not names
    if rule[0] == "**":
        return any(_glob(rule[1:], names[i:]) for i in range(len(names) + 1))
    return (bool(names) and fnmatch.fnmatchcase(names[0], rule[0])
            and _glob(rule[1:], names[1:]))


def find_files(root: Path, ignored: dict[str, int] | None = None,
               exclude: Exclusions | None = None,
               unlisted: list[OSError] | None = None) -> list[Path]:
    """Readable files under ``root``, in a stable order, less what ``exclude`` matches;
    symlinked folders are not followed (and ``load_folder`` skips a linked file whose target
    lies outside ``root``, or where this walk would not read it). A folder that cannot be
    listed now (its permissions) goes into ``unlisted``, as its error."""
    found: list[Path] = []
    counts = ignored if ignored is not None else {}

    def excluded(path: Path, what: str, folder: bool = False) -> bool:
        if not exclude or not exclude.excludes(path.relative_to(root).as_posix(), folder=folder):
            return False
        counts[what] = counts.get(what, 0) + 1
        return True

    for folder, dirs, names in os.walk(
            root, onerror=unlisted.append if unlisted is not None else None):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not excluded(Path(folder) / d, EXCLUDED_FOLDERS, folder=True))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if excluded(path, EXCLUDED_FILES):
                continue
            if path.suffix.lower() in KINDS:
                found.append(path)
            elif ignored is not None:
                key = f"{path.suffix.lower() or 'extensionless'} files"
                ignored[key] = ignored.get(key, 0) + 1
    return found


class ChangedWhileRead(Exception):
    """A file that changed between its check and its read: grown past the bound, or no longer
    a regular file."""


def _unreadable(path: Path, limit: int) -> str | None:
    """Why ``path`` is not read at all, found without opening it: not a regular file (opening
    a FIFO blocks until someone writes to it), or larger than ``limit``."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        kind = next((what for test, what in _KINDS_OF_FILE if test(info.st_mode)), "special")
        return f"not a regular file ({kind}): not opened"
    if info.st_size > limit:
        return f"larger than {_mib(limit)} (HEARTH_INGEST_MAX_FILE_BYTES)"
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


@contextmanager
def _open_regular(path: Path) -> Iterator[BinaryIO]:
    """The file, opened without blocking and only if it is a regular file: it could have been
    swapped for a FIFO since it was checked."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ChangedWhileRead("not a regular file any more")
        yield f


def _read(path: Path, limit: int) -> bytes:
    """The whole file, in one read of the size it has (so no piece is copied twice), at most
    ``limit`` bytes: ChangedWhileRead past it, should it have grown since it was checked."""
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(min(size, limit) + 1)
        if len(data) > size:
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise ChangedWhileRead(f"grew past {_mib(limit)} while read")
    return data


def _cache_key(path: Path, options: str, limit: int) -> str:
    kind = KIND_VERSIONS.get(KINDS.get(path.suffix.lower(), ""))
    version = f"{PARSER_VERSION}.{kind}" if kind else str(PARSER_VERSION)
    digest = hashlib.sha256(f"files|{version}|{options}|".encode())
    read = 0
    with _open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            read += len(block)
            if read > limit:
                raise ChangedWhileRead(f"grew past {_mib(limit)} while read")
            digest.update(block)
    return digest.hexdigest()


def _from_cache(data: dict[str, Any], path: Path, name: str) -> Parsed | Skipped | None:
    """The cached parse of the file at ``path``, its title still to be named (``_titled``);
    None when the entry cannot tell whether its title is the document's own."""
    if "skipped" in data:
        return Skipped(name, data["skipped"])
    if "own_title" in data:
        title = data["own_title"]
    elif data["title"] == path.stem:
        title = ""  # an entry of before "own_title", titled by this very file's name
    else:
        return None  # of before "own_title": its title may be another file's name
    return Parsed(str(path), title, [Block(**b) for b in data["blocks"]], data["kind"],
                  ocr_pages=data.get("ocr_pages", 0),
                  skipped_pages=[SkippedPages(**p) for p in data.get("skipped_pages", [])])


def _to_cache(item: Parsed | Skipped) -> dict[str, Any]:
    """What the cache keeps of a parse, by the file's content: the document's own title
    ("" for none), never a file's name, which two files of one content do not share."""
    if isinstance(item, Skipped):
        return {"skipped": item.reason}
    return {"own_title": item.title, "kind": item.kind,
            "blocks": [asdict(b) for b in item.blocks], "ocr_pages": item.ocr_pages,
            "skipped_pages": [asdict(p) for p in item.skipped_pages]}


def name_file(path: Path) -> Path:
    """The hidden file beside ``path`` that may hold the name the file goes by, when it is
    stored under another (an upload is stored under a unique, safe name)."""
    return path.with_name(f".{path.name}.name")


def title_from_name(path: Path) -> str:
    """The title of a document that names none: the name its file goes by, without the
    suffix; that in its name file (``name_file``) if it has one, else its own. The name file
    is read only if it is a regular file, not a link."""
    try:
        fd = os.open(name_file(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return path.stem
    with os.fdopen(fd, "rb") as f:
        given = f.read(MAX_NAME_BYTES) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    name = " ".join(given.decode("utf-8", errors="replace").split())
    return Path(name).stem.strip() or path.stem


def _titled(item: Parsed | Skipped, path: Path) -> Parsed | Skipped:
    """The document titled after its file's name if it names no title of its own."""
    if isinstance(item, Parsed) and not item.title:
        item.title = title_from_name(path)
    return item


def _link_refused(path: Path, inside: Path, exclude: Exclusions | None) -> str | None:
    """Why the link at ``path`` is not followed: its target is outside the folder (``inside``,
    resolved), or where the walk would not read it, hidden or left out by a pattern, which
    the link's own name would otherwise get round."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a loop of links
        return "a link that leads to no file (a loop of links): not followed"
    if not target.is_relative_to(inside):
        return "a link to a file outside the folder: not followed"
    relative = target.relative_to(inside)
    if any(part.startswith(".") for part in relative.parts):
        return "a link to a hidden file or folder: not followed"
    if exclude and exclude.leaves_out(relative.as_posix()):
        return "a link to a file an exclusion pattern leaves out: not followed"
    return None


def _lasting(item: Parsed | Skipped) -> bool:
    """Whether parsing again would give the same result (what the parse cache keeps)."""
    return not isinstance(item, SkippedForNow) and (isinstance(item, Skipped) or item.lasting)


def parse_options(pdf_char_margin: float, limits: ReadLimits) -> str:
    """What besides a file's bytes decides its parse: part of its key in the parse cache. A
    change of the OCR page cap changes what a scanned PDF gives; its timeout does not (a page
    that took too long is not cached)."""
    return f"char_margin={pdf_char_margin}|ocr_pages={limits.ocr_pages}"


def cache_key(path: Path, pdf_char_margin: float, limits: ReadLimits) -> str:
    """The key of the file at ``path`` in its folder's parse cache, as ``load_folder`` reads
    it with these options."""
    return _cache_key(path, parse_options(pdf_char_margin, limits), limits.file_bytes)


def load_folder(root: Path, *, progress: Progress | None = None,
                ignored: dict[str, int] | None = None, cache: ParseCache | None = None,
                pdf_char_margin: float,
                limits: ReadLimits | None = None,
                exclude: Exclusions | None = None) -> Iterator[Parsed | Skipped]:
    """Every file of ``root`` parsed or skipped, less what ``exclude`` matches; ``limits``
    left out: config.py's defaults."""
    limits = limits or ReadLimits.of()
    unlisted: list[OSError] = []
    files = find_files(root, ignored, exclude, unlisted)
    if progress:
        progress.begin("files parsed", total=len(files))
    for error in unlisted:
        # What was indexed from under it keeps its chunks (``pipeline.run``), as a file that
        # may not be read now does: a folder that cannot be listed is not an emptied one.
        folder = Path(str(error.filename or root))
        name = "./" if folder == root else f"{folder.relative_to(root)}/"
        yield SkippedForNow(name, f"folder could not be listed: {type(error).__name__}: "
                                  f"{error.strerror or error}")
    options = parse_options(pdf_char_margin, limits)
    inside = root.resolve()
    for path in files:
        name = str(path.relative_to(root))
        try:
            why = (_link_refused(path, inside, exclude) if path.is_symlink() else None) \
                or _unreadable(path, limits.file_bytes)
            if why:
                yield Skipped(name, why)
                continue
            key = _cache_key(path, options, limits.file_bytes) if cache else ""
            cached = cache.get(key) if cache else None
            item = _from_cache(cached, path, name) if cached is not None else None
            if item is None:
                item = _parse(path, name, pdf_char_margin=pdf_char_margin, limits=limits,
                              on_ocr_page=progress.page_read_by_ocr if progress else None)
                # Kept only if the file is still what was hashed: one replaced while parsed
                # would have its new text kept under the old content's key.
                if cache and _lasting(item) \
                        and _cache_key(path, options, limits.file_bytes) == key:
                    cache.put(key, _to_cache(item))
            yield _titled(item, path)
        except (IngestError, MemoryError):
            raise
        except Exception as exc:  # one unreadable file never stops the others
            reason = f"could not be read: {type(exc).__name__}: {exc}"[:240]
            # Not allowed now, changed while read, a disk that did not answer: what is indexed
            # of it stays until a run reads it (a file gone or corrupt is removed).
            for_now = isinstance(exc, (PermissionError, ChangedWhileRead, TimeoutError,
                                       BlockingIOError, InterruptedError)) or (
                isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EBUSY, errno.ESTALE))
            yield SkippedForNow(name, reason) if for_now else Skipped(name, reason)


def parse_file(path: Path, name: str, *, pdf_char_margin: float,
               limits: ReadLimits | None = None,
               on_ocr_page: Callable[[], None] | None = None) -> Parsed | Skipped:
    """One file, parsed; ``on_ocr_page`` is told of each scanned PDF page OCR has read."""
    return _titled(_parse(path, name, pdf_char_margin=pdf_char_margin, limits=limits,
                          on_ocr_page=on_ocr_page), path)


def _parse(path: Path, name: str, *, pdf_char_margin: float, limits: ReadLimits | None = None,
           on_ocr_page: Callable[[], None] | None = None) -> Parsed | Skipped:
    """One file, parsed, its title "" if the document names none (``_titled`` names it)."""
    limits = limits or ReadLimits.of()
    kind = KINDS[path.suffix.lower()]
    if kind == "pdf":
        from hearth.ingest.pdf import parse_pdf

        return parse_pdf(path, name, char_margin=pdf_char_margin, limits=limits,
                         on_ocr_page=on_ocr_page)
    if kind == "docx":
        return _docx(path, name, limits.unpacked_bytes)
    raw = _read(path, limits.file_bytes)
    if looks_binary(raw):
        return Skipped(name, f"binary content in {'an HTML' if kind == 'html' else 'a text'} file")
    if kind == "html":
        from hearth.ingest.html import parse_html

        page = parse_html(raw, path.as_uri())
        return Parsed(str(path), page.title or "", page.blocks, kind)
    text = raw.decode(wide_codec(raw) or "utf-8", errors="replace")
    if kind == "markdown":
        return _markdown(path, text)
    return Parsed(str(path), "", [Block(text)], kind)


# The byte-order marks of the encodings whose text has NUL bytes (Windows Notepad's "Unicode"
# is UTF-16 LE), longest first: UTF-32 LE's begins with UTF-16 LE's.
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def wide_codec(raw: bytes) -> str | None:
    """The UTF-16 or -32 codec that ``raw``'s byte-order mark names, or None."""
    return next((codec for bom, codec in WIDE_BOMS if raw.startswith(bom)), None)


def looks_binary(raw: bytes, charset: str | None = None) -> bool:
    """Whether text, HTML or a page is something else (an image, an archive, a database)
    under a text file's name or type: text never holds a NUL byte unless it is UTF-16 or -32,
    which says so with a byte-order mark (or, for a page, its declared charset). Its bytes
    would be indexed as words."""
    wide = (charset or "").lower().replace("-", "").replace("_", "").startswith(("utf16", "utf32"))
    return not wide and wide_codec(raw) is None and b"\x00" in raw[:8192]


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
        blocks.append(Block(part.page_content, section=headers[-1] if headers else "",
                            headings=" › ".join(headers)))
    return Parsed(str(path), title, blocks, "markdown")


def _unpacks_past(path: Path, limit: int) -> str | None:
    """Why a .docx (a zip) is not opened: its parts unpack past ``limit`` (a zip bomb), by the
    sizes its directory declares or, since those can lie, by unpacking each part in pieces that
    are counted and dropped. (zipfile itself stops a part at its declared size, with a CRC
    error: the second count keeps the bound whatever reads the zip.)"""
    import zipfile

    why = f"unpacks to more than {_mib(limit)} (HEARTH_INGEST_MAX_UNPACKED_BYTES)"
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if sum(member.file_size for member in members) > limit:
            return why
        unpacked = 0
        for member in members:
            with archive.open(member) as part:
                while piece := part.read(1 << 16):
                    unpacked += len(piece)
                    if unpacked > limit:
                        return why
    return None


def _docx(path: Path, name: str, max_unpacked: int) -> Parsed | Skipped:
    import docx
    from docx.table import Table

    try:
        too_big = _unpacks_past(path, max_unpacked)
        if too_big:
            return Skipped(name, too_big)
        document: Any = docx.Document(str(path))
    except MemoryError:
        raise
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
    return Parsed(str(path), title, blocks, "docx")
