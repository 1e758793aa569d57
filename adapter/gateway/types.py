"""What the gateway hands back, and the values it checks before sending."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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


def aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment.isoformat()} has no time zone; pass an aware datetime")
    return moment


def whole(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"meter event values are whole numbers, got {value!r}")
    return str(value)
