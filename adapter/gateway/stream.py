"""Stripe's v2 high-volume meter event stream, with a cached session token."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import stripe

from adapter.gateway.types import StreamEvent, aware, whole

if TYPE_CHECKING:
    from stripe.params.v2.billing import MeterEventStreamCreateParamsEvent

    from adapter.gateway.policy import RetryPolicy

Clock = Callable[[], datetime]
#: The v2 stream takes at most this many events per request.
STREAM_CHUNK = 100
#: Renew a stream session token this long before Stripe says it expires.
SESSION_MARGIN = timedelta(seconds=60)
#: Session lifetime assumed when Stripe's answer has no readable expiry.
SESSION_LIFETIME = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class _Session:
    """A v2 meter event session: its token and when Stripe stops taking it."""

    token: str
    expires_at: datetime


class MeterEventStream:
    """Sends events on Stripe's v2 meter event stream, holding a fresh session token."""

    def __init__(
        self, client: stripe.StripeClient, policy: RetryPolicy, *, clock: Clock | None = None
    ) -> None:
        # The gateway's own client and retry policy: made by :meth:`Gateway.stream`.
        self._client = client
        self._policy = policy
        self._clock = clock or (lambda: datetime.now(UTC))
        self._session: _Session | None = None
        self._lock = threading.Lock()

    def send(self, events: Iterable[StreamEvent]) -> int:
        """Send events in chunks of at most 100; returns how many were sent.

        Stripe validates stream events later, asynchronously. On an error, some chunks may
        already be sent: send the whole batch again, the identifiers make that safe.
        """
        batch = [_stream_event(event) for event in events]
        for start in range(0, len(batch), STREAM_CHUNK):
            chunk = batch[start : start + STREAM_CHUNK]
            self._policy.call(functools.partial(self._post, chunk))
        return len(batch)

    def _post(self, chunk: list[MeterEventStreamCreateParamsEvent]) -> None:
        """One stream request; on an expired session, renew the token and resend once."""
        token = self._token()
        try:
            self._stream(chunk, token)
        except stripe.TemporarySessionExpiredError:
            self._forget(token)
            self._stream(chunk, self._token())

    def _stream(self, chunk: list[MeterEventStreamCreateParamsEvent], token: str) -> None:
        self._client.v2.billing.meter_event_stream.create(
            params={"events": chunk}, options={"api_key": token}
        )

    def _token(self) -> str:
        """The cached session token, renewed a minute before it expires."""
        with self._lock:
            now = self._clock()
            if self._session is None or now >= self._session.expires_at - SESSION_MARGIN:
                created = self._client.v2.billing.meter_event_session.create()
                expires_at = _parse_expiry(created.expires_at, now=now)
                self._session = _Session(created.authentication_token, expires_at)
            return self._session.token

    def _forget(self, token: str) -> None:
        """Drop a token Stripe called expired, unless another thread already renewed it."""
        with self._lock:
            if self._session is not None and self._session.token == token:
                self._session = None


def _stream_event(event: StreamEvent) -> MeterEventStreamCreateParamsEvent:
    return {
        "event_name": event.event_name,
        "identifier": event.identifier,
        "payload": {
            event.customer_key: event.stripe_customer_id,
            event.value_key: whole(event.value),
        },
        "timestamp": rfc3339(event.timestamp),
    }


def rfc3339(moment: datetime) -> str:
    """An aware datetime as the RFC 3339 UTC string v2 endpoints expect."""
    utc = aware(moment).astimezone(UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_expiry(value: str, *, now: datetime) -> datetime:
    """A session's RFC 3339 ``expires_at``; Stripe's stated lifetime if it cannot be read."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return now + SESSION_LIFETIME
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
