"""Is the answer in the passages? The evidence for it, and a check of what it claims.

A small model given the right passage still invents: a number (365 days where the page says
999999999), a function (``venv.Venv``), a command. So after every answer:

- **claims** are taken from it: numbers, code identifiers (``contextlib.chdir``, ``os.walk()``,
  ``snake_case``), commands (each one whole) and code spans; in Python code, the names it takes
  from a library (``os.sched_getaffinity``, ``from itertools import pairwise``, a keyword
  argument such as ``default_factory=``), not the names the example makes up for itself
  nor the numbers it gives them (``x = 20``, then "it prints 20"), except the name the
  question asks after: an answer that defines ``eager_task_factory`` itself has made it up;
  in R code likewise (``library(foreign)``, ``read.table``, ``na.strings =``), R's own
  vocabulary (``c()``, ``paste()``) aside, as Python's builtins are;
- each claim is **supported** when the retrieved passages contain it (compared without case,
  spacing and quotes; a command's words one by one and whole, placeholders such as ``NAME``,
  ``/path/to/folder``, an example's own file (``example.json``), a redirect's and an
  option's count (``--max-pages 30``) aside, and not an option the passages only ever
  write with another of the program's commands; a
  method called on the example's own object, by its name; a module's member on that module's
  own page, which calls it ``run()``; a keyword argument by its name in the prose, as "If
  ensure_ascii is false" writes it, unless the passages give the signature of the function
  it is passed to and no parameter of it has that name: ``os.makedirs(name, mode=0o777,
  exist_ok=False)`` takes no ``parents=``, which is ``Path.mkdir``'s);
- the answer is **grounded** when no claim is unsupported and enough of its words come from
  the passages; otherwise the unsupported spans are named, and the faces say that the answer
  is not backed by the documents. Nor is it when it gives no number for "how many", or says
  nothing the question did not ("No, a < b < c is not the same as a < b and b < c."): the
  check has nothing of it to look for;
- the **evidence** is the passage sentences that best support the answer: what a reader checks.

All of it is text comparison, no model: fast, and the same on every backend.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Share of the answer's content words that must appear in the passages: an answer says things
# in its own words (about half of them, measured on the guide's passages), not in other topics'.
MIN_WORD_SUPPORT = 0.3
EVIDENCE_SENTENCES = 3
MIN_EVIDENCE_OVERLAP = 2  # content words shared with the answer, at least

STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "all", "also", "an", "and", "answer", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
    "by", "can", "could", "did", "do", "document", "documents", "does", "doing", "down", "during",
    "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here",
    "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just",
    "like", "may", "me", "might", "more", "most", "must", "my", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "passage", "question",
    "run", "runs", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under",
    "until", "up", "use", "used", "uses", "using", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
    "yours", "yourself",
})
# A file named for the example it is: example.json, pretty_example.json, input.csv.
EXAMPLE_FILE = re.compile(
    r"[\w-]*(?:example|sample|input|output|infile|outfile|data|file|foo|bar|spam|eggs)[\w-]*\.\w{1,5}")
PLACEHOLDER = re.compile(
    r"^(.*<[^>\s]+>.*|\[[^\]]*\]|\{[^}]*\}|[A-Z][A-Z0-9_]{2,}|.*path/to.*|.*your[-_].*|my[\w-]*|"
    rf"\.\.\.|…|[-=|]+|{EXAMPLE_FILE.pattern})$")
CONSTANT = re.compile(r"(?!(?:YOUR|MY|SOME)_)(?!\w*_HERE$)[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
# A name the answer itself tells the user to replace ("Replace `pkgname` with the name of
# your package") is a placeholder, as ``<pkg>`` is: in a command, and named alone.
REPLACED = re.compile(r"\breplace\s+[`'\"]?([\w.<>/-]+)[`'\"]?\s+with\b", re.IGNORECASE)
# A redirect's file is the user's choice: the word after it claims nothing.
REDIRECT = frozenset({">", ">>", "<", "2>", "2>>", "&>"})
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
FENCE_WITH_LANGUAGE = re.compile(r"```([^\n]*)\n(.*?)```", re.DOTALL)
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console", "zsh", "powershell", "cmd", "bat"})
PYTHON_LANGUAGES = frozenset({"python", "py", "python3", "pycon"})
R_LANGUAGES = frozenset({"r", "rscript", "s", "splus"})
# What makes an untagged block (or a code span) R: an assignment arrow, a package loaded.
R_CODE = re.compile(r"<<?-|\b(?:library|require)\(")
# The first word of a command line: what makes a code line a command, not Python.
COMMAND = re.compile(
    r"^(\$ |> )?(python[\d.]*|py|pip[\d.]*|pipx|hearth|curl|wget|source|\.|cd|ls|mkdir|rm|cp|mv|"
    r"export|set|sudo|apt|apt-get|brew|conda|R|Rscript|R CMD|make|git|docker|kubectl|"
    r"chmod|echo|cat|venv|virtualenv|pytest|uv|poetry|npm|node)(\s|$)|^(\./|/)\S")
# No two parts of one pattern here may match the same run of blanks: each would try every split
# of it (a line of 3,000 spaces took two minutes, holding the model's place and the GIL).
PYTHON_LINE = re.compile(
    r"^\s*(import |from \S+ import |def |class |async |await |with |for |while |if |elif |"
    r"else:|try:|except|return|yield |raise |@\w|print\()|"
    r"^\s*[\w.\[\],]+(?:[ \t]+[\w.\[\],]+)*[ \t]*(:[^=]+)?=[^=]|"
    r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\(")
STRING = re.compile(r"[rbfu]{0,2}(\"\"\"|\'\'\'|\"|\')(?:\\.|(?!\1).)*?\1", re.DOTALL)
COMMENT = re.compile(r"#[^\n]*")
DOTTED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)")
CALLED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\(")
# Names one after another, parted by commas or blanks ("a, b", "type Point"), each split one way.
NAMES = r"\w+(?:(?:[ \t]*,[ \t]*|[ \t]+)\w+)*"
DEFINED = re.compile(
    r"(?:\bdef|\bclass)\s+([A-Za-z_]\w*)|\bas\s+([A-Za-z_]\w*)|"
    rf"\bfor\s+({NAMES})\s+in\b|^[ \t]*({NAMES})[ \t]*(?::[^=\n]+)?=(?!=)|\blambda\s+({NAMES})[ \t]*:|"
    r"^[ \t]*[A-Za-z_]\w*\.([A-Za-z_]\w*)[ \t]*(?::[^=\n]+)?=(?!=)", re.MULTILINE)
# An argument as prose writes it: `ensure_ascii=False`, `timeout=5`, `mode="w"`.
KEYWORD_VALUE = re.compile(r"([A-Za-z_]\w*)\s*=\s*(True|False|None|[-+]?\d[\w.]*|\"[^\"]*\"|'[^']*')")
PARAMS = re.compile(r"\bdef\s+\w+\s*\(([^)]*)\)")
DATA = re.compile(r"^[\d\s.,:;()\[\]{}+-]*\d[\d\s.,:;()\[\]{}+-]*$")
FORMAT_SPEC = re.compile(r"\{[^{}\s\"']*[:!=][^{}\s\"']*\}")
IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+)?import\s+([\w., ]+)", re.MULTILINE)
# What Python gives every class and object (``subclass.__name__`` of an example's own loop
# variable) and the methods of its own lists, dicts, sets and strings (``subclasses.append``
# of an example's ``subclasses = []``, ``result.stdout.decode``): Python's, whatever page
# the passages are from.
OBJECT_ATTRIBUTES = frozenset({"__name__", "__qualname__", "__module__", "__doc__", "__dict__",
                               "__class__", "__mro__", "__bases__"}) | frozenset(
    name for kind in (list, dict, set, str, bytes) for name in dir(kind) if not name.startswith("_"))
# Python's own names: an example's print() or len() claims nothing about the documents.
BUILTIN_NAMES = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {"self", "cls"}
# R's own vocabulary, as BUILTIN_NAMES is Python's: the language and the functions every R
# example uses (``library()``, ``c()``, ``paste()``), whatever its subject. Not the functions
# the manuals are about (``read.table``, ``write.csv``, ``options``, ``install.packages``):
# an example's use of those is a claim.
R_BASE_NAMES = frozenset({
    "if", "else", "for", "while", "repeat", "function", "return", "next", "break", "in", "TRUE",
    "FALSE", "NULL", "NA", "NaN", "Inf", "T", "F", "library", "require",
    "suppressMessages", "suppressWarnings", "invisible", "print", "cat", "message", "warning",
    "stop", "stopifnot", "tryCatch", "try", "on.exit", "missing", "match.arg", "do.call", "Recall",
    "c", "list", "vector", "numeric", "character", "logical", "integer", "double", "complex",
    "matrix", "array", "data.frame", "factor", "levels", "nlevels", "length", "names", "setNames",
    "dim", "nrow", "ncol", "NROW", "NCOL", "rownames", "colnames", "dimnames", "head", "tail",
    "str", "summary", "class", "inherits", "is.null", "is.na", "is.numeric", "is.character",
    "is.function", "is.list", "is.data.frame", "as.numeric", "as.character", "as.integer",
    "as.logical", "as.double", "as.vector", "as.list", "as.data.frame", "as.factor", "unlist",
    "lapply", "sapply", "vapply", "mapply", "Map", "Filter", "Reduce", "apply", "tapply", "seq",
    "seq_len", "seq_along", "rep", "rev", "sort", "order", "unique", "duplicated", "which", "any",
    "all", "sum", "prod", "mean", "median", "max", "min", "range", "abs", "sqrt", "exp", "log",
    "round", "floor", "ceiling", "identical", "nchar", "substr", "substring", "paste", "paste0",
    "sprintf", "format", "toupper", "tolower", "trimws", "strsplit", "sub", "gsub", "grepl",
    "regmatches", "table", "exists", "get", "assign", "environment", "new.env", "local",
    "file.path", "basename", "dirname", "file.exists", "getwd", "setwd", "rbind", "cbind", "with",
    "within", "nargs", "sys.call", "match.call", "Negate", "identity"
})
# The package every R session has attached: loading it (``library(base)``), or naming it
# (``base::paste``), claims nothing about the documents, as Python's builtins do not.
R_ATTACHED = frozenset({"base"})
INLINE_CODE = re.compile(r"`([^`\n]+)`")
NUMBER = re.compile(r"(?<![\w.])[-+]?\d(?:[\d_]|,(?=\d))*(?:\.\d+)?(?![\w])")
IDENTIFIER = re.compile(
    r"(?<![\w.])(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_]\w*\(\)|"
    r"[a-z]+(?:_[a-z0-9]+)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|--?[a-z][\w-]+|%[A-Za-z])(?![\w])")
# A question that asks for a quantity ("How many results does lru_cache keep?"), and what
# answers one: a number, in digits or words, or its absence ("no limit", "any number").
QUANTITY_ASKED = re.compile(r"\bhow (?:many|much|long|big|large)\b", re.IGNORECASE)
QUANTITY_GIVEN = re.compile(
    r"\d|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|"
    r"thirty|fifty|hundred|thousand|million|billion|dozen|single|once|twice|half|double|"
    r"none|unlimited|unbounded|infinite|indefinitely|forever|arbitrar\w*|any number|"
    r"as (?:many|much|long|large) as|no (?:\w+ )?(?:limit|maximum|bound|timeout)|"
    r"without (?:a |any )?(?:limit|bound)|limited only)\b",
    re.IGNORECASE)
# Latin abbreviations that read as dotted names: "e.g." is no claim about the documents.
ABBREVIATIONS = frozenset({"e.g", "i.e", "a.k.a", "etc", "vs", "cf"})
# A name code uses as a plain value: not an attribute, not called, not an argument's name.
BARE_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(?![\w.(]|\s*\(|\s*=(?!=))")
R_BARE_NAME = re.compile(r"(?<![\w.$@])([A-Za-z.][\w.]*)(?![\w.(]|\s*\(|\s*=(?!=))")
# A sentence ends at a stop followed by a space or the line's end: "3.11.2" and "os.path"
# go on.
SENTENCE = re.compile(r"(?:[^.!?\n]|[.!?]+(?=[^\s.!?]))+(?:[.!?]+|$)", re.MULTILINE)
HEADING_PATH = " › "  # a passage's first line: its page's title › section, not a statement
# A line this long that ends mid-sentence was wrapped (Markdown is, at 80-100 characters, and
# so is a PDF's text); the next line goes on with the sentence when it starts in lower case, a
# name in backquotes, a bracket or a number that is no list item's ("1 to\n128 characters").
WRAPPED_LINE = 60
CONTINUED = re.compile(r"[a-z`(]|\d(?!\d*[.)]\s)")
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_'-]+")
Span = tuple[int, int]  # a sentence's start and end in its text


@dataclass
class Evidence:
    """A sentence of a passage that supports the answer. ``source`` is the index of its
    passage among the answer's sources; ``start``/``end`` locate it in that passage's text."""

    source: int
    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    grounded: bool
    unsupported: list[str]  # the answer's spans that no passage contains
    claims: int  # how many spans were checked
    word_support: float  # share of the answer's content words found in the passages
    # Why the answer does not answer the question, whatever its support ("" when it does).
    unanswered: str = ""


def normalized(text: str) -> str:
    """Text compared for support: lower case, one space, plain quotes, no spaces around
    punctuation that code writes either way (``a = 1`` and ``a=1``)."""
    text = text.lower().replace("’", "'").replace("“", '"').replace("”", '"')
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"\s*([=(),:\[\]{}])\s*", r"\1", text).strip()


def content_words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text) if w.lower() not in STOPWORDS and len(w) > 2}


def stems(word: str) -> set[str]:
    """A word and its forms without the commonest English endings: "sorting" and "sorts" are
    "sort"; "values" is "value" (and "valu", which "valued" gives too)."""
    return {word} | {word[:-len(ending)] for ending in ("ing", "ed", "es", "s", "d")
                     if word.endswith(ending) and len(word) - len(ending) >= 3}


def is_command(line: str) -> bool:
    return bool(COMMAND.match(line.strip()))


def imports(code: str) -> tuple[list[str], set[str]]:
    """What Python ``code`` imports (modules and names, as written) and the names it binds
    by importing (``import os.path`` binds ``os``; ``import numpy as np``, ``np``)."""
    names: list[str] = []
    bound: set[str] = set()
    for module, members in IMPORT.findall(code):
        if module:
            names.append(module)
        for member in members.split(","):
            name, _, alias = member.strip().partition(" as ")
            if name:
                names.append(name.strip())
                bound.add(alias.strip() or name.strip().split(".")[0])
    return names, bound


Owners = dict[str, set[str]]  # an argument's claim (``key=``) and the calls it is given to


def python_names(code: str) -> tuple[list[str], set[str], Owners]:
    """The names a piece of Python takes from elsewhere (a library, the documents): dotted
    names whose head the code does not define, called names that are neither defined nor
    Python's own, imported modules and names, keyword arguments of those calls. Returned
    with the names the code defines for itself, whose attributes are checked by name alone,
    and the calls each argument is given to (``key=`` to ``sorted``; a method by its name)."""
    # A string's words are the example's own, but a format spec in it is a claim: "{:04d}"
    # where the page says "{:,}".
    specs = [m for s in STRING.finditer(code) for m in FORMAT_SPEC.findall(s.group())]
    code = COMMENT.sub("", STRING.sub('""', code))
    local: set[str] = set(BUILTIN_NAMES)
    for match in DEFINED.finditer(code):
        for group in match.groups():
            if group:
                local |= {n.strip() for n in re.split(r"[,\s]+", group) if n.strip()}
    for params in PARAMS.findall(code):
        local |= {p.split("=")[0].split(":")[0].strip(" *") for p in params.split(",")}
    names, imported = imports(code)
    local -= imported  # an imported name is the library's, not the example's
    body = IMPORT.sub(" ", code)
    names += [head + rest for head, rest in DOTTED.findall(body)]
    for name in CALLED.findall(DOTTED.sub(" ", body)):
        if name not in local:
            names.append(name)
    owners: Owners = {}
    for call, name in call_arguments(body):
        names.append(f"{name}=")
        if call in BUILTIN_NAMES:  # Python's own open() is not os.open(): by its bare name
            owners.setdefault(f"{name}=", set()).add(f"{call}()")
        elif call not in local:  # a call of the example's own function is its own
            owners.setdefault(f"{name}=", set()).add(call.rpartition(".")[2])
    return names + specs, local - (BUILTIN_NAMES - {"self", "cls"}), owners


# A call's name, an argument's name, or a bracket that opens or closes, in Python code.
PY_TOKEN = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\s*\(|([A-Za-z_]\w*)\s*=(?!=)|[()]")


def call_arguments(code: str) -> list[tuple[str, str]]:
    """The keyword arguments of ``code``'s calls, each with the call it is given to:
    ``sorted(d.items(), key=len)`` gives ``("sorted", "key")``."""
    found: list[tuple[str, str]] = []
    calls: list[str | None] = []  # the call each open bracket belongs to
    for token in PY_TOKEN.finditer(code):
        called, argument = token.group(1), token.group(2)
        if called:
            calls.append(called)
        elif argument:
            call = calls[-1] if calls else None
            if call and code[:token.start()].rstrip()[-1:] in ("(", ","):
                found.append((call, argument))
        elif token.group() == "(":
            calls.append(None)
        elif calls:
            calls.pop()
    return found


R_NAME = r"[A-Za-z.][\w.]*"
# A call's name, an argument's name (``header = TRUE``), or a bracket that opens or closes.
R_TOKEN = re.compile(rf"(?<![\w.$@])({R_NAME})\s*\(|(?<![\w.$@])({R_NAME})\s*=(?!=)|[()]")
R_KEYWORD_VALUE = re.compile(  # `fill = TRUE`, `file = path`: a claim about the argument's name
    rf"({R_NAME})\s*=\s*(TRUE|FALSE|NULL|NA|[-+]?\d[\w.]*|\"[^\"]*\"|'[^']*'|{R_NAME})")
R_DEFINED = re.compile(
    rf"(?<![\w.$@])({R_NAME})\s*<<?-|->>?\s*({R_NAME})|^\s*({R_NAME})\s*=(?!=)|"
    rf"\bfor\s*\(\s*({R_NAME})\s+in\b", re.MULTILINE)
R_PARAMS = re.compile(r"\bfunction\s*\(([^)]*)\)")
R_PACKAGE = re.compile(rf"\b(?:library|require|requireNamespace)\(\s*[\"']?({R_NAME})|"
                       rf"(?<![\w.])({R_NAME}):::?")


def r_names(code: str) -> tuple[list[str], set[str]]:
    """What a piece of R takes from elsewhere, as ``python_names`` for Python: the packages
    it loads (``library(foreign)``, ``foreign::``), the functions it calls that are neither
    R's own (``R_BASE_NAMES``) nor its own, and the arguments it names in those calls
    (``header =``; in ``list(a = 1)`` or its own functions' calls, the names are its data).
    Returned with the names the code defines."""
    # A package may be named in a string (library("foreign")); a "#" in a string is no comment.
    uncommented = "\n".join(x for x in code.splitlines() if not x.lstrip().startswith("#"))
    packages = [p for p in (a or b for a, b in R_PACKAGE.findall(uncommented))
                if p not in R_ATTACHED]
    code = COMMENT.sub("", STRING.sub('""', code))
    local: set[str] = set()
    for groups in R_DEFINED.findall(code):
        local |= {g for g in groups if g}
    for params in R_PARAMS.findall(code):
        local |= {p.split("=")[0].strip() for p in params.split(",") if p.strip()}
    names = list(packages)
    calls: list[str | None] = []  # the call each open bracket belongs to
    for token in R_TOKEN.finditer(code):
        called, argument = token.group(1), token.group(2)
        if called:
            calls.append(called)
            if called not in R_BASE_NAMES and called not in local:
                names.append(called)
        elif argument:
            call = calls[-1] if calls else None
            if call and call not in R_BASE_NAMES and call not in local:
                names.append(f"{argument}=")
        elif token.group() == "(":
            calls.append(None)
        elif calls:
            calls.pop()
    return names, local


def bare_names(code: str, r: bool = False) -> set[str]:
    """The names ``code`` uses as plain values (``heapq.nlargest(5, huge_list)``: ``huge_list``),
    imports, strings and comments aside: the example's own data, which an answer may name in
    its prose ("the biggest items of `huge_list`") without claiming anything of the documents."""
    code = COMMENT.sub("", STRING.sub('""', code))
    _, imported = imports(code)
    names = set((R_BARE_NAME if r else BARE_NAME).findall(IMPORT.sub(" ", code)))
    return names - imported - BUILTIN_NAMES - R_BASE_NAMES


# A number the example's code gives one of its own names (``x = 20``; R's ``x <- 20``): its
# data, which the prose may repeat ("it prints 20") without claiming anything of the documents.
ASSIGNED_NUMBER = re.compile(
    r"^\s*[A-Za-z_.][\w.]*\s*(?:=|<-)\s*([-+]?\d[\d_]*(?:\.\d+)?)\s*(?:#.*)?$", re.MULTILINE)


def numbers(text: str) -> list[str]:
    """The numbers of ``text`` that claim something: single digits aside ("2 steps")."""
    return [n for n in NUMBER.findall(text) if len(n.strip("+-").replace(",", "")) > 1]


QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def claim_spans(answer: str) -> tuple[list[tuple[str, set[str] | None]], Owners]:
    """Each claim, with the names its code defines for itself (None for a claim outside
    code): commands whole, Python and R by the names they use (``python_names``,
    ``r_names``). Returned with the calls each keyword argument of Python code is given
    to."""
    found: list[tuple[str, set[str] | None]] = []
    owners: Owners = {}
    defined: set[str] = set()  # what the answer's code names for itself, prose included
    used: set[str] = set()  # the plain values its code uses: its data, named in prose too
    if answer.count("```") % 2:
        answer += "\n```"  # a block the budget or the token limit cut off is still code
    r_answer = False  # an answer whose code is R: its code spans are R's too
    written: set[str] = set()  # the lines of the answer's Python and R code
    for language, block in FENCE_WITH_LANGUAGE.findall(answer):
        language = language.strip().lower()
        lines = [line.strip() for line in block.splitlines()
                 if line.strip() and not line.strip().startswith("#")]
        if language in R_LANGUAGES or (not language and R_CODE.search(block)):
            commands = [x for x in lines if is_command(x)]  # R CMD INSTALL, in an R block
            names, local = r_names("\n".join(x for x in lines if x not in commands))
            found += [(x.removeprefix("$ ").strip(), None) for x in commands]
            found += [(n, local) for n in names]
            defined |= local
            used |= example_data(block, r=True)
            written |= set(lines)
            r_answer = True
            continue
        python = language in PYTHON_LANGUAGES or (
            language not in SHELL_LANGUAGES and any(PYTHON_LINE.match(x) for x in lines)
            and not all(is_command(x) for x in lines))
        if python:
            names, local, given = python_names(block)
            found += [(n, local) for n in names]
            merge(owners, given)
            defined |= local
            used |= example_data(block)
            written |= set(lines)
        else:
            for line in lines:
                if line in written or line in used or not re.search(r"\w", line):
                    continue  # output that repeats the example's code or strings, a bracket
                if DATA.match(line):  # output such as (4, 5): its numbers, as in prose
                    found += [(n, None) for n in numbers(line)]
                elif QUOTED.fullmatch(line):
                    continue  # output that is a string, such as "Café": the example's data
                else:
                    found.append((line.removeprefix("$ ").strip(), None))
    prose = FENCE.sub(" ", answer)
    for span in (s.strip() for s in INLINE_CODE.findall(prose)):
        string = QUOTED.fullmatch(span) is not None and span[1:-1].strip() in used
        if span.rstrip("()") in defined or span in used or string or EXAMPLE_FILE.fullmatch(span):
            continue  # the example's own function, data (a string, quoted or not) or file
        r_code = r_answer or R_CODE.search(span) is not None
        argument = (R_KEYWORD_VALUE if r_code else KEYWORD_VALUE).fullmatch(span)
        if argument:  # `ensure_ascii=False`: a claim about the parameter's name
            found.append((f"{argument.group(1)}=", set()))
            continue
        if DATA.match(span):  # a literal such as [(2, 5), (3, 2)]: its numbers, as in prose
            found += [(n, None) for n in numbers(span)]
            continue
        if r_code:
            names, local = r_names(span)
        elif not is_command(span) and (CALLED.search(span) or DOTTED.search(span)):
            names, local, given = python_names(span)
            merge(owners, given)
        else:
            names, local = [], set()
        found += [(n, local | defined) for n in names] if names else [(span, None)]
    prose = INLINE_CODE.sub(" ", prose)
    found += [(c, None) for c in IDENTIFIER.findall(prose) if c.rstrip("()") not in defined
              and c not in used and c.lower() not in ABBREVIATIONS
              and not EXAMPLE_FILE.fullmatch(c)]
    found += [(n, None) for n in numbers(prose) if n not in used]
    replaced = set(REPLACED.findall(answer))  # "Replace `pkgname` with ...": a placeholder
    if replaced:
        found = [(" ".join(w for w in c.split() if w not in replaced), local) for c, local in found]
    seen: set[str] = set()
    return [(c, local) for c, local in found
            if c and not (c in seen or seen.add(c))], owners  # type: ignore[func-returns-value]


def example_data(code: str, r: bool = False) -> set[str]:
    """The plain values an example's code uses, which its prose and output may repeat: its
    bare names, the numbers it assigns and the strings it writes (``literals``)."""
    return bare_names(code, r=r) | set(ASSIGNED_NUMBER.findall(code)) | literals(code)


def literals(code: str) -> set[str]:
    """The strings an example's code writes (``p.with_suffix('.md')``): its data, which its
    prose may name again (the extension `.md`) without claiming anything of the documents."""
    written = set()
    for string in STRING.finditer(code):
        text, quote = string.group(), string.group(1)  # r'...', f"...": after the prefix
        if "\n" not in text:
            written.add(text[text.index(quote) + len(quote):-len(quote)].strip())
    return written - {""}


def merge(owners: Owners, given: Owners) -> None:
    for claim, calls in given.items():
        owners.setdefault(claim, set()).update(calls)


def claims(answer: str) -> list[str]:
    """The spans of an answer a reader would take as facts to copy: commands, the names code
    takes from a library, identifiers, numbers (single digits aside: "2 steps" claims
    little)."""
    return [c for c, _ in claim_spans(answer)[0]]


OPTION = re.compile(r"^--?[A-Za-z][\w-]*")
OPTION_NUMBER = re.compile(r"^(--[A-Za-z][\w-]*)=\d+$")


def supported(claim: str, passages: str) -> bool:
    """Whether the (normalized) passages contain the claim, or each word of a command; a
    quoted argument of a command is the user's data (a question sent with curl), not a claim."""
    if NUMBER.fullmatch(claim):  # whole: 25 is not in 1.25x, nor 10 in 3.10; 3.11 is in 3.11.2
        after = r"(?!\d)" if "." in claim else r"(?!\.?\d)"
        return re.search(rf"(?<![\d.]){re.escape(normalized(claim))}{after}", passages) is not None
    if normalized(claim) in passages:
        return True
    alone = len(claim.split()) == 1
    words = command_words(claim) if not alone else [claim.strip("\"'`,;")]
    # An option's count is the user's choice, as a placeholder is: ``--max-pages 30`` (or
    # ``--max-pages=30``) claims the option, whatever number the page's own example gives it;
    # a version (``--python 3.13``) is still a claim.
    words = [OPTION_NUMBER.sub(r"\1", w) for w in words]
    # A capitalised name alone is a constant or an environment variable (``PYTHON_COLORS``),
    # not a command's placeholder (``pip install NAME``).
    words = [w for i, w in enumerate(words) if w and not (
                 PLACEHOLDER.match(w) and not (alone and CONSTANT.fullmatch(w)))
             and w not in REDIRECT and (i == 0 or words[i - 1] not in REDIRECT)
             and not (i and NUMBER.fullmatch(w) and "." not in w and OPTION.match(words[i - 1]))]
    # A span of placeholders only claims nothing; otherwise every word must be there, whole.
    return all(whole(normalized(w)).search(passages) for w in words)


def command_words(claim: str) -> list[str]:
    """A command's words; a quoted argument is the user's data (a question sent with curl)."""
    return [w.strip("\"'`,;") for w in QUOTED.sub(" ", claim).split()]


def whole(word: str) -> re.Pattern[str]:
    """``word`` as a word of its own: ``--max`` is not in ``--max-depth``, nor ``50`` in ``500``."""
    return re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])")


