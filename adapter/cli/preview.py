"""``metersync preview ACCOUNT``: the current period's invoice, rated locally, and with
``--compare`` beside Stripe's own preview, line by line."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

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
        _emit(found.to_dict(), comparison_table(found), comparison_notes(found), as_json=as_json)
        if not found.agree:
            raise typer.Exit(1)
        return
    with connected(ctx) as ms:
        shown = ms.preview_invoice(account, subscription=subscription)
    notes = [f"note ({line.description}): {line.note}" for line in shown.lines if line.note]
    notes += [f"note: {note}" for note in shown.notes]
    _emit(shown.to_dict(), preview_table(shown), notes, as_json=as_json)


def _emit(data: dict[str, Any], table: Table, notes: list[str], *, as_json: bool) -> None:
    """JSON alone, or the table and the notes under it."""
    if as_json:
        print_json(data)
        return
    console.print(table)
    for note in notes:
        console.print(note)


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


def comparison_notes(found: Comparison) -> list[str]:
    """Each line's note and quantity difference, then the verdict."""
    notes: list[str] = []
    for line in found.lines:
        if line.note:
            notes.append(f"note ({line.description}): {line.note}")
        if line.quantity_differs:
            notes.append(
                f"{line.description}: Stripe holds {line.stripe_quantity}, metersync recorded "
                f"{line.quantity} (usage still pending, or drift: `metersync reconcile`)"
            )
    verdict = "agree to the cent" if found.agree else "DIFFER"
    return [*notes, f"metersync's rating and Stripe's invoice {verdict}"]


def _num(line: PreviewLine) -> str:
    return show_decimal(line.quantity) if line.quantity is not None else "-"


def _exact(amount: Decimal, p: InvoicePreview) -> str:
    """A band's amount; exact minor units when it carries a fraction (the line rounds once)."""
    if amount == amount.to_integral_value():
        return format_amount(int(amount), p.currency, code=False)
    return f"{show_decimal(amount)} minor units"
