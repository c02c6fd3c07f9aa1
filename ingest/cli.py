"""``hearth ingest web|files`` and ``hearth sources list|remove``.

Options left out come from the settings (``HEARTH_CRAWL_*``, ``HEARTH_PDF_CHAR_MARGIN``). A bad
setting, and any failure Hearth can explain, is a clean error message, not a traceback. Heavy
imports happen inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from hearth.config import Settings
    from hearth.services import Services


def _settings() -> Settings:
    """The settings, or a clean error naming each bad ``HEARTH_*`` variable."""
    from hearth.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _services() -> Services:
    from hearth.services import build_services

    return build_services(_settings())


@click.group("ingest")
def ingest_cli() -> None:
    """Ingest a website or a folder; run it again to bring the index up to date."""


@ingest_cli.command("web")
@click.argument("url")
@click.option("--max-depth", type=click.IntRange(0),
              help="links to follow from the start page (default: HEARTH_CRAWL_MAX_DEPTH)")
@click.option("--max-pages", type=click.IntRange(1),
              help="pages to fetch at most (default: HEARTH_CRAWL_MAX_PAGES)")
@click.option("--include", multiple=True,
              help="path prefix to crawl (repeatable; default: the start URL's folder)")
@click.option("--exclude", multiple=True, help="path prefix not to crawl (repeatable)")
@click.option("--concurrency", type=click.IntRange(1, 32),
              help="requests at a time (default: HEARTH_CRAWL_CONCURRENCY)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1),
              help="seconds per request (default: HEARTH_CRAWL_TIMEOUT_S)")
@click.option("--sitemap/--no-sitemap", default=True, help="also read the site's sitemap.xml")
def web(url: str, max_depth: int | None, max_pages: int | None, include: tuple[str, ...],
        exclude: tuple[str, ...], concurrency: int | None, timeout_s: float | None,
        sitemap: bool) -> None:
    """Crawl the site at URL (same site only, robots.txt respected) and index its pages."""
    from hearth.errors import HearthError
    from hearth.ingest.pipeline import ingest_web
    from hearth.ingest.progress import progress_for
    from hearth.ingest.safety import GuardedTransport

    services = _services()
    try:
        # Limits left out (None) are the settings' (ingest_web reads them).
        summary = ingest_web(
            services, url, progress=progress_for(True), max_depth=max_depth,
            max_pages=max_pages, concurrency=concurrency, timeout_s=timeout_s,
            include=include, exclude=exclude, use_sitemap=sitemap,
            # No private, loopback or metadata address unless HEARTH_INGEST_ALLOW_HOSTS lists it.
            transport=GuardedTransport(services.settings.ingest_allow_hosts))
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(summary))


@ingest_cli.command("files")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pdf-char-margin", type=click.FloatRange(0.1),
              help="pdfminer char_margin: high keeps table rows whole, 2 suits two-column text "
              "(default: HEARTH_PDF_CHAR_MARGIN)")
def files(folder: Path, pdf_char_margin: float | None) -> None:
    """Index FOLDER recursively: PDF, Markdown, text, HTML and Word (.docx) files."""
    from hearth.errors import HearthError
    from hearth.ingest.pipeline import ingest_files
    from hearth.ingest.progress import progress_for

    services = _services()
    try:
        summary = ingest_files(services, folder, progress=progress_for(True),
                               pdf_char_margin=pdf_char_margin)
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(summary))


@click.group("sources")
def sources_cli() -> None:
    """The folders and sites in the index."""


@sources_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_command(as_json: bool) -> None:
    """Each source with its documents, chunks and last ingest time."""
    import json

    from hearth.errors import HearthError
    from hearth.ingest.sources import list_sources

    try:
        found = list_sources(_settings())
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=2))
        return
    if not found:
        click.echo("Nothing ingested yet: try `hearth ingest files DIR` or `hearth ingest web URL`.")
        return
    width = max(len(s.source) for s in found)
    click.echo(f"{'SOURCE':<{width}}  {'DOCUMENTS':>9}  {'CHUNKS':>7}  LAST INGEST")
    for s in found:
        when = s.last_ingest.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{s.source:<{width}}  {s.documents:>9}  {s.chunks:>7}  {when}")


@sources_cli.command("remove")
@click.argument("source")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def remove_command(source: str, yes: bool) -> None:
    """Remove SOURCE (a folder or start URL, as listed) and all its chunks from the index."""
    from hearth.errors import HearthError
    from hearth.ingest.sources import remove_source, resolve

    services = _services()
    try:
        namespace = resolve(services.settings, source)
        if not yes:
            click.confirm(f"Remove {namespace} and all its chunks from the index?", abort=True)
        _, deleted = remove_source(services, namespace)
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Removed {namespace}: {deleted} chunks deleted.")