def option_of_another(claim: str, passages: Sequence[str]) -> bool:
    """Whether a command gives an option the passages show only with another command of the
    same program: ``hearth ingest files DIR --max-pages 50``, where every line that writes
    ``--max-pages`` runs ``hearth ingest web``. The command is its first words up to an
    option or a placeholder (``hearth ingest files``); an option is the command's where a
    passage holds both, or where a passage holds the option on no line of the program's (a
    table of options under the command's heading)."""
    words = command_words(claim)
    command: list[str] = []
    for w in words:
        if not w or OPTION.match(w) or PLACEHOLDER.match(w) or w in REDIRECT:
            break
        command.append(w)
    if len(command) < 2:  # a program alone (``python -X utf8``) says nothing of a subcommand
        return False
    program, rest = normalized(command[0]), normalized(" ".join(command[1:]))
    texts = [normalized(p) for p in passages]
    lines = [[normalized(line) for line in p.splitlines()] for p in passages]
    for w in words:
        option = OPTION.match(w)
        if option is None:
            continue
        name = whole(normalized(option.group()))
        holding = [i for i, text in enumerate(texts) if name.search(text)]
        if holding and not any(
                rest in texts[i] or not any(name.search(line) and program in line_words(line)
                                            for line in lines[i]) for i in holding):
            return True
    return False


