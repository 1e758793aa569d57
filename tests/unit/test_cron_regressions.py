"""Regressions found by property tests in the cron window code."""

from datetime import UTC, datetime

import pytest

from adapter.domain.schedule import parse


@pytest.mark.parametrize(
    "at",
    [
        "2887-12-05T12:00:00+00:00",
        "2026-11-22T12:00:00+00:00",
        "2026-11-22T12:00:00.500000+00:00",
        "2026-11-22T12:09:59.999999+00:00",
    ],
)
def test_cron_window_of_an_instant_on_or_after_a_tick_starts_at_that_tick(at: str) -> None:
    """An instant exactly on a cron tick (or just after it) starts that tick's window."""
    start, end = parse("*/10 * * * *").window(datetime.fromisoformat(at))
    assert start == datetime(start.year, start.month, start.day, 12, 0, tzinfo=UTC)
    assert end == datetime(start.year, start.month, start.day, 12, 10, tzinfo=UTC)
    assert start.fold == 0
