"""Signing webhook payloads in tests, as Stripe does (stripe-python's test helper, in
small): ``Stripe-Signature: t=<unix>,v1=<hex>``."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

#: The secret integration tests configure.
SECRET = "whsec_test_metersync_secret"


def sign(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for ``payload`` signed with ``secret`` at
    ``timestamp`` (default: now)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256)
    return f"t={stamp},v1={digest.hexdigest()}"


def signed_headers(
    payload: bytes, secret: str = SECRET, *, timestamp: int | None = None
) -> dict[str, str]:
    """Headers of a signed JSON webhook request."""
    return {
        "Stripe-Signature": sign(payload, secret, timestamp=timestamp),
        "Content-Type": "application/json",
    }


def event(
    event_id: str = "evt_1",
    kind: str = "customer.subscription.updated",
    *,
    created: int = 1_767_225_600,
    obj: dict[str, Any] | None = None,
) -> bytes:
    """A minimal Stripe event as the JSON bytes Stripe would post."""
    body = {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": created,
        "livemode": False,
        "api_version": "2025-03-31.basil",
        "data": {"object": obj if obj is not None else {"id": "sub_1", "object": "subscription"}},
    }
    return json.dumps(body).encode()