def line_words(line: str) -> set[str]:
    """A line's words as a command writes them: a prompt's ``$`` and code quotes aside."""
    return {w.strip("`'\"$") for w in line.split()}


def name_supported(name: str, local: set[str], joined: str, raw: str,
                   passages: Sequence[str] = ()) -> bool:
    """A name Python code uses: in the passages; a keyword argument as ``name=``, or named
    in their prose (``If ensure_ascii is false``); a module's member on that module's own page
    (``member``); an attribute of the example's own object (``d.append``) by the attribute's
    name, with its case."""
    if name.startswith("{"):  # a format spec
        return normalized(name) in joined
    if name.endswith("="):  # a keyword argument
        return normalized(name) in joined or re.search(
            rf"(?<![\w.]){re.escape(name[:-1])}(?!\w)", raw) is not None
    if normalized(name) in joined or member(name, passages):
        return True
    head, _, attribute = name.rpartition(".")
    if head and head.split(".")[0] in local:
        if attribute in local or attribute in OBJECT_ATTRIBUTES:
            return True  # the example's own attribute, or one Python gives every class
        return re.search(rf"(?<!\w){re.escape(attribute)}(?!\w)", raw) is not None
    return False


def member(name: str, passages: Sequence[str]) -> bool:
    """``subprocess.run`` on the subprocess module's own page (a passage under its title,
    "subprocess — Subprocess management"), which calls it ``run()``: the member named as its
    page names it, called or defined (``run(``), not as a word (``deprecated``) of its prose;
    or in a passage whose prose gives it to the module ("The operator module has
    itemgetter()", in the sorting HOWTO)."""
    module, _, attribute = name.removesuffix("()").rpartition(".")
    if not module or not attribute:
        return False
    title = re.compile(rf"^(?:\[\d+\] )?{re.escape(module)} — ", re.MULTILINE)
    called = re.compile(rf"(?<![\w.]){re.escape(attribute)}\(")
    prose = re.compile(rf"(?<![\w.]){re.escape(module)} module\b[^.\n]*?(?<![\w.])"
                       rf"{re.escape(attribute)}\(")
    return any(title.search(p) and called.search(p) or prose.search(p) for p in passages)


