"""``metersync usage ACCOUNT``: per-meter usage over a period, as a table or JSON."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_json
from adapter.domain.money import format_amount
from adapter.reading.usage import Usage

#: How the title explains where the period came from.
PERIOD_SOURCES = {
    "billing_period": "the account's current billing period",
    "calendar_month": "no billing period known yet",
    "requested": "the dates given",
}


def show_decimal(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: ``Decimal("10.000")`` → ``10``."""
    text = format(value.normalize(), "f")
    return "0" if text in {"-0", ""} else text


def period_bound(value: str | None) -> str | date | None:
    """A plain ISO date as a :class:`date` (midnight UTC), anything else unchanged for
    ``get_usage`` to validate. The adapter reads a date-only string as a naive datetime
    and refuses it, although the public contract shows ``period_start="2026-10-10"``."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip()) if len(value.strip()) == 10 else value
    except ValueError:
        return value


def show_time(at: datetime) -> str:
    """A UTC period bound: the date alone at midnight, else the ISO datetime."""
    return at.date().isoformat() if at.time() == time(0) else at.isoformat()


def usage_title(u: Usage) -> str:
    """The account, the period (end exclusive) and where the period came from."""
    why = PERIOD_SOURCES.get(u.period_source, "")
    return (
        f"Usage of {u.account}, {show_time(u.period_start)} → {show_time(u.period_end)} UTC\n"
        f"period: {u.period_source}" + (f" ({why})" if why else "")
    )


def usage_table(u: Usage) -> Table:
    """One row per meter: quantity, sent, pending, events, aggregation and the cost so far
    (by the account's subscription price; ``-`` when none bills the meter)."""
    table = Table(title=usage_title(u))
    table.add_column("meter", style="bold")
    for numeric in ("quantity", "sent", "pending", "events"):
        table.add_column(numeric, justify="right")
    table.add_column("aggregation")
    table.add_column("cost so far", justify="right")
    for name, m in u.meters.items():
        table.add_row(
            name,
            show_decimal(m.quantity),
            show_decimal(m.sent),
            show_decimal(m.pending),
            str(m.events),
            m.aggregation,
            "not rated" if m.rating_error else format_amount(m.amount, m.currency),
        )
    return table


Account = Annotated[str, typer.Argument(metavar="ACCOUNT", help="Local account id.")]
From = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="DATE",
        help="Start of the period, inclusive: an ISO date (midnight UTC) or an ISO "
        "datetime with its offset (2026-10-10T08:00:00Z). Give --to as well. "
        "Default: the account's current billing period.",
        show_default=False,
    ),
]
To = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="DATE",
        help="End of the period, exclusive: an ISO date or datetime, like --from.",
        show_default=False,
    ),
]
MeterOption = Annotated[
    str | None,
    typer.Option("--meter", help="Only this meter (default: every meter).", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the usage as JSON instead of a table.")]


def usage(  # noqa: PLR0913  a Typer command: one parameter per option
    ctx: typer.Context,
    account: Account,
    period_start: From = None,
    period_end: To = None,
    meter: MeterOption = None,
    as_json: AsJson = False,
) -> None:
    """Show an account's usage per meter: quantity, what Stripe has and what is pending."""
    with connected(ctx) as ms:
        if meter is not None:
            # Checked first because get_usage, on SQLite, waits 30 s for its own lock
            # before reporting an unknown meter (it lists the meters inside a transaction).
            ms.accounts.get(account)
            ms.meters.get(meter)
        u = ms.get_usage(account, period_bound(period_start), period_bound(period_end), meter=meter)
    if as_json:
        print_json(u.to_dict())
    else:
        console.print(usage_table(u))
        for name, m in u.meters.items():
            if m.rating_error:
                console.print(f"{name}: {m.rating_error}")
