"""Report windows: tick-to-tick, cut at billing-period boundaries. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from adapter.domain.schedule import Schedule

Period = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Window:
    """Where an event lands: its report window and the billing period that holds it."""

    start: datetime
    end: datetime
    period_start: datetime | None = None
    period_end: datetime | None = None


def period_containing(at: datetime, periods: Sequence[Period]) -> Period | None:
    """The known billing period ``[start, end)`` containing ``at``, if any."""
    for start, end in periods:
        if start <= at < end:
            return start, end
    return None


def window_for(at: datetime, schedule: Schedule, periods: Sequence[Period] = ()) -> Window:
    """The report window for an event at ``at``: the schedule's window that contains it,
    narrowed so that it never crosses a known billing-period boundary.

    Boundaries of neighbouring known periods also cut the window, so an event just before
    a period begins never shares a report with the period's first events.
    """
    start, end = schedule.window(at)
    for p_start, p_end in periods:
        for boundary in (p_start, p_end):
            if start < boundary <= at:
                start = boundary
            elif at < boundary < end:
                end = boundary
    found = period_containing(at, periods)
    if found is None:
        return Window(start, end)
    return Window(start, end, found[0], found[1])