def check(answer: str, passages: Sequence[str], question: str = "") -> Verdict:
    """The verdict on ``answer`` against the ``passages`` it was given. A number ``question``
    states is the user's own (a missing-value code such as -999), not a claim to find in the
    passages; one with a point still is (a version, "3.13", the documents may not cover)."""
    raw = "\n".join(passages)
    joined = normalized(raw)
    asked = {n for n in NUMBER.findall(question) if "." not in n}
    spans_found, owners = claim_spans(answer)
    found = [(c, local) for c, local in spans_found if c not in asked]
    spans = [c for c, _ in found]
    given = signatures(raw) if owners else {}
    unsupported = [c for c, local in found if not (
        (supported(c, joined) and not option_of_another(c, passages) or member(c, passages))
        if local is None
        else name_supported(c, local, joined, raw, passages))
        or any(not_a_parameter(c[:-1], call, given) for call in owners.get(c, ()))]
    unsupported += [n for n in asked_names(question) if n not in unsupported
                    and named(n, answer) and not (supported(n, joined) or member(n, passages))]
    words = content_words(FENCE.sub(" ", answer))
    in_passages = content_words(" ".join(passages))
    share = len(words & in_passages) / len(words) if words else 1.0
    unanswered = (declined(answer, question, spans) or unanswered_quantity(answer, question)
                  or restated(answer, question, spans))
    return Verdict(grounded=not unsupported and share >= MIN_WORD_SUPPORT and not unanswered,
                   unsupported=unsupported, claims=len(spans), word_support=round(share, 3),
                   unanswered=unanswered)


