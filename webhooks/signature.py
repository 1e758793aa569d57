"""Verifying Stripe's ``Stripe-Signature`` header. Pure: standard library only, no I/O.

The header is ``t=<unix seconds>,v1=<hex>[,v1=<hex>…]`` (other schemes, such as Stripe's
test-only ``v0``, are ignored). Each ``v1`` is the hex HMAC-SHA256 of ``f"{t}.{body}"``
under one of the endpoint's signing secrets. A delivery is accepted when **any** ``v1``
matches **any** configured secret, so a secret can be rolled without downtime.

The signature is checked before the timestamp, so a timestamp error always describes an
authentic delivery that is too old or too new, never a forgery. A timestamp older than
``tolerance`` is refused (replay protection); one more than :data:`FUTURE_SKEW` seconds
ahead of this machine's clock is refused too, so that a signed request cannot stay
replayable for longer than ``tolerance + FUTURE_SKEW`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from adapter.domain.signatures import (
    MAX_HEADER,
    SCHEME,
    MalformedHeader,
    MissingHeader,
    NoMatch,
    NoSignature,
    SignatureError,
    TimestampInFuture,
    TimestampTooOld,
    compute,
    matches,
)
from adapter.domain.signatures import parse_header as _parse
from adapter.errors import ConfigurationError

__all__ = [
    "FUTURE_SKEW",
    "MAX_HEADER",
    "SCHEME",
    "MalformedHeader",
    "MissingHeader",
    "NoMatch",
    "NoSignature",
    "SignatureError",
    "TimestampInFuture",
    "TimestampTooOld",
    "compute",
    "parse_header",
    "verify",
]
#: How far ahead of this machine's clock a signed timestamp may be, in seconds. Stripe
#: signs when it sends, so only clock error puts ``t`` in the future; 300 s forgives the
#: same clock error in either direction as Stripe's default tolerance does for delay.
FUTURE_SKEW = 300

_CLOCK_HINT = "check that this server's clock is synchronised (NTP)"


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a ``Stripe-Signature`` header."""
    return _parse(header, name="Stripe-Signature")


def verify(  # noqa: PLR0913  independent keyword-only options of the public verify()
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int,
    now: int | None = None,
    future: int = FUTURE_SKEW,
) -> int:
    """Accept the delivery, returning its signed timestamp, or raise the
    :class:`SignatureError` saying why not."""
    if not secrets:
        raise ConfigurationError(
            "no webhook signing secret configured; set METERSYNC_STRIPE_WEBHOOK_SECRET"
        )
    if header is None or not header.strip():
        raise MissingHeader("no Stripe-Signature header; is this request from Stripe?")
    timestamp, signatures = parse_header(header)
    if not signatures:
        raise NoSignature(f"Stripe-Signature header carries no {SCHEME} signature")
    if not matches(payload, timestamp, signatures, secrets):
        raise NoMatch(
            "no v1 signature matches a configured webhook secret; check that "
            "METERSYNC_STRIPE_WEBHOOK_SECRET is this endpoint's signing secret and that "
            "the body reaches metersync unmodified"
        )
    current = int(time.time()) if now is None else now
    if timestamp < current - tolerance:
        raise TimestampTooOld(
            f"signed {current - timestamp}s ago, more than the {tolerance}s tolerance "
            f"(METERSYNC_WEBHOOK_TOLERANCE); {_CLOCK_HINT}"
        )
    if timestamp > current + future:
        raise TimestampInFuture(
            f"signed {timestamp - current}s in the future, more than the {future}s "
            f"allowed; {_CLOCK_HINT}"
        )
    return timestamp
