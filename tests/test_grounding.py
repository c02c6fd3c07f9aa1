"""The grounding check and the evidence, on real passages: the Python 3.11 documentation's
pages (Debian's python3.11-doc, parsed as ingestion parses them) and Hearth's own guide. The
answers are the kind the default 0.5B model gave in the quality review. Fast tier: no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.grounding import DECLINED, check, claims, evidence, sentences
from hearth.ingest.html import parse_html

PY_DOCS = Path("/usr/share/doc/python3.11/html")
GUIDE = Path(__file__).resolve().parents[1] / "docs"
needs_docs = pytest.mark.skipif(not PY_DOCS.is_dir(), reason="needs Debian's python3.11-doc")


def page(relative: str) -> str:
    parsed = parse_html((PY_DOCS / relative).read_bytes(), (PY_DOCS / relative).as_uri())
    return "\n\n".join(block.text for block in parsed.blocks)


def passage(text: str, around: str, width: int = 700) -> str:
    """The part of a page a chunk of it would hold: ``width`` characters around a phrase."""
    at = text.index(around)
    return text[max(0, at - width // 2):at + width // 2]


@needs_docs
def test_a_number_the_page_gives_is_supported_and_an_invented_one_is_not() -> None:
    days = passage(page("library/datetime.html"), "-999999999 <= days <= 999999999")
    right = check("A timedelta can hold up to 999999999 days, in either direction.", [days])
    assert right.grounded and right.unsupported == []
    wrong = check("The largest difference Python can store is 365 days.", [days])
    assert not wrong.grounded and wrong.unsupported == ["365"]
    # A number is found whole: not inside a longer one, nor as the decimals of another.
    assert check("Up to 99999 days.", [days]).unsupported == ["99999"]
    assert check("Up to 999 days.", ["It holds 1.999 days."]).unsupported == ["999"]
    assert check("New in 3.11.", ["Python 3.11.2 documentation"]).unsupported == []


@needs_docs
def test_an_invented_identifier_is_flagged() -> None:
    venv = passage(page("tutorial/venv.html"), "python3 -m venv tutorial-env", 1400)
    wrong = check("Create it with venv.Venv('myenv'), then call myenv.activate().", [venv])
    assert not wrong.grounded
    assert "venv.Venv" in wrong.unsupported and "myenv.activate()" in wrong.unsupported


@needs_docs
def test_a_command_from_the_page_is_supported_and_an_invented_one_is_not() -> None:
    venv = passage(page("tutorial/venv.html"), "python3 -m venv tutorial-env", 1400)
    right = check("Run `python3 -m venv tutorial-env`, then `source tutorial-env/bin/activate`.",
                  [venv])
    assert right.grounded, right
    wrong = check("Run:\n```sh\npython -m virtualenv create --project tutorial-env\n```", [venv])
    assert not wrong.grounded
    assert wrong.unsupported == ["python -m virtualenv create --project tutorial-env"]


@needs_docs
def test_a_quoted_marker_must_be_the_pages() -> None:
    wrap = passage(page("library/textwrap.html"), "placeholder=' [...]'")
    assert check("The shortened text ends with the placeholder `[...]`.", [wrap]).grounded
    assert not check("The shortened text ends with the placeholder `(more)`.", [wrap]).grounded


def test_placeholders_in_a_command_claim_nothing() -> None:
    guide = (GUIDE / "ingesting-documents.md").read_text()
    verdict = check("Run `hearth ingest files /path/to/folder`, or `hearth ingest files DIR`.",
                    [guide])
    assert verdict.grounded, verdict
    assert not check("Run `hearth import pdfs --recursive /path/to/folder`.", [guide]).grounded


def test_an_option_of_another_command_is_not_the_commands() -> None:
    # The guide's sections as passages: the folder's and the crawl's, each under its heading.
    guide = (GUIDE / "ingesting-documents.md").read_text()
    sections = ["## " + s for s in guide.split("\n## ")[1:]]
    crawl = next(s for s in sections if s.startswith("## Limit a website crawl"))
    folder = next(s for s in sections if "hearth ingest files" in s and "--max-pages" not in s)
    passages = [folder, crawl]
    assert check("Run `hearth ingest web https://docs.example.org/ --max-pages 200`.",
                 passages).grounded
    # Every word is in the passages, but --max-pages is only ever written with `ingest web`.
    wrong = check("Run `hearth ingest files /path/to/folder --max-pages 200`.", passages)
    assert wrong.unsupported == ["hearth ingest files /path/to/folder --max-pages 200"]
    inline = "To crawl fewer pages, run `hearth ingest web URL --max-pages 100`."
    assert not check("Run `hearth ingest files DIR --max-pages 100`.", [folder, inline]).grounded
    # An option the passages list without any command line (a table under the command's
    # heading) is not taken from another command, nor is one given to the program alone.
    table = "## Options of the folder ingest\n\n- `--watch`: keep indexing as files change"
    assert check("Run `hearth ingest files /path/to/folder --watch`.", [folder, table]).grounded
    assert check("Run `python -X utf8 example.py`.", ["python -X utf8 enables the UTF-8 mode"]).grounded


def test_a_commands_words_are_found_whole_and_an_options_count_is_the_users() -> None:
    guide = (GUIDE / "ingesting-documents.md").read_text()
    crawl = "## " + next(s for s in guide.split("\n## ") if s.startswith("Limit a website crawl"))
    # The page's example crawls 200 pages; a user asking for 30 is given 30: the option is
    # the claim, its count the user's, written either way.
    for option in ("--max-pages 30", "--max-pages=30"):
        answer = f"Run `hearth ingest web https://docs.example.org/ {option}`."
        assert check(answer, [crawl], "How do I crawl at most 30 pages?").grounded, option
    # An option is found whole: not inside a longer one.
    assert not check("Run `hearth ingest web https://docs.example.org/ --max 30`.",
                     [crawl]).grounded
    # A version after an option is still a claim, and so is a number the command gives a
    # program's own argument (a port): neither is in these passages.
    uv = "To make one with another Python, run: uv venv --python 3.11 tutorial-env"
    assert check("Run `uv venv --python 3.11 tutorial-env`.", [uv]).grounded
    assert not check("Run `uv venv --python 3.13 tutorial-env`.", [uv]).grounded
    server = "To serve the folder, run: python -m http.server 8000"
    assert not check("Run `python -m http.server 8080`.", [server]).grounded


def test_an_answer_whose_words_are_not_in_the_passages_is_not_grounded() -> None:
    guide = (GUIDE / "models.md").read_text()
    verdict = check("Bananas ripen faster beside apples because apples release ethylene gas.",
                    [guide])
    assert verdict.claims == 0 and verdict.word_support < 0.5 and not verdict.grounded


def test_claims_are_code_identifiers_commands_and_numbers() -> None:
    found = claims("Use `os.walk()` or pathlib.Path.rglob with max_depth=3, about 1,500 files "
                   "in 2 steps:\n```sh\n$ hearth ingest files docs\n# a comment\n```\n"
                   "Pass --max-pages 100.")
    assert found == ["hearth ingest files docs", "os.walk", "pathlib.Path.rglob", "max_depth",
                     "--max-pages", "1,500", "100"]


@needs_docs
def test_the_evidence_is_the_sentence_that_says_it_located_in_its_passage() -> None:
    text = page("tutorial/venv.html")
    passages = [passage(page("library/datetime.html"), "-999999999 <= days"),
                passage(text, "python3 -m venv tutorial-env", 1400)]
    found = evidence("Run python3 -m venv tutorial-env to create the virtual environment in "
                     "the tutorial-env directory.", passages)
    assert found, "some evidence"
    assert any("python3 -m venv tutorial-env" in e.text for e in found), found
    for found_one in found:  # located in their passage, for highlighting
        assert passages[found_one.source][found_one.start:found_one.end] == found_one.text
    assert all(e.source == 1 for e in found)  # nothing from the unrelated page


def test_the_evidence_for_a_question_finds_its_words_in_other_forms() -> None:
    """A yes-or-no answer the check withholds shows the sentences closest to the question,
    whose words may be there in another form ("ingest" in "Re-ingesting"), and a word few of
    them have counts for more: "duplicates" is in one sentence of the page, "Hearth" and
    "folder" in many."""
    guide = (GUIDE / "ingesting-documents.md").read_text()
    section = guide[guide.index("## Re-ingest"):guide.index("## Sources")]
    asked = "When I ingest my folder again, does Hearth add duplicates?"
    assert "Re-ingesting never creates duplicates." in [e.text for e in evidence(asked, [section])]
    assert "Re-ingesting never creates duplicates." in [e.text for e in evidence(asked, [guide])]


def test_an_unrelated_answer_has_no_evidence() -> None:
    guide = (GUIDE / "privacy.md").read_text()
    assert evidence("Bananas ripen faster beside apples.", [guide]) == []


@needs_docs
def test_example_code_is_checked_by_the_library_names_it_uses() -> None:
    """A small model illustrates a right answer with code of its own: its variables, class and
    data are not claims about the documents; the library names it calls are."""
    cached = passage(page("library/functools.html"), "@functools.cached_property(func)", 1400)
    right = check(
        "Use `cached_property`:\n```python\nfrom functools import cached_property\n\n"
        "class Report:\n    def __init__(self, rows):\n        self.rows = rows\n\n"
        "    @cached_property\n    def total(self):\n        return sum(self.rows)\n\n"
        "report = Report([1, 2, 3])\nprint(report.total)  # 6\n```", [cached])
    assert right.grounded, right
    invented = check(
        "```python\nfrom functools import lazy_property\n\nclass Report:\n"
        "    @lazy_property\n    def total(self):\n        return 6\n```", [cached])
    assert not invented.grounded and "lazy_property" in invented.unsupported
    # a method of the example's own object is checked by its name, with its case
    walk = passage(page("library/pathlib.html"), "Path.rglob(pattern)", 1400)
    assert check("```python\np = Path('src')\nfiles = list(p.rglob('*.py'))\n```", [walk]).grounded
    wrong = check("```python\np = Path('src')\nfiles = p.walkfiles('*.py')\n```", [walk])
    assert wrong.unsupported == ["p.walkfiles"]


@needs_docs
def test_keyword_arguments_and_format_specs_in_code_are_claims() -> None:
    fields = passage(page("library/dataclasses.html"), "default_factory", 1400)
    assert check("```python\nitems: list = field(default_factory=list)\n```", [fields]).grounded
    wrong = check("```python\nitems: list = field(default_new=list)\n```", [fields])
    assert wrong.unsupported == ["default_new="]
    strings = passage(page("library/string.html"), "'{:,}'.format(1234567890)", 1000)
    assert check("```python\nprint('{:,}'.format(total))\n```", [strings]).grounded
    assert check("```python\nprint('{:_}'.format(total))\n```", [strings]).grounded is False


def test_a_code_block_cut_off_by_the_token_limit_is_still_code() -> None:
    text = "import itertools: itertools.pairwise(data) returns overlapping pairs."
    answer = "Use it:\n```python\nimport itertools\nfor a, b in itertools.pairwise(data):\n    use(a"
    assert claims(answer) == ["itertools", "itertools.pairwise", "use"]
    assert check(answer, [text]).unsupported == ["use"]


def test_evidence_is_whole_sentences_never_a_heading_path_nor_twice() -> None:
    heading = "Built-in Types — Python 3.11.2 documentation › Generic Alias Type"
    text = (f"{heading}\nGeneric Alias Type objects are created by subscripting a class, as in "
            "list[int]. See os.path.join() too. Generic Alias Type objects are created by "
            "subscripting a class, as in list[int].")
    found = evidence("How do I make a generic alias type such as list[int]?", [text])
    assert [e.text for e in found] == [
        "Generic Alias Type objects are created by subscripting a class, as in list[int]."]
    assert text[found[0].start:found[0].end] == found[0].text


def test_evidence_is_the_whole_sentence_across_a_wrapped_line() -> None:
    # The user guide's Markdown is hard-wrapped: a sentence goes on over the line's end, and
    # its evidence is the whole sentence, located for highlighting across the line break.
    guide = (GUIDE / "asking-questions.md").read_text()
    found = evidence("Any string of 1 to 128 characters, such as a name or an email address, "
                     "can be a user_id.", [guide])
    assert found[0].text == ("`user_id` says whose conversation this is: any string of 1 to\n"
                             "128 characters, such as a name or an email address.")
    assert guide[found[0].start:found[0].end] == found[0].text
    # A line goes on neither from a heading path nor into a list item.
    text = ("Python Setup and Usage — Python 3.11.2 documentation › Command line and environment\n"
            "python -m module runs a library module as a script, which it looks for on sys.path\n"
            "2) the second item of a list, on a line of its own.")
    assert [text[a:b] for a, b in sentences(text)] == text.splitlines()


def test_a_printed_string_claims_nothing() -> None:
    # An output block that shows a string is the example's data; a line of output that is no
    # string is still a claim.
    assert claims("Output:\n```\n\"Caf\\u00e9\"\n```") == []
    assert claims("```\n'abc'\nhearth ingest files docs\n```") == ["hearth ingest files docs"]


def test_a_commands_own_names_and_quoted_data_claim_nothing() -> None:
    tutorial = "To create a virtual environment, run: python3 -m venv tutorial-env"
    assert check("Run `python3 -m venv myenv`.", [tutorial]).grounded  # a name of one's own
    assert not check("Run `python3 -m venv --global myenv`.", [tutorial]).grounded
    api = "curl -s http://127.0.0.1:8000/api/question -d '{\"question\": \"How do I ...?\"}'"
    asked = ("```sh\ncurl -s http://127.0.0.1:8000/api/question "
             "-d '{\"question\": \"How do I get the answer streamed?\"}'\n```")
    assert check(asked, [api]).grounded  # the user's question, sent as data
    assert not check(asked.replace("-s", "--stream"), [api]).grounded


@needs_docs
def test_an_examples_own_file_and_a_redirect_claim_nothing() -> None:
    json_cli = passage(page("library/json.html"), "$ python -m json.tool mp_films.json", 1000)
    verdict = check("Run `python -m json.tool example.json > pretty_example.json`: it reads "
                    "`example.json` and writes the pretty-printed JSON to pretty_example.json.",
                    [json_cli])
    assert verdict.grounded, verdict
    assert check("`python -m json.tool < input.json >> pretty.json`", [json_cli]).grounded
    assert check("`python -m json.tool --sort-keys mp_films.json`", [json_cli]).grounded
    wrong = check("Run `python -m json.tool --pretty example.json > out.json`.", [json_cli])
    assert wrong.unsupported == ["python -m json.tool --pretty example.json > out.json"]
    assert not check("Run `python -m json.pretty example.json`.", [json_cli]).grounded


@needs_docs
def test_a_number_the_examples_code_assigns_is_its_own_data_in_the_prose() -> None:
    nonlocal_ = passage(page("reference/simple_stmts.html"), "The nonlocal statement causes", 900)
    code = ("```python\ndef outer():\n    x = 10\n    def inner():\n        nonlocal x\n"
            "        x = 20\n    inner()\n    print(x)\n```\n")
    said = "The nonlocal statement rebinds x in the enclosing scope, so it prints"
    verdict = check(f"Use `nonlocal`:\n{code}{said} 20.", [nonlocal_])
    assert verdict.grounded, verdict
    # A number the code does not assign is still a claim, and so is one the prose adds.
    assert check(f"Use `nonlocal`:\n{code}{said} 30.", [nonlocal_]).unsupported == ["30"]
    assert check("Use `nonlocal`, since PEP 3107.", [nonlocal_]).unsupported == ["3107"]


SUBPROCESS = "subprocess — Subprocess management — Python 3.11.2 documentation › Using the subprocess Module"


@needs_docs
def test_a_modules_member_is_supported_on_that_modules_own_page() -> None:
    """The subprocess page calls it ``run()`` under its title: ``subprocess.run`` is its own.
    The same word in another module's page, or as a word of the prose, is not."""
    text = passage(page("library/subprocess.html"), "The return value from run()", 600)
    assert "subprocess.run" not in text
    answer = "When `subprocess.run` times out, the child is killed and TimeoutExpired raised."
    assert check(answer, [f"{SUBPROCESS}\n{text}"]).unsupported == []
    asyncio = "Coroutines and Tasks — Python 3.11.2 documentation › Running an asyncio Program"
    assert check(answer, [f"{asyncio}\n{text}"]).unsupported == ["subprocess.run"]
    warnings = passage(page("library/warnings.html"), "DeprecationWarning", 800)
    heading = "warnings — Warning control — Python 3.11.2 documentation › Warning Categories"
    assert "deprecated" in warnings  # a word of the page, never called: no such function
    marked = check("Mark it with `@warnings.deprecated()`.", [f"{heading}\n{warnings}"])
    assert marked.unsupported == ["warnings.deprecated"]