# A signature as the documentation gives it, a line of its own: ``os.makedirs(name,
# mode=0o777, exist_ok=False)``, ``class argparse.ArgumentParser(prog=None, ...)``; each of
# its parameters a name, with a default or without, or a marker (``*``, ``/``, ``[,``).
SIGNATURE = re.compile(
    r"^(?:class |async |classmethod |staticmethod |abstractmethod |coroutine )?"
    r"((?:[A-Za-z_]\w*\.)*)([A-Za-z_]\w*)\((.*)\)$", re.MULTILINE)
SIGNATURE_PARAMETER = re.compile(r"\**([A-Za-z_]\w*)(?:\s*(?::[^=]+)?=\s*\S.*)?|\*|/|\.\.\.")
LITERAL_DEFAULT = re.compile(r"None|True|False|[-+]?\d[\w.]*|'[^']*'|\"[^\"]*\"|\(\)|\[\]|\{\}")
REST = "**"  # a signature that takes any keyword argument (``**kwargs``)
NESTED = re.compile(r"\([^()]*\)")


def signatures(raw: str) -> dict[str, list[set[str]]]:
    """The signatures the passages give, by the call's name (and by ``open()`` for one
    given without a module or class, as Python's own are): the parameters of each, and
    ``REST`` among them for one that takes any others. A signature is a paragraph of its own
    line, followed by its description (or by the function's other form), not by code: an
    example's call (``logging.basicConfig(level=logging.DEBUG)``) shows some of the
    parameters only, and one that passes a call's result (``asyncio.run(main())``) is none."""
    found: dict[str, list[set[str]]] = {}
    for match in SIGNATURE.finditer(raw):
        following = raw[match.end():].lstrip("\n").partition("\n")[0]
        alone = match.start() == 0 or raw[match.start() - 2:match.start()] == "\n\n"
        another = SIGNATURE.fullmatch(following) is not None
        described = raw[match.end():match.end() + 2] in ("\n\n", "") and not (
            PYTHON_LINE.match(following) or another)
        if not (alone and (described or another)):
            continue
        qualifier, name, inside = match.groups()
        while NESTED.search(inside):
            inside = NESTED.sub("\0", inside)  # a default that is a call: field(default=f())
        items = [x.strip(" []") for x in inside.split(",") if x.strip(" []")]
        params = [SIGNATURE_PARAMETER.fullmatch(x) for x in items]
        if not items or not all(params) or any("\0" in x and "=" not in x for x in items):
            continue  # a call with the example's values, or prose in brackets
        if all("=" in x for x in items) and not all(
                LITERAL_DEFAULT.fullmatch(x.partition("=")[2].strip()) for x in items):
            continue  # keyword arguments only, not all defaults: basicConfig(level=logging.DEBUG)
        names = {p.group(1) for p in params if p and p.group(1)}
        if any(x.startswith("**") for x in items):
            names.add(REST)
        found.setdefault(name, []).append(names)
        if not qualifier:
            found.setdefault(f"{name}()", []).append(names)
    return found


