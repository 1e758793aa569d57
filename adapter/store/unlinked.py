"""Reports waiting for their account's Stripe customer (status ``unlinked``).

Apps record usage right after sign-up, and the Stripe customer often comes seconds later.
A push of a report whose account has no customer yet marks it ``unlinked`` (the decision
is not made yet, so nothing about it is fixed). Linking the account, by whatever path
(``accounts.upsert(..., stripe_customer_id=...)``, a customer webhook carrying
``metadata.metersync_account``, ``metersync sync``), releases the account's waiting
reports in the same transaction: they become ``closed`` again, with no worker attempt
recorded, and the scheduler hands such reports to workers within seconds
(:func:`claim_released`); the webhook path enqueues them at once. A report that waits
longer than Stripe can bill (35 days) ends ``expired``, saying so (:func:`expire_stale`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

from adapter.domain.reporting import PAST_MARGIN
from adapter.store.models import UsageReport, table
from config import defaults

_REPORTS = table(UsageReport)
log = structlog.get_logger("metersync.push")
#: A closed report no worker has touched for this long was released by a link (or its
#: message was lost before the tick's claim): the scheduler hands it over.
RELEASE_GRACE = timedelta(seconds=5)
#: Why a waiting report expired.
EXPIRED = (
    "waited for a Stripe customer until it was older than Stripe bills (35 days); link "
    "accounts to customers promptly (accounts.upsert(..., stripe_customer_id=...) or the "
    "customer's metadata.metersync_account)"
)


def release(conn: sa.Connection, account_id: int, *, now: datetime) -> list[int]:
    """Put the account's ``unlinked`` reports back to ``closed``, in the caller's
    transaction (the one that links the account); return their ids."""
    rows = conn.execute(
        _REPORTS.update()
        .where(_REPORTS.c.account_id == account_id, _REPORTS.c.status == "unlinked")
        .values(status="closed", closed_at=now, attempted_at=None, last_error=None)
        .returning(_REPORTS.c.id)
    ).scalars()
    ids = sorted(rows)
    if ids:
        log.info("report.released", account_id=account_id, reports=len(ids))
    return ids


def claim_released(engine: sa.Engine, *, now: datetime) -> list[int]:
    """Closed reports that no worker was handed within :data:`RELEASE_GRACE` of their
    closing, stamped as handed over now, oldest window first."""
    with engine.begin() as conn:
        rows = list(
            conn.execute(
                _REPORTS.update()
                .where(
                    _REPORTS.c.status == "closed",
                    _REPORTS.c.attempted_at.is_(None),
                    _REPORTS.c.closed_at <= now - RELEASE_GRACE,
                )
                .values(attempted_at=now)
                .returning(_REPORTS.c.id, _REPORTS.c.window_start)
            )
        )
    return [r.id for r in sorted(rows, key=lambda r: (r.window_start, r.id))]


def expire_stale(engine: sa.Engine, *, now: datetime) -> int:
    """End ``unlinked`` reports whose window Stripe can no longer bill."""
    cutoff = now - defaults.STRIPE_MAX_EVENT_AGE + PAST_MARGIN
    with engine.begin() as conn:
        count = conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.status == "unlinked", _REPORTS.c.window_end <= cutoff)
            .values(status="expired", last_error=EXPIRED)
        ).rowcount
    if count:
        log.error("report.expired_unlinked", reports=count)
    return count
