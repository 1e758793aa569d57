"""How one Stripe call ends: delivered, :class:`TransientError` or :class:`PermanentError`.

:func:`classify` is the whole rule list; :class:`RetryPolicy` retries one call briefly
(tenacity) and turns Stripe's errors into ours. The API key never reaches a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, TypeVar

import stripe
import structlog
import tenacity

from adapter.gateway.errors import PermanentError, TransientError

T = TypeVar("T")
Outcome = Literal["delivered", "transient", "permanent"]
Sleep = Callable[[float], None]

log = structlog.get_logger("adapter.gateway")

#: Stripe's answer to a second event with an identifier it has seen: the first one landed.
_DUPLICATE_IDENTIFIER = re.compile(r"an event already exists with identifier", re.IGNORECASE)
#: Anything shaped like a secret or restricted key; masked in every message we build.
_SECRET_KEY = re.compile(r"\b([sr]k_(?:test|live)_)[0-9A-Za-z]+")


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


class RetryPolicy:
    """Up to ``attempts`` tries of one Stripe call, with exponential backoff and jitter."""

    def __init__(
        self,
        *,
        attempts: int,
        max_wait: float,
        wait: tenacity.wait.WaitBaseT | None,
        sleep: Sleep,
        throttle: Callable[[], None] | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.attempts = attempts
        self.max_wait = max_wait
        #: Called before every HTTP attempt, retries included, so a shared rate limit
        #: also paces the retry of a 429; it may raise :class:`TransientError`.
        self.throttle = throttle
        if wait is None:  # exponential backoff with full jitter, capped
            wait = tenacity.wait_random_exponential(multiplier=0.5, max=max_wait)
        #: The backoff between attempts, and how it sleeps (tests pass fakes).
        self.wait: tenacity.wait.WaitBaseT = wait
        self.sleep = sleep

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried on transient Stripe errors; Stripe errors become ours."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self.wait,
            retry=tenacity.retry_if_exception(_retry_now),
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        throttle = self.throttle

        def attempt() -> T:
            if throttle is not None:
                throttle()
            return fn()

        try:
            return retrying(attempt)
        except stripe.StripeError as error:
            # `from None`: the Stripe error's text is already in ours, with keys masked.
            attempts = int(retrying.statistics.get("attempt_number", 1))
            raise _to_error(error, attempts=attempts) from None