@needs_docs
def test_a_member_the_prose_gives_its_module_is_supported() -> None:
    """The sorting HOWTO says "The operator module has itemgetter()": ``operator.itemgetter``
    is supported there, a member the module is not said to have is not."""
    text = passage(page("howto/sorting.html"), "The operator module has", 400)
    assert "operator.itemgetter" not in text
    answer = "Pass `key=operator.itemgetter('age')`."
    assert check(answer, [text]).unsupported == []
    assert check("Pass `key=operator.keygetter('age')`.", [text]).unsupported == [
        "operator.keygetter"]
    # Another module's member by the same name is still a claim of its own.
    assert check("Pass `key=functools.itemgetter('age')`.", [text]).unsupported == [
        "functools.itemgetter"]


@needs_docs
def test_an_argument_the_prose_names_is_supported() -> None:
    text = passage(page("library/json.html"), "If ensure_ascii is false", 800)
    assert "ensure_ascii=" not in text.replace(" ", "")
    assert check("Pass `ensure_ascii=False` to dump.", [text]).unsupported == []
    assert check("Pass `ensure_unicode=True` to dump.", [text]).unsupported == ["ensure_unicode="]


@needs_docs
def test_an_argument_the_calls_own_signature_lacks_is_flagged() -> None:
    """``parents=`` is Path.mkdir's, and os.makedirs's signature, in the same passages, has no
    such parameter: the model lent one function's argument to its neighbour. A signature
    that takes any others (``**kw``) takes it; an example's call is no signature."""
    heading = "pathlib — Object-oriented filesystem paths — Python 3.11.2 documentation › Methods\n"
    os_page = passage(page("library/os.html"), "os.makedirs(name", 900)
    pathlib = heading + passage(page("library/pathlib.html"), "Path.mkdir(mode", 900)
    assert "os.makedirs(name, mode=0o777, exist_ok=False)" in os_page and "parents" in pathlib
    borrowed = "```python\nimport os\nos.makedirs('a/b', parents=True, exist_ok=True)\n```"
    assert check(borrowed, [os_page, pathlib]).unsupported == ["parents="]
    own = "```python\nfrom pathlib import Path\nPath('a/b').mkdir(parents=True, exist_ok=True)\n```"
    assert check(own, [os_page, pathlib]).grounded
    loads = passage(page("library/json.html"), "json.loads(s, *", 1400)
    decoder = passage(page("library/json.html"), "class json.JSONDecoder(", 600)
    assert "**kw" in loads and "strict" not in loads  # loads passes strict= to JSONDecoder
    assert check("```python\njson.loads(text, strict=False)\n```", [loads, decoder]).grounded
    # os.open(path, flags, mode=0o777, *, dir_fd=None) is not Python's own open().
    os_open = passage(page("library/os.html"), "os.open(path, flags", 2000)[1000:]
    newline = passage(page("library/functions.html"), "newline determines how to parse", 500)
    opened = "```python\nwith open(path, newline='') as f:\n    rows = f.read()\n```"
    assert check(opened, [os_open, newline]).grounded
    # Python's own functions are checked against their signatures too: "newlines" is a word
    # of the page, not a parameter of open().
    builtin_open = passage(page("library/functions.html"), "open(file, mode='r', buffering=-1", 400)
    assert "newlines" in newline
    assert check("```python\nf = open(path, newline='')\n```", [builtin_open, newline]).grounded
    assert check("```python\nf = open(path, newlines='')\n```",
                 [builtin_open, newline]).unsupported == ["newlines="]
    assert check("```python\nfd = os.open(path, flags, newline='')\n```",
                 [os_open, newline]).unsupported == ["newline="]
    snippet = passage(page("library/asyncio-dev.html"), "\nlogging.basicConfig(level=logging.DEBUG)\n", 500)
    handlers = passage(page("library/logging.handlers.html"), "class logging.FileHandler(filename", 600)
    logged = "```python\nlogging.basicConfig(filename='app.log', level=logging.DEBUG)\n```"
    assert check(logged, [snippet, handlers]).unsupported == []


