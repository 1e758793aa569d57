"""The stored schedule (design flow 6): read, set, pause, resume and audit, on SQLite and
PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine

import adapter
from adapter.client import Metersync
from adapter.errors import ConfigurationError, MetersyncError
from adapter.store import schedule as schedule_store
from adapter.store.models import AuditLog, ScheduleRow, UsageReport, table
from config.settings import Settings

_AUDIT, _SCHEDULE, _REPORTS = table(AuditLog), table(ScheduleRow), table(UsageReport)
#: A fixed instant, a little after 10:07 UTC, for next-tick arithmetic.
NOW = datetime(2026, 3, 4, 10, 7, 30, tzinfo=UTC)


def audit(ms: Metersync) -> list[Any]:
    """The audit rows about the schedule, oldest first."""
    with ms.engine.connect() as conn:
        query = sa.select(_AUDIT).where(_AUDIT.c.action.startswith("schedule."))
        return list(conn.execute(query.order_by(_AUDIT.c.id)).all())


def stored(ms: Metersync) -> sa.Row[Any]:
    """The schedule row as stored."""
    with ms.engine.connect() as conn:
        return conn.execute(sa.select(_SCHEDULE)).one()


def test_state_after_connect_is_the_seeded_settings_value(ms: Metersync) -> None:
    """connect() seeds METERSYNC_REPORT_SCHEDULE: running, set by settings, next tick the
    next hour."""
    with time_machine.travel(NOW, tick=False):
        state = ms.schedule.state()
    assert (state.expression, state.paused, state.updated_by) == ("every 1h", False, "settings")
    assert state.updated_at.tzinfo is not None
    assert state.next_tick == datetime(2026, 3, 4, 11, 0, tzinfo=UTC)
    assert audit(ms) == []


def test_set_stores_parsed_form_and_audits_old_and_new(ms: Metersync) -> None:
    """set stores the normalised expression, who set it and when, and one audit row with
    old, new and the actor."""
    with time_machine.travel(NOW, tick=False):
        state = ms.schedule.set("  EVERY   15m ", actor="ops:alice")
    assert state.expression == "every 15m"
    assert state.updated_by == "ops:alice"
    assert state.updated_at == NOW
    assert state.next_tick == datetime(2026, 3, 4, 10, 15, tzinfo=UTC)
    row = stored(ms)
    assert (row.expression, row.updated_by, row.updated_at) == ("every 15m", "ops:alice", NOW)
    [entry] = audit(ms)
    assert (entry.actor, entry.action, entry.subject) == ("ops:alice", "schedule.set", "schedule")
    assert entry.detail == {"old": "every 1h", "new": "every 15m"}
    assert entry.at == NOW


def test_set_same_expression_is_a_noop(ms: Metersync) -> None:
    """Setting the expression in force again (in any spelling) changes nothing and
    writes no audit row."""
    first = ms.schedule.set("every 15m", actor="ops:alice")
    again = ms.schedule.set("Every 15M", actor="ops:bob")
    assert (again.expression, again.updated_by, again.updated_at) == (
        "every 15m",
        "ops:alice",
        first.updated_at,
    )
    assert stored(ms).updated_by == "ops:alice"
    assert len(audit(ms)) == 1


def test_set_seeded_value_in_another_spelling_is_a_noop(db_url: str) -> None:
    """A settings value stored as typed ("Every 1h") equals the same schedule set in its
    parsed form: no change, no audit row."""
    ms = adapter.connect(Settings(database_url=db_url, report_schedule="Every 1h"))
    try:
        state = ms.schedule.set("every 1h", actor="ops:alice")
        assert (state.expression, state.updated_by) == ("Every 1h", "settings")
        assert audit(ms) == []
    finally:
        ms.close()


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("bogus", "'every 15m', 'every 1h', 'every 1d' or a 5-field cron expression"),
        ("every 7m", "does not divide a day evenly"),
        ("every 10s", "shorter than every 30s"),
        ("*/10 * * *", "is not understood"),
        ("", "is not understood"),
    ],
)
def test_bad_expression_raises_and_changes_nothing(
    ms: Metersync, expression: str, message: str
) -> None:
    """A bad expression raises ConfigurationError saying what is accepted; the row, the
    audit log and the schedule in force are unchanged."""
    before = stored(ms)
    with pytest.raises(ConfigurationError, match=message) as caught:
        ms.schedule.set(expression, actor="ops:alice")
    assert isinstance(caught.value, MetersyncError)
    assert stored(ms) == before
    assert audit(ms) == []
    assert ms.schedule.current().expression == "every 1h"


def test_pause_and_resume_flip_audit_and_noop(ms: Metersync) -> None:
    """pause and resume flip the flag with an audit row each; repeating either changes
    nothing; next_tick is None only while paused."""
    paused = ms.schedule.pause(actor="ops:alice")
    assert (paused.paused, paused.next_tick, paused.updated_by) == (True, None, "ops:alice")
    assert ms.schedule.pause(actor="ops:bob").updated_by == "ops:alice"
    assert ms.schedule.state().next_tick is None
    resumed = ms.schedule.resume(actor="ops:carol")
    assert (resumed.paused, resumed.updated_by) == (False, "ops:carol")
    assert resumed.next_tick is not None
    assert ms.schedule.resume(actor="ops:dave").updated_by == "ops:carol"
    rows = audit(ms)
    assert [(r.action, r.actor) for r in rows] == [
        ("schedule.paused", "ops:alice"),
        ("schedule.resumed", "ops:carol"),
    ]
    assert rows[0].detail == {"old": "running", "new": "paused", "expression": "every 1h"}
    assert rows[1].detail == {"old": "paused", "new": "running", "expression": "every 1h"}
    assert stored(ms).paused is False


def test_windows_follow_the_expression_while_paused(ms: Metersync) -> None:
    """Pausing leaves current() alone, and an expression set while paused is in force
    for windows at once, still paused."""
    ms.schedule.pause(actor="ops:alice")
    assert ms.schedule.current().expression == "every 1h"
    state = ms.schedule.set("every 15m", actor="ops:alice")
    assert (state.paused, state.next_tick) == (True, None)
    assert ms.schedule.current().expression == "every 15m"
    at = datetime.now(UTC) - timedelta(hours=2)
    receipt = ms.increment("acct_1", 1, meter="api_calls", timestamp=at)
    with ms.engine.connect() as conn:
        report = conn.execute(sa.select(_REPORTS).where(_REPORTS.c.id == receipt.report_id)).one()
    assert report.window_end - report.window_start == timedelta(minutes=15)
    assert report.window_start <= at < report.window_end


def test_set_clears_this_process_cache(ms: Metersync) -> None:
    """current() in the process that made the change sees it at once, cache or not."""
    assert ms.schedule.current().expression == "every 1h"  # now cached for 5 s
    ms.schedule.set("*/10 * * * *", actor="ops:alice")
    assert ms.schedule.current().expression == "*/10 * * * *"


def test_change_through_another_connection(
    ms: Metersync, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change made by another Metersync is in state() at once, and in current() once
    the cache expires (here: at once, with CACHE_SECONDS at 0)."""
    assert ms.schedule.current().expression == "every 1h"
    other = adapter.connect(Settings(database_url=db_url))
    try:
        other.schedule.set("every 30m", actor="ops:other")
        other.schedule.pause(actor="ops:other")
    finally:
        other.close()
    assert ms.schedule.current().expression == "every 1h"  # still within the cache time
    state = ms.schedule.state()
    assert (state.expression, state.paused, state.updated_by) == ("every 30m", True, "ops:other")
    monkeypatch.setattr(schedule_store, "CACHE_SECONDS", 0)
    assert ms.schedule.current().expression == "every 30m"


