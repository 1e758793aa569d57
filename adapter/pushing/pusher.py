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

Statuses: ``open → closed → sending → sent``, or ``dry_run`` (no API key), ``skipped_free``
(free account), ``failed`` (Stripe refused it; ``last_error`` says why), ``expired``
(too old for Stripe). A transient failure leaves the report ``sending`` with the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import structlog

from adapter.domain import latest, reporting
from adapter.domain.windows import period_containing
from adapter.gateway import Gateway, PermanentError, TransientError
from adapter.reading.usage import newest_value
from adapter.recording import recut
from adapter.store.models import (
    Account,
    BillingPeriod,
    Installation,
    Meter,
    UsageReport,
    table,
    utcnow,
)

_REPORTS, _ACCOUNTS, _METERS = table(UsageReport), table(Account), table(Meter)
_INSTALLATION, _PERIODS = table(Installation), table(BillingPeriod)
#: Statuses a push acts on.
PUSHABLE = ("closed", "sending")
#: Statuses of a decided report that Stripe holds, or will once its send goes through.
HELD = frozenset({"closed", "sending", "sent", "dry_run"})
#: Said of a report whose events all moved to reports of a billing period learned late.
MOVED = "its events belong to a later billing period and moved to that period's reports"
log = structlog.get_logger("metersync.push")


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


def close_reports(engine: sa.Engine, *, now: datetime, due_only: bool = True) -> int:
    """Close open reports (only those whose window has ended, when ``due_only``). An
    increment racing this waits on the report's row lock and, once the close commits,
    opens a new report: it is counted in exactly one of them."""
    stmt = _REPORTS.update().where(_REPORTS.c.status == "open")
    if due_only:
        stmt = stmt.where(_REPORTS.c.window_end <= now)
    with engine.begin() as conn:
        return conn.execute(stmt.values(status="closed", closed_at=now)).rowcount


def pushable_ids(engine: sa.Engine) -> list[int]:
    """Closed and in-flight reports, oldest window first. Each (account, meter) still
    comes in window order, while neighbours in the list belong to different pairs, so
    workers do not queue on one pair's lock. (Pushes run concurrently, so this is a
    preference, not a guarantee; a decision accounts for every earlier decision of its
    period, so the values sent add up whatever the order.)"""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(_REPORTS.c.id)
                .where(_REPORTS.c.status.in_(PUSHABLE))
                .order_by(
                    _REPORTS.c.window_start,
                    _REPORTS.c.account_id,
                    _REPORTS.c.meter_id,
                    _REPORTS.c.id,
                )
            ).scalars()
        )