@needs_docs
def test_output_is_checked_by_its_numbers_and_placeholders_inside_a_word_claim_nothing() -> None:
    pairwise = passage(page("library/itertools.html"), "pairwise('ABCDEFG')", 800)
    shown = "Use `pairwise`. Output:\n```\n(1, 2)\n(2, 3)\n(3, 4)\n(4, 5)\n```"
    assert check(shown, [pairwise]).unsupported == []
    assert check(shown.replace("(4, 5)", "(365, 366)"), [pairwise]).unsupported == ["365", "366"]
    tool = passage(page("library/json.html"), "python -m json.tool", 800)
    assert check("```sh\npython -m json.tool <file>.json\n```", [tool]).unsupported == []
    assert check("```sh\npython -m json.pretty <file>.json\n```", [tool]).unsupported == [
        "python -m json.pretty <file>.json"]


R_DOCS = Path("/usr/share/doc/r-doc-pdf/manual")


@pytest.mark.skipif(not R_DOCS.is_dir(), reason="needs Debian's r-doc-pdf")
def test_r_code_is_checked_by_the_functions_packages_and_arguments_it_names() -> None:
    """R examples, as Python's: R's own vocabulary (``library``, ``c``, ``summary``) and the
    example's own names and data (``df``, ``list(a = 1)``) claim nothing; the functions,
    packages and arguments it takes from the manual do. On R-data's page 9 (read.table)."""
    import pypdf

    text = pypdf.PdfReader(R_DOCS / "R-data.pdf").pages[12].extract_text()
    right = ("Set `na.strings` and `fill = TRUE`:\n```r\n"
             "df <- read.table(\"data.txt\", sep = \",\", na.strings = c(\"-999\", \".\"),\n"
             "                 fill = TRUE)\nsizes <- list(a = 1, b = 2)\nsummary(df)\n```")
    assert claims(right) == ["read.table", "sep=", "na.strings=", "fill=", "na.strings"]
    assert claims(right + " Give `file = path` your own.") == claims(right) + ["file="]
    assert check(right, [text]).grounded
    wrong = right.replace("na.strings = c", "na.values = c").replace("summary(df)", "tidy(df)")
    assert check(wrong, [text]).unsupported == ["na.values=", "tidy"]
    loaded = check("```r\nlibrary(haven)\ndf <- read_sav(\"survey.sav\")\n```", [text])
    assert loaded.unsupported == ["haven", "read_sav"]
    # The package every session has attached claims nothing: the 1.5B's right draft began its
    # example with `library(base)`, "to load read.table", and was withheld for it.
    attached = right.replace("```r\n", "```r\nlibrary(base)\n").replace("summary(", "base::summary(")
    assert claims(attached) == claims(right) and check(attached, [text]).grounded
    # An untagged block is R by its arrow; a command in an R block is still a command.
    assert claims("```\nx <- scan(\"m.txt\")\n```") == ["scan"]
    assert claims("```r\nread.table(f, comment.char = \"#\", nrows = 9) # fast\n```") == [
        "read.table", "comment.char=", "nrows="]
    assert claims("```r\nR CMD INSTALL --no-docs pkg\n```") == ["R CMD INSTALL --no-docs pkg"]


