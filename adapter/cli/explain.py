"""``metersync explain INVOICE_ID``: each metered line of a mirrored invoice, the reports
behind it, and whether Stripe's quantity agrees with what metersync sent."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from adapter.cli.context import connected, console, print_json
from adapter.cli.reports import AsJson, print_table, show_timestamp, status_text, utc
from adapter.cli.usage import show_decimal
from adapter.domain.money import format_amount
from adapter.reading.explain import Explanation, LineExplanation, LinkedReport, explain_invoice

InvoiceId = Annotated[
    str,
    typer.Argument(metavar="INVOICE_ID", help="The Stripe invoice id (in_…), as mirrored."),
]


def explain(ctx: typer.Context, invoice_id: InvoiceId, as_json: AsJson = False) -> None:
    """Trace an invoice's metered lines back to the reports and events that produced them.

    For each line: its Stripe meter and local meters, service period and quantity, the
    reports linked to it with what each sent, and whether the quantity agrees with the
    total sent (the sum for sum meters, the last value for max and last meters). Then
    every priced line rated by metersync from the mirrored price beside Stripe's amount,
    with any difference flagged.
    """
    with connected(ctx) as ms:
        found = explain_invoice(ms.engine, invoice_id)
    if as_json:
        print_json(found.to_dict())
        return
    console.print(header(found))
    if not found.lines:
        console.print("no metered lines: this invoice bills no Stripe meter")
    for line in found.lines:
        console.print()
        if line.reports:
            print_table(line_table(line))
        else:
            console.print(Text(line_title(line)))
            console.print("no local reports are linked to this line")
        console.print(Text(verdict(line)))
    if found.ratings:
        console.print()
        print_table(rating_table(found))
        for rated in found.ratings:
            if rated.note:
                console.print(Text(f"{rated.line_id}: {rated.note}"))


def rating_table(found: Explanation) -> Table:
    """Each priced line: Stripe's quantity and amount beside metersync's rating of it."""
    currency = next((r.currency for r in found.ratings if r.currency), None)
    table = Table(title=f"Rating: metersync vs Stripe, amounts in {(currency or '?').upper()}")
    table.add_column("line", style="bold", overflow="fold")
    table.add_column("price", overflow="fold")
    for numeric in ("quantity", "Stripe", "rated"):
        table.add_column(numeric, justify="right", no_wrap=True)
    table.add_column("agree", no_wrap=True)
    for r in found.ratings:
        table.add_row(
            r.line_id,
            r.price_id,
            "-" if r.quantity is None else show_decimal(r.quantity),
            format_amount(r.stripe_amount, r.currency, code=False),
            format_amount(r.rated_amount, r.currency, code=False),
            {True: "yes", False: "NO", None: "-"}[r.agree],
        )
    return table


def header(found: Explanation) -> str:
    """Who the invoice bills, for which period, and whether metersync flushed for it."""
    reason = f", {found.billing_reason}" if found.billing_reason else ""
    account = found.account or "no local account"
    lines = [
        f"Invoice {found.invoice_id} ({found.status}{reason}) of {found.customer_id} → {account}",
        f"period: {show_span(found.period_start, found.period_end)}",
        f"final flush: {show_timestamp(found.flushed_at)}",
    ]
    if found.other_lines:
        lines.append(f"{found.other_lines} line(s) bill no meter and are not shown")
    return "\n".join(lines)


def show_span(start: datetime | None, end: datetime | None) -> str:
    """``2026-10-10T00:00:00Z → 2026-11-10T00:00:00Z``; ``-`` for an unknown end."""
    return f"{show_timestamp(start)} → {show_timestamp(end)}"


def show_window(start: datetime, end: datetime) -> str:
    """``2026-03-04 10:00 → 11:00``, with the end's date when it differs (as ``reports``)."""
    start, end = utc(start), utc(end)
    end_format = "%H:%M" if end.date() == start.date() else "%Y-%m-%d %H:%M"
    return f"{start:%Y-%m-%d %H:%M} → {end.strftime(end_format)}"


def line_title(line: LineExplanation) -> str:
    """The line, its Stripe meter, the local meters and its service period."""
    meters = ", ".join(line.meters) or "no local meter"
    return (
        f"Line {line.line_id}: {line.stripe_meter_id} ({line.formula}) → {meters}, "
        f"{show_span(line.period_start, line.period_end)}"
    )


def line_table(line: LineExplanation) -> Table:
    """One row per linked report, in window order."""
    table = Table(title=line_title(line))
    table.add_column("report", justify="right", style="bold", no_wrap=True)
    table.add_column("meter", overflow="fold")
    table.add_column("window (UTC)")
    table.add_column("status", no_wrap=True)
    for numeric in ("events", "value", "sent value"):
        table.add_column(numeric, justify="right", overflow="fold")
    table.add_column("sent at (UTC)", overflow="fold")
    for report in line.reports:
        table.add_row(*report_cells(report))
    return table


def report_cells(report: LinkedReport) -> list[str | Text]:
    """The cells of one report's row."""
    return [
        str(report.id),
        Text(report.meter),
        show_window(report.window_start, report.window_end),
        status_text(report.status),
        str(report.events),
        show_decimal(report.value),
        "-" if report.sent_value is None else show_decimal(report.sent_value),
        show_timestamp(report.sent_at),
    ]


def verdict(line: LineExplanation) -> str:
    """Stripe's quantity beside the total sent, and whether they agree (and why not)."""
    quantity = "-" if line.quantity is None else show_decimal(line.quantity)
    what = "last value sent" if line.formula == "last" else "sent"
    agree = "agree: yes" if line.agree else f"agree: no — {line.reason}"
    return (
        f"Stripe quantity {quantity} · metersync {what} {show_decimal(line.sent)} · "
        f"{line.events} event{'s' if line.events != 1 else ''} · {agree}"
    )