def test_state_on_a_given_connection(ms: Metersync) -> None:
    """state(conn) reads on the caller's connection and sees its uncommitted change."""
    with ms.engine.connect() as conn:
        conn.execute(_SCHEDULE.update().values(expression="every 2h"))
        assert ms.schedule.state(conn).expression == "every 2h"
        conn.rollback()
    assert ms.schedule.state().expression == "every 1h"


def test_missing_row_is_stored_from_settings(ms: Metersync) -> None:
    """With the row gone, state() stores the settings value again, and set() works."""
    with ms.engine.begin() as conn:
        conn.execute(_SCHEDULE.delete())
    assert ms.schedule.state().updated_by == "settings"
    ms.schedule.set("every 2h", actor="ops:alice")
    assert audit(ms)[0].detail == {"old": "every 1h", "new": "every 2h"}


def test_history_newest_first_only_schedule_rows(ms: Metersync) -> None:
    """history() lists the latest schedule audit rows, newest first, and nothing else
    (the fixture's account and meter rows are left out)."""
    expressions = ["every 2m", "every 5m", "every 10m", "every 15m", "every 20m", "every 30m"]
    for expression in expressions:
        ms.schedule.set(expression, actor="ops:alice")
    ms.schedule.pause(actor="ops:bob")
    history = ms.schedule.history(limit=5)
    assert [c.action for c in history] == ["schedule.paused"] + ["schedule.set"] * 4
    assert [c.detail.get("new") for c in history[1:]] == expressions[:1:-1]
    assert history[0].actor == "ops:bob"
    assert len(ms.schedule.history(limit=50)) == 7


def test_concurrent_sets_audit_an_unbroken_chain(ms: Metersync, db_url: str) -> None:
    """Changes racing from several connections are serialised: each audit row's "old" is
    the previous row's "new", and the stored value is the last row's "new"."""
    expressions = ["every 30s", "every 1m", "every 2m", "every 5m", "every 10m", "every 20m"]
    clients = [adapter.connect(Settings(database_url=db_url)) for _ in expressions]
    start = threading.Barrier(len(clients))
    errors: list[BaseException] = []

    def change(client: Metersync, expression: str) -> None:
        start.wait()
        try:
            client.schedule.set(expression, actor=f"ops:{expression}")
        except BaseException as exc:  # noqa: BLE001  reported below, so the test fails with it
            errors.append(exc)

    threads = [
        threading.Thread(target=change, args=p) for p in zip(clients, expressions, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for client in clients:
        client.close()
    assert errors == []
    rows = audit(ms)
    assert len(rows) == len(expressions)
    assert rows[0].detail["old"] == "every 1h"
    for previous, entry in itertools.pairwise(rows):
        assert entry.detail["old"] == previous.detail["new"]
    assert stored(ms).expression == rows[-1].detail["new"]
    assert sorted(r.detail["new"] for r in rows) == sorted(expressions)
