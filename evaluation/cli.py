"""`hearth eval`: generate a question set, run it, score results, compare runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from hearth.config import Settings

DEFAULT_RUNS_DIR = Path("eval-runs")


def _settings() -> Settings:
    from hearth.config import load_settings

    return load_settings()  # a bad setting is one clean line (hearth.cli.HearthGroup)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can act on become one line, not a traceback."""
    from hearth.errors import HearthError
    from hearth.evaluation.judge import JudgeError
    from hearth.evaluation.records import EvalDataError
    from hearth.evaluation.run import TooManyErrors
    from hearth.weights import ModelError

    actionable = (EvalDataError, JudgeError, TooManyErrors, HearthError, ModelError)
    try:
        yield
    except actionable as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # a file or folder the user named: not there, not writable
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
                                   ) from None


def retrieval_settings(settings: Settings) -> dict[str, Any]:
    """The settings that decide which passages the model reads: a run says what it ran with."""
    names = ("retrieval", "keyword_weight", "retrieval_candidates", "headings_weight",
             "passages_by_page", "page_support", "reranker", "query_expansion",
             "context_neighbours", "context_neighbour_tokens", "context_continuation_tokens",
             "context_focus")
    return {name: getattr(settings, name) for name in names}


def _run_dir(out: Path | None, name: str) -> Path:
    if out is not None:
        return out
    return DEFAULT_RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def _judge_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--judge-backend", type=click.Choice(["llamacpp", "ollama", "openai"]),
                     help="default from HEARTH_JUDGE_BACKEND"),
        click.option("--judge-model", help="packaged model name or GGUF path (llamacpp), model "
                                           "name (ollama, openai); default HEARTH_JUDGE_MODEL"),
        click.option("--judge-url", help="base URL of the judge's server (ollama, openai)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _build_judge(settings: Any, backend: str | None, model: str | None, url: str | None) -> Any:
    from hearth.evaluation.judge import build_judge

    click.echo(f"Loading the judge {model or settings.judge_model} "
               f"({backend or settings.judge_backend.value}) ...", err=True)
    return build_judge(settings, backend=backend, model=model, base_url=url)


@click.group("eval")
def eval_cli() -> None:
    """Measure answer quality: synthetic questions, ROUGE, an LLM judge, retrieval hit rate."""


@eval_cli.command()
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="dataset JSONL to write or resume (default DATA_DIR/eval/questions.jsonl)")
@click.option("-n", "--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="chunks to sample")
@click.option("--seed", type=int, default=0, show_default=True, help="fixes the sample")
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="question prompt with {text} where the chunk goes (default: the origin's)")
@click.option("--min-words", type=int, default=25, show_default=True,
              help="shorter chunks count as boilerplate")
@click.option("--rpm", type=float, default=0, show_default=True,
              help="at most this many LLM calls a minute (0: no limit)")
@click.option("--finetune", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the dataset in the fine-tuning format (prompt/completion JSONL)")
def generate(out: Path | None, count: int, seed: int, prompt_file: Path | None, min_words: int,
             rpm: float, finetune: Path | None) -> None:
    """Write a question for each of COUNT sampled chunks of the index (resumable)."""
    from langchain_core.messages import HumanMessage

    from hearth.evaluation import generate as gen
    from hearth.evaluation.records import load_questions, write_finetune
    from hearth.services import build_services

    settings = _settings()
    out = out or settings.data_dir / "eval" / "questions.jsonl"
    prompt = prompt_file.read_text(encoding="utf-8") if prompt_file else gen.QUESTION_PROMPT
    with _user_errors():
        services = build_services(settings)
        llm = services.llm
        report = gen.generate(
            gen.iter_collection(services.vectorstore.collection),
            lambda text: llm.complete([HumanMessage(content=text)]),
            out, n=count, seed=seed, prompt=prompt,
            boilerplate=gen.BoilerplateFilter(min_words=min_words),
            limiter=gen.RateLimiter(rpm), progress=True,
        )
    skipped = ", ".join(f"{n} {why}" for why, n in report.skipped.most_common()) or "none"
    click.echo(f"{out}: {report.written} questions written, {report.resumed} already there, "
               f"{report.failed} chunks gave no question; {report.available} content chunks "
               f"(boilerplate left out: {skipped})")
    if finetune:
        with _user_errors():
            n = write_finetune(load_questions(out), finetune)
        click.echo(f"{finetune}: {n} fine-tuning examples")


@eval_cli.command()
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", help="answer through a running Hearth API (default: in process)")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="HTTP header for --url (repeatable), e.g. an Authorization header")
@click.option("--limit", type=click.IntRange(min=1), help="only the first LIMIT questions")
@click.option("--judge/--no-judge", default=True, show_default=True, help="rate with the judge")
@_judge_options
@click.option("-k", "ks", type=click.IntRange(min=1), multiple=True, default=(1, 3, 5),
              show_default=True, help="hit@k to report (repeatable)")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True,
              help="chunks retrieved for the ranking metrics (in process)")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="run folder; an existing one is resumed (default eval-runs/TIME-NAME)")
