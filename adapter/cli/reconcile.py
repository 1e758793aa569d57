"""``metersync reconcile``: compare what metersync sent with Stripe's meter event
summaries, per (customer, meter, billing period), and repair drift with ``--repair``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from adapter.cli.context import connected, console, err_console, print_json, state
from adapter.cli.errors import fail
from adapter.cli.reports import print_table
from adapter.reconciling import run as reconciling

#: Said when no key is configured (never the key itself: there is none to show).
NO_KEY = (
    "reconcile needs METERSYNC_STRIPE_API_KEY (a secret key, or a restricted key that can "
    "read meters and meter event summaries, and write meter events and adjustments for "
    "--repair); set it and run again"
)

Period = Annotated[
    str,
    typer.Option(
        "--period",
        metavar="current|previous|START..END",
        help="Billing period to compare: each account's current or previous one (from the "
        "mirror; the calendar month when unknown), or ISO dates START..END for every account.",
    ),
]
Account = Annotated[
    str | None,
    typer.Option("--account", metavar="ACCOUNT", help="Only this account.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Repair = Annotated[
    bool,
    typer.Option(
        "--repair",
        help="Fix drift: send a correction for a missing amount or a wrong last value, "
        "cancel uncounted events for an excess (within Stripe's 24 h). Without it nothing "
        "is written to Stripe.",
    ),
]
Restart = Annotated[
    bool,
    typer.Option("--restart", help="Start over instead of resuming an interrupted run."),
]


def reconcile(  # noqa: PLR0913  a Typer command: one parameter per option
    ctx: typer.Context,
    period: Period = "current",
    account: Account = None,
    as_json: AsJson = False,
    repair: Repair = False,
    restart: Restart = False,
) -> None:
    """Compare every (customer, meter, period) with Stripe's meter event summaries. An
    interrupted run resumes after its last finished pair; exits 1 when Stripe keeps
    failing, 2 for a bad --period or unknown --account."""
    spec = reconciling.check_period(period)  # bad input exits 2 before anything else
    if state(ctx).settings().stripe_api_key is None:
        raise fail(NO_KEY)
    with connected(ctx) as ms:
        gateway = ms.gateway()
        if gateway is None:  # unreachable after the check above; narrows the type
            raise fail(NO_KEY)
        with _bar(enabled=not as_json and err_console.is_terminal) as progress:
            try:
                summary = reconciling.reconcile(
                    ms,
                    gateway,
                    period=spec,
                    account=account,
                    repair=repair,
                    restart=restart,
                    progress=progress,
                )
            except reconciling.ReconcileStopped as stopped:
                _show(stopped.summary, as_json=as_json)
                raise fail(str(stopped)) from None
    _show(summary, as_json=as_json)


@contextmanager
def _bar(*, enabled: bool) -> Iterator[reconciling.Progress | None]:
    """A transient progress bar on stderr, or no progress callback."""
    if not enabled:
        yield None
        return
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bars:
        task = bars.add_task("pairs", total=None)

        def update(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total)

        yield update


def _show(summary: reconciling.ReconcileSummary, *, as_json: bool) -> None:
    """The run as JSON, or as a table and a line of counts."""
    if as_json:
        print_json(summary.to_dict())
        return
    if summary.pairs:
        print_table(pairs_table(summary))
    counts = ", ".join(f"{n} {verdict}" for verdict, n in sorted(summary.counts.items()))
    resumed = " (resumed)" if summary.resumed else ""
    console.print(
        f"reconcile run {summary.run_id}{resumed}: {len(summary.pairs)} pairs"
        + (f": {counts}" if counts else "")
        + f"; {summary.drifting} drifting; {summary.calls} Stripe calls"
    )


def pairs_table(summary: reconciling.ReconcileSummary) -> Table:
    """One row per pair: who, what, expected, Stripe's value, the verdict and the repair."""
    table = Table(title=f"Reconcile {summary.period}")
    for name in ("account", "customer", "meter", "period"):
        table.add_column(name, style="bold" if name == "account" else None)
    for name in ("expected", "stripe", "difference"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    table.add_column("repair / note")
    for p in summary.pairs:
        period = f"{p.period_start:%Y-%m-%d %H:%M}..{p.period_end:%Y-%m-%d %H:%M}"
        table.add_row(
            p.account,
            p.customer or "-",
            p.meter,
            period,
            str(p.expected),
            "-" if p.stripe is None else f"{p.stripe:g}",
            "-" if p.difference is None else f"{p.difference:g}",
            p.verdict,
            p.repair or p.note,
        )
    return table
