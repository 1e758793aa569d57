"""Tracing a mirrored invoice back to usage (``metersync explain INVOICE_ID``).

For each metered line of the invoice: the Stripe meter and the local meters behind it, the
line's service period and quantity, the reports linked to it (``invoice_report``, written
by the webhook mirror), and whether Stripe's quantity agrees with what metersync sent for
the period: the sum of the values sent for a ``sum`` meter, the last value sent for a
``last`` meter (local max and last meters). When they differ, a one-line reason says why.

The line-to-meter mapping lives here, in the library, so that the mirror (which links) and
this view (which reads the links) cannot disagree about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.domain import reporting
from adapter.domain.aggregation import ZERO, Aggregate
from adapter.errors import MetersyncError
from adapter.reading.explain_rating import LineRating, rate_lines
from adapter.store.mirror_models import Invoice, InvoiceLine, InvoiceReport, Price, StripeCustomer
from adapter.store.mirror_models import StripeMeter as StripeMeterRow
from adapter.store.models import Account, Meter, UsageReport, table

_INVOICES, _LINES, _LINKS = table(Invoice), table(InvoiceLine), table(InvoiceReport)
_PRICES, _CUSTOMERS, _STRIPE_METERS = table(Price), table(StripeCustomer), table(StripeMeterRow)
_ACCOUNTS, _METERS, _REPORTS = table(Account), table(Meter), table(UsageReport)
#: How long Stripe keeps a cycle invoice in draft before finalising it.
GRACE = timedelta(hours=1)
#: Report statuses Stripe has received a value from.
SENT = ("sent",)
#: Statuses of a report still on its way to Stripe.
PENDING = ("closed", "sending")


class UnknownInvoice(MetersyncError):
    """No mirrored invoice has the id given."""


@dataclass(frozen=True, slots=True)
class MeteredLine:
    """An invoice line billed from a Stripe meter, and the local meters behind it."""

    id: str
    stripe_meter_id: str
    period_start: datetime | None
    period_end: datetime | None
    quantity: Decimal | None
    #: Local meter ids, ascending; empty when no local meter maps to the Stripe meter.
    meter_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LinkedReport:
    """A report standing behind a line."""

    id: int
    meter: str
    window_start: datetime
    window_end: datetime
    status: str
    events: int
    #: The report's aggregate by its meter's rule.
    value: Decimal
    sent_value: Decimal | None
    sent_timestamp: datetime | None
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class LineExplanation:
    """One metered line next to the local reports behind it."""

    line_id: str
    stripe_meter_id: str
    meters: tuple[str, ...]
    period_start: datetime | None
    period_end: datetime | None
    quantity: Decimal | None
    #: The Stripe meter's formula: ``sum`` or ``last``.
    formula: str
    reports: tuple[LinkedReport, ...]
    events: int
    #: What Stripe holds from metersync for the period, by the formula.
    sent: Decimal
    agree: bool
    #: Why Stripe's quantity and the sent total differ; ``None`` when they agree.
    reason: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A mirrored invoice and each of its metered lines, explained."""

    invoice_id: str
    status: str
    billing_reason: str | None
    customer_id: str
    account: str | None
    period_start: datetime | None
    period_end: datetime | None
    created: datetime | None
    flushed_at: datetime | None
    lines: tuple[LineExplanation, ...]
    #: Lines that bill no meter (fixed fees, one-off items).
    other_lines: int
    #: Every priced line rated by metersync beside Stripe's amount.
    ratings: tuple[LineRating, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO 8601 times, decimals as exact strings."""
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


def _jsonable(value: Any) -> Any:  # noqa: ANN401  a JSON tree in, the same tree out
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


# --- the mapping from invoice lines to local meters and accounts ---------------------------


def account_of_customer(conn: sa.Connection, customer_id: str) -> int | None:
    """The local account of a Stripe customer: the account linked to it by id (the oldest,
    if several are), else the one the mirrored customer names."""
    found = conn.execute(
        sa.select(_ACCOUNTS.c.id)
        .where(_ACCOUNTS.c.stripe_customer_id == customer_id)
        .order_by(_ACCOUNTS.c.id)
    ).first()
    if found is not None:
        return int(found.id)
    named = conn.execute(
        sa.select(_CUSTOMERS.c.account_id).where(_CUSTOMERS.c.id == customer_id)
    ).scalar_one_or_none()
    return None if named is None else int(named)


def metered_lines(conn: sa.Connection, invoice_id: str) -> list[MeteredLine]:
    """The invoice's lines that bill a Stripe meter (named on the line or by its price),
    in line id order."""
    rows = conn.execute(
        sa.select(_LINES, _PRICES.c.stripe_meter_id.label("price_meter"))
        .outerjoin(_PRICES, _PRICES.c.id == _LINES.c.price_id)
        .where(_LINES.c.invoice_id == invoice_id)
        .order_by(_LINES.c.id)
    ).all()
    found = []
    for row in rows:
        stripe_meter = row.stripe_meter_id or row.price_meter
        if stripe_meter is not None:
            found.append(
                MeteredLine(
                    id=row.id,
                    stripe_meter_id=stripe_meter,
                    period_start=row.period_start,
                    period_end=row.period_end,
                    quantity=row.quantity,
                    meter_ids=local_meters(conn, stripe_meter),
                )
            )
    return found


def local_meters(conn: sa.Connection, stripe_meter_id: str) -> tuple[int, ...]:
    """Ids of the local meters reporting to a Stripe meter: those linked to it by id, and
    those not linked to any whose event name is the Stripe meter's."""
    event_name = (
        sa.select(_STRIPE_METERS.c.event_name)
        .where(_STRIPE_METERS.c.id == stripe_meter_id)
        .scalar_subquery()
    )
    by_name = sa.and_(_METERS.c.stripe_meter_id.is_(None), _METERS.c.event_name == event_name)
    query = (
        sa.select(_METERS.c.id)
        .where(sa.or_(_METERS.c.stripe_meter_id == stripe_meter_id, by_name))
        .order_by(_METERS.c.id)
    )
    return tuple(int(i) for i in conn.execute(query).scalars())


# --- the explanation -------------------------------------------------------------------------


def explain_invoice(engine: sa.Engine, invoice_id: str) -> Explanation:
    """Each metered line of a mirrored invoice next to the reports behind it. Raise
    :class:`UnknownInvoice` when the mirror has no such invoice."""
    with engine.connect() as conn:
        invoice = conn.execute(sa.select(_INVOICES).where(_INVOICES.c.id == invoice_id)).first()
        if invoice is None:
            raise UnknownInvoice(
                f"no invoice {invoice_id!r} in the mirror; check the id (in_…), or fetch "
                "it from Stripe with `metersync sync`"
            )
        lines = metered_lines(conn, invoice_id)
        total = conn.execute(
            sa.select(sa.func.count()).where(_LINES.c.invoice_id == invoice_id)
        ).scalar_one()
        account_id = account_of_customer(conn, invoice.customer_id)
        account = None
        if account_id is not None:
            account = conn.execute(
                sa.select(_ACCOUNTS.c.name).where(_ACCOUNTS.c.id == account_id)
            ).scalar_one()
        linked = _linked_reports(conn, invoice_id)
        explained = tuple(
            _explain_line(conn, line, linked.get(line.id, []), invoice) for line in lines
        )
        ratings = rate_lines(conn, invoice_id)
    return Explanation(
        invoice_id=invoice.id,
        status=invoice.status,
        billing_reason=invoice.billing_reason,
        customer_id=invoice.customer_id,
        account=account,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        created=invoice.created,
        flushed_at=invoice.flushed_at,
        lines=explained,
        other_lines=int(total) - len(lines),
        ratings=ratings,
    )


def _linked_reports(conn: sa.Connection, invoice_id: str) -> dict[str, list[LinkedReport]]:
    """The reports linked to each line of the invoice, in window order."""
    rows = conn.execute(
        sa.select(
            _LINKS.c.line_id,
            _REPORTS,
            _METERS.c.name.label("meter"),
            _METERS.c.aggregation,
        )
        .join(_REPORTS, _REPORTS.c.id == _LINKS.c.report_id)
        .join(_METERS, _METERS.c.id == _REPORTS.c.meter_id)
        .where(_LINKS.c.invoice_id == invoice_id)
        .order_by(_LINKS.c.line_id, _REPORTS.c.window_start, _REPORTS.c.id)
    ).all()
    found: dict[str, list[LinkedReport]] = {}
    for row in rows:
        found.setdefault(row.line_id, []).append(
            LinkedReport(
                id=row.id,
                meter=row.meter,
                window_start=row.window_start,
                window_end=row.window_end,
                status=row.status,
                events=int(row.events),
                value=Aggregate.of(row).value(row.aggregation),
                sent_value=row.sent_value,
                sent_timestamp=row.sent_timestamp,
                sent_at=row.sent_at,
            )
        )
    return found


def _explain_line(
    conn: sa.Connection, line: MeteredLine, reports: list[LinkedReport], invoice: sa.Row[Any]
) -> LineExplanation:
    meters = conn.execute(
        sa.select(_METERS.c.name, _METERS.c.aggregation)
        .where(_METERS.c.id.in_(line.meter_ids))
        .order_by(_METERS.c.id)
    ).all()
    formula = conn.execute(
        sa.select(_STRIPE_METERS.c.formula).where(_STRIPE_METERS.c.id == line.stripe_meter_id)
    ).scalar_one_or_none()
    if formula not in ("sum", "last"):  # not mirrored (or a count meter): the local rule's
        formula = reporting.stripe_formula(meters[0].aggregation) if meters else "sum"
    sent = sent_total(str(formula), reports)
    finalised_by = None
    if invoice.status != "draft" and invoice.created is not None:
        finalised_by = invoice.created + GRACE
    reason = disagreement(
        quantity=line.quantity,
        sent=sent,
        reports=reports,
        has_meters=bool(meters),
        finalised_by=finalised_by,
    )
    return LineExplanation(
        line_id=line.id,
        stripe_meter_id=line.stripe_meter_id,
        meters=tuple(m.name for m in meters),
        period_start=line.period_start,
        period_end=line.period_end,
        quantity=line.quantity,
        formula=str(formula),
        reports=tuple(reports),
        events=sum(r.events for r in reports),
        sent=sent,
        agree=reason is None,
        reason=reason,
    )


def sent_total(formula: str, reports: Sequence[LinkedReport]) -> Decimal:
    """What Stripe holds from these reports: the sum of the values sent to a ``sum``
    meter; for a ``last`` meter, the value sent with the newest timestamp."""
    sent = [r for r in reports if r.status in SENT and r.sent_value is not None]
    if not sent:
        return ZERO
    if formula == "sum":
        return sum((Decimal(r.sent_value or 0) for r in sent), ZERO)
    newest = max(sent, key=lambda r: (r.sent_timestamp or r.window_start, r.id))
    return Decimal(newest.sent_value or 0)


def disagreement(
    *,
    quantity: Decimal | None,
    sent: Decimal,
    reports: Sequence[LinkedReport],
    has_meters: bool,
    finalised_by: datetime | None,
) -> str | None:
    """Why Stripe's quantity differs from what metersync sent, or ``None`` if it does not."""
    if quantity is not None and quantity == sent:
        return None
    if quantity is None:
        return "Stripe's line carries no quantity"
    if not has_meters:
        return "no local meter reports to this Stripe meter"
    if not reports:
        return "no local report is linked to this line"
    checks = (
        ([r for r in reports if r.status in PENDING], "not sent yet"),
        ([r for r in reports if r.status in ("failed", "expired")], "failed or expired"),
        ([r for r in reports if r.status == "dry_run"], "a dry run (nothing sent)"),
        (
            [r for r in reports if finalised_by and r.sent_at and r.sent_at > finalised_by],
            "sent after the invoice was finalised",
        ),
    )
    for found, what in checks:
        if found:
            return f"{_reports_phrase(found)} {what}"
    if quantity > sent:
        return (
            f"Stripe billed {quantity - sent} more than metersync sent: usage from another "
            "source, or reports not linked to this line"
        )
    return f"metersync sent {sent - quantity} more than Stripe billed for this line"


def _reports_phrase(reports: Sequence[LinkedReport]) -> str:
    ids = ", ".join(str(r.id) for r in reports)
    return f"report {ids} is" if len(reports) == 1 else f"reports {ids} are"
