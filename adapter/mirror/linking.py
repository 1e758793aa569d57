"""Invoices and the reports behind them: the final flush of a draft cycle invoice, and the
links from each metered invoice line to the reports that produced its quantity.

Which local meters a line bills is decided by :mod:`adapter.reading.explain` (shared with
``metersync explain``). A report stands behind a line when it belongs to the invoice's
account and one of those meters, is no longer open, and its window lies inside the
line's service period.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from adapter.domain.windows import Period
from adapter.reading.explain import account_of_customer, metered_lines
from adapter.store.mirror_models import Invoice, InvoiceReport
from adapter.store.models import UsageReport, table

__all__ = [
    "account_of_customer",
    "flush",
    "link_invoice",
    "load_invoice",
    "mark_flushed",
    "usage_periods",
]

_INVOICES, _LINKS, _REPORTS = table(Invoice), table(InvoiceReport), table(UsageReport)


def load_invoice(conn: sa.Connection, invoice_id: str) -> sa.Row[Any] | None:
    """The mirrored invoice row, or ``None``."""
    return conn.execute(sa.select(_INVOICES).where(_INVOICES.c.id == invoice_id)).first()


def mark_flushed(conn: sa.Connection, invoice_id: str, *, now: datetime) -> None:
    """Record that the invoice's final flush happened at ``now``."""
    conn.execute(_INVOICES.update().where(_INVOICES.c.id == invoice_id).values(flushed_at=now))


def usage_periods(conn: sa.Connection, invoice: sa.Row[Any]) -> list[Period]:
    """The service periods the invoice bills usage for: its metered lines' periods, or,
    when no line names a meter, the invoice's own period."""
    periods = {
        (line.period_start, line.period_end)
        for line in metered_lines(conn, invoice.id)
        if line.period_start is not None and line.period_end is not None
    }
    if not periods and invoice.period_start is not None and invoice.period_end is not None:
        periods.add((invoice.period_start, invoice.period_end))
    return sorted(periods)


def _inside(periods: Sequence[Period]) -> sa.ColumnElement[bool]:
    """Report windows lying inside one of ``periods``."""
    return sa.or_(
        *(
            sa.and_(_REPORTS.c.window_start >= start, _REPORTS.c.window_end <= end)
            for start, end in periods
        )
    )


def flush(
    conn: sa.Connection, account_id: int, periods: Sequence[Period], *, now: datetime
) -> list[int]:
    """Close the account's open reports whose windows lie inside ``periods``; return every
    closed, unsent report of those periods (the ones to push now), in window order."""
    if not periods:
        return []
    account = _REPORTS.c.account_id == account_id
    opened = list(
        conn.execute(
            sa.select(_REPORTS.c.id)
            .where(account, _REPORTS.c.status == "open", _inside(periods))
            .order_by(_REPORTS.c.meter_id, _REPORTS.c.window_start, _REPORTS.c.id)
            .with_for_update()  # in the recorder's key order: no deadlock with a batch
        ).scalars()
    )
    if opened:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id.in_(opened), _REPORTS.c.status == "open")
            .values(status="closed", closed_at=now)
        )
    return list(
        conn.execute(
            sa.select(_REPORTS.c.id)
            .where(account, _REPORTS.c.status == "closed", _inside(periods))
            .order_by(_REPORTS.c.window_start, _REPORTS.c.meter_id, _REPORTS.c.id)
        ).scalars()
    )


def link_invoice(conn: sa.Connection, invoice_id: str) -> int:
    """Link each metered line of the invoice to the reports behind it, replacing the
    invoice's earlier links; return how many links it has now."""
    conn.execute(_LINKS.delete().where(_LINKS.c.invoice_id == invoice_id))
    invoice = load_invoice(conn, invoice_id)
    if invoice is None:
        return 0
    account_id = account_of_customer(conn, invoice.customer_id)
    if account_id is None:
        return 0
    links = []
    for line in metered_lines(conn, invoice_id):
        start = line.period_start or invoice.period_start
        end = line.period_end or invoice.period_end
        if not line.meter_ids or start is None or end is None:
            continue
        reports = conn.execute(
            sa.select(_REPORTS.c.id)
            .where(_REPORTS.c.account_id == account_id)
            .where(_REPORTS.c.meter_id.in_(line.meter_ids), _REPORTS.c.status != "open")
            .where(_REPORTS.c.window_start >= start, _REPORTS.c.window_end <= end)
            .order_by(_REPORTS.c.id)
        ).scalars()
        links += [{"invoice_id": invoice_id, "line_id": line.id, "report_id": r} for r in reports]
    if links:
        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        # A concurrent apply of the same invoice may have inserted the same links.
        conn.execute(insert(_LINKS).on_conflict_do_nothing(), links)
    return len(links)
