"""``metersync prices list|rate|allowance``: mirrored Stripe prices, rating one, and the
allowance a plan includes."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_json
from adapter.cli.usage import AsJson, show_decimal
from adapter.domain.money import format_amount
from adapter.domain.rating import rating
from adapter.errors import InvalidUsage
from adapter.store.prices import mirrored_prices

app = typer.Typer(
    help="Mirrored Stripe prices: list them, rate a quantity, set a plan's allowance.",
    no_args_is_help=True,
)

PriceId = Annotated[str, typer.Argument(metavar="PRICE_ID", help="A Stripe price id (price_…).")]
All = Annotated[bool, typer.Option("--all", help="Include inactive prices.")]


def _model(price: dict[str, Any]) -> str:
    """How the price rates: per_unit (package N), graduated or volume (N tiers)."""
    if price.get("billing_scheme") == "tiered":
        tiers = price.get("tiers")
        count = f"{len(tiers)} tiers" if tiers else "tiers not mirrored: run `metersync sync`"
        return f"{price.get('tiers_mode')} ({count})"
    transform = price.get("transform_quantity")
    if transform:
        return f"per_unit, package of {transform.get('divide_by')} ({transform.get('round')})"
    return "per_unit"


@app.command("list")
def list_prices(ctx: typer.Context, include_inactive: All = False, as_json: AsJson = False) -> None:
    """List mirrored prices: how each rates, its meter and the allowance set in metersync."""
    with connected(ctx) as ms:
        with ms.engine.connect() as conn:
            prices = mirrored_prices(conn, include_inactive=include_inactive)
        allowances = ms.allowances.all()
    if as_json:
        print_json([p | {"allowance": _text(allowances.get(p["id"]))} for p in prices])
        return
    if not prices:
        console.print("no prices mirrored yet: run `metersync sync` or wait for price.* webhooks")
        return
    table = Table(title="Mirrored prices")
    for name in ("price", "nickname", "currency", "usage", "meter", "model", "allowance"):
        table.add_column(name, no_wrap=name in {"price", "model"})
    for p in prices:
        usage_type = (p.get("recurring") or {}).get("usage_type") or "one_time"
        meter = (p.get("recurring") or {}).get("meter") or ""
        allowance = allowances.get(p["id"])
        table.add_row(
            p["id"], p.get("nickname") or "", (p.get("currency") or "").upper(), usage_type,
            meter, _model(p), show_decimal(allowance) if allowance is not None else "",
        )  # fmt: skip
    console.print(table)


@app.command("rate")
def rate_price(
    ctx: typer.Context,
    price_id: PriceId,
    quantity: Annotated[str, typer.Argument(metavar="QUANTITY", help="Units to rate.")],
    as_json: AsJson = False,
) -> None:
    """Rate QUANTITY units of a mirrored price as Stripe's invoice line would, with tiers."""
    with connected(ctx) as ms, ms.engine.connect() as conn:
        found = {p["id"]: p for p in mirrored_prices(conn, include_inactive=True)}
    if price_id not in found:
        raise InvalidUsage(f"unknown price {price_id!r}; list them with `metersync prices list`")
    result = rating(found[price_id], quantity)
    if as_json:
        print_json(result.to_dict())
        return
    for band in result.bands:
        top = "inf" if band.up_to is None else show_decimal(band.up_to)
        console.print(
            f"tier {band.tier} ({show_decimal(band.floor)}-{top}]: {show_decimal(band.quantity)}"
            f" x {show_decimal(band.unit_amount)} + {show_decimal(band.flat_amount)} flat"
            f" = {show_decimal(band.amount)}"
        )
    console.print(
        f"{show_decimal(result.billed_quantity)} units of {price_id}: "
        f"{format_amount(result.amount, result.currency)}"
    )


@app.command("allowance")
def allowance(
    ctx: typer.Context,
    price_id: PriceId,
    quantity: Annotated[
        str | None,
        typer.Argument(metavar="[QUANTITY]", help="Units the plan includes; omit to show."),
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Drop the allowance.")] = False,
) -> None:
    """Show, set or remove the units of PRICE_ID a plan includes before overage.

    The preview counts usage above it as overage. It does not change what Stripe bills:
    give the price a zero-priced first tier for that (the preview says when they differ).
    """
    with connected(ctx) as ms:
        if remove:
            gone = ms.allowances.remove(price_id, actor="cli")
            console.print(f"allowance of {price_id} removed" if gone else f"{price_id} had none")
        elif quantity is None:
            found = ms.allowances.all().get(price_id)
            console.print(f"{price_id}: {_text(found) or 'no allowance set'}")
        else:
            value = ms.allowances.set(price_id, quantity, actor="cli")
            console.print(f"{price_id}: {show_decimal(value)} units included")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