def test_a_number_the_question_states_is_the_users_own() -> None:
    # R-data, "Missing values": the page has no -999; the user's file has.
    text = ("By default the file is assumed to contain the character string NA to represent "
            "missing values, but this can be changed by the argument na.strings, which is a "
            "vector of one or more character representations of missing values. "
            "By default, read.table ignores empty lines.")
    answer = "Pass `na.strings`: `read.table(\"data.txt\", na.strings = \"-999\")` reads -999 as NA."
    asked = "How do I tell read.table that missing values in my file are written as -999?"
    assert check(answer, [text]).unsupported == ["-999"]
    assert check(answer, [text], asked).grounded
    # A version the question names is still the documents' to state.
    version = "In Python 3.13 the argument na.strings is a vector of missing values."
    assert check(version, [text], "What does Python 3.13 add?").unsupported == ["3.13"]


@needs_docs
def test_the_examples_own_data_and_an_abbreviation_claim_nothing() -> None:
    """The 1.5B's right heapq answer was withheld for naming its example's list in the prose
    (`huge_list`), and any answer with "e.g." for a dotted name `e.g`; an invented function
    beside them is still flagged."""
    heap = passage(page("library/heapq.html"), "heapq.nlargest(n, iterable", 900)
    answer = ("Use `heapq.nlargest`, e.g. for the 5 biggest items of `huge_list`:\n```python\n"
              "import heapq\n\nbiggest_five = heapq.nlargest(5, huge_list)\n```")
    assert check(answer, [heap]).grounded, check(answer, [heap])
    invented = answer.replace("`heapq.nlargest`", "`heapq.top_n`")
    assert check(invented, [heap]).unsupported == ["heapq.top_n"]
    # A name the example does not use is still a claim: `nbiggest` is no variable of it.
    assert check(answer + " Or call `nbiggest`.", [heap]).unsupported == ["nbiggest"]
    # In R likewise: the user's file name is the example's data.
    table = "read.csv(file, header = TRUE, sep = \",\") reads a file in table format."
    r = ("Call read.csv on `my_file`, i.e. your path:\n```r\ndf <- read.csv(my_file, "
         "header = TRUE)\n```")
    assert check(r, [table]).grounded, check(r, [table])


