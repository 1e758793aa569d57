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

import hashlib
import hmac
import time
from collections.abc import Sequence

from adapter.errors import ConfigurationError, MetersyncError

#: The only signature scheme verified (Stripe's ``v0`` is for test fixtures).
SCHEME = "v1"
#: How far ahead of this machine's clock a signed timestamp may be, in seconds. Stripe
#: signs when it sends, so only clock error puts ``t`` in the future; 300 s forgives the
#: same clock error in either direction as Stripe's default tolerance does for delay.
FUTURE_SKEW = 300
#: Longest header parsed; Stripe's carry one timestamp and a few 64-character signatures.
MAX_HEADER = 8192

_CLOCK_HINT = "check that this server's clock is synchronised (NTP)"


class SignatureError(MetersyncError):
    """A webhook delivery whose signature cannot be accepted; ``code`` names why."""

    code = "signature_invalid"


class MissingHeader(SignatureError):
    """The request carries no ``Stripe-Signature`` header."""

    code = "signature_missing"


class MalformedHeader(SignatureError):
    """The header is not ``t=<unix seconds>,v1=<hex>…``."""

    code = "signature_malformed"


class NoSignature(SignatureError):
    """The header has a timestamp but no ``v1`` signature."""

    code = "signature_missing_v1"


class NoMatch(SignatureError):
    """No ``v1`` signature matches any configured secret (or the body was altered)."""

    code = "signature_mismatch"


class TimestampTooOld(SignatureError):
    """The signed timestamp is older than the tolerance: possibly a replay."""

    code = "signature_too_old"


class TimestampInFuture(SignatureError):
    """The signed timestamp is further ahead than :data:`FUTURE_SKEW` allows."""

    code = "signature_in_future"


def compute(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` signed at ``timestamp`` with ``secret``."""
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a ``Stripe-Signature`` header."""
    if len(header) > MAX_HEADER:
        raise MalformedHeader(f"Stripe-Signature header is longer than {MAX_HEADER} characters")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise MalformedHeader("Stripe-Signature header must be 't=<unix seconds>,v1=<hex>…'")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            signatures.append(value)
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise MalformedHeader("Stripe-Signature header must carry one 't=<unix seconds>'")
    return int(timestamps[0]), signatures


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
    # One HMAC per secret; every candidate is compared in constant time with each.
    expected = [compute(payload, secret, timestamp).encode() for secret in secrets]
    given = [candidate.encode() for candidate in signatures]
    if not any(hmac.compare_digest(g, e) for g in given for e in expected):
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
