"""Closing open reports and pushing closed ones to Stripe, or recording them as a dry run.

A push has two steps. First, in a transaction that holds the report's row lock and
(PostgreSQL) a lock on its (account, meter), the decision is made and stored: the
identifier, the whole value (fractions carried within the billing period) and the
timestamp. Then Stripe is called outside any transaction. A retry of any kind resends
the stored decision unchanged, so Stripe's duplicate-identifier rejection proves an
ambiguous earlier send was delivered, and nothing is billed twice.

Pushes are the hot path of a worker, so each one costs few round trips: the decision
transaction is one statement that loads and locks, one that reads the period's earlier
decisions and one that stores the decision; the outcome after the call is one
autocommitted statement (PostgreSQL).

The decision itself is :func:`adapter.domain.push_decision.decide`, pure; this module
does the locking, the reads and writes (:mod:`adapter.pushing.rows`) and the calls.
Statuses: :class:`adapter.domain.statuses.ReportStatus`. A transient failure leaves the
report ``sending`` with the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog

from adapter.domain import push_decision, reporting
from adapter.domain.statuses import HELD, MOVED_STATUS, PUSHABLE, ReportStatus
from adapter.gateway import Gateway, PermanentError, TransientError
from adapter.pushing import rows
from adapter.pushing.rows import REPORTS as _REPORTS
from adapter.pushing.rows import Loaded
from adapter.reading.usage import newest_value
from adapter.recording import recut
from adapter.store.models import Installation, table, utcnow

_INSTALLATION = table(Installation)
#: Said of a report whose events all moved to reports of a billing period learned late.
MOVED = "its events belong to a later billing period and moved to that period's reports"
log = structlog.get_logger("metersync.push")
__all__ = ["HELD", "PUSHABLE", "PushResult", "Pusher"]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What pushing one report did."""

    report_id: int
    account: str
    meter: str
    event_name: str
    status: str
    value: int | None = None
    timestamp: datetime | None = None
    identifier: str | None = None
    duplicate: bool = False
    error: str | None = None