def claim_for_push(engine: sa.Engine, *, now: datetime, grace: timedelta) -> list[int]:
    """The outbox sweep: closed and in-flight reports not handed to a worker within
    ``grace``, oldest window first; each is stamped as handed over now. A report whose
    message was lost is therefore sent again after ``grace``, while one still queued or
    being retried is not enqueued a second time on every tick."""
    quiet = sa.or_(_REPORTS.c.attempted_at.is_(None), _REPORTS.c.attempted_at < now - grace)
    with engine.begin() as conn:
        rows = list(
            conn.execute(
                _REPORTS.update()
                .where(_REPORTS.c.status.in_(PUSHABLE), quiet)
                .values(attempted_at=now)
                .returning(
                    _REPORTS.c.id,
                    _REPORTS.c.window_start,
                    _REPORTS.c.account_id,
                    _REPORTS.c.meter_id,
                )
            )
        )
    rows.sort(key=lambda r: (r.window_start, r.account_id, r.meter_id, r.id))
    return [row.id for row in rows]


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
            row = _load(conn, report_id)
            if row is None:
                return gone(report_id)
            if row.status not in PUSHABLE:
                return _result(row, row.status, error=f"report is {row.status}; nothing to do")
            outcome, row = self._prepare(conn, row, now)
            if outcome is not None:
                return outcome
        return self._send(row, now)

    def _prepare(
        self, conn: sa.Connection, row: Any, now: datetime
    ) -> tuple[PushResult | None, Any]:
        """Settle everything that needs no Stripe call and store the decision; returns the
        outcome if no call is needed, and the report as it now stands."""
        if row.free:
            return _finish(conn, row, "skipped_free", now=now), row
        # No period stored for the account when the row was locked: nothing to settle. A
        # period stored after that is the mirror's to apply, under the row and pair locks
        # this transaction holds, as for one stored just after any check made here.
        if row.identifier is None and row.period_start is None and row.has_periods:
            settled = _settle_period(conn, row)
            if settled is None:
                return _result(row, "moved", error=MOVED), row
            row = settled
        if self._gateway is not None and not row.stripe_customer_id:
            if _customer_now(conn, row.account_id) is None:
                return _finish(conn, row, "unlinked", now=now, error=unlinked(row.account)), row
            row = _load(conn, row.id)  # linked meanwhile (locks held already)
        changes: dict[str, Any] = {"status": "sending", "attempted_at": now}
        replaces: tuple[int, ...] = ()
        if row.identifier is None:
            try:
                decided = self._decide(conn, row, now)
            except ValueError as exc:
                return _finish(conn, row, "failed", now=now, error=str(exc)), row
            if decided is None:
                error = "too old for Stripe (35 days); it can no longer be billed"
                log.error("report.expired", report_id=row.id, account=row.account)
                return _finish(conn, row, "expired", now=now, error=error), row
            columns, replaces = decided
            changes.update(columns)
        elif row.sent_timestamp is not None and reporting.stripe_formula(row.aggregation) == "last":
            replaces = _sharing_second(conn, row)
        conn.execute(_DECIDE, {"report_id": row.id, **changes})
        # The row is locked, so the stored attempts are exactly one more than read.
        fields = {**row._mapping, **changes, "attempts": row.attempts + 1, "replaces": replaces}
        row = SimpleNamespace(**fields)
        return self._settle(conn, row, now), row

    def _settle(self, conn: sa.Connection, row: Any, now: datetime) -> PushResult | None:
        """Finish a decided report that needs no Stripe call; None if it needs one."""
        if self._gateway is None:
            return _finish(conn, row, "dry_run", now=now)
        if row.sent_timestamp is None:  # a 'last' meter already holds this value
            log.info("report.pushed", report_id=row.id, value=int(row.sent_value), call=False)
            return _finish(conn, row, "sent", now=now)
        if row.sent_value == 0 and reporting.stripe_formula(row.aggregation) == "sum":
            log.info("report.pushed", report_id=row.id, value=0, call=False)
            return _finish(conn, row, "sent", now=now)  # adding 0 to a sum needs no call
        return None

    def _decide(
        self, conn: sa.Connection, row: Any, now: datetime
    ) -> tuple[dict[str, Any], tuple[int, ...]] | None:
        """The decision's columns for a report, from the period's history, and the reports
        to cancel before sending it; None when no timestamp Stripe accepts exists any
        more. :func:`_load` took the (account, meter) lock, so no other decision of the
        period is being made meanwhile."""
        history = _history(conn, row)
        if reporting.stripe_formula(row.aggregation) == "last":
            decided = _decide_latest(conn, row, history, now)
        else:
            decided = _decide_sum(row, [h for h in history if h.identifier is not None], now)
        if decided is None:
            return None
        columns, replaces = decided
        columns["identifier"] = reporting.identifier(
            namespace=self._installation(conn),
            account_id=row.account_id,
            meter_id=row.meter_id,
            report_id=row.id,
            window_start=row.window_start,
        )
        return columns, replaces

    def _send(self, row: Any, now: datetime) -> PushResult:
        assert self._gateway is not None
        try:
            if row.replaces:
                self._cancel_replaced(row)
            delivery = self._gateway.send_meter_event(
                event_name=row.event_name,
                stripe_customer_id=row.stripe_customer_id,
                value=int(row.sent_value),
                timestamp=row.sent_timestamp,
                identifier=row.identifier,
            )
        except PermanentError as exc:
            log.error("report.failed", report_id=row.id, error=str(exc), request_id=exc.request_id)
            with self._autocommit.begin() as conn:
                return _finish(
                    conn, row, "failed", now=now, error=str(exc), request_id=exc.request_id
                )
        except TransientError as exc:
            log.warning("report.retry_later", report_id=row.id, error=str(exc))
            with self._autocommit.begin() as conn:
                conn.execute(
                    _REPORTS.update().where(_REPORTS.c.id == row.id).values(last_error=str(exc))
                )
            return _result(row, "sending", error=str(exc))
        log.info(
            "report.pushed",
            report_id=row.id,
            value=int(row.sent_value),
            duplicate=delivery.duplicate,
        )
        with self._autocommit.begin() as conn:
            _finish(conn, row, "sent", now=now, request_id=delivery.request_id)
        return _result(row, "sent", duplicate=delivery.duplicate)

    def _cancel_replaced(self, row: Any) -> None:
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
            if other.status in ("closed", "sending"):
                raise TransientError(
                    f"report {other.id}, sent at the same second, is still being delivered; "
                    f"report {row.id} cancels it once Stripe has it"
                )
            if other.status != "sent":
                continue
            self._gateway.cancel_meter_event(event_name=row.event_name, identifier=other.identifier)
            with self._autocommit.begin() as conn:
                conn.execute(
                    _UPDATE,
                    {
                        "report_id": other.id,
                        "status": "superseded",
                        "last_error": superseded(row.id),
                    },
                )
            log.info("report.superseded", report_id=other.id, by=row.id)

    def _installation(self, conn: sa.Connection) -> str:
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
    return PushResult(report_id, "", "", "", "moved", error=MOVED)


