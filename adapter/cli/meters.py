"""``metersync meters add|list``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from adapter.catalog import MeterInfo
from adapter.cli.context import connected, console, print_listing

app = typer.Typer(help="Create, update and list meters.", no_args_is_help=True)


class AggregationChoice(StrEnum):
    """The choices of ``--aggregation``: ``adapter.aggregation.AGGREGATIONS``."""

    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    LAST = "last"


class RoundingChoice(StrEnum):
    """The choices of ``--rounding``: ``adapter.catalog.ROUNDINGS``."""

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