def not_a_parameter(argument: str, call: str, given: dict[str, list[set[str]]]) -> bool:
    """Whether the passages give ``call``'s signature, and none of its signatures takes
    ``argument``: ``os.makedirs(name, mode=0o777, exist_ok=False)`` has no ``parents=``."""
    shown = given.get(call, [])
    return bool(shown) and not any(argument in names or REST in names for names in shown)


def asked_names(question: str) -> list[str]:
    """The names the question asks after (``eager_task_factory``, ``data.table``,
    `` `@override` ``): a claim wherever the answer names them, even where its own code
    defines them. An answer that writes ``def eager_task_factory()`` itself, the documents
    holding no such name, has made up the thing it was asked about."""
    spans = [s.strip() for s in INLINE_CODE.findall(question)]
    names = [n for n in IDENTIFIER.findall(INLINE_CODE.sub(" ", question))
             if n.lower() not in ABBREVIATIONS]
    return list(dict.fromkeys(n.rstrip("()") for n in spans + names if n.rstrip("()")))


def named(name: str, answer: str) -> bool:
    """Whether ``answer`` names ``name`` as a whole, not as part of a longer name."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", answer) is not None


def unanswered_quantity(answer: str, question: str) -> str:
    """Why an answer to "how many", "how long"... gives no quantity: it talks around the
    question ("lru_cache keeps results until they age out"), whatever its words' support."""
    if QUANTITY_ASKED.search(question) and not QUANTITY_GIVEN.search(answer):
        return "the question asks how many or how much, and the answer gives no number"
    return ""


