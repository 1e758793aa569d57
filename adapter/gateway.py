"""The only module that talks to Stripe: meter events (v1, and the v2 stream) and meters.

Every call goes through one short retry policy (tenacity) and ends in one of three ways:
delivered, :class:`TransientError` (try again later) or :class:`PermanentError` (an operator
must act). :func:`classify` is the whole rule list. The API key never reaches a message.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

import stripe
import structlog
import tenacity

from adapter.errors import ConfigurationError
from adapter.gateway_errors import PermanentError, TransientError

if TYPE_CHECKING:
    from stripe.params.billing import MeterEventCreateParams
    from stripe.params.v2.billing import MeterEventStreamCreateParamsEvent

    from config.settings import Settings

T = TypeVar("T")
Outcome = Literal["delivered", "transient", "permanent"]
Sleep = Callable[[float], None]
Clock = Callable[[], datetime]

log = structlog.get_logger(__name__)

#: Stripe's answer to a second event with an identifier it has seen: the first one landed.
_DUPLICATE_IDENTIFIER = re.compile(r"an event already exists with identifier", re.IGNORECASE)
#: Anything shaped like a secret or restricted key; masked in every message we build.
_SECRET_KEY = re.compile(r"\b([sr]k_(?:test|live)_)[0-9A-Za-z]+")
#: The v2 stream takes at most this many events per request.
STREAM_CHUNK = 100
#: Renew a stream session token this long before Stripe says it expires.
SESSION_MARGIN = timedelta(seconds=60)
#: Session lifetime assumed when Stripe's answer has no readable expiry.
SESSION_LIFETIME = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Stripe has the event: sent now, or already there (``duplicate``)."""

    identifier: str
    request_id: str | None
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StripeMeter:
    """What metersync needs to know about a Stripe billing meter."""

    id: str
    event_name: str
    status: str
    formula: str
    customer_key: str
    value_key: str


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One meter event for the v2 stream."""

    event_name: str
    stripe_customer_id: str
    value: int
    timestamp: datetime
    identifier: str
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"


def classify(error: stripe.StripeError) -> Outcome:
    """What a Stripe error means for the call that raised it; the first matching rule wins."""
    status = error.http_status or 0
    # Stripe refuses a second event with our identifier: the first one was recorded.
    if status == 400 and _DUPLICATE_IDENTIFIER.search(error.user_message or ""):
        return "delivered"
    # Stripe says the same request could succeed if sent again.
    if _should_retry_header(error) == "true":
        return "transient"
    # No answer at all (refused, reset, timed out): Stripe may or may not have it.
    if isinstance(error, stripe.APIConnectionError):
        return "transient"
    # Conflict, rate limit, an expired stream session, Stripe's own trouble.
    if isinstance(error, stripe.RateLimitError | stripe.TemporarySessionExpiredError):
        return "transient"
    if status in (409, 429) or status >= 500:
        return "transient"
    # A refusal: bad value or params, bad key, no permission, no such object, idempotency clash.
    return "permanent"


def idempotency_key(identifier: str) -> str:
    """The ``Idempotency-Key`` for a meter event: a function of its identifier alone."""
    return f"metersync-meter-event:{identifier}"


def mask_secrets(text: str) -> str:
    """``text`` with anything shaped like a Stripe secret key cut down to its prefix."""
    return _SECRET_KEY.sub(r"\1…", text)


def _should_retry_header(error: stripe.StripeError) -> str | None:
    """Stripe's ``Stripe-Should-Retry`` answer (``true``/``false``), whatever the header case."""
    for name, value in (error.headers or {}).items():
        if name.lower() == "stripe-should-retry":
            return str(value).strip().lower()
    return None


def _retry_now(error: BaseException) -> bool:
    """Whether to send the same request again inside this call (tenacity's predicate)."""
    if not isinstance(error, stripe.StripeError) or classify(error) != "transient":
        return False
    if isinstance(error, stripe.APIConnectionError) and not error.should_retry:
        return False  # stripe-python knows its transport: TLS failures do not heal in seconds
    # "false" on a 5xx means Stripe's idempotency layer would only replay the same answer.
    return _should_retry_header(error) != "false"


def _to_error(error: stripe.StripeError, *, attempts: int) -> TransientError | PermanentError:
    """Our error for a Stripe error that ended a call, keeping what Stripe said."""
    said = mask_secrets(" ".join((error.user_message or type(error).__name__).split()))
    what = f"HTTP {error.http_status}" if error.http_status else "no response"
    if error.code:
        what += f" {error.code}"
    if classify(error) == "transient":
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        message = f"Stripe did not take the call after {tries} ({what}): {said}; retry it later"
        kind: type[TransientError | PermanentError] = TransientError
    else:
        request = f" [request {error.request_id}]" if error.request_id else ""
        message = f"Stripe refused the call ({what}): {said}{request}; fix the cause, then retry"
        kind = PermanentError
    return kind(
        message,
        status=error.http_status,
        code=error.code,
        request_id=error.request_id,
        stripe_message=said,
    )