@click.option("--name", help="a label for this run (default: the dataset's name)")
@click.option("--no-retrieval", is_flag=True,
              help="ask the model alone, without the documents (in process; the study of "
                   "fine-tuning against retrieval)")
@click.option("--plots/--no-plots", default=True, show_default=True)
def run(dataset: Path, url: str | None, headers: tuple[str, ...], limit: int | None, judge: bool,
        judge_backend: str | None, judge_model: str | None, judge_url: str | None,
        ks: tuple[int, ...], depth: int, out: Path | None, name: str | None, no_retrieval: bool,
        plots: bool) -> None:
    """Answer every question of DATASET through Hearth and score the answers."""
    from hearth.evaluation.records import RECORDS_FILE, load_questions, write_config
    from hearth.evaluation.report import write_run_report
    from hearth.evaluation.run import ApiAnswerer, ChatAnswerer, ModelAnswerer, run_eval
    from hearth.evaluation.scoring import summarize

    settings = _settings()
    previous = _previous_config(out)  # a run being resumed keeps its name and start
    name = name or previous.get("name") or dataset.stem
    run_dir = _run_dir(out, name)
    with _user_errors():
        questions = load_questions(dataset)[:limit]
        config: dict[str, Any] = {
            "name": name, "dataset": str(dataset), "questions": len(questions),
            "started_at": previous.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hit_ks": list(ks),
        }
        if url and no_retrieval:
            raise click.UsageError("--no-retrieval asks the model in process: leave out --url")
        if no_retrieval:
            from hearth.llm import build_llm

            llm = build_llm(settings)
            answerer: Any = ModelAnswerer(llm, settings.persona, settings.answer_words)
            config |= {"answerer": "the model alone, no retrieval", "model": llm.name}
        elif url:
            answerer = ApiAnswerer(url, settings.refusal, headers=_parse_headers(headers),
                                        timeout_s=settings.llm_timeout_s + 60)
            config |= {"answerer": url}
        else:
            from hearth.chat import Chat
            from hearth.services import build_services

            services = build_services(settings)
            answerer = ChatAnswerer(Chat(services), depth=depth)
            config |= {"answerer": "in process", "model": services.llm.name,
                       "top_k": settings.top_k, "min_relevance": settings.min_relevance,
                       "retrieval_depth": depth, "retrieval": retrieval_settings(settings)}
        the_judge = _build_judge(settings, judge_backend, judge_model, judge_url) if judge else None
        if the_judge is not None:
            config["judge"] = the_judge.name
        records_path = run_dir / RECORDS_FILE
        if records_path.exists():
            _same_system(previous, config, run_dir)
            click.echo(f"Resuming the run in {run_dir}", err=True)
        write_config(run_dir, config)
        records = run_eval(questions, answerer, judge=the_judge, records_path=records_path,
                           progress=True)
    summary = summarize(records, ks)
    write_run_report(run_dir, records, summary, config, title=f"Run {name}", plots=plots)
    _echo_summary(run_dir)


@eval_cli.command()
@click.argument("sets", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", help="answer through a running Hearth API (default: in process)")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="HTTP header for --url (repeatable), e.g. an Authorization header")
@click.option("--user", help="--url: ask every question as this user (default: a fresh user "
                             "each question)")
@click.option("--limit", type=click.IntRange(min=1), help="only the first LIMIT questions")
@click.option("--sample", type=click.IntRange(min=1), help="a random sample of SAMPLE questions")
@click.option("--seed", type=int, default=0, show_default=True, help="fixes the sample")
@click.option("--retrieval-only", is_flag=True,
              help="no generation: retrieval ranks and facts in the top passages (in process)")
@click.option("-k", "ks", type=click.IntRange(min=1), multiple=True, default=(1, 4),
              show_default=True, help="hit@k to report (repeatable)")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True,
              help="chunks retrieved for the retrieval ranks (in process)")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="run folder; an existing one is resumed (default eval-runs/TIME-facts)")