DECLINED = "the model found no answer in them"
# A sentence that declines: the model says it cannot answer, or that what it was given does not
# say. The prompt asks for the refusal sentence (``HEARTH_REFUSAL``), which is a refusal; the
# 1.5B sometimes declines in its own words instead ("The context does not provide any
# information about why list.sort() returns None."): no fact in it, nothing for the check to
# find wrong, and it was presented as an answer.
DECLINE = re.compile(
    r"(?:(?:I(?:'m| am) (?:sorry|afraid)|Unfortunately),? (?:but )?)?"
    r"(?:I(?:'m| am) (?:not (?:programmed|able)|unable) to"
    r"|I (?:cannot|can't|can not|could not|couldn't|do not|don't) (?:answer|know|find|tell|help)\b"
    r"|(?:the|this|these|your) (?:provided |given )?(?:context|passages?|documents?|"
    r"documentation|text|sources?)\s+(?:does not|doesn't|do not|don't|did not|didn't)\s+"
    r"(?:\w+ly )?(?:provide|contain|mention|say|include|specify|cover|answer|give|discuss|"
    r"explain|state)\b"
    r"|there (?:is|was) no (?:information|mention)\b|no information\b)", re.IGNORECASE)
RESTATED = "the answer only restates the question's words, with nothing from the passages"
# Words that say where an answer comes from, not what it is: "The context states that {}
# gives you a dict and not an empty set." restates the question all the same.
SAYS_NOTHING = frozenset({
    "yes", "context", "contexts", "states", "stated", "state", "says", "said", "mentions",
    "mentioned", "according", "provided", "given", "information", "based"})


