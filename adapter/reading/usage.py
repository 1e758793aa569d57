"""Usage per period, read from reports so the cost does not grow with event volume.

A report whose window lies inside the period contributes its stored aggregate. Only a
report that straddles an edge of the period (a query that does not follow report
windows) is opened up, by reading its events inside the period.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.domain.aggregation import EXACT, ZERO, Aggregate, Aggregation, combine
from adapter.reading.postgres import PERIOD_SQL
from adapter.store.catalog import MeterInfo
from adapter.store.models import UsageEvent, UsageReport, table

_EVENTS, _REPORTS = table(UsageEvent), table(UsageReport)
#: Report statuses whose value Stripe has received.
SENT = frozenset({"sent"})
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's usage in a period."""

    quantity: Decimal
    sent: Decimal
    pending: Decimal
    events: int
    aggregation: Aggregation
    #: Cost so far in minor units of ``currency``, by the account's current subscription
    #: price for the meter (what Stripe's invoice line will carry); ``None`` when no
    #: price is known or it cannot be rated (``rating_error`` then says why).
    amount: int | None = None
    currency: str | None = None
    #: The Stripe price rated.
    price: str | None = None
    rating_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, so no precision is lost."""
        return {
            "quantity": str(self.quantity),
            "sent": str(self.sent),
            "pending": str(self.pending),
            "events": self.events,
            "aggregation": self.aggregation,
            "amount": self.amount,
            "currency": self.currency,
            "price": self.price,
            "rating_error": self.rating_error,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage of one account over ``[period_start, period_end)``, per meter."""

    account: str
    period_start: datetime
    period_end: datetime
    meters: dict[str, MeterUsage] = field(default_factory=dict)
    #: ``billing_period`` when the period came from the mirror, ``calendar_month`` when no
    #: billing period is known yet, ``requested`` when the caller gave the dates.
    period_source: str = "requested"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used by the HTTP API and ``--json``."""
        return {
            "account": self.account,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "period_source": self.period_source,
            "meters": {name: m.to_dict() for name, m in self.meters.items()},
        }


@dataclass(frozen=True, slots=True)
class _Sent:
    """What Stripe received from one report (or the newest of a group of reports)."""

    order: int
    value: Decimal
    #: The timestamp it was sent with (None: no call was needed).
    at: datetime | None


@dataclass(slots=True)
class _Parts:
    """One meter's inputs: aggregates and sent values, each with its report id."""

    aggregates: list[tuple[int, Aggregate]] = field(default_factory=list)
    sent: list[_Sent] = field(default_factory=list)
    #: Reports whose newest event time equals the newest of those the server folded.
    folded_newest: list[int] = field(default_factory=list)

    def combined(self) -> Aggregate:
        """The aggregates combined in report id order."""
        return combine([agg for _, agg in sorted(self.aggregates, key=lambda p: p[0])])

    def newest(self, total: Aggregate) -> list[int]:
        """The reports holding an event at ``total.last_at``, the newest time."""
        found = set(self.folded_newest)
        found.update(i for i, agg in self.aggregates if agg.events and agg.last_at == total.last_at)
        return sorted(found)

    def usage(self, aggregation: Aggregation, last: Decimal | None = None) -> MeterUsage:
        """Combine in recording order (report id) into the meter's usage; ``last`` is the
        value of the newest event when reports tie on its time (see :func:`_settle_ties`)."""
        total = self.combined()
        if last is not None:
            total = replace(total, last_value=last)
        quantity = total.value(aggregation)
        sent = sent_value(aggregation, self.sent)
        return MeterUsage(quantity, sent, EXACT.subtract(quantity, sent), total.events, aggregation)


def sent_value(aggregation: Aggregation, sent: list[_Sent]) -> Decimal:
    """What Stripe holds for the period: the sum sent (sum, count), the running maximum
    sent (max, to a ``last`` meter), or the value sent with the newest timestamp (last:
    Stripe's ``last`` keeps that one; a report that needed no call sent the value Stripe
    held already, and decisions never put two values at one second)."""
    if not sent:
        return ZERO
    if aggregation in ("sum", "count"):
        total = ZERO
        for part in sent:
            total = EXACT.add(total, part.value)
        return total
    if aggregation == "max":
        return max(part.value for part in sent)
    newest = max(sent, key=lambda p: (p.at is not None, p.at or _NEVER, p.order))
    return newest.value


def _value_sent(aggregation: Aggregation, row: sa.Row[Any]) -> Decimal:
    if row.sent_value is not None:
        return Decimal(row.sent_value)
    agg = Aggregate.of(row)
    return agg.value(aggregation)


