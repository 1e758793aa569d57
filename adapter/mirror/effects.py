"""What the mirror's news does to usage reports.

Both functions run inside the apply transaction (``ctx.conn``) of the event that brought
the news, and append the reports they closed to ``ctx.to_push``; the caller pushes them
once the transaction has committed.

- :func:`period_started`: a subscription of the account entered a new billing period.
  Reports that straddle its start and have no decision yet are re-cut there; reports get
  the billing period their window lies in (fractions are carried per period); the old
  period's open reports are closed, so its usage reaches Stripe at once.
- :func:`invoice_drafted`: a draft invoice exists. For a cycle invoice, inside Stripe's
  grace hour, the reports of the period it bills are closed and pushed (the final flush);
  then its metered lines are linked to the reports behind them.

On PostgreSQL the account's affected reports are locked meter by meter in the recorder's
key order, and then the push decision lock of each (account, meter) is taken, so a
racing increment waits and then lands in a report that no longer straddles the boundary,
and no push decides a report of the meter while its period is being settled.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from types import SimpleNamespace

import sqlalchemy as sa
import structlog

from adapter.domain.windows import Period
from adapter.mirror import linking
from adapter.mirror.context import Apply
from adapter.recording import recut
from adapter.store.models import Meter, UsageReport, table, utcnow

__all__ = ["invoice_drafted", "link_invoice", "period_started"]

_REPORTS, _METERS = table(UsageReport), table(Meter)
#: How long Stripe keeps a cycle invoice in draft; usage sent meanwhile still counts.
GRACE = timedelta(hours=1)
#: Re-linking for the mirror when a finalized invoice arrives.
link_invoice = linking.link_invoice
log = structlog.get_logger("metersync.mirror")


def period_started(
    ctx: Apply,
    *,
    account_id: int,
    period: tuple[datetime, datetime],
    previous: tuple[datetime, datetime] | None,
) -> None:
    """The account entered the billing period ``period`` (already stored through
    ``ctx.conn``): re-cut, assign periods, close and queue the old period's reports."""
    conn, (start, end) = ctx.conn, period
    periods = recut.known_periods(conn, account_id)
    if period not in periods:
        periods = sorted([*periods, period])
    # The old period ends where the new one starts, whatever end was stored for it.
    old = None if previous is None else (previous[0], min(previous[1], start))
    _warn_too_late(conn, account_id, start)
    closable: list[int] = []
    for meter_id, aggregation in _meters(conn, account_id, period, old):
        closable += _settle_meter(
            conn,
            recut.MeterKey(account_id, meter_id, aggregation),
            period=period,
            old=old,
            periods=periods,
        )
    pushed = _close(ctx, account_id, closable, before=start)
    log.info(
        "period.started",
        account_id=account_id,
        period_start=start.isoformat(),
        period_end=end.isoformat(),
        to_push=len(pushed),
    )


def _old_side(start: datetime, old: Period | None) -> sa.ColumnElement[bool]:
    """Reports before ``start`` the new period affects: undecided ones (to re-cut or close)
    and those inside the old period that do not carry it yet."""
    wanted = [recut.undecided()]
    if old is not None and old[0] < old[1]:
        wanted.append(sa.and_(_inside(old), _mismatch(old)))
    return sa.and_(_REPORTS.c.window_start < start, sa.or_(*wanted))


def _new_side(period: Period) -> sa.ColumnElement[bool]:
    """Reports inside the new period that do not carry it yet."""
    return sa.and_(_REPORTS.c.window_start >= period[0], _inside(period), _mismatch(period))


def _inside(period: Period) -> sa.ColumnElement[bool]:
    return sa.and_(_REPORTS.c.window_start >= period[0], _REPORTS.c.window_end <= period[1])


def _mismatch(period: Period) -> sa.ColumnElement[bool]:
    """Reports whose stored billing period is not ``period``."""
    return sa.or_(
        _REPORTS.c.period_start.is_(None),
        _REPORTS.c.period_end.is_(None),
        _REPORTS.c.period_start != period[0],
        _REPORTS.c.period_end != period[1],
    )


def _meters(
    conn: sa.Connection, account_id: int, period: Period, old: Period | None
) -> list[tuple[int, str]]:
    """(meter id, aggregation) of every meter with a report to settle, by meter id."""
    query = (
        sa.select(_METERS.c.id, _METERS.c.aggregation)
        .where(
            _METERS.c.id.in_(
                sa.select(_REPORTS.c.meter_id)
                .where(_REPORTS.c.account_id == account_id)
                .where(sa.or_(_old_side(period[0], old), _new_side(period)))
            )
        )
        .order_by(_METERS.c.id)
    )
    return [(int(r.id), str(r.aggregation)) for r in conn.execute(query)]