class Pusher:
    """Pushes one report at a time; ``gateway=None`` is the dry run."""

    def __init__(self, engine: sa.Engine, *, gateway: Gateway | None) -> None:
        self._engine = engine
        # One statement after the call needs no BEGIN/COMMIT round trips of its own.
        self._autocommit = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._gateway = gateway
        self._namespace: str | None = None

    def push(self, report_id: int, *, now: datetime | None = None) -> PushResult:
        """Decide (once) and send one report; return what happened."""
        now = now or utcnow()
        with self._engine.begin() as conn:
            row = rows.load(conn, report_id)
            if row is None:
                return gone(report_id)
            if row.status not in PUSHABLE:
                return result(row, row.status, error=f"report is {row.status}; nothing to do")
            outcome, row = self.prepare(conn, row, now)
            if outcome is not None:
                return outcome
        return self.send(row, now)

    def prepare(
        self, conn: sa.Connection, row: Loaded, now: datetime
    ) -> tuple[PushResult | None, Loaded]:
        """Settle everything that needs no Stripe call and store the decision; returns the
        outcome if no call is needed, and the report as it now stands."""
        if row.free:
            return _finish(conn, row, ReportStatus.SKIPPED_FREE, now=now), row
        # No period stored for the account when the row was locked: nothing to settle. A
        # period stored after that is the mirror's to apply, under the row and pair locks
        # this transaction holds, as for one stored just after any check made here.
        if row.identifier is None and row.period_start is None and row.has_periods:
            cut = recut.settle(conn, row)  # under load's (account, meter) lock
            if cut is not None and cut.emptied:
                log.info("report.moved", report_id=row.id, to=list(cut.targets))
                return result(row, MOVED_STATUS, error=MOVED), row
            if cut is not None:
                row = _reload(conn, row.id)
            if cut is not None and row.period_start is not None:
                log.info(
                    "report.period_found",
                    report_id=row.id,
                    period_start=row.period_start.isoformat(),
                )
        if self._gateway is not None and not row.stripe_customer_id:
            if rows.customer_now(conn, row.account_id) is None:
                why = unlinked(row.account)
                return _finish(conn, row, ReportStatus.UNLINKED, now=now, error=why), row
            row = _reload(conn, row.id)  # linked meanwhile (locks held already)
        changes: dict[str, Any] = {"status": ReportStatus.SENDING, "attempted_at": now}
        replaces: tuple[int, ...] = ()
        if row.identifier is None:
            try:
                decided = self._decide(conn, row, now)
            except ValueError as exc:
                return _finish(conn, row, ReportStatus.FAILED, now=now, error=str(exc)), row
            if decided is None:
                error = "too old for Stripe (35 days); it can no longer be billed"
                log.error("report.expired", report_id=row.id, account=row.account)
                return _finish(conn, row, ReportStatus.EXPIRED, now=now, error=error), row
            changes.update(
                identifier=self._identifier(conn, row),
                sent_value=decided.value,
                sent_timestamp=decided.timestamp,
            )
            replaces = decided.replaces
        elif row.sent_timestamp is not None and reporting.stripe_formula(row.aggregation) == "last":
            replaces = _sharing_second(conn, row)
        rows.store_decision(conn, row.id, changes)
        row = row.decided(changes, replaces=replaces)
        return self._settle(conn, row, now), row

    def _settle(self, conn: sa.Connection, row: Loaded, now: datetime) -> PushResult | None:
        """Finish a decided report that needs no Stripe call; None if it needs one."""
        if self._gateway is None:
            return _finish(conn, row, ReportStatus.DRY_RUN, now=now)
        value = 0 if row.sent_value is None else int(row.sent_value)
        if row.sent_timestamp is None:  # a 'last' meter already holds this value
            log.info("report.pushed", report_id=row.id, value=value, call=False)
            return _finish(conn, row, ReportStatus.SENT, now=now)
        if value == 0 and reporting.stripe_formula(row.aggregation) == "sum":
            log.info("report.pushed", report_id=row.id, value=0, call=False)
            return _finish(conn, row, ReportStatus.SENT, now=now)  # adding 0 needs no call
        return None

    def _decide(
        self, conn: sa.Connection, row: Loaded, now: datetime
    ) -> push_decision.Decision | None:
        """:func:`push_decision.decide` on the period's history. :func:`rows.load` took the
        (account, meter) lock, so no other decision of the period is made meanwhile."""
        report, history = row.report(), rows.history(conn, row)
        tie = push_decision.tie(report, history)
        tie_value = None if tie is None else newest_value(conn, list(tie.report_ids), tie.at)
        return push_decision.decide(report, history, now, tie_value=tie_value)

    def _identifier(self, conn: sa.Connection, row: Loaded) -> str:
        return reporting.identifier(
            namespace=self.installation(conn),
            account_id=row.account_id,
            meter_id=row.meter_id,
            report_id=row.id,
            window_start=row.window_start,
        )

    def send(self, row: Loaded, now: datetime) -> PushResult:
        """Send a decided report (cancelling what it replaces first) and store how it
        ended."""
        assert self._gateway is not None
        try:
            if row.replaces:
                self._cancel_replaced(row)
            event = row.event()
            delivery = self._gateway.send_meter_event(
                event_name=event.event_name,
                stripe_customer_id=event.stripe_customer_id,
                value=event.value,
                timestamp=event.timestamp,
                identifier=event.identifier,
            )
        except PermanentError as exc:
            log.error("report.failed", report_id=row.id, error=str(exc), request_id=exc.request_id)
            with self._autocommit.begin() as conn:
                return _finish(
                    conn,
                    row,
                    ReportStatus.FAILED,
                    now=now,
                    error=str(exc),
                    request_id=exc.request_id,
                )
        except TransientError as exc:
            log.warning("report.retry_later", report_id=row.id, error=str(exc))
            with self._autocommit.begin() as conn:
                rows.store(conn, row.id, {"last_error": str(exc)})
            return result(row, ReportStatus.SENDING, error=str(exc))
        log.info(
            "report.pushed",
            report_id=row.id,
            value=event.value,
            duplicate=delivery.duplicate,
        )
        with self._autocommit.begin() as conn:
            _finish(conn, row, ReportStatus.SENT, now=now, request_id=delivery.request_id)
        return result(row, ReportStatus.SENT, duplicate=delivery.duplicate)

    def _cancel_replaced(self, row: Loaded) -> None:
        """Cancel the events a 'last' decision replaces at its second (see
        :mod:`adapter.domain.latest`), and mark their reports ``superseded``."""
        assert self._gateway is not None
        with self._engine.connect() as conn:
            others = conn.execute(
                sa.select(_REPORTS.c.id, _REPORTS.c.status, _REPORTS.c.identifier).where(
                    _REPORTS.c.id.in_(row.replaces)
                )
            ).all()
        for other in others:
            if other.status in PUSHABLE:
                raise TransientError(
                    f"report {other.id}, sent at the same second, is still being delivered; "
                    f"report {row.id} cancels it once Stripe has it"
                )
            if other.status != ReportStatus.SENT:
                continue
            self._gateway.cancel_meter_event(event_name=row.event_name, identifier=other.identifier)
            with self._autocommit.begin() as conn:
                values = {"status": ReportStatus.SUPERSEDED, "last_error": superseded(row.id)}
                rows.store(conn, other.id, values)
            log.info("report.superseded", report_id=other.id, by=row.id)

    def installation(self, conn: sa.Connection) -> str:
        """This installation's namespace for identifiers: read once, then kept."""
        if self._namespace is None:
            self._namespace = str(conn.execute(sa.select(_INSTALLATION.c.namespace)).scalar_one())
        return self._namespace