@click.option("--name", help="a label for this run (default: facts or facts-retrieval)")
@click.option("--no-retrieval", is_flag=True,
              help="ask the model alone, without the documents (in process; the study of "
                   "fine-tuning against retrieval): key-fact recall only")
@click.option("--alternatives", type=click.IntRange(0, 20), default=0, show_default=True,
              help="record the N likeliest tokens at each token the model drew, beside its "
                   "log-probability (in process, llama.cpp)")
def facts(sets: tuple[Path, ...], url: str | None, headers: tuple[str, ...], user: str | None,
          limit: int | None, sample: int | None, seed: int, retrieval_only: bool,
          ks: tuple[int, ...], depth: int, out: Path | None, name: str | None,
          no_retrieval: bool, alternatives: int) -> None:
    """Score Hearth on key-fact question SETS (evaluation/sets/*.jsonl): hit@k and MRR of the
    expected page, key-fact recall, refusals, wrong answers, latency; overall and per corpus."""
    from hearth.evaluation import keyfacts
    from hearth.evaluation.records import RECORDS_FILE, write_config
    from hearth.evaluation.report import SUMMARY_FILE

    if retrieval_only and url:
        raise click.UsageError("--retrieval-only runs in process; it cannot use --url")
    if no_retrieval and (url or retrieval_only):
        raise click.UsageError("--no-retrieval asks the model in process: leave out --url "
                               "and --retrieval-only")
    if alternatives and (url or retrieval_only or no_retrieval):
        raise click.UsageError("--alternatives records the answers' tokens in process: leave "
                               "out --url, --retrieval-only and --no-retrieval")
    settings = _settings()
    previous = _previous_config(out)
    name = name or previous.get("name") or ("facts-retrieval" if retrieval_only else "facts")
    run_dir = _run_dir(out, name)
    with _user_errors():
        questions = keyfacts.select(keyfacts.load_fact_sets(sets), sample=sample, seed=seed,
                                    limit=limit)
        config: dict[str, Any] = {
            "name": name, "sets": [str(s) for s in sets], "questions": len(questions),
            "sample": sample, "seed": seed, "limit": limit,
            "mode": "retrieval" if retrieval_only else "answer", "hit_ks": sorted(set(ks)),
            "started_at": previous.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        answerer: Any
        if no_retrieval:
            from hearth.llm import build_llm

            llm = build_llm(settings)
            answerer = keyfacts.AloneAnswerer(llm, settings.persona, settings.answer_words)
            config |= {"answerer": "the model alone, no retrieval", "model": llm.name}
        elif url:
            answerer = keyfacts.UrlAnswerer(url, settings.refusal, headers=_parse_headers(headers),
                                            user_id=user, timeout_s=settings.llm_timeout_s + 60)
            config |= {"answerer": url}
        else:
            from hearth.services import build_services

            services = build_services(settings)
            answerer = keyfacts.InProcessAnswerer(services, depth=depth,
                                                  retrieval_only=retrieval_only,
                                                  alternatives=alternatives)
            config |= {"answerer": "in process", "top_k": settings.top_k,
                       "min_relevance": settings.min_relevance, "retrieval_depth": depth,
                       "vector_store": settings.chroma_url or str(settings.chroma_path),
                       "retrieval": retrieval_settings(settings)}
            if not retrieval_only:
                config |= {"model": services.llm.name, "alternatives": alternatives}
        records_path = run_dir / RECORDS_FILE
        if records_path.exists():
            _same_system(previous, config, run_dir)
            click.echo(f"Resuming the run in {run_dir}", err=True)
        write_config(run_dir, config)
        records = keyfacts.run_facts(questions, answerer, mode=config["mode"],
                                     records_path=records_path, progress=True)
    summary = keyfacts.summarize_facts(records, ks)
    keyfacts.write_facts_report(run_dir, records, summary, config, title=f"Key facts: {name}")
    click.echo((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    click.echo(f"Report: {run_dir}", err=True)


@eval_cli.command()
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--judge/--no-judge", default=False, show_default=True,
              help="also rate the answers with the judge (ratings already there are kept)")
@_judge_options
@click.option("-k", "ks", type=click.IntRange(min=1), multiple=True, default=(1, 3, 5),
              show_default=True, help="hit@k to report, where records carry retrieval lists")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="report folder (default eval-runs/TIME-scored-NAME)")
@click.option("--plots/--no-plots", default=True, show_default=True)
def score(file: Path, judge: bool, judge_backend: str | None, judge_model: str | None,
          judge_url: str | None, ks: tuple[int, ...], out: Path | None, plots: bool) -> None:
    """Score an existing results FILE without answering anything.

    FILE is a run folder, a results.json, a records.jsonl, or a JSON list of records with
    question (or training_data.prompt), reference, hypothesis and any judge ratings: a
    distribution over "0".."10" under any key, or a number under a key naming a judge
    (gpt4, judge, rating, ...), as in the origin's measure-results-*.json.
    """
    from hearth.evaluation.records import load_results
    from hearth.evaluation.report import write_run_report
    from hearth.evaluation.run import rescore
    from hearth.evaluation.scoring import summarize

    settings = _settings() if judge else None
    name = file.stem if file.is_file() else file.name
    run_dir = _run_dir(out, f"scored-{name}")
    with _user_errors():
        records, config = load_results(file)
        the_judge = _build_judge(settings, judge_backend, judge_model, judge_url) if judge else None
        rescore(records, the_judge, progress=True)
    summary = summarize(records, ks)
    config = {**config, "scored_from": str(file)}
    write_run_report(run_dir, records, summary, config, title=f"Scores of {file.name}",
                     plots=plots)
    _echo_summary(run_dir)


@eval_cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--tie-margin", type=float, default=0.0, show_default=True,
              help="ratings closer than this count as a tie")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="report folder (default eval-runs/TIME-A-vs-B...)")
