"""``hearth ingest web|files`` and ``hearth sources list|remove``.

Options left out fall back to the settings (``HEARTH_CRAWL_*``, ``HEARTH_PDF_CHAR_MARGIN``),
then to the defaults in ``ingest.web`` and ``ingest.pdf``. Heavy imports happen inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _services() -> Any:
    from config import load_settings
    from services import build_services

    return build_services(load_settings())


def _setting(services: Any, name: str, default: Any) -> Any:
    return getattr(services.settings, name, default)


@click.group("ingest")
def ingest_cli() -> None:
    """Ingest a website or a folder; run it again to bring the index up to date."""


@ingest_cli.command("web")
@click.argument("url")
@click.option("--max-depth", type=click.IntRange(0), help="links to follow from the start page")
@click.option("--max-pages", type=click.IntRange(1), help="pages to fetch at most")
@click.option("--include", multiple=True,
              help="path prefix to crawl (repeatable; default: the start URL's folder)")
@click.option("--exclude", multiple=True, help="path prefix not to crawl (repeatable)")
@click.option("--concurrency", type=click.IntRange(1, 32), help="requests at a time")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1), help="seconds per request")
@click.option("--sitemap/--no-sitemap", default=True, help="also read the site's sitemap.xml")
def web(url: str, max_depth: int | None, max_pages: int | None, include: tuple[str, ...],
        exclude: tuple[str, ...], concurrency: int | None, timeout_s: float | None,
        sitemap: bool) -> None:
    """Crawl the site at URL (same site only, robots.txt respected) and index its pages."""
    from ingest import web as crawler
    from ingest.pipeline import IngestError, ingest_web
    from ingest.safety import GuardedTransport

    services = _services()
    options: dict[str, Any] = {
        "max_depth": max_depth if max_depth is not None
        else _setting(services, "crawl_max_depth", crawler.MAX_DEPTH),
        "max_pages": max_pages or _setting(services, "crawl_max_pages", crawler.MAX_PAGES),
        "concurrency": concurrency or _setting(services, "crawl_concurrency",
                                               crawler.CONCURRENCY),
        "timeout_s": timeout_s or _setting(services, "crawl_timeout_s", crawler.TIMEOUT_S),
        "include": include, "exclude": exclude, "use_sitemap": sitemap,
        # No private, loopback or metadata address unless HEARTH_INGEST_ALLOW_HOSTS lists it.
        "transport": GuardedTransport(services.settings.ingest_allow_hosts),
    }
    try:
        summary = ingest_web(services, url, progress=True, **options)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(summary))


@ingest_cli.command("files")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pdf-char-margin", type=click.FloatRange(0.1),
              help="pdfminer char_margin: high keeps table rows whole, 2 suits two-column text")
def files(folder: Path, pdf_char_margin: float | None) -> None:
    """Index FOLDER recursively: PDF, Markdown, text, HTML and Word (.docx) files."""
    from ingest.pipeline import IngestError, ingest_files

    services = _services()
    margin = pdf_char_margin or _setting(services, "pdf_char_margin", None)
    try:
        summary = ingest_files(services, folder, progress=True, pdf_char_margin=margin)
    except IngestError as exc:
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

    from config import load_settings
    from ingest.sources import list_sources

    found = list_sources(load_settings())
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
    from ingest.pipeline import IngestError
    from ingest.sources import remove_source, resolve

    services = _services()
    try:
        namespace = resolve(services.settings, source)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None
    if not yes:
        click.confirm(f"Remove {namespace} and all its chunks from the index?", abort=True)
    _, deleted = remove_source(services, namespace)
    click.echo(f"Removed {namespace}: {deleted} chunks deleted.")
