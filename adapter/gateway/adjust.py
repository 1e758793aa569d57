"""Reconciliation calls: Stripe's meter event summaries, and cancelling a meter event.

Both are mixed into :class:`adapter.gateway.Gateway` and go through its one retry policy,
so they end like every other call: a value, :class:`TransientError` or
:class:`PermanentError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from adapter.gateway.errors import PermanentError

if TYPE_CHECKING:
    import stripe
    from stripe.params.billing import MeterEventAdjustmentCreateParams

    from adapter.gateway.objects import JsonObject
    from adapter.gateway.policy import RetryPolicy

#: Most summary pages read for one call; one is the norm (no ``value_grouping_window``).
MAX_SUMMARY_PAGES = 10


def cancel_key(identifier: str) -> str:
    """The ``Idempotency-Key`` of cancelling the event ``identifier``: a function of it
    alone, so a retried cancel is replayed, never applied twice."""
    return f"metersync-cancel:{identifier}"


class Adjusting:
    """Gateway methods that read meter event summaries and cancel meter events."""

    if TYPE_CHECKING:  # provided by Gateway / ObjectReader
        _client: stripe.StripeClient
        _policy: RetryPolicy

        def _get(self, path: str, query: Mapping[str, Any]) -> JsonObject: ...

    def meter_event_summary(
        self, *, meter_id: str, customer: str, start: datetime, end: datetime
    ) -> float:
        """Stripe's ``aggregated_value`` of ``meter_id`` for ``customer`` over
        ``[start, end)``. Both ends must be whole minutes (Stripe refuses others); the
        value is a float and lags Stripe's asynchronous processing."""
        begin, finish = _minute("start", start), _minute("end", end)
        if finish <= begin:
            raise ValueError(f"empty summary range [{start.isoformat()}, {end.isoformat()})")
        path = f"/v1/billing/meters/{quote(meter_id, safe='')}/event_summaries"
        query: dict[str, Any] = {
            "customer": customer,
            "start_time": begin,
            "end_time": finish,
            "limit": 100,
        }
        total = 0.0
        for _ in range(MAX_SUMMARY_PAGES):
            body = self._get(path, query)
            data = body.get("data")
            if body.get("object") != "list" or not isinstance(data, list):
                raise PermanentError(
                    f"GET {path} did not answer with a list as Stripe does; check "
                    "METERSYNC_STRIPE_API_BASE points at Stripe (or a faithful stand-in)"
                )
            total += sum(float(item.get("aggregated_value") or 0) for item in data)
            if not body.get("has_more") or not data:
                return total
            query["starting_after"] = data[-1]["id"]
        return total

    def cancel_meter_event(self, *, event_name: str, identifier: str) -> None:
        """Cancel the meter event ``identifier`` of ``event_name`` (a meter event
        adjustment). Stripe allows it within 24 hours of receiving the event; later, or
        for an identifier it does not hold, it refuses: :class:`PermanentError`."""
        params: MeterEventAdjustmentCreateParams = {
            "event_name": event_name,
            "type": "cancel",
            "cancel": {"identifier": identifier},
        }

        def attempt() -> None:
            self._client.v1.billing.meter_event_adjustments.create(
                params=params, options={"idempotency_key": cancel_key(identifier)}
            )

        self._policy.call(attempt)


def _minute(name: str, at: datetime) -> int:
    """``at`` as unix seconds, refusing a naive or not minute-aligned instant."""
    if at.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {at!r}")
    seconds = int(at.astimezone(UTC).timestamp())
    if seconds % 60 or at.microsecond:
        raise ValueError(f"{name} must be a whole minute for Stripe's summaries, got {at}")
    return seconds