@needs_docs
def test_what_the_examples_code_writes_claims_nothing_again() -> None:
    """Right drafts of the 1.5B (hybrid retrieval, 107 questions of the whole set) withheld
    for their example's own text: the string its code passes (`.md`, named again in the
    prose), its output block repeating the dictionary its code wrote (`"age": 30,`), and
    Python's own `__name__` of its loop variable and `append` of its own list. What the
    example did not write is still a claim."""
    suffix = passage(page("library/pathlib.html"), "PurePath.with_suffix(suffix)", 600)
    md = ("Use `with_suffix`:\n```python\nfrom pathlib import Path\n\n"
          "new_path = p.with_suffix('.md')\n```\nThe new path has the extension `.md`.")
    assert check(md, [suffix]).grounded, check(md, [suffix])
    assert check(md.replace("`.md`.", "`.rst`."), [suffix]).unsupported == [".rst"]

    ascii_ = passage(page("library/json.html"), "json.dumps(obj, *, skipkeys=False, ensure_ascii", 900)
    code = ('```python\nimport json\n\ndata = {\n    "name": "José",\n    "age": 30,\n}\n'
            "print(json.dumps(data, ensure_ascii=False))\n```\n")
    printed = 'It prints:\n```json\n{\n    "name": "José",\n    "age": 30,\n}\n```'
    assert check(f"Pass `ensure_ascii=False`:\n{code}{printed}", [ascii_]).grounded
    other = printed.replace('"age": 30,', '"age": 31,')
    assert check(f"Pass `ensure_ascii=False`:\n{code}{other}", [ascii_]).unsupported == ['"age": 31,']

    text = page("reference/datamodel.html")
    hook = text[text.index("3.3.3. Customizing class creation"):][:1200]
    plugins = ("Define `__init_subclass__`:\n```python\nclass PluginBase:\n    subclasses = []\n\n"
               "    def __init_subclass__(cls, **kwargs):\n        super().__init_subclass__(**kwargs)\n"
               "        cls.subclasses.append(cls)\n\nfor subclass in PluginBase.subclasses:\n"
               "    print(subclass.{})\n```")
    assert check(plugins.format("__name__"), [hook]).grounded, check(plugins.format("__name__"), [hook])
    assert check(plugins.format("plugin_id"), [hook]).unsupported == ["subclass.plugin_id"]