def _load(conn: sa.Connection, report_id: int) -> Any | None:
    """The report with its account and meter, row-locked, and whether the account has any
    billing period stored (``has_periods``); ``None`` if it is gone. On PostgreSQL the
    same statement also takes the (account, meter) decision lock (see
    :func:`_load_statements`)."""
    load = _LOAD["postgresql" if conn.dialect.name == "postgresql" else "any"]
    return conn.execute(load, {"report_id": report_id}).one_or_none()


def _has_periods(account_id: sa.ColumnElement[Any]) -> sa.Label[bool]:
    return sa.exists().where(_PERIODS.c.account_id == account_id).label("has_periods")


def _load_statements() -> dict[str, sa.Select[Any]]:
    """The load, by dialect. On PostgreSQL the subquery's ``FOR UPDATE`` locks the row
    before the outer select calls ``pg_advisory_xact_lock``: rows, then the pair, the
    order the mirror's re-cut takes them in too, so the two cannot deadlock."""
    query = (
        sa.select(
            _REPORTS,
            _ACCOUNTS.c.name.label("account"),
            _ACCOUNTS.c.free,
            _ACCOUNTS.c.stripe_customer_id,
            _METERS.c.name.label("meter"),
            _METERS.c.event_name,
            _METERS.c.aggregation,
            _METERS.c.rounding,
        )
        .join(_ACCOUNTS, _ACCOUNTS.c.id == _REPORTS.c.account_id)
        .join(_METERS, _METERS.c.id == _REPORTS.c.meter_id)
        .where(_REPORTS.c.id == sa.bindparam("report_id"))
        .with_for_update(of=_REPORTS)
    )
    locked = query.subquery("locked")
    pair_lock = sa.func.pg_advisory_xact_lock(locked.c.account_id, locked.c.meter_id)
    return {
        "any": query.add_columns(_has_periods(_REPORTS.c.account_id)),
        "postgresql": sa.select(
            locked, _has_periods(locked.c.account_id), pair_lock.label("pair_lock")
        ),
    }


