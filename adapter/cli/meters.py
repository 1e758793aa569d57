"""``metersync meters add|list|check``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_json, print_listing
from adapter.cli.errors import fail
from adapter.pushing import meter_check
from adapter.store.catalog import MeterInfo

app = typer.Typer(
    help="Create, update and list meters, and check them against Stripe.", no_args_is_help=True
)


class AggregationChoice(StrEnum):
    """The choices of ``--aggregation``: ``adapter.domain.aggregation.AGGREGATIONS``."""

    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    LAST = "last"


class RoundingChoice(StrEnum):
    """The choices of ``--rounding``: ``adapter.store.catalog.ROUNDINGS``."""

    DOWN = "down"
    UP = "up"
    NEAREST = "nearest"


Name = Annotated[
    str, typer.Argument(metavar="NAME", help="Local meter name used when recording usage.")
]
EventName = Annotated[
    str | None,
    typer.Option(
        "--event-name",
        help="Stripe meter event name (default on create: the meter name).",
        show_default=False,
    ),
]
AggregationOption = Annotated[
    AggregationChoice | None,
    typer.Option(
        "--aggregation",
        help="How events combine over a period (default on create: sum). "
        "Cannot change once the meter holds usage.",
        show_default=False,
    ),
]
RoundingOption = Annotated[
    RoundingChoice | None,
    typer.Option(
        "--rounding",
        help="How a fraction left at period close is rounded for Stripe (default on create: down).",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the meters as JSON instead of a table.")
]


@app.command("add")
def add(
    ctx: typer.Context,
    name: Name,
    event_name: EventName = None,
    aggregation: AggregationOption = None,
    rounding: RoundingOption = None,
) -> None:
    """Create a meter, or update the fields given of an existing one."""
    with connected(ctx) as ms:
        info = ms.meters.upsert(
            name,
            event_name=event_name,
            aggregation=aggregation.value if aggregation else None,
            rounding=rounding.value if rounding else None,
            actor="cli",
        )
    console.print(
        f"meter {info.name!r} saved (event name {info.event_name!r}, "
        f"aggregation {info.aggregation}, rounding {info.rounding})"
    )


def _table(meters: list[MeterInfo]) -> Table:
    table = Table(title="Meters")
    table.add_column("meter", style="bold")
    table.add_column("event name")
    table.add_column("aggregation")
    table.add_column("rounding")
    table.add_column("stripe meter")
    for info in meters:
        table.add_row(
            info.name,
            info.event_name,
            info.aggregation,
            info.rounding,
            info.stripe_meter_id or "-",
        )
    return table


@app.command("list")
def list_meters(
    ctx: typer.Context,
    as_json: AsJson = False,
) -> None:
    """List every meter, by name."""
    with connected(ctx) as ms:
        found = ms.meters.list()
    print_listing(
        found,
        as_json=as_json,
        table=_table,
        empty="no meters yet; add one with `metersync meters add NAME`",
    )


CheckJson = Annotated[
    bool, typer.Option("--json", help="Print the check as JSON instead of a table.")
]


def _check_rows(result: meter_check.CheckResult) -> list[dict[str, Any]]:
    """One row per local meter: the Stripe meter it reaches and what is wrong, if anything."""
    problems = {problem.meter: problem for problem in result.problems}
    rows = []
    for info in result.meters:
        found = meter_check.stripe_meter_for(info, result.remote)
        problem = problems.get(info.name)
        rows.append(
            {
                "meter": info.name,
                "event_name": info.event_name,
                "aggregation": info.aggregation,
                "stripe_meter_id": found.id if found else None,
                "formula": found.formula if found else None,
                "stripe_status": found.status if found else None,
                "ok": problem is None,
                "problem": problem.problem if problem else None,
                "fix": problem.fix if problem else None,
            }
        )
    return rows


def _check_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Meters against Stripe")
    table.add_column("meter", style="bold")
    table.add_column("event name")
    table.add_column("stripe meter")
    table.add_column("formula (local → Stripe)")
    table.add_column("status")
    table.add_column("fix")
    for r in rows:
        table.add_row(
            r["meter"],
            r["event_name"],
            r["stripe_meter_id"] or "-",
            f"{r['aggregation']} → {r['formula'] or '-'}",
            "OK" if r["ok"] else r["problem"],
            r["fix"] or "-",
        )
    return table


@app.command("check")
def check(ctx: typer.Context, as_json: CheckJson = False) -> None:
    """Check every meter against the meters on the Stripe account.

    Each meter needs an active Stripe meter with its event name, the formula its
    reports need (sum and count: 'sum'; max and last: 'last') and the payload keys
    stripe_customer_id and value. Exits 1 when any meter cannot work, 2 without a
    Stripe API key.
    """
    with connected(ctx) as ms:
        result = meter_check.check(ms)
    rows = _check_rows(result)
    if as_json:
        print_json({"ok": result.passed, "meters": rows})
    elif not rows:
        console.print("no meters yet; add one with `metersync meters add NAME`")
    else:
        console.print(_check_table(rows))
    if not result.passed:
        count = len(result.problems)
        raise fail(
            f"{count} of {len(rows)} meter{'s' if len(rows) != 1 else ''} cannot report to "
            "Stripe: their events would be refused or miscounted; apply the fixes shown"
        )
    if not as_json and rows:
        console.print(f"all {len(rows)} meter{'s' if len(rows) != 1 else ''} can report to Stripe")