def _log_retry(state: tenacity.RetryCallState) -> None:
    """One line per retry, so slow pushes can be explained from the logs."""
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "stripe.retry",
        attempt=state.attempt_number,
        wait=round(state.upcoming_sleep, 3),
        status=getattr(error, "http_status", None),
        request_id=getattr(error, "request_id", None),
    )


class _RetryPolicy:
    """Up to ``attempts`` tries of one Stripe call, with exponential backoff and jitter."""

    def __init__(
        self, *, attempts: int, max_wait: float, wait: tenacity.wait.WaitBaseT | None, sleep: Sleep
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.attempts = attempts
        self.max_wait = max_wait
        if wait is None:  # exponential backoff with full jitter, capped
            wait = tenacity.wait_random_exponential(multiplier=0.5, max=max_wait)
        self._wait = wait
        self._sleep = sleep

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried on transient Stripe errors; Stripe errors become ours."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_retry_now),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return retrying(fn)
        except stripe.StripeError as error:
            # `from None`: the Stripe error's text is already in ours, with keys masked.
            attempts = int(retrying.statistics.get("attempt_number", 1))
            raise _to_error(error, attempts=attempts) from None


class Gateway:
    """Sends meter events to Stripe and reads its meters, one briefly-retried call at a time."""

    def __init__(
        self,
        *,
        client: stripe.StripeClient,
        attempts: int = 4,
        max_wait: float = 8.0,
        wait: tenacity.wait.WaitBaseT | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._client = client
        self._policy = _RetryPolicy(attempts=attempts, max_wait=max_wait, wait=wait, sleep=sleep)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, attempts: int = 4, max_wait: float = 8.0
    ) -> Gateway:
        """A gateway on a fresh ``StripeClient`` built from settings; we own the retries."""
        if settings.stripe_api_key is None:
            raise ConfigurationError(
                "no Stripe API key configured: set METERSYNC_STRIPE_API_KEY, "
                "or leave it unset to run in dry-run mode without a gateway"
            )
        client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            http_client=stripe.RequestsClient(timeout=settings.stripe_timeout),
            base_addresses={
                "api": settings.stripe_api_base,
                "meter_events": settings.stripe_meter_events_base,
            },
            max_network_retries=0,
        )
        return cls(client=client, attempts=attempts, max_wait=max_wait)

    def __repr__(self) -> str:
        return f"Gateway(attempts={self._policy.attempts}, max_wait={self._policy.max_wait})"

    def send_meter_event(
        self,
        *,
        event_name: str,
        stripe_customer_id: str,
        value: int,
        timestamp: datetime,
        identifier: str,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
    ) -> Delivery:
        """Post one v1 meter event; a duplicate-identifier rejection counts as delivered."""
        params: MeterEventCreateParams = {
            "event_name": event_name,
            "payload": {customer_key: stripe_customer_id, value_key: _whole(value)},
            "timestamp": int(_aware(timestamp).timestamp()),
            "identifier": identifier,
        }

        def attempt() -> Delivery:
            try:
                event = self._client.v1.billing.meter_events.create(
                    params=params, options={"idempotency_key": idempotency_key(identifier)}
                )
            except stripe.InvalidRequestError as error:
                if classify(error) != "delivered":
                    raise
                return Delivery(identifier, error.request_id, duplicate=True)
            response = event.last_response
            return Delivery(identifier, response.request_id if response else None, False)

        return self._policy.call(attempt)

    def list_meters(self) -> list[StripeMeter]:
        """Every meter on the account, all pages (a failed page restarts the listing)."""

        def fetch() -> list[StripeMeter]:
            page = self._client.v1.billing.meters.list(params={"limit": 100})
            return [
                StripeMeter(
                    id=meter.id,
                    event_name=meter.event_name,
                    status=meter.status,
                    formula=meter.default_aggregation.formula,
                    customer_key=meter.customer_mapping.event_payload_key,
                    value_key=meter.value_settings.event_payload_key,
                )
                for meter in page.auto_paging_iter()
            ]

        return self._policy.call(fetch)

    def stream(self, *, clock: Clock | None = None) -> MeterEventStream:
        """A v2 high-volume stream on this gateway's client and retry policy."""
        return MeterEventStream(self, clock=clock)


@dataclass(frozen=True, slots=True)
class _Session:
    """A v2 meter event session: its token and when Stripe stops taking it."""

    token: str
    expires_at: datetime


class MeterEventStream:
    """Sends events on Stripe's v2 meter event stream, holding a fresh session token."""

    def __init__(self, gateway: Gateway, *, clock: Clock | None = None) -> None:
        self._client = gateway._client  # same module: the gateway lends its client and policy
        self._policy = gateway._policy
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
            event.value_key: _whole(event.value),
        },
        "timestamp": rfc3339(event.timestamp),
    }


def rfc3339(moment: datetime) -> str:
    """An aware datetime as the RFC 3339 UTC string v2 endpoints expect."""
    utc = _aware(moment).astimezone(UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_expiry(value: str, *, now: datetime) -> datetime:
    """A session's RFC 3339 ``expires_at``; Stripe's stated lifetime if it cannot be read."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return now + SESSION_LIFETIME
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment.isoformat()} has no time zone; pass an aware datetime")
    return moment


def _whole(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"meter event values are whole numbers, got {value!r}")
    return str(value)
