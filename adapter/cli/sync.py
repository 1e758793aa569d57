"""``metersync sync``: backfill the mirror from Stripe, or replay the events it missed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapter.cli.context import connected, console, err_console, print_json, state
from adapter.cli.errors import fail
from adapter.cli.reports import print_table
from adapter.mirror import sync as syncing

#: Said when no key is configured. Never the key itself: there is none to show.
NO_KEY = (
    "sync needs METERSYNC_STRIPE_API_KEY (a secret key, or a restricted key that can read "
    "customers, subscriptions, invoices, prices, meters and events); set it and run again"
)
#: Statuses the summary table always shows; any other status gets a column when it occurs.
SHOWN = ("processed", "skipped")


class Resource(StrEnum):
    """What ``--only`` accepts (pinned to ``adapter.mirror.sync.RESOURCES``)."""

    METERS = "meters"
    PRICES = "prices"
    CUSTOMERS = "customers"
    SUBSCRIPTIONS = "subscriptions"
    INVOICES = "invoices"


Events = Annotated[
    bool,
    typer.Option(
        "--events",
        help="Replay Stripe's events instead (the last 30 days: older ones cannot be "
        "recovered) back to where the last run began; new ones are applied oldest first.",
    ),
]
Restart = Annotated[
    bool,
    typer.Option(
        "--restart",
        help="Start every resource from the newest object, ignoring where an interrupted "
        "sync stopped (with --events: read back to Stripe's 30-day horizon).",
    ),
]
Only = Annotated[
    list[Resource] | None,
    typer.Option(
        "--only",
        metavar="RESOURCE",
        help="Sync only this resource (repeatable).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def sync(
    ctx: typer.Context,
    events: Events = False,
    restart: Restart = False,
    only: Only = None,
    as_json: AsJson = False,
) -> None:
    """Read customers, subscriptions, invoices, prices and meters from Stripe into the
    mirror. An interrupted sync resumes after the last finished page; exits 1 on a Stripe
    error, with Stripe's message and request id."""
    if events and only:
        raise fail("--only applies to object sync, not to --events", code=2)
    # Before connecting: without a key, sync must not create or migrate a database either.
    if state(ctx).settings().stripe_api_key is None:
        raise fail(NO_KEY)
    with connected(ctx) as ms:
        gateway = ms.gateway()
        if gateway is None:  # unreachable after the check above; narrows the type
            raise fail(NO_KEY)
        with _bars(enabled=not as_json and err_console.is_terminal) as progress:
            try:
                if events:
                    summary = syncing.sync_events(ms, gateway, progress=progress, restart=restart)
                else:
                    chosen = [r.value for r in only] if only else syncing.RESOURCES
                    summary = syncing.sync(
                        ms, gateway, resources=chosen, progress=progress, restart=restart
                    )
            except syncing.SyncStopped as stopped:
                _show(stopped.summary, as_json=as_json)
                raise fail(str(stopped)) from None
    _show(summary, as_json=as_json)


@contextmanager
def _bars(*, enabled: bool) -> Iterator[syncing.Progress | None]:
    """One transient bar per resource on stderr, or no progress callback at all."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description:<13}"),
        BarColumn(),
        TextColumn("{task.completed} read"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=err_console, transient=True) as bars:
        tasks: dict[str, TaskID] = {}

        def update(resource: str, seen: int, finished: bool) -> None:
            if resource not in tasks:  # Stripe gives no totals: the bar pulses until done
                tasks[resource] = bars.add_task(resource, total=None)
            bars.update(tasks[resource], completed=seen, total=seen if finished else None)

        yield update


def _show(summary: syncing.SyncSummary, *, as_json: bool) -> None:
    """The summary as JSON or as a table and a line about pushed reports."""
    if as_json:
        print_json(summary.to_dict())
        return
    if summary.resources:
        print_table(summary_table(summary))
    if summary.pushed:
        pushed = ", ".join(f"{n} {status}" for status, n in summary.pushed.items())
        console.print(f"reports closed by the mirror and pushed: {pushed}")
    elif summary.to_push:
        console.print(f"{len(summary.to_push)} reports closed; the worker pushes them")


def summary_table(summary: syncing.SyncSummary) -> Table:
    """One row per resource: read, new (events), each mirror outcome, finished or not."""
    extra = sorted({status for r in summary.resources for status in r.statuses} - set(SHOWN))
    events = any(r.resource == syncing.EVENTS for r in summary.resources)
    table = Table(title="Stripe sync")
    table.add_column("resource", style="bold")
    table.add_column("read", justify="right")
    if events:
        table.add_column("new", justify="right")
    for status in (*SHOWN, *extra):
        table.add_column(status, justify="right")
    table.add_column("finished")
    for r in summary.resources:
        cells = [r.resource, str(r.listed)]
        if events:
            cells.append(str(r.new))
        cells.extend(str(r.statuses.get(status, 0)) for status in (*SHOWN, *extra))
        resumed = f" (resumed after {r.resumed_after})" if r.resumed_after else ""
        cells.append(("yes" if r.complete else "no") + resumed)
        table.add_row(*cells)
    return table