@click.option("--facts", "facts_runs", multiple=True,
              type=click.Path(exists=True, path_type=Path),
              help="a `hearth eval facts` run of the same system, one per RUN in the same "
                   "order: adds its key-fact recall to the table")
@click.option("--plots/--no-plots", default=True, show_default=True)
def compare(runs: tuple[Path, ...], tie_margin: float, out: Path | None,
            facts_runs: tuple[Path, ...], plots: bool) -> None:
    """Wins, ties and losses of RUN_A against RUN_B per judge, and the metric deltas; with more
    than two RUNS, their metrics side by side and every pair's wins, ties and losses, over the
    questions every run answered. With --facts, each system's key-fact recall on a question
    set (over the questions every facts run answered) joins its metrics."""
    from hearth.evaluation.compare import compare as compare_runs
    from hearth.evaluation.compare import compare_many
    from hearth.evaluation.records import load_results
    from hearth.evaluation.report import COMPARE_FILE, write_comparison_report
    from hearth.evaluation.scoring import score_record

    if len(runs) < 2:
        raise click.UsageError("compare needs two runs or more")
    if facts_runs and len(facts_runs) != len(runs):
        raise click.UsageError(f"--facts: one key-fact run for each of the {len(runs)} runs, "
                               f"in the same order (got {len(facts_runs)})")
    loaded = []
    extra: list[dict[str, float]] = []
    with _user_errors():
        for path in runs:
            records, config = load_results(path)
            for record in records:
                if not record.get("rouge"):
                    score_record(record)  # a foreign file: ROUGE as this toolkit computes it
            label = config.get("name") or (path.stem if path.is_file() else path.name)
            loaded.append((records, label))
        if facts_runs:
            from hearth.evaluation.keyfacts import fact_metrics, load_facts_run

            extra = fact_metrics([load_facts_run(path) for path in facts_runs])
    labels = [label for _, label in loaded]
    if len(set(labels)) < len(labels):  # told apart by their place on the command line
        labels = [f"{chr(ord('A') + n)}:{label}" if n < 26 else f"{n + 1}:{label}"
                  for n, label in enumerate(labels)]
    loaded = [(records, label) for (records, _), label in zip(loaded, labels, strict=True)]
    try:
        if len(loaded) == 2:
            (records_a, label_a), (records_b, label_b) = loaded
            comparison: Any = compare_runs(records_a, records_b, label_a, label_b, tie_margin)
        else:
            comparison = compare_many(loaded, tie_margin)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if extra and len(loaded) == 2:
        comparison.metrics_a |= extra[0]
        comparison.metrics_b |= extra[1]
    elif extra:
        for metrics, more in zip(comparison.metrics, extra, strict=True):
            metrics |= more
    out_dir = _run_dir(out, "-vs-".join(labels).replace("/", "_").replace(":", "_"))
    write_comparison_report(out_dir, comparison, plots=plots)
    click.echo((out_dir / COMPARE_FILE).read_text(encoding="utf-8"))
    click.echo(f"Report: {out_dir}", err=True)


