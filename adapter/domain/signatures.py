"""HMAC-SHA256 request signatures in Stripe's header format, shared by the receiver of
Stripe's webhooks (``Stripe-Signature``) and metersync's own alert webhooks
(``Metersync-Signature``). Pure: standard library only.

A header is ``t=<unix seconds>,v1=<hex>[,v1=<hex>…]``; each ``v1`` is the hex HMAC-SHA256
of ``f"{t}.".encode() + body`` under one secret. Other schemes (Stripe's ``v0``) are
ignored. Every candidate is compared in constant time with every secret's signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from adapter.errors import MetersyncError

#: The signature scheme written and verified.
SCHEME = "v1"
#: Longest header parsed: one timestamp and a few 64-character signatures.
MAX_HEADER = 8192


class SignatureError(MetersyncError):
    """A request whose signature cannot be accepted; ``code`` names why."""

    code = "signature_invalid"


class MissingHeader(SignatureError):
    """The request carries no signature header."""

    code = "signature_missing"


class MalformedHeader(SignatureError):
    """The header is not ``t=<unix seconds>,v1=<hex>…``."""

    code = "signature_malformed"


class NoSignature(SignatureError):
    """The header has a timestamp but no ``v1`` signature."""

    code = "signature_missing_v1"


class NoMatch(SignatureError):
    """No ``v1`` signature matches any secret (or the body was altered)."""

    code = "signature_mismatch"


class TimestampTooOld(SignatureError):
    """The signed timestamp is older than the tolerance: possibly a replay."""

    code = "signature_too_old"


class TimestampInFuture(SignatureError):
    """The signed timestamp is further ahead than allowed: a clock out of sync."""

    code = "signature_in_future"


def compute(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` signed at ``timestamp`` with ``secret``."""
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def parse_header(header: str, *, name: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a signature header called ``name``."""
    if len(header) > MAX_HEADER:
        raise MalformedHeader(f"{name} header is longer than {MAX_HEADER} characters")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise MalformedHeader(f"{name} header must be 't=<unix seconds>,{SCHEME}=<hex>…'")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            signatures.append(value)
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise MalformedHeader(f"{name} header must carry one 't=<unix seconds>'")
    return int(timestamps[0]), signatures


def matches(
    payload: bytes, timestamp: int, signatures: Sequence[str], secrets: Sequence[str]
) -> bool:
    """Whether any candidate signature is any secret's signature of ``payload``."""
    # One HMAC per secret; every candidate is compared in constant time with each.
    expected = [compute(payload, secret, timestamp).encode() for secret in secrets]
    given = [candidate.encode() for candidate in signatures]
    return any(hmac.compare_digest(g, e) for g in given for e in expected)
