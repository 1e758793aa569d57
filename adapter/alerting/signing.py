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

import hashlib
import hmac
from collections.abc import Sequence

from adapter.errors import ConfigurationError, MetersyncError

#: The request header carrying the signature.
HEADER = "Metersync-Signature"
#: The request header carrying the delivery id, the same on every retry of a delivery.
DELIVERY_HEADER = "Metersync-Delivery"
#: The signature scheme written and verified.
SCHEME = "v1"
#: Longest header parsed; ours carry one timestamp and one 64-character signature.
MAX_HEADER = 8192

_FORMAT = f"{HEADER} header must be 't=<unix seconds>,{SCHEME}=<hex>'"


class SignatureError(MetersyncError):
    """A delivery whose signature cannot be accepted; ``code`` names why."""

    code = "signature_invalid"


class MissingHeader(SignatureError):
    """The request carries no ``Metersync-Signature`` header."""

    code = "signature_missing"


class MalformedHeader(SignatureError):
    """The header is not ``t=<unix seconds>,v1=<hex>``."""

    code = "signature_malformed"


class NoMatch(SignatureError):
    """No ``v1`` signature matches any of the receiver's secrets (or the body changed)."""

    code = "signature_mismatch"


class TimestampTooOld(SignatureError):
    """The signed timestamp is older than the tolerance: possibly a replay."""

    code = "signature_too_old"


class TimestampInFuture(SignatureError):
    """The signed timestamp is further ahead of the receiver's clock than the tolerance."""

    code = "signature_in_future"


def compute(payload: bytes, *, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` signed at ``timestamp`` with ``secret``."""
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, *, secret: str, timestamp: int) -> str:
    """The ``Metersync-Signature`` header value for ``payload`` sent at ``timestamp``."""
    if not secret:
        raise ValueError("refusing to sign with an empty secret")
    return f"t={timestamp},{SCHEME}={compute(payload, secret=secret, timestamp=timestamp)}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a ``Metersync-Signature`` header."""
    if len(header) > MAX_HEADER:
        raise MalformedHeader(f"{HEADER} header is longer than {MAX_HEADER} characters")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise MalformedHeader(_FORMAT)
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            signatures.append(value)
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise MalformedHeader(f"{HEADER} header must carry one 't=<unix seconds>'")
    if not signatures:
        raise MalformedHeader(f"{HEADER} header carries no {SCHEME} signature")
    return int(timestamps[0]), signatures


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
    # One HMAC per secret; every candidate is compared in constant time with each.
    expected = [compute(payload, secret=s, timestamp=timestamp).encode() for s in usable]
    given = [candidate.encode() for candidate in signatures]
    if not any(hmac.compare_digest(g, e) for g in given for e in expected):
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