# What a resumed run must share with the run it adds to: answers of another system or mode
# are not this one's.
SAME_SYSTEM = ("mode", "answerer", "model", "top_k", "min_relevance", "retrieval_depth",
               "retrieval", "alternatives")


def _same_system(previous: dict[str, Any], config: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a run made by another system (model, retrieval, answerer)."""
    differ = [k for k in SAME_SYSTEM if k in previous and previous[k] != config.get(k)]
    if differ:
        raise click.ClickException(
            f"the run in {run_dir} was made with other {', '.join(differ)} "
            f"({', '.join(f'{k}: {previous[k]!r}' for k in differ)}): give another -o, or "
            "remove that folder to start it again")


def _previous_config(run_dir: Path | None) -> dict[str, Any]:
    """The config of the run in `run_dir`: its config.json, written as it started (so a run
    killed before its end has one too), else the config in its results.json (an older run)."""
    from hearth.evaluation.records import CONFIG_FILE, RESULTS_FILE

    if run_dir is None:
        return {}
    try:
        if (run_dir / CONFIG_FILE).is_file():
            return dict(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
        if (run_dir / RESULTS_FILE).is_file():
            return dict(json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
                        ["config"])
    except (ValueError, KeyError, TypeError):
        pass
    return {}


def _parse_headers(headers: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{header!r} is not 'NAME: VALUE'", param_hint="--header")
        parsed[name.strip()] = value.strip()
    return parsed


def _echo_summary(run_dir: Path) -> None:
    from hearth.evaluation.report import SUMMARY_FILE

    click.echo((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    click.echo(f"Report: {run_dir}", err=True)


@eval_cli.command("feedback")
@click.option("--rating", type=click.Choice(["wrong", "helpful", "all"]), default="wrong",
              show_default=True, help="which marked answers to export")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL to write (default: standard output)")
def feedback(rating: str, out: Path | None) -> None:
    """Answers users marked, as candidate questions for an evaluation set.

    Each line has the evaluation sets' fields (id, question, answerable, source, page for a
    PDF, key_facts) with key_facts left empty for you to fill from the source, and the answer,
    the user's rating and comment, and the sources it cited (each as an alt_sources entry:
    source, and page for a PDF), to decide with. See evaluation/sets/README.md.
    """
    from hearth.chat import Chat
    from hearth.services import build_services

    with _user_errors():
        _write_feedback(Chat(build_services(_settings())), rating, out)


def _set_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """A cited source as the evaluation sets name a page: its source, and its page where the
    document has pages (a PDF's 1-based physical page, as Hearth stores it)."""
    place: dict[str, Any] = {"source": source.get("source")}
    page = source.get("page")
    if isinstance(page, int) and not isinstance(page, bool) and page:
        place["page"] = page
    return place


def _write_feedback(chat: Any, rating: str, out: Path | None) -> None:
    lines = []
    for conversation, position in chat.marked_turns():
        turn = conversation.turns[position]
        assert turn.feedback is not None
        if rating != "all" and turn.feedback.get("rating") != rating:
            continue
        cited = [_set_source(s) for s in turn.sources]
        lines.append(json.dumps({
            "id": f"feedback-{conversation.id}-{position}", "question": turn.question,
            "answerable": True, **(cited[0] if cited else {"source": None}),
            "key_facts": [], "answer": turn.answer, "rating": turn.feedback.get("rating"),
            "comment": turn.feedback.get("comment", ""), "cited": cited,
            "asked_at": turn.created_at,
        }))
    text = "".join(line + "\n" for line in lines)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"{len(lines)} marked answers written to {out}", err=True)
