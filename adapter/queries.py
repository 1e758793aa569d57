"""Usage per period, read from reports so the cost does not grow with event volume.

A report whose window lies inside the period contributes its stored aggregate. Only a
report that straddles an edge of the period (a query that does not follow report
windows) is opened up, by reading its events inside the period.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.aggregation import EXACT, ZERO, Aggregate, Aggregation, combine
from adapter.catalog import MeterInfo
from adapter.models import UsageEvent, UsageReport, table

_EVENTS, _REPORTS = table(UsageEvent), table(UsageReport)
#: Report statuses whose value Stripe has received.
SENT = frozenset({"sent"})


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's usage in a period."""

    quantity: Decimal
    sent: Decimal
    pending: Decimal
    events: int
    aggregation: Aggregation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, so no precision is lost."""
        return {
            "quantity": str(self.quantity),
            "sent": str(self.sent),
            "pending": str(self.pending),
            "events": self.events,
            "aggregation": self.aggregation,
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
class _Part:
    """What one report contributes to a period."""

    aggregate: Aggregate
    sent: bool
    sent_value: Decimal | None


def sent_value(aggregation: Aggregation, parts: list[_Part]) -> Decimal:
    """What Stripe holds for the period: the sum sent (sum, count), the running maximum
    sent (max, to a ``last`` meter), or the value of the newest report sent (last)."""
    sent = [p for p in parts if p.sent]
    if not sent:
        return ZERO
    values = [
        p.sent_value if p.sent_value is not None else p.aggregate.value(aggregation) for p in sent
    ]
    if aggregation in ("sum", "count"):
        total = ZERO
        for value in values:
            total = EXACT.add(total, value)
        return total
    if aggregation == "max":
        return max(values)
    newest = combine([p.aggregate for p in sent])
    result = values[-1]
    for part, value in zip(sent, values, strict=True):
        if part.aggregate.last_at == newest.last_at:
            result = value  # the last of equal times wins, as in Aggregate.merge
    return result


def meter_usage(aggregation: Aggregation, parts: list[_Part]) -> MeterUsage:
    """Combine the parts of one meter, given in recording order."""
    total = combine([p.aggregate for p in parts])
    quantity = total.value(aggregation)
    sent = sent_value(aggregation, parts)
    return MeterUsage(quantity, sent, EXACT.subtract(quantity, sent), total.events, aggregation)


def read_usage(
    conn: sa.Connection,
    *,
    account_id: int,
    meters: Iterable[MeterInfo],
    start: datetime,
    end: datetime,
) -> dict[str, MeterUsage]:
    """Per meter, the usage of the account in ``[start, end)``."""
    meters = list(meters)
    by_id = {m.id: m for m in meters}
    rows = conn.execute(
        sa.select(
            _REPORTS.c.id,
            _REPORTS.c.meter_id,
            _REPORTS.c.status,
            _REPORTS.c.window_start,
            _REPORTS.c.window_end,
            _REPORTS.c.total,
            _REPORTS.c.events,
            _REPORTS.c.max_value,
            _REPORTS.c.last_value,
            _REPORTS.c.last_at,
            _REPORTS.c.sent_value,
        )
        .where(_REPORTS.c.account_id == account_id)
        .where(_REPORTS.c.meter_id.in_(list(by_id)))
        .where(_REPORTS.c.window_end > start)
        .where(_REPORTS.c.window_start < end)
        .order_by(_REPORTS.c.id)
    ).all()
    straddling = [r.id for r in rows if r.window_start < start or r.window_end > end]
    opened = _events_inside(conn, straddling, start, end) if straddling else {}
    parts: dict[int, list[_Part]] = {m.id: [] for m in meters}
    for r in rows:
        if r.id in opened or r.id in straddling:
            agg, sent_val = opened.get(r.id, Aggregate()), None
        else:
            agg = Aggregate(r.total, r.events, r.max_value, r.last_value, r.last_at)
            sent_val = r.sent_value
        parts[r.meter_id].append(_Part(agg, r.status in SENT, sent_val))
    return {m.name: meter_usage(m.aggregation, parts[m.id]) for m in meters}


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
