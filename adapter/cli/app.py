"""The ``metersync`` command: global options and the subcommands wired together."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from adapter.cli import (
    accounts,
    alerts,
    credits,
    db,
    demo,
    explain,
    meters,
    preview,
    prices,
    reconcile,
    reports,
    schedule,
    serve,
    service,
    sync,
    usage,
    webhooks,
)
from adapter.cli.context import CliState
from adapter.cli.errors import MetersyncGroup
from config.logging import configure_logging

app = typer.Typer(
    name="metersync",
    cls=MetersyncGroup,
    help=(
        "Record usage locally and report it to Stripe's usage-based billing.\n\n"
        "Settings come from METERSYNC_* environment variables (and .env); with none, "
        "metersync runs on the embedded default, the SQLite file ./metersync.db."
    ),
    no_args_is_help=True,
    add_completion=False,
    # Locals may hold settings with secrets; an unexpected traceback must not show them.
    pretty_exceptions_show_locals=False,
)
app.add_typer(accounts.app, name="accounts")
app.add_typer(meters.app, name="meters")
app.add_typer(db.app, name="db")
app.add_typer(schedule.app, name="schedule")
app.command("usage")(usage.usage)
app.command("preview")(preview.preview)
app.add_typer(prices.app, name="prices")
app.add_typer(credits.app, name="credits")
app.add_typer(alerts.app, name="alerts")
app.add_typer(reports.report_app, name="report")
app.command("reports")(reports.list_reports)
app.command("retry")(reports.retry)
app.command("demo")(demo.demo)
app.command("worker")(service.worker)
app.command("scheduler")(service.scheduler)
app.command("run")(service.run)
app.command("serve")(serve.serve)
app.add_typer(webhooks.app, name="webhooks")
app.command("explain")(explain.explain)
app.command("sync")(sync.sync)
app.command("reconcile")(reconcile.reconcile)


def _version() -> str:
    try:
        return version("metersync")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"metersync {_version()}")
        raise typer.Exit()


DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL of the database (sqlite:///… or postgresql+psycopg://…); "
        "overrides METERSYNC_DATABASE_URL.",
        show_default=False,
    ),
]
Version = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the metersync version and exit.",
    ),
]


@app.callback()
def root(
    ctx: typer.Context, database_url: DatabaseUrl = None, show_version: Version = False
) -> None:
    """Record usage locally and report it to Stripe's usage-based billing."""
    _quiet_logging()  # here, not only in main(): in-process runs must keep stdout clean
    ctx.obj = CliState(database_url=database_url)


def _log_level() -> str:
    """METERSYNC_LOG_LEVEL if it names a level, else INFO (a typo must not stop the CLI)."""
    level = os.environ.get("METERSYNC_LOG_LEVEL", "INFO").upper()
    return level if isinstance(logging.getLevelName(level), int) else "INFO"


def _quiet_logging() -> None:
    """Structured logs on stderr, never stdout (``--json`` output must stay parseable)."""
    configure_logging(_log_level())
    # Alembic reports every connection at INFO; `db upgrade` prints what changed itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # stripe-python logs every request at INFO; our own lines say what was sent.
    logging.getLogger("stripe").setLevel(logging.WARNING)


def main() -> None:
    """Entry point of the ``metersync`` console script."""
    _quiet_logging()
    app(prog_name="metersync")
