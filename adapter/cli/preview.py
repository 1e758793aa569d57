"""``metersync preview ACCOUNT``: the current period's invoice, rated locally, and with
``--compare`` beside Stripe's own preview, line by line."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_json
from adapter.cli.usage import Account, AsJson, show_decimal, show_time
from adapter.domain.money import format_amount
from adapter.reading.compare import Comparison
from adapter.reading.preview import InvoicePreview, PreviewLine

Compare = Annotated[
    bool,
    typer.Option(
        "--compare",
        help="Also fetch Stripe's preview of the same invoice (needs a Stripe key) and show, "
        "per line, whether rating Stripe's quantity gives Stripe's amount to the cent. "
        "Exits 1 when a line differs.",
    ),
]
SubscriptionOption = Annotated[
    str | None,
    typer.Option(
        "--subscription",
        metavar="SUB_ID",
        help="Preview this subscription (default: the account's newest one Stripe bills).",
        show_default=False,
    ),
]


def preview(
    ctx: typer.Context,
    account: Account,
    compare: Compare = False,
    subscription: SubscriptionOption = None,
    as_json: AsJson = False,
) -> None:
    """Preview an account's invoice for the current period: base fees, metered lines with
    included allowance, overage and tier breakdown, subtotal and total."""
    if compare:
        with connected(ctx) as ms:
            found = ms.compare_invoice(account, subscription=subscription)
        _print_comparison(found, as_json=as_json)
        if not found.agree:
            raise typer.Exit(1)
        return
    with connected(ctx) as ms:
        shown = ms.preview_invoice(account, subscription=subscription)
    if as_json:
        print_json(shown.to_dict())
        return
    console.print(preview_table(shown))
    for line in shown.lines:
        if line.note:
            console.print(f"note ({line.description}): {line.note}")
    for note in shown.notes:
        console.print(f"note: {note}")


def preview_table(p: InvoicePreview) -> Table:
    """One row per line and per tier band, then subtotal and total."""

    def money(amount: int | None) -> str:
        return format_amount(amount, p.currency, code=False)

    table = Table(
        title=f"Invoice preview of {p.account} ({p.customer}, {p.subscription})\n"
        f"period {show_time(p.period_start)} → {show_time(p.period_end)} UTC, "
        f"amounts in {(p.currency or '?').upper()}",
        caption=None if p.complete else "incomplete: some lines could not be rated (see notes)",
    )
    table.add_column("line", style="bold", no_wrap=True)
    for name in ("quantity", "included", "overage", "overage amt", "amount"):
        table.add_column(name, justify="right", no_wrap=True)
    for line in p.lines:
        table.add_row(
            line.description,
            _num(line),
            show_decimal(line.included) if line.included is not None else "",
            show_decimal(line.overage) if line.overage is not None else "",
            money(line.overage_amount) if line.overage_amount is not None else "",
            money(line.amount),
        )
        for band in line.rating.bands if line.rating and line.kind == "metered" else ():
            top = "∞" if band.up_to is None else show_decimal(band.up_to)
            label = f"  tier {band.tier}: {show_decimal(band.floor + 1)}-{top}"
            table.add_row(label, show_decimal(band.quantity), "", "", "", _exact(band.amount, p))
    table.add_section()
    table.add_row("subtotal", "", "", "", "", money(p.subtotal))
    table.add_row("total", "", "", "", "", money(p.total), style="bold")
    return table


def comparison_table(found: Comparison) -> Table:
    """Per line: our quantity and amount, Stripe's, and our rating of Stripe's quantity."""
    currency = found.preview.currency
    table = Table(
        title=f"metersync vs Stripe: {found.preview.account} ({found.stripe_invoice}), "
        f"amounts in {(currency or '?').upper()}",
        caption="qty, amount: metersync's; rated: metersync's rating of Stripe's quantity; "
        "agree: rated = Stripe's amount",
    )
    table.add_column("line", style="bold", no_wrap=True)
    for name in ("qty", "amount", "Stripe qty", "Stripe amt", "rated"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("agree", no_wrap=True)
    for line in found.lines:
        table.add_row(
            line.description,
            show_decimal(line.quantity) if line.quantity is not None else "-",
            format_amount(line.amount, currency, code=False),
            show_decimal(line.stripe_quantity) if line.stripe_quantity is not None else "-",
            format_amount(line.stripe_amount, currency, code=False),
            format_amount(line.rated_stripe_quantity, currency, code=False),
            "yes" if line.agree else "NO",
        )
    return table


def _print_comparison(found: Comparison, *, as_json: bool) -> None:
    if as_json:
        print_json(found.to_dict())
        return
    console.print(comparison_table(found))
    for line in found.lines:
        if line.note:
            console.print(f"note ({line.description}): {line.note}")
        if line.quantity_differs:
            console.print(
                f"{line.description}: Stripe holds {line.stripe_quantity}, metersync recorded "
                f"{line.quantity} (usage still pending, or drift: `metersync reconcile`)"
            )
    verdict = "agree to the cent" if found.agree else "DIFFER"
    console.print(f"metersync's rating and Stripe's invoice {verdict}")


def _num(line: PreviewLine) -> str:
    return show_decimal(line.quantity) if line.quantity is not None else "-"


def _exact(amount: Decimal, p: InvoicePreview) -> str:
    """A band's amount; exact minor units when it carries a fraction (the line rounds once)."""
    if amount == amount.to_integral_value():
        return format_amount(int(amount), p.currency, code=False)
    return f"{show_decimal(amount)} minor units"