def declined(answer: str, question: str, spans: Sequence[str]) -> str:
    """Why an answer is the model declining to answer: each of its sentences says it cannot,
    or that the passages do not say (``DECLINE``), and it names nothing the question does not.
    Such an answer states no fact, so it is not presented as one: the user reads that the
    documents do not seem to answer, with the passages closest to the question. One that
    declines and then says something ("The context does not say. The default is ...") is
    checked as any other answer."""
    said = [m.group().strip().lstrip("*_\"' ") for m in SENTENCE.finditer(answer)]
    if not any(said) or not all(DECLINE.match(s) for s in said if s):
        return ""
    asked = normalized(question)
    return DECLINED if all(normalized(s) in asked for s in spans) else ""


def restated(answer: str, question: str, spans: Sequence[str]) -> str:
    """Why an answer says nothing of its own: every word of it is the question's, a "yes"
    and where it comes from ("The context states that ...": ``SAYS_NOTHING``) aside, and it
    names and counts nothing ("No, a < b < c in Python is not the same as a < b and b < c.";
    "Package" for which DESCRIPTION field to use). Its substance, the yes or the no, is the
    model's, and no passage can be found to back it. A name or number the question
    gives is not the answer's own ("Yes, CPython 3.11 can run in a browser."), nor is a
    question word's other ending ("sorting" for "sort"). One word of its own is enough ("...
    the exception is discarded."), and so is a number, a single digit too."""
    if not question or any(normalized(s) not in normalized(question) for s in spans):
        return ""
    asked = set().union(*(stems(w) for w in content_words(question)))
    own = {w for w in content_words(answer) if not stems(w) & asked} - SAYS_NOTHING
    digits = set(re.findall(r"\d+", answer)) - set(re.findall(r"\d+", question))
    if own or digits:
        return ""
    return RESTATED


def wrapped(text: str, previous: Span, start: int) -> bool:
    """Whether the sentence at ``start`` goes on with ``previous``: a long line that stops
    mid-sentence (after a word or a comma: not a line of code, which ends with a bracket or a
    colon; not a heading path), the next line going on with it, outside a code block."""
    line_start = text.rfind("\n", 0, previous[1]) + 1
    return (text[previous[1]:start] == "\n" and previous[1] - line_start >= WRAPPED_LINE
            and (text[previous[1] - 1].isalnum() or text[previous[1] - 1] in ",`")
            and CONTINUED.match(text, start) is not None
            and HEADING_PATH not in text[line_start:previous[1]]
            and text.count("```", 0, start) % 2 == 0)


def sentences(text: str, *, min_chars: int = 1,
              joined: Callable[[str, Span, int], bool] = wrapped) -> list[Span]:
    """The spans of ``text``'s lines and sentences in order, without their surrounding blanks
    and without those shorter than ``min_chars``; a sentence that ``joined`` says goes on
    from the one before (by default: a hard-wrapped line's) is one span with it."""
    spans: list[Span] = []
    for match in SENTENCE.finditer(text):
        piece = match.group()
        start = match.start() + len(piece) - len(piece.lstrip())
        end = match.start() + len(piece.rstrip())
        if end - start < min_chars:
            continue
        if spans and joined(text, spans[-1], start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def forms(word: str) -> set[str]:
    """A word's forms (``stems``), and its parts' when hyphenated: "re-ingesting" is also
    "ingesting" and "ingest"."""
    parts = [p for p in word.split("-") if len(p) > 2] if "-" in word else []
    return stems(word).union(*(stems(p) for p in parts))


def evidence(answer: str, passages: Sequence[str]) -> list[Evidence]:
    """The passage sentences that share the most with the answer (its content words in any
    of their ``forms``, each weighed by how few of the sentences have it; its claims counted
    thrice, a sentence it quotes whole thrice too), best first; a sentence sharing too
    little is no evidence. A word every sentence has says little of which one answers:
    "duplicates" tells more than "Hearth" in Hearth's own guide."""
    wanted = {word: forms(word) for word in content_words(answer)}
    quoting = normalized(answer)
    spans = [normalized(c) for c in claims(answer)]
    candidates: list[tuple[int, int, int, str, set[str]]] = []
    seen: set[str] = set()
    for index, text in enumerate(passages):
        for start, end in sentences(text):
            sentence = text[start:end]
            if len(sentence) < 12 or HEADING_PATH in sentence or sentence in seen:
                continue
            seen.add(sentence)
            said = set().union(*(forms(w) for w in content_words(sentence)))
            candidates.append((index, start, end, sentence, said))
    having = {word: sum(1 for *_, said in candidates if word_forms & said)
              for word, word_forms in wanted.items()}
    weight = {word: 1 + math.log(len(candidates) / n) for word, n in having.items() if n}
    scored: list[Evidence] = []
    for index, start, end, sentence, said in candidates:
        shared = [word for word, word_forms in wanted.items() if word_forms & said]
        exact = sum(1 for s in spans if s and s in normalized(sentence))
        quoted = len(sentence.split()) >= 3 and normalized(sentence.rstrip(".!?:")) in quoting
        score = sum(weight[w] for w in shared) + 3 * exact + 3 * quoted
        if len(shared) + exact >= MIN_EVIDENCE_OVERLAP:
            scored.append(Evidence(index, sentence, start, end, round(score, 3)))
    scored.sort(key=lambda e: (-e.score, e.source, e.start))
    return scored[:EVIDENCE_SENTENCES]
