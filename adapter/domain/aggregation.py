"""Aggregates kept in a report, and how they combine. Pure: no I/O.

A report keeps every statistic at once (total, event count, maximum, latest value), so the
meter's rule only chooses which one is its value. That keeps recording branch-free and
makes combining reports for a query exact whatever the rule.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


class Aggregation(StrEnum):
    """How a meter aggregates its events; equal to its stored text."""

    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    LAST = "last"


#: The aggregations a local meter may use.
AGGREGATIONS: tuple[Aggregation, ...] = tuple(Aggregation)


class Stats(Protocol):
    """Anything with a report's five aggregate columns (a row, a dataclass)."""

    @property
    def total(self) -> Decimal: ...
    @property
    def events(self) -> int: ...
    @property
    def max_value(self) -> Decimal | None: ...
    @property
    def last_value(self) -> Decimal | None: ...
    @property
    def last_at(self) -> datetime | None: ...


ZERO = Decimal(0)
#: Decimal context for sums: a quantity below 10^15 with up to 30 decimal places needs 45
#: digits, and billions of them add a few more; the default 28 would round. Any rounding
#: that would still happen raises instead of losing a fraction.
EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.Overflow])


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The statistics of a set of usage events."""

    total: Decimal = ZERO
    events: int = 0
    max_value: Decimal | None = None
    last_value: Decimal | None = None
    last_at: datetime | None = None

    @classmethod
    def of(cls, report: Stats) -> Aggregate:
        """The aggregate stored in a report row (anything with its five columns)."""
        return cls(
            report.total, int(report.events), report.max_value, report.last_value, report.last_at
        )

    def add(self, quantity: Decimal, at: datetime) -> Aggregate:
        """Return this aggregate with one more event; on an equal time the newer one wins."""
        newer = self.last_at is None or at >= self.last_at
        return Aggregate(
            total=EXACT.add(self.total, quantity),
            events=self.events + 1,
            max_value=quantity if self.max_value is None else max(self.max_value, quantity),
            last_value=quantity if newer else self.last_value,
            last_at=at if newer else self.last_at,
        )

    def extend(self, events: list[tuple[Decimal, datetime]]) -> Aggregate:
        """Return this aggregate with ``events`` added in order (same as repeated ``add``,
        without building an aggregate per event)."""
        if not events:
            return self
        total, peak, last, last_at = self.total, self.max_value, self.last_value, self.last_at
        add = EXACT.add
        for quantity, at in events:
            total = add(total, quantity)
            if peak is None or quantity > peak:
                peak = quantity
            if last_at is None or at >= last_at:
                last, last_at = quantity, at
        return Aggregate(total, self.events + len(events), peak, last, last_at)

    def merge(self, later: Aggregate) -> Aggregate:
        """Combine with ``later``, whose events were recorded after this one's (the rule
        is :func:`combine`'s)."""
        return combine([self, later])

    def value(self, aggregation: str) -> Decimal:
        """The aggregate by the meter's rule (an :class:`Aggregation` or its text); zero
        when there are no events. The one place each rule is written in Python
        (PostgreSQL's one-statement query mirrors it; tests/integration/test_properties.py
        holds both to one model)."""
        rule = Aggregation(aggregation)
        if rule is Aggregation.SUM:
            return self.total
        if rule is Aggregation.COUNT:
            return Decimal(self.events)
        if rule is Aggregation.MAX:
            return self.max_value if self.max_value is not None else ZERO
        return self.last_value if self.last_value is not None else ZERO


def combine(parts: list[Aggregate]) -> Aggregate:
    """Merge aggregates given in recording order (one pass; same as repeated ``merge``)."""
    total, events, peak, last, last_at = ZERO, 0, None, None, None
    add = EXACT.add
    for part in parts:
        if part.events == 0:
            continue
        total = add(total, part.total)
        events += part.events
        if peak is None or (part.max_value is not None and part.max_value > peak):
            peak = part.max_value
        if last_at is None or (part.last_at is not None and part.last_at >= last_at):
            last, last_at = part.last_value, part.last_at
    return Aggregate(total, events, peak, last, last_at)
