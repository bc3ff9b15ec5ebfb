"""``mgr db``: the catalog's schema revision (migrations run on first use anyway)."""

from __future__ import annotations

import click

from manager.catalog import identity, open_catalog
from manager.catalog.migrate import current_revision, ensure_current, head_revision
from manager.cli.app import App, echo_json, json_option, pass_app
from manager.store.fs import Store


@click.group("db")
def command() -> None:
    """Catalog database maintenance."""


@command.command("upgrade")
@pass_app
def upgrade(app: App) -> None:
    """Migrate the catalog to the newest schema revision."""
    catalog = open_catalog(app.home, migrate=False)
    try:
        ensure_current(catalog.engine, Store.of(app.home))
        click.echo(f"catalog at revision {current_revision(catalog.engine)} (head)")
    finally:
        catalog.close()


@command.command("init")
@click.option(
    "--force",
    is_flag=True,
    help="Start an empty catalog even though the home holds artifacts or live files "
    "(after the old catalog was lost; the files are left where they are), and bind the home "
    "to this catalog (<home>/catalog-id): 'mgr gc' then treats files it does not record as "
    "leftovers.",
)
@pass_app
def init(app: App, force: bool) -> None:
    """Create the catalog (a fresh home does this on first use anyway)."""
    catalog = open_catalog(app.home, migrate=False, allow_lost=force)
    try:
        before = current_revision(catalog.engine)
        ensure_current(catalog.engine, Store.of(app.home))
        if force:  # the user hands the home's files to this catalog (see catalog/identity.py)
            with catalog.session() as s:
                identity.bind(Store.of(app.home), identity.ensure_catalog_id(s))
        rev = current_revision(catalog.engine)
        url = catalog.engine.url.render_as_string(hide_password=True)
    finally:
        catalog.close()
    if before is not None:
        click.echo(f"the catalog {url} already exists (revision {rev}); nothing changed")
    else:
        click.echo(f"created an empty catalog {url} at revision {rev}")


@command.command("current")
@json_option
@pass_app
def current(app: App, as_json: bool) -> None:
    """Print the catalog's schema revision (without migrating it)."""
    catalog = open_catalog(app.home, migrate=False)
    try:
        rev, head = current_revision(catalog.engine), head_revision()
        url = catalog.engine.url.render_as_string(hide_password=True)
    finally:
        catalog.close()
    if as_json:
        echo_json({"revision": rev, "head": head, "is_head": rev == head, "url": url})
    else:
        click.echo(f"{rev or 'none'}" + (" (head)" if rev == head else f" (head is {head})"))