@needs_docs
def test_bytes_methods_printed_strings_and_a_name_to_replace_claim_nothing() -> None:
    """More right drafts withheld for their own example: `result.stdout.decode()` (Python's
    bytes), an output block of the strings its code prints, and `R CMD REMOVE pkgname`
    where the answer says to replace `pkgname` and the manual writes `pkg1 pkg2`."""
    run = passage(page("library/subprocess.html"), "subprocess.run(args, *, stdin=None", 700)
    code = ("Run the command and wait for it to complete:\n```python\nimport subprocess\n\n"
            "result = subprocess.run(['ls'], capture_output=True)\n"
            "print(result.stdout.{}())\nprint('Finished')\n```\n")
    printed = check(code.format("decode") + "Then:\n```\nFinished\n```", [run])
    assert printed.grounded, printed
    assert check(code.format("decoded"), [run]).unsupported == ["result.stdout.decoded"]
    assert check(code.format("decode") + "Then:\n```\nAll done\n```", [run]).unsupported \
        == ["All done"]

    manual = ("From a command prompt they can be removed by\n\nR CMD REMOVE -l /path/to/library "
              "pkg1 pkg2 ...\n\nFrom a running R process they can be removed by\n\n"
              '> remove.packages(c("pkg1", "pkg2"), lib = "/path/to/library")')
    remove = "From a command prompt it can be removed by\n```sh\nR CMD REMOVE pkgname\n```\n"
    named = check(remove + "Replace `pkgname` with the name of the package.", [manual])
    assert named.grounded, named
    assert check(remove, [manual]).unsupported == ["R CMD REMOVE pkgname"]
    # The string the example's code writes, named again in quotes: the example's data too.
    quoted = ('From a running R process:\n```R\nremove.packages("package_name")\n```\n'
              'Replace `"package_name"` with the name of the package you want to remove.')
    assert check(quoted, [manual]).grounded, check(quoted, [manual])
    assert check(quoted.replace("Replace `", "Then `"), [manual]).grounded
    assert check(quoted.replace('`"package_name"`', '`"package_names"`'),
                 [manual]).unsupported == ['"package_names"']


@needs_docs
def test_a_format_directive_is_a_claim_of_its_own() -> None:
    """"Which strftime directive prints the microseconds?" drew a bare "%f": a claim the
    passages back, not a restatement of the question; an invented directive is flagged."""
    table = passage(page("library/datetime.html"), "Microsecond as a decimal number", 600)
    asked = "Which strftime directive prints the microseconds of a datetime?"
    assert check("%f", [table], asked).grounded, check("%f", [table], asked)
    assert check("Use %Q.", [table], asked).unsupported == ["%Q"]