def _settle_meter(
    conn: sa.Connection,
    key: recut.MeterKey,
    *,
    period: Period,
    old: Period | None,
    periods: list[Period],
) -> list[int]:
    """Re-cut and assign periods for one (account, meter); return its open reports that
    now end at or before the new period's start (to close)."""
    start = period[0]
    mine = (_REPORTS.c.account_id == key.account_id, _REPORTS.c.meter_id == key.meter_id)
    before = []
    for row in recut.lock(conn, *mine, _old_side(start, old)):
        report = SimpleNamespace(**row._asdict())
        if report.identifier is None and report.status in recut.UNDECIDED_STATUSES:
            cut = recut.cut_at_boundaries(conn, report, periods)
            if cut.emptied:
                continue
            report.window_end = cut.window_end
        before.append(report)
    after = recut.lock(conn, *mine, _new_side(period))  # after the re-cut's targets: key order
    if conn.dialect.name == "postgresql":  # the push decision lock (adapter.pushing.pusher)
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:a, :m)"),
            {"a": key.account_id, "m": key.meter_id},
        )
    if old is not None and old[0] < old[1]:
        inside_old = [r for r in before if old[0] <= r.window_start and r.window_end <= old[1]]
        recut.adopt(conn, key, inside_old, old)
    recut.adopt(conn, key, after, period)
    return [r.id for r in before if r.status == "open" and r.window_end <= start]


def _warn_too_late(conn: sa.Connection, account_id: int, start: datetime) -> None:
    """Log the reports straddling ``start`` that were decided before the boundary was
    known: they stay as they are (a documented gap)."""
    rows = conn.execute(
        sa.select(_REPORTS.c.id, _REPORTS.c.status)
        .where(_REPORTS.c.account_id == account_id)
        .where(_REPORTS.c.window_start < start, _REPORTS.c.window_end > start)
        .where(sa.not_(recut.undecided()))
        .order_by(_REPORTS.c.id)
    ).all()
    for row in rows:
        log.warning(
            "period.recut_too_late",
            report_id=row.id,
            status=row.status,
            account_id=account_id,
            boundary=start.isoformat(),
        )


def _close(ctx: Apply, account_id: int, closable: list[int], *, before: datetime) -> list[int]:
    """Close ``closable`` (locked, open); queue every closed report ending by ``before``."""
    conn = ctx.conn
    if closable:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id.in_(closable), _REPORTS.c.status == "open")
            .values(status="closed", closed_at=utcnow())
        )
    waiting = conn.execute(
        sa.select(_REPORTS.c.id)
        .where(_REPORTS.c.account_id == account_id, _REPORTS.c.status == "closed")
        .where(_REPORTS.c.window_end <= before)
        .order_by(_REPORTS.c.window_start, _REPORTS.c.meter_id, _REPORTS.c.id)
    ).scalars()
    return _queue(ctx, waiting)


def _queue(ctx: Apply, report_ids: Iterable[int]) -> list[int]:
    """Append ids to ``ctx.to_push`` once each; return them."""
    ids = [int(i) for i in report_ids]
    ctx.to_push.extend(i for i in ids if i not in ctx.to_push)
    return ids


def invoice_drafted(ctx: Apply, *, invoice_id: str) -> None:
    """A draft invoice is mirrored: for a cycle invoice, flush the usage of the period it
    bills (close and queue the reports, stamp ``flushed_at``); then link its metered
    lines to the reports behind them."""
    conn = ctx.conn
    invoice = linking.load_invoice(conn, invoice_id)
    if invoice is None:
        log.warning("invoice.unknown", invoice_id=invoice_id)
        return
    account_id = linking.account_of_customer(conn, invoice.customer_id)
    if account_id is None:
        log.info("invoice.no_account", invoice_id=invoice_id, customer=invoice.customer_id)
        return
    queued: list[int] = []
    if invoice.status == "draft" and invoice.billing_reason == "subscription_cycle":
        now = utcnow()
        periods = linking.usage_periods(conn, invoice)
        queued = _queue(ctx, linking.flush(conn, account_id, periods, now=now))
        linking.mark_flushed(conn, invoice_id, now=now)
        if invoice.created is not None and now > invoice.created + GRACE:
            # Stripe may have finalised it already; what is pushed now may miss it.
            log.warning("invoice.flush_late", invoice_id=invoice_id, reports=len(queued))
    links = linking.link_invoice(conn, invoice_id)
    log.info("invoice.drafted", invoice_id=invoice_id, to_push=len(queued), links=links)
