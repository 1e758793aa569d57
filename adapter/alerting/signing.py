"""Signing metersync's outbound alert webhooks, and verifying them as a receiver should.
Pure: standard library only, no I/O.

Every delivery carries the header :data:`HEADER` (``Metersync-Signature``) in Stripe's
format: ``t=<unix seconds>,v1=<hex>``, where ``v1`` is the hex HMAC-SHA256 of
``f"{t}.".encode() + body`` under ``METERSYNC_ALERT_WEBHOOK_SECRET``. A receiver:

1. reads the raw body (before any JSON parsing: one changed byte breaks the signature);
2. calls :func:`verify` with every secret it accepts (old and new while rotating);
3. drops a delivery whose ``Metersync-Delivery`` id it has already processed: a delivery
   is sent at least once, and again after a timeout or a 5xx answer.

The signature is checked before the timestamp, so a timestamp error always describes an
authentic delivery that is too old or too new, never a forgery.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapter.domain.signatures import (
    MAX_HEADER,
    SCHEME,
    MalformedHeader,
    MissingHeader,
    NoMatch,
    SignatureError,
    TimestampInFuture,
    TimestampTooOld,
    matches,
)
from adapter.domain.signatures import compute as _compute
from adapter.domain.signatures import parse_header as _parse
from adapter.errors import ConfigurationError

__all__ = [
    "DELIVERY_HEADER",
    "HEADER",
    "MAX_HEADER",
    "SCHEME",
    "MalformedHeader",
    "MissingHeader",
    "NoMatch",
    "SignatureError",
    "TimestampInFuture",
    "TimestampTooOld",
    "compute",
    "parse_header",
    "sign",
    "verify",
]
#: The request header carrying the signature.
HEADER = "Metersync-Signature"
#: The request header carrying the delivery id, the same on every retry of a delivery.
DELIVERY_HEADER = "Metersync-Delivery"


def compute(payload: bytes, *, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` signed at ``timestamp`` with ``secret``."""
    return _compute(payload, secret, timestamp)


def sign(payload: bytes, *, secret: str, timestamp: int) -> str:
    """The ``Metersync-Signature`` header value for ``payload`` sent at ``timestamp``."""
    if not secret:
        raise ValueError("refusing to sign with an empty secret")
    return f"t={timestamp},{SCHEME}={compute(payload, secret=secret, timestamp=timestamp)}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a ``Metersync-Signature`` header."""
    timestamp, signatures = _parse(header, name=HEADER)
    if not signatures:
        raise MalformedHeader(f"{HEADER} header carries no {SCHEME} signature")
    return timestamp, signatures


def verify(
    payload: bytes,
    header: str | None,
    *,
    secrets: Sequence[str],
    tolerance: int,
    now: int,
) -> int:
    """Accept the delivery, returning its signed timestamp, or raise the
    :class:`SignatureError` saying why not. ``tolerance`` bounds the clock difference
    either way, in seconds (300 is a good default)."""
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise ConfigurationError(
            "no secret to verify with; pass METERSYNC_ALERT_WEBHOOK_SECRET's value"
        )
    if header is None or not header.strip():
        raise MissingHeader(f"no {HEADER} header; is this request from metersync?")
    timestamp, signatures = parse_header(header)
    if not matches(payload, timestamp, signatures, usable):
        raise NoMatch(
            f"no {SCHEME} signature matches a configured secret; check that the secret is "
            "metersync's METERSYNC_ALERT_WEBHOOK_SECRET and that the raw body is verified"
        )
    if timestamp < now - tolerance:
        raise TimestampTooOld(
            f"signed {now - timestamp}s ago, more than the {tolerance}s tolerance; "
            "a replay, or a clock out of sync (NTP)"
        )
    if timestamp > now + tolerance:
        raise TimestampInFuture(
            f"signed {timestamp - now}s in the future, more than the {tolerance}s "
            "tolerance; check that both clocks are synchronised (NTP)"
        )
    return timestamp