def test_a_quantity_asked_for_must_be_given() -> None:
    """"How many results does functools.lru_cache keep?" drew "it keeps references ... until
    they age out of the cache": every word on the page, and no answer."""
    page_text = ("If maxsize is set to None, the LRU feature is disabled and the cache can grow "
                 "without bound. Keyword arguments: maxsize defaults to 128. The cache keeps "
                 "references to the arguments and return values until they age out of the cache.")
    asked = "How many results does functools.lru_cache keep if I don't pass a size?"
    evasive = check("The cache keeps references to the arguments and return values until they "
                    "age out of the cache.", [page_text], asked)
    assert not evasive.grounded and evasive.unsupported == [] and "no number" in evasive.unanswered
    assert check("It keeps 128 results.", [page_text], asked).grounded
    assert check("Without maxsize there is no limit: the cache can grow without bound.",
                 [page_text], "How many results can the cache hold with maxsize None?").grounded
    assert check("Python's int is arbitrarily large: it is limited only by memory.",
                 ["Integers have unlimited precision: an int is arbitrarily large, limited only "
                  "by the memory available."], "How large can an int be?").grounded
    # A question that asks for no quantity needs none.
    assert check("The cache keeps references to the arguments until they age out of the cache.",
                 [page_text], "What does the cache keep?").grounded


@needs_docs
def test_an_answer_that_only_restates_the_question_is_not_grounded() -> None:
    """The 1.5B answered "Is a < b < c the same as a < b and b < c?" with "No, a < b < c in
    Python is not the same as a < b and b < c." (the page says it is, but for b evaluated only
    once), and "Which DESCRIPTION field should list it?" with "Package": every word the
    question's, nothing for the check to find in a passage, the yes or no the model's own."""
    comparisons = passage(page("reference/expressions.html"), "x < y <= z", 900)
    asked = "Is a < b < c in Python the same as a < b and b < c?"
    bare = check("No, a < b < c in Python is not the same as a < b and b < c.", [comparisons], asked)
    assert not bare.grounded and bare.unsupported == [] and "restates" in bare.unanswered
    assert "restates" in check("Yes.", [comparisons], asked).unanswered
    # One word of its own is an answer to look for, and so is a number, one digit too.
    right = check("Yes, except that b is evaluated only once.", [comparisons], asked)
    assert right.grounded, right
    assert check("Comparisons chain: 3 of them here.", [comparisons], "Do comparisons chain?").grounded
    assert check("False.", ["bool([]) returns False."], "What does bool([]) return?").grounded
    # The question's own words in other endings, and a version the question names, are not
    # the answer's: "sorting" for "sort", "value" for "values", 3.11 for 3.11.
    stability = passage(page("howto/sorting.html"), "Sorts are guaranteed to be stable", 600)
    kept = "When I sort records by one field, do records with equal values keep their order?"
    echo = check("Yes, records with equal values keep their order when sorting records.",
                 [stability], kept)
    assert "restates" in echo.unanswered
    echo = check("Yes, a record keeps its order when sorted by a value.", [stability], kept)
    assert "restates" in echo.unanswered
    assert check("Yes: sorts are stable, so equal records keep their original order.",
                 [stability], kept).grounded
    wasm = "CPython 3.11 runs in a browser through WebAssembly."
    browser = check("Yes, CPython 3.11 can run in a browser.", [wasm],
                    "Can CPython 3.11 run in a browser?")
    assert "restates" in browser.unanswered
    # Saying where it comes from adds nothing: the 1.5B answered "Why does {} give me a dict
    # and not an empty set?" with this, the page saying to use set().
    sets = passage(page("tutorial/datastructures.html"), "to create an empty set you have to use", 600)
    told = check("The context states that `{}` gives you a dict and not an empty set.", [sets],
                 "Why does {} give me a dict and not an empty set?")
    assert "restates" in told.unanswered
    assert check("`{}` makes an empty dictionary; use `set()` for an empty set.", [sets],
                 "Why does {} give me a dict and not an empty set?").grounded
    # A name it gives is a claim the check looks for: supported, it is an answer.
    assert check("`LinkingTo`.", ["Packages whose headers are used: the LinkingTo field."],
                 "Which DESCRIPTION field lists header-only packages?").grounded


@needs_docs
def test_an_environment_variable_is_a_claim_and_a_placeholder_is_not() -> None:
    """Asked how to turn off 3.13's coloured tracebacks with PYTHON_COLORS (a question of the
    held-out set that 3.11's documents cannot answer), the 1.5B said to set it to an empty
    string, and the check passed it: a capitalised name was read as a placeholder (``pip
    install NAME``), never looked for, and one in prose was not a name at all."""
    unbuffered = passage(page("using/cmdline.html"), "PYTHONUNBUFFERED\n", 700)
    asked = "How do I turn off output buffering?"
    assert check("Set PYTHONUNBUFFERED to a non-empty string.", [unbuffered], asked).grounded
    assert check("Set `PYTHONUNBUFFERED` to 1.", [unbuffered], asked).grounded
    prose = check("Set PYTHON_UNBUFFERED=1 before running it.", [unbuffered], asked)
    assert not prose.grounded and prose.unsupported == ["PYTHON_UNBUFFERED"]
    quoted = check("Set `PYTHON_NO_BUFFER` to 1.", [unbuffered], asked)
    assert not quoted.grounded and quoted.unsupported == ["PYTHON_NO_BUFFER"]
    # A placeholder stays one: a command's capitalised word, and a name for the user's own.
    assert check("Set `YOUR_API_KEY` to your key, then set PYTHONUNBUFFERED to 1.",
                 [unbuffered], asked).unsupported == []
    assert check("Run `python -u NAME` or set PYTHONUNBUFFERED.",
                 [unbuffered + "\n\n-u\n\nForce the stdout and stderr streams to be "
                  "unbuffered. python -u script.py"], asked).unsupported == []


