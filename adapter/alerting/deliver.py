"""Sending alert firings to their webhooks: signed, retried with backoff, each delivery
held by one sender at a time.

- **Signed or not at all.** Every request carries ``Metersync-Signature`` (see
  :mod:`adapter.alerting.signing`). With no ``METERSYNC_ALERT_WEBHOOK_SECRET``, nothing is
  posted: each due delivery is marked ``failed`` (one attempt, no status) with an error
  saying to set it, so the firing's history shows why no webhook came (a delivery left
  ``pending`` would go out, possibly days late, the moment a secret appears).
- **One sender per delivery.** A sender claims one due delivery at a time: in one short
  transaction it locks the row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write
  transactions queue), counts the attempt and moves ``next_attempt_at`` :data:`LEASE`
  ahead. It posts after that commit, so no transaction waits on a receiver, and no other
  sender sees the delivery as due while it is in flight. A sender that dies mid-post
  leaves the delivery to be sent again once the lease ends.
- **At least once.** A receiver may therefore see a delivery twice (after a timeout, a
  5xx, or a crash); ``Metersync-Delivery`` carries the same delivery id every time, for it
  to drop repeats.
- **Retries.** A 2xx answer delivers. Anything else (a 3xx too: redirects are not
  followed, a body is not re-posted to another host) is retried after :func:`backoff`,
  until :data:`MAX_ATTEMPTS` attempts have failed; the delivery is then ``failed``. The
  last status and error text are kept on the row; the secret is never in them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
import structlog

from adapter.alerting.signing import DELIVERY_HEADER, HEADER, sign
from adapter.store.alert_models import Alert, AlertDelivery, AlertFiring
from adapter.store.models import Account, Meter, table
from config.settings import Settings

log = structlog.get_logger("metersync.alerts")
_DELIVERIES, _FIRINGS, _ALERTS = table(AlertDelivery), table(AlertFiring), table(Alert)
_ACCOUNTS, _METERS = table(Account), table(Meter)

#: The ``type`` of every alert webhook body.
EVENT_TYPE = "metersync.alert.fired"
#: Attempts before a delivery is ``failed``: with :func:`backoff`, about 3.4 hours of
#: retries (10 s doubling to the 1-hour cap), enough to outlast a receiver's deploy or
#: short outage.
MAX_ATTEMPTS = 12
#: Seconds before the first retry; each further retry waits twice as long...
FIRST_BACKOFF = 10.0
#: ...up to this many seconds.
MAX_BACKOFF = 3600.0
#: Up to this fraction is added to each wait, so that deliveries which failed together
#: (one receiver down) do not all come back in the same second.
JITTER = 0.1
#: Seconds one request may spend on each of connecting, writing and reading.
TIMEOUT = 10.0
#: How long a claimed delivery is kept from other senders: far longer than one post.
LEASE = timedelta(minutes=5)
#: Most deliveries one :func:`deliver_due` call sends.
BATCH = 50
#: Longest error text kept on a delivery.
MAX_ERROR = 500
#: Set in place of the secret should an error text ever contain it.
REDACTED = "[redacted]"
UNSIGNED_ERROR = (
    "not sent: alert webhooks are only sent signed; set METERSYNC_ALERT_WEBHOOK_SECRET "
    "(and give the receiver the same secret to verify Metersync-Signature)"
)


class Post(Protocol):
    """Posts one request; raises when no answer came (refused, timed out...)."""

    def __call__(
        self, url: str, *, content: bytes, headers: Mapping[str, str], timeout: float
    ) -> httpx.Response:
        """Send ``content`` to ``url`` and return the answer."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one attempt did to a delivery (``attempts``: every time a sender took it,
    refusals to send included)."""

    delivery_id: int
    firing_id: int
    #: ``delivered``, ``pending`` (to be retried) or ``failed``.
    status: str
    attempts: int
    #: The receiver's HTTP status (``None``: no answer, or nothing sent).
    last_status: int | None
    error: str | None
    next_attempt_at: datetime | None


def http_post(
    url: str, *, content: bytes, headers: Mapping[str, str], timeout: float
) -> httpx.Response:
    """The real sender: one POST with httpx, redirects not followed."""
    return httpx.post(
        url, content=content, headers=dict(headers), timeout=timeout, follow_redirects=False
    )


class FiringRow(Protocol):
    """The ``alert_firing`` columns a body carries (a row, or an ``AlertFiring``)."""

    id: int | None
    source: str
    metric: str
    value: Decimal
    threshold: Decimal
    period_start: datetime | None
    generation: int
    fired_at: datetime
    stripe_alert_id: str | None
    stripe_event_id: str | None


class AlertRow(Protocol):
    """The ``alert`` columns a body carries (a row, or an ``Alert``)."""

    id: int | None
    name: str


def payload_of(
    firing: FiringRow, alert: AlertRow | None, account_name: str | None, meter_name: str | None
) -> dict[str, Any]:
    """The JSON body posted for ``firing`` (``alert``: its alert row, if any)."""
    data: dict[str, Any] = {
        "firing_id": firing.id,
        "alert_id": None if alert is None else alert.id,
        "alert": None if alert is None else alert.name,
        "account": account_name,
        "meter": meter_name,
        "metric": firing.metric,
        "value": _number(firing.value),
        "threshold": _number(firing.threshold),
        "period_start": None if firing.period_start is None else firing.period_start.isoformat(),
        "generation": firing.generation,
        "source": firing.source,
        "fired_at": firing.fired_at.isoformat(),
    }
    if firing.source == "stripe":
        data["stripe_alert_id"] = firing.stripe_alert_id
        data["stripe_event_id"] = firing.stripe_event_id
    created = int(firing.fired_at.timestamp())
    return {"id": f"alrt_fire_{firing.id}", "type": EVENT_TYPE, "created": created, "data": data}


def _number(value: Decimal) -> str:
    """Exact, as a string (like the Dramatiq hook's argument): ``10`` not ``10.000``."""
    return format(Decimal(value).normalize(), "f")


def backoff(attempts: int, *, jitter: float = 0.0) -> timedelta:
    """The wait after the ``attempts``-th failed attempt; ``jitter`` in [0, 1) adds up to
    :data:`JITTER` of it."""
    base = min(FIRST_BACKOFF * 2 ** max(attempts - 1, 0), MAX_BACKOFF)
    return timedelta(seconds=base * (1 + JITTER * jitter))


def deliver_due(
    engine: sa.Engine,
    *,
    settings: Settings,
    now: datetime,
    post: Post = http_post,
    limit: int = BATCH,
) -> list[DeliveryResult]:
    """Send up to ``limit`` pending deliveries due at ``now``, one at a time; what each
    attempt did. Times written advance from ``now`` as the sweep takes real time."""
    key = settings.alert_webhook_secret
    secret = None if key is None else key.get_secret_value()
    started = time.monotonic()
    results: list[DeliveryResult] = []
    for _ in range(limit):
        current = now + timedelta(seconds=time.monotonic() - started)
        claimed = _claim(engine, due=now, until=current + LEASE)
        if claimed is None:
            break
        outcome = _send(claimed, secret=secret, at=current, post=post)
        results.append(_record(engine, claimed, outcome, at=current))
    return results


def _due(now: datetime) -> sa.Select[int]:
    return (
        sa.select(_DELIVERIES.c.id)
        .where(_DELIVERIES.c.status == "pending", _DELIVERIES.c.next_attempt_at <= now)
        .order_by(_DELIVERIES.c.next_attempt_at, _DELIVERIES.c.id)
    )


def _claim(engine: sa.Engine, *, due: datetime, until: datetime) -> sa.Row[Any] | None:
    """Take the oldest due delivery: count the attempt and lease it ``until``; the row
    with its firing, alert, account and meter names (``None``: nothing due)."""
    # SKIP LOCKED: a row another sender is claiming is passed over, not waited for.
    # (SQLite renders no FOR UPDATE; its BEGIN IMMEDIATE queues the claims instead.)
    pick = _due(due).limit(1).with_for_update(skip_locked=True)
    with engine.begin() as conn:
        delivery_id = conn.execute(pick).scalar_one_or_none()
        if delivery_id is None:
            return None
        conn.execute(
            _DELIVERIES.update()
            .where(_DELIVERIES.c.id == delivery_id)
            .values(attempts=_DELIVERIES.c.attempts + 1, next_attempt_at=until)
        )
        return conn.execute(_joined(delivery_id)).one()


def _joined(delivery_id: int) -> sa.Select[Any]:
    """A delivery with everything its body needs, firing columns under their own names."""
    return (
        sa.select(
            _DELIVERIES.c.id.label("delivery_id"),
            _DELIVERIES.c.url,
            _DELIVERIES.c.attempts,
            *_FIRINGS.c,
            _ALERTS.c.name.label("alert_name"),
            _ACCOUNTS.c.name.label("account_name"),
            _METERS.c.name.label("meter_name"),
        )
        .join(_FIRINGS, _FIRINGS.c.id == _DELIVERIES.c.firing_id)
        .outerjoin(_ALERTS, _ALERTS.c.id == _FIRINGS.c.alert_id)
        .outerjoin(_ACCOUNTS, _ACCOUNTS.c.id == _FIRINGS.c.account_id)
        .outerjoin(_METERS, _METERS.c.id == _ALERTS.c.meter_id)
        .where(_DELIVERIES.c.id == delivery_id)
    )


@dataclass(frozen=True, slots=True)
class _Outcome:
    status_code: int | None
    error: str | None
    #: Retrying cannot help (the URL is not http/https).
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.error is None


def _send(claimed: sa.Row[Any], *, secret: str | None, at: datetime, post: Post) -> _Outcome:
    """Post the signed body once; what came of it, with the secret redacted."""
    if secret is None:
        return _Outcome(None, UNSIGNED_ERROR, permanent=True)
    if urlsplit(claimed.url).scheme not in {"http", "https"}:
        return _Outcome(None, "not sent: the URL must be http:// or https://", permanent=True)
    alert = None if claimed.alert_id is None else _AlertRef(claimed.alert_id, claimed.alert_name)
    meter = claimed.meter_name or (claimed.detail or {}).get("meter")
    body = json.dumps(
        payload_of(claimed, alert, claimed.account_name, meter),
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "metersync-alerts",
        HEADER: sign(body, secret=secret, timestamp=int(at.timestamp())),
        DELIVERY_HEADER: str(claimed.delivery_id),
    }
    try:
        response = post(claimed.url, content=body, headers=headers, timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001  any failure of one send is that delivery's outcome, kept as its error
        return _Outcome(None, _clean(f"{type(exc).__name__}: {exc}", secret))
    if 200 <= response.status_code < 300:
        return _Outcome(response.status_code, None)
    text = " ".join(response.text.split())
    return _Outcome(response.status_code, _clean(f"HTTP {response.status_code}: {text}", secret))


@dataclass(slots=True)  # not frozen: AlertRow's attributes are plain ones
class _AlertRef:
    id: int | None
    name: str


def _clean(text: str, secret: str) -> str:
    """``text`` without the secret, cut to :data:`MAX_ERROR` characters."""
    text = text.replace(secret, REDACTED)
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def _record(
    engine: sa.Engine, claimed: sa.Row[Any], outcome: _Outcome, *, at: datetime
) -> DeliveryResult:
    """Write the attempt's outcome on the delivery and log it."""
    attempts = claimed.attempts
    values: dict[str, Any] = {"last_status": outcome.status_code, "last_error": outcome.error}
    retry_at: datetime | None = None
    if outcome.delivered:
        values |= {"status": "delivered", "delivered_at": at}
    elif outcome.permanent or attempts >= MAX_ATTEMPTS:
        values |= {"status": "failed", "next_attempt_at": at}
    else:
        retry_at = at + backoff(attempts, jitter=random.random())  # noqa: S311  spreading retries, not secrecy
        values |= {"status": "pending", "next_attempt_at": retry_at}
    with engine.begin() as conn:
        conn.execute(
            _DELIVERIES.update().where(_DELIVERIES.c.id == claimed.delivery_id).values(**values)
        )
    event = {"delivered": "alert.delivered", "pending": "alert.delivery_retry"}
    log.info(
        event.get(values["status"], "alert.delivery_failed"),
        delivery_id=claimed.delivery_id, firing_id=claimed.id, attempts=attempts,
        http_status=outcome.status_code, host=urlsplit(claimed.url).hostname,
        error=outcome.error,
    )  # fmt: skip
    return DeliveryResult(
        claimed.delivery_id, claimed.id, values["status"], attempts, outcome.status_code,
        outcome.error, retry_at,
    )  # fmt: skip
