"""``hearth ingest web|files``, ``hearth sources list|remove`` and ``hearth collections``.

Options left out come from the settings (``HEARTH_CRAWL_*``, ``HEARTH_PDF_CHAR_MARGIN``). A bad
setting, and any failure Hearth can explain, is a clean error message, not a traceback. Heavy
imports happen inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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


COLLECTION = click.option(
    "--collection", default="default", show_default=True,
    help="the collection to ingest into (`hearth collections list` shows them)")


@ingest_cli.command("web")
@click.argument("url")
@COLLECTION
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
def web(url: str, collection: str, max_depth: int | None, max_pages: int | None, include: tuple[str, ...],
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
            services, url, collection=collection, progress=progress_for(True),
            max_depth=max_depth,
            max_pages=max_pages, concurrency=concurrency, timeout_s=timeout_s,
            include=include, exclude=exclude, use_sitemap=sitemap,
            # No private, loopback or metadata address unless HEARTH_INGEST_ALLOW_HOSTS lists it.
            transport=GuardedTransport(services.settings.ingest_allow_hosts))
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(summary))


@ingest_cli.command("files")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@COLLECTION
@click.option("--pdf-char-margin", type=click.FloatRange(0.1),
              help="pdfminer char_margin: high keeps table rows whole, 2 suits two-column text "
              "(default: HEARTH_PDF_CHAR_MARGIN)")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="files or folders not to read, as in a .gitignore (repeatable): '*.docx', "
              "'drafts', 'archive/2019/'; on a re-run, what a pattern now excludes leaves the "
              "index")
def files(folder: Path, collection: str, pdf_char_margin: float | None,
          exclude: tuple[str, ...]) -> None:
    """Index FOLDER recursively: PDF, Markdown, text, HTML and Word (.docx) files."""
    from hearth.errors import HearthError
    from hearth.ingest.pipeline import ingest_files
    from hearth.ingest.progress import progress_for

    services = _services()
    try:
        summary = ingest_files(services, folder, collection=collection,
                               progress=progress_for(True), pdf_char_margin=pdf_char_margin,
                               exclude=exclude)
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(summary))


@click.group("sources")
def sources_cli() -> None:
    """The folders and sites in the index."""


@sources_cli.command("list")
@click.option("--collection", default=None, help="only this collection's sources")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_command(collection: str | None, as_json: bool) -> None:
    """Each source with its collection, documents, chunks and last ingest time."""
    import json

    from hearth.access import build_access
    from hearth.errors import HearthError
    from hearth.ingest.sources import list_sources

    settings = _settings()
    try:
        if collection is not None:
            build_access(settings).get(collection)  # not "nothing ingested" for a misspelt name
        found = list_sources(settings, collection)
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=2))
        return
    if not found:
        click.echo("Nothing ingested yet: try `hearth ingest files DIR` or `hearth ingest web URL`.")
        return
    width = max(len(s.source) for s in found)
    named = max(len("COLLECTION"), *(len(s.collection) for s in found))
    click.echo(f"{'COLLECTION':<{named}}  {'SOURCE':<{width}}  {'DOCUMENTS':>9}  {'CHUNKS':>7}  "
               "LAST INGEST")
    for s in found:
        when = s.last_ingest.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{s.collection:<{named}}  {s.source:<{width}}  {s.documents:>9}  "
                   f"{s.chunks:>7}  {when}")


@sources_cli.command("remove")
@click.argument("source")
@click.option("--collection", default="default", show_default=True,
              help="the collection to remove it from (`hearth sources list` shows where)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def remove_command(source: str, collection: str, yes: bool) -> None:
    """Remove SOURCE (a folder or start URL, as listed) and all its chunks from a collection."""
    from hearth.errors import HearthError
    from hearth.ingest.sources import SourceNotFound, remove_source, resolve

    services = _services()
    try:
        try:
            namespace = resolve(services.settings, source, collection)
        except SourceNotFound:
            services.access.get(collection)  # a collection that does not exist, named as such
            raise
        if not yes:
            click.confirm(f"Remove {namespace} and all its chunks from collection "
                          f"{collection!r}?", abort=True)
        _, deleted = remove_source(services, namespace, collection)
    except HearthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Removed {namespace} from {collection}: {deleted} chunks deleted.")


@click.group("collections")
def collections_cli() -> None:
    """Collections of sources, and who may read each (enforced with API keys on)."""


def _describe(collection: Any, sources: int, chunks: int) -> str:
    who = "everyone" if collection.public else ", ".join(
        [*([f"{collection.owner} (owner)"] if collection.owner else []),
         *collection.readers]) or "administrators only"
    return (f"{collection.name}: {collection.description or '(no description)'}\n"
            f"  read by: {who}\n  sources: {sources}, chunks: {chunks}")


@collections_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def collections_list(as_json: bool) -> None:
    """Every collection, who reads it, and what it holds."""
    import json

    from hearth.ingest.sources import list_sources

    services = _services()
    sources = list_sources(services.settings)
    found = services.access.all()
    if as_json:
        click.echo(json.dumps([
            {**c.to_dict(), "sources": sum(s.collection == c.name for s in sources),
             "chunks": sum(s.chunks for s in sources if s.collection == c.name)}
            for c in found], indent=2))
        return
    for c in found:
        click.echo(_describe(c, sum(s.collection == c.name for s in sources),
                             sum(s.chunks for s in sources if s.collection == c.name)))


@collections_cli.command("show")
@click.argument("name")
def collections_show(name: str) -> None:
    """One collection: who reads it, and its sources."""
    from hearth.ingest.sources import list_sources

    services = _services()
    collection = services.access.get(name)
    sources = list_sources(services.settings, name)
    click.echo(_describe(collection, len(sources), sum(s.chunks for s in sources)))
    for s in sources:
        click.echo(f"  - {s.source} ({s.documents} documents, {s.chunks} chunks)")


@collections_cli.command("create")
@click.argument("name")
@click.option("--description", default="", help="what it holds, shown to its readers")
@click.option("--public", is_flag=True, help="readable by everyone (default: only its readers)")
@click.option("--reader", "readers", multiple=True, help="a user who may read it (repeatable)")
def collections_create(name: str, description: str, public: bool,
                       readers: tuple[str, ...]) -> None:
    """Create collection NAME (lower-case letters, digits, - and _)."""
    collection = _services().access.create(name, description, public=public, readers=readers)
    click.echo(f"Created {collection.name} ({'public' if public else 'private'}); ingest into "
               f"it with `hearth ingest files DIR --collection {collection.name}`.")


@collections_cli.command("grant")
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def collections_grant(name: str, users: tuple[str, ...]) -> None:
    """Let USERS read collection NAME."""
    collection = _services().access.grant(name, users)
    click.echo(f"{collection.name} is read by: {', '.join(collection.readers)}")


@collections_cli.command("revoke")
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def collections_revoke(name: str, users: tuple[str, ...]) -> None:
    """Stop USERS reading collection NAME; their next question reads nothing from it."""
    collection = _services().access.revoke(name, users)
    click.echo(f"{collection.name} is read by: {', '.join(collection.readers) or 'nobody'}"
               + (" (and everyone: it is public)" if collection.public else ""))


@collections_cli.command("publish")
@click.argument("name")
@click.option("--private", "private", is_flag=True, help="make it private again")
def collections_publish(name: str, private: bool) -> None:
    """Make collection NAME readable by everyone (or, with --private, by its readers only)."""
    collection = _services().access.set_public(name, not private)
    click.echo(f"{collection.name} is now {'public' if collection.public else 'private'}.")


@collections_cli.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def collections_delete(name: str, yes: bool) -> None:
    """Delete collection NAME with all its sources' chunks."""
    from hearth.ingest.sources import remove_collection

    services = _services()
    services.access.get(name)
    if not yes:
        click.confirm(f"Delete collection {name!r} and every chunk in it?", abort=True)
    deleted = remove_collection(services, name)
    click.echo(f"Deleted {name}: {deleted} chunks deleted.")