@needs_docs
def test_an_answer_that_declines_is_not_grounded_and_one_that_goes_on_is_checked() -> None:
    """The 1.5B answered "Why does list.sort() return None?" with "The context does not provide
    any information about why list.sort() returns None.", the FAQ's answer among its
    passages: no fact in it, every word the question's or the passages', so nothing was
    unsupported and it was presented as an answer."""
    design = passage(page("faq/design.html"), "sorts the list in place", 900)
    asked = "Why does list.sort() return None?"
    for draft in ("The context does not provide any information about why list.sort() returns "
                  "None.", "I'm sorry, but the passages don't say.",
                  "The provided documentation does not explicitly mention it. I cannot answer "
                  "that."):
        verdict = check(draft, [design], asked)
        assert not verdict.grounded and verdict.unanswered == DECLINED, draft
    # An answer that says something after declining is checked as any other: here supported.
    right = check("The context does not say so directly. list.sort() sorts the list in place, "
                  "so it returns None as a reminder that no new list is made.", [design], asked)
    assert right.grounded and not right.unanswered, right
    # A name the question does not give is the answer's own: checked as any other answer's
    # (`sorted()` is in the passage; what the answer says of it is not).
    named = check("The context does not mention it, but `sorted()` does not either.", [design],
                  asked)
    assert named.unanswered != DECLINED and named.claims == 1
    # An apology is not a decline by itself: "you cannot" is the answer's claim.
    assert check("I'm sorry, but you cannot make it return the list.", [design],
                 asked).unanswered != DECLINED
    # What the documents themselves do not provide is an answer, not a decline.
    toml = check("The standard library does not provide a write API for TOML files.",
                 ["This module provides an interface for parsing TOML. This module does not "
                  "support writing TOML; the standard library does not provide a write API."],
                 "Can the standard library write TOML files too?")
    assert toml.grounded and not toml.unanswered, toml


@needs_docs
def test_the_name_asked_about_is_a_claim_even_where_the_answer_defines_it() -> None:
    """A draft of the 1.5B for a feature of Python 3.12, which the 3.11 documents do not
    hold: asked how to use `eager_task_factory`, it wrote `async def eager_task_factory()`
    itself and named it again in its prose, so neither was a claim, and it was presented as
    grounded. The name the question asks after is the question's substance: the answer must
    find it in the passages, whoever defines it."""
    tasks = passage(page("library/asyncio-task.html"),
                    "provides a more modern alternative to create_task()", 1400)
    asked = "How do I make asyncio start tasks eagerly with eager_task_factory?"
    invented = ("The `eager_task_factory` function runs coroutines concurrently as asyncio Tasks:\n"
                "```python\nimport asyncio\n\nasync def main():\n"
                "    async def eager_task_factory():\n"
                "        return asyncio.create_task(say_after(1, 'hello'))\n\n"
                "    task = eager_task_factory()\n    await task\n```")
    assert check(invented, [tasks]).grounded  # without the question, nothing it names is claimed
    verdict = check(invented, [tasks], asked)
    assert not verdict.grounded and verdict.unsupported == ["eager_task_factory"], verdict
    # A name the question asks after that the passages do hold is supported as before, and a
    # question that names nothing adds no claim.
    right = ("Use `asyncio.TaskGroup`:\n```python\nasync def main():\n"
             "    async with asyncio.TaskGroup() as tg:\n"
             "        task1 = tg.create_task(say_after(1, 'hello'))\n```")
    assert check(right, [tasks], "How do I start tasks with create_task() in a TaskGroup?").grounded
    assert check(right, [tasks], "How do I run two coroutines at once?").grounded
    # A name asked about that the answer does not name is no claim of the answer's.
    assert check(right, [tasks], "Is `eager_task_factory` in 3.11, or what else is?").grounded


@pytest.mark.timeout(30)
@pytest.mark.parametrize("blank", [" " * 3000, "    \n" * 600, "for " + "a " * 2000, "\t" * 3000])
def test_a_run_of_blanks_is_read_in_one_pass(blank: str) -> None:
    """A code block of blank lines (a small model writes them) or a question of spaces made
    the check try every split of the run: minutes (cubic), holding the model's place and the
    interpreter. Each is now read in one pass, to the verdict the same code has without the
    run; the timeout only stops a regression early."""
    passages = ["Use compile() to make a code object: code = compile(source, 'f', 'exec')."]
    plain = check("Run this:\n```python\nsource\ncode = compile(source)\n```", passages, "How?")
    padded = check(f"Run this:\n```python\n{blank}source\ncode = compile(source)\n```", passages,
                   f"How?{blank}")
    assert (padded.grounded, padded.unsupported) == (plain.grounded, plain.unsupported)
    assert evidence(f"{blank}x", passages) == []