def _history_statements() -> dict[bool, sa.Select[Any]]:
    """The history query, for a report with a billing period (True) and without: every
    other report of the (account, meter, period), decided or not."""
    return {
        in_period: sa.select(
            _REPORTS.c.id,
            _REPORTS.c.status,
            _REPORTS.c.identifier,
            _REPORTS.c.total,
            _REPORTS.c.events,
            _REPORTS.c.max_value,
            _REPORTS.c.last_value,
            _REPORTS.c.last_at,
            _REPORTS.c.sent_value,
            _REPORTS.c.sent_timestamp,
        )
        .where(
            _REPORTS.c.account_id == sa.bindparam("account_id"),
            _REPORTS.c.meter_id == sa.bindparam("meter_id"),
            _REPORTS.c.period_start == sa.bindparam("period_start")
            if in_period
            else _REPORTS.c.period_start.is_(None),
            _REPORTS.c.id != sa.bindparam("report_id"),
        )
        .order_by(_REPORTS.c.window_start, _REPORTS.c.id)
        for in_period in (True, False)
    }


#: Statements of every push, built once: building one costs more than running it. The
#: updates set the columns named in their parameters.
_LOAD, _HISTORY = _load_statements(), _history_statements()
_UPDATE = _REPORTS.update().where(_REPORTS.c.id == sa.bindparam("report_id"))
_DECIDE = _UPDATE.values(attempts=_REPORTS.c.attempts + 1)


def _settle_period(conn: sa.Connection, row: Any) -> Any | None:
    """A report recorded with no billing period, checked against the periods stored now.

    A process records with a copy of the periods that may predate a renewal the mirror has
    just stored, so a report of the new period can arrive here without one. Deciding it
    so would carry its fraction apart from the rest of the period, and a fraction left
    there is never rounded in: units lost. So, before the decision and under the same
    (account, meter) lock: events past a stored boundary move to the open report of the
    period they belong to, and the report joins the period that holds its window. Returns
    the report as it now stands, or ``None`` when all its events moved (it is deleted).
    """
    periods = recut.known_periods(conn, row.account_id)
    if not periods:
        return row
    cut = recut.cut_at_boundaries(conn, row, periods)  # under _load's (account, meter) lock
    if cut.emptied:
        log.info("report.moved", report_id=row.id, to=list(cut.targets))
        return None
    period = period_containing(row.window_start, periods)
    if period is not None and cut.window_end <= period[1]:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id == row.id)
            .values(period_start=period[0], period_end=period[1])
        )
        log.info("report.period_found", report_id=row.id, period_start=period[0].isoformat())
    elif not cut.targets:
        return row
    return _load(conn, row.id)  # the report as it now stands (locks held already)


def _customer_now(conn: sa.Connection, account_id: int) -> str | None:
    """The account's Stripe customer, read under a share lock: a link committing meanwhile
    is waited for and seen, and one starting later waits until this push has marked its
    report ``unlinked``, so the link's release of such reports cannot miss it."""
    customer: str | None = conn.execute(
        sa.select(_ACCOUNTS.c.stripe_customer_id)
        .where(_ACCOUNTS.c.id == account_id)
        .with_for_update(read=True)
    ).scalar_one()
    return customer


def _sharing_second(conn: sa.Connection, row: Any) -> tuple[int, ...]:
    """Reports of the period held at the decided report's second (a resend of a decision
    that replaces them; see :mod:`adapter.domain.latest`)."""
    return tuple(
        h.id
        for h in _history(conn, row)
        if h.sent_timestamp == row.sent_timestamp and h.status in HELD
    )


def _history(conn: sa.Connection, row: Any) -> list[Any]:
    """Earlier decisions of the same (account, meter, billing period), in window order."""
    params = {"account_id": row.account_id, "meter_id": row.meter_id, "report_id": row.id}
    if row.period_start is not None:
        params["period_start"] = row.period_start
    return list(conn.execute(_HISTORY[row.period_start is not None], params).all())