def read_usage(
    conn: sa.Connection,
    *,
    account_id: int,
    meters: Iterable[MeterInfo],
    start: datetime,
    end: datetime,
) -> dict[str, MeterUsage]:
    """Per meter, the usage of the account in ``[start, end)``."""
    by_id = {m.id: m for m in meters}
    parts = {meter_id: _Parts() for meter_id in by_id}
    if conn.dialect.name == "postgresql":
        rows = _read_postgres(conn, parts, by_id, account_id, start, end)
    else:
        rows = _reports(conn, account_id, list(by_id), start, end)
    straddling = [r.id for r in rows if r.straddling]
    opened = _events_inside(conn, straddling, start, end) if straddling else {}
    for r in rows:
        aggregation = by_id[r.meter_id].aggregation
        if r.straddling:
            agg = opened.get(r.id, Aggregate())
            sent = agg.value(aggregation)
        else:
            agg = Aggregate.of(r)
            sent = _value_sent(aggregation, r)
        parts[r.meter_id].aggregates.append((r.id, agg))
        if r.status in SENT and agg.events:
            parts[r.meter_id].sent.append(_Sent(r.id, sent, r.sent_timestamp))
    lasts = _settle_ties(conn, parts, by_id)
    return {m.name: parts[m.id].usage(m.aggregation, lasts.get(m.id)) for m in by_id.values()}


def _settle_ties(
    conn: sa.Connection, parts: dict[int, _Parts], meters: dict[int, MeterInfo]
) -> dict[int, Decimal]:
    """For ``last`` meters whose newest event time is held by more than one report (a
    billing period replaced while reports were open can put equal-time events in two),
    the value of the event recorded last at that time: event ids follow recording order
    across reports, report ids need not. One indexed lookup per tie; none without."""
    found: dict[int, Decimal] = {}
    for meter_id, part in parts.items():
        if meter_id not in meters or meters[meter_id].aggregation != "last":
            continue
        total = part.combined()
        if total.last_at is None:
            continue
        tied = part.newest(total)
        if len(tied) < 2:
            continue
        found[meter_id] = newest_value(conn, tied, total.last_at)
    return found


def newest_value(conn: sa.Connection, report_ids: list[int], at: datetime) -> Decimal:
    """The value of the event recorded last, at time ``at``, among the events of reports
    ``report_ids`` that tie on their newest time: event ids follow recording order across
    reports, report ids need not. One indexed lookup."""
    value = conn.execute(
        sa.select(_EVENTS.c.quantity)
        .where(_EVENTS.c.report_id.in_(report_ids), _EVENTS.c.occurred_at == at)
        .order_by(_EVENTS.c.id.desc())
        .limit(1)
    ).scalar_one()
    return Decimal(value)


def _reports(
    conn: sa.Connection, account_id: int, meter_ids: list[int], start: datetime, end: datetime
) -> list[Any]:
    """Every report overlapping the period, flagged when it straddles an edge."""
    columns = (
        "id",
        "meter_id",
        "status",
        "total",
        "events",
        "max_value",
        "last_value",
        "last_at",
        "sent_value",
        "sent_timestamp",
    )
    query = (
        sa.select(
            *(_REPORTS.c[c] for c in columns),
            sa.or_(_REPORTS.c.window_start < start, _REPORTS.c.window_end > end).label(
                "straddling"
            ),
        )
        .where(_REPORTS.c.account_id == account_id)
        .where(_REPORTS.c.meter_id.in_(meter_ids))
        .where(_REPORTS.c.window_end > start)
        .where(_REPORTS.c.window_start < end)
    )
    return list(conn.execute(query).all())


def _read_postgres(  # noqa: PLR0913  one query's parameters, each named
    conn: sa.Connection,
    parts: dict[int, _Parts],
    meters: dict[int, MeterInfo],
    account_id: int,
    start: datetime,
    end: datetime,
) -> list[sa.Row[Any]]:
    """Add the server's per-meter aggregate of covered reports to ``parts``; return the
    straddling reports (see :mod:`adapter.reading.postgres`)."""
    ids = {
        kind: [m.id for m in meters.values() if m.aggregation == kind]
        for kind in ("count", "max", "last")
    }
    rows = conn.execute(
        PERIOD_SQL,
        {
            "account_id": account_id,
            "meter_ids": list(meters),
            "start": start,
            "end": end,
            "count_ids": ids["count"],
            "max_ids": ids["max"],
            "last_ids": ids["last"],
        },
    ).all()
    for r in rows:
        if r.straddling:
            continue
        aggregation = meters[r.meter_id].aggregation
        agg = Aggregate.of(r)
        parts[r.meter_id].aggregates.append((r.last_id, agg))
        parts[r.meter_id].folded_newest.extend(r.newest_ids or ())
        if r.sent_reports:
            value = {"sum": r.sent_sum, "count": r.sent_sum, "max": r.sent_max}.get(
                aggregation, r.sent_last
            )
            parts[r.meter_id].sent.append(_Sent(r.sent_last_id, Decimal(value), r.sent_last_at))
    return [r for r in rows if r.straddling]


def _events_inside(
    conn: sa.Connection, report_ids: list[int], start: datetime, end: datetime
) -> dict[int, Aggregate]:
    rows = conn.execute(
        sa.select(_EVENTS.c.report_id, _EVENTS.c.quantity, _EVENTS.c.occurred_at)
        .where(_EVENTS.c.report_id.in_(report_ids))
        .where(_EVENTS.c.occurred_at >= start)
        .where(_EVENTS.c.occurred_at < end)
        .order_by(_EVENTS.c.id)
    ).all()
    found: dict[int, Aggregate] = {}
    for r in rows:
        found[r.report_id] = found.get(r.report_id, Aggregate()).add(r.quantity, r.occurred_at)
    return found