def unlinked(account: str) -> str:
    """Why a report waits: its account has no Stripe customer yet."""
    return (
        f"account {account!r} has no Stripe customer yet; the report is pushed as soon as "
        "it is linked (accounts.upsert(..., stripe_customer_id=...), a customer webhook "
        "carrying metadata.metersync_account, or metersync sync)"
    )


def superseded(report_id: int) -> str:
    """Why a report's event was cancelled: a newer value took its second."""
    return (
        f"cancelled at Stripe: report {report_id} sent the period's newer value at the "
        "same second, the last one the billing period had"
    )


def gone(report_id: int) -> PushResult:
    """The outcome for a report that no longer exists: a re-cut moved all its events."""
    return PushResult(report_id, "", "", "", MOVED_STATUS, error=MOVED)


def _reload(conn: sa.Connection, report_id: int) -> Loaded:
    """The report as it now stands (its locks are held already)."""
    row = rows.load(conn, report_id)
    assert row is not None  # locked: it cannot go away
    return row


def _sharing_second(conn: sa.Connection, row: Loaded) -> tuple[int, ...]:
    """Reports of the period held at the decided report's second (a resend of a decision
    that replaces them; see :mod:`adapter.domain.latest`)."""
    return tuple(
        h.id
        for h in rows.history(conn, row)
        if h.sent_timestamp == row.sent_timestamp and h.status in HELD
    )


def _finish(  # noqa: PLR0913  the outcome's columns, as outcome_values takes them
    conn: sa.Connection,
    row: Loaded,
    status: str,
    *,
    now: datetime,
    error: str | None = None,
    request_id: str | None = None,
) -> PushResult:
    rows.store(
        conn, row.id, rows.outcome_values(status, now=now, error=error, request_id=request_id)
    )
    return result(row, status, error=error)


def result(
    row: Loaded, status: str, *, error: str | None = None, duplicate: bool = False
) -> PushResult:
    """What pushing ``row`` did, ending ``status``."""
    value = None if row.sent_value is None else int(row.sent_value)
    return PushResult(
        report_id=row.id,
        account=row.account,
        meter=row.meter,
        event_name=row.event_name,
        status=status,
        value=value,
        timestamp=row.sent_timestamp,
        identifier=row.identifier,
        duplicate=duplicate,
        error=error,
    )