def _value(report: Any, aggregation: str) -> Decimal:
    """A report's aggregate by the meter's rule."""
    value = {
        "sum": report.total,
        "count": Decimal(report.events),
        "max": report.max_value,
        "last": report.last_value,
    }[aggregation]
    return Decimal(0) if value is None else Decimal(value)


def _decide_sum(
    row: Any, history: list[Any], now: datetime
) -> tuple[dict[str, Any], tuple[int, ...]] | None:
    """A sum or count report: its own total plus the fraction the period carries."""
    closes = row.period_end is not None and (
        row.window_end >= row.period_end or row.period_end <= now
    )
    decision = reporting.value_to_send(
        aggregation=row.aggregation,
        report_value=_value(row, row.aggregation),
        carried_in=reporting.carry_from_history(
            [_value(h, row.aggregation) for h in history], [h.sent_value for h in history]
        ),
        previous_sent_in_period=None,
        closes_period=closes,
        rounding=row.rounding,
    )
    at = _window_second(row, now)
    if at is None:
        return None
    return {"sent_value": Decimal(decision.value), "sent_timestamp": at}, ()


def _decide_latest(
    conn: sa.Connection, row: Any, history: list[Any], now: datetime
) -> tuple[dict[str, Any], tuple[int, ...]] | None:
    """A max or last report: the period's value by the whole history, sent so that
    Stripe's ``last`` meter keeps it (see :mod:`adapter.domain.latest`)."""
    reports = [h for h in history if h.events] + [row]
    if row.aggregation == "max":
        value = max(Decimal(r.max_value) for r in reports if r.max_value is not None)
        preferred = _window_second(row, now) or row.window_start
    else:
        newest_at = max(r.last_at for r in reports if r.last_at is not None)
        tied = [r for r in reports if r.last_at == newest_at]
        value = (
            Decimal(tied[0].last_value)
            if len(tied) == 1
            else newest_value(conn, [r.id for r in tied], newest_at)
        )
        preferred = newest_at
    target = reporting.value_to_send(
        aggregation=row.aggregation,
        report_value=value,
        carried_in=Decimal(0),
        previous_sent_in_period=None,
        closes_period=False,
        rounding=row.rounding,
    ).value
    earlier = [
        latest.Earlier(h.id, int(h.sent_value), h.sent_timestamp, h.status in HELD)
        for h in history
        if h.identifier is not None and h.sent_value is not None
    ]
    decision = latest.decide(
        target=target,
        preferred=preferred,
        earlier=earlier,
        period_start=row.period_start,
        period_end=row.period_end,
        now=now,
    )
    if decision is None:
        return None
    columns = {"sent_value": Decimal(decision.value), "sent_timestamp": decision.timestamp}
    return columns, decision.replaces


def _window_second(row: Any, now: datetime) -> datetime | None:
    """The report's send timestamp inside its window (see ``reporting.send_timestamp``)."""
    return reporting.send_timestamp(
        window_start=row.window_start,
        window_end=row.window_end,
        period_start=row.period_start,
        period_end=row.period_end,
        now=now,
    )


def _finish(
    conn: sa.Connection,
    row: Any,
    status: str,
    *,
    now: datetime,
    error: str | None = None,
    request_id: str | None = None,
) -> PushResult:
    values = outcome_values(status, now=now, error=error, request_id=request_id)
    conn.execute(_UPDATE, {"report_id": row.id, **values})
    return _result(row, status, error=error)


def outcome_values(
    status: str, *, now: datetime, error: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The columns a push's outcome sets."""
    values: dict[str, Any] = {"status": status, "last_error": error}
    if status in ("sent", "dry_run"):
        values["sent_at"] = now
    if request_id:
        values["stripe_request_id"] = request_id
    return values


def _result(
    row: Any, status: str, *, error: str | None = None, duplicate: bool = False
) -> PushResult:
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
