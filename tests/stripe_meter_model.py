"""An in-memory model of Stripe's meters as reconciliation sees them: meter events kept
once per identifier, summaries by each meter's formula (``sum``: values added up;
``last``: the value of the newest timestamp, a tie to the event received later), and
cancels within 24 hours of receipt. Shared by ``responses`` fakes and the stand-in."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Stripe cancels an event only this long after receiving it.
CANCEL_SECONDS = 24 * 3600


def meter_id(event_name: str) -> str:
    """The id this model gives the meter of ``event_name``."""
    return f"mtr_{event_name}"


def meter_json(event_name: str, formula: str) -> dict[str, Any]:
    """A billing meter object, shaped as Stripe lists it."""
    return {
        "id": meter_id(event_name),
        "object": "billing.meter",
        "created": 1_700_000_000,
        "event_name": event_name,
        "display_name": event_name,
        "status": "active",
        "default_aggregation": {"formula": formula},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
        "livemode": False,
    }


@dataclass
class MeterModel:
    """Events and formulas (by event name); thread-safe."""

    formulas: dict[str, str] = field(default_factory=dict)
    #: Accepted events: ``event_name``, ``identifier``, ``customer``, ``value`` (str),
    #: ``timestamp`` and ``created`` (unix seconds).
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: dict[str, Any]) -> bool:
        """Keep ``event`` unless its identifier is known; whether it was new."""
        with self.lock:
            if any(e["identifier"] == event["identifier"] for e in self.events):
                return False
            self.events.append({"created": int(time.time()), **event})
            return True

    def drop(self, identifier: str) -> bool:
        """Forget an event, as if Stripe never had it (a planted drift)."""
        with self.lock:
            before = len(self.events)
            self.events = [e for e in self.events if e["identifier"] != identifier]
            return len(self.events) < before

    def cancel(self, event_name: str, identifier: str) -> str | None:
        """Cancel an event; ``None`` when done, else Stripe's refusal message."""
        with self.lock:
            for event in self.events:
                if event["identifier"] == identifier and event["event_name"] == event_name:
                    if time.time() - event["created"] > CANCEL_SECONDS:
                        return f"The event {identifier} is older than 24 hours to cancel."
                    self.events.remove(event)
                    return None
        return f"No event found with identifier {identifier}."

    def summary(self, meter: str, customer: str, start: int, end: int) -> float | None:
        """``aggregated_value`` over ``[start, end)``; ``None`` for an unknown meter."""
        names = [name for name in self.formulas if meter_id(name) == meter]
        if not names:
            return None
        name = names[0]
        with self.lock:
            chosen = [
                e
                for e in self.events
                if e["event_name"] == name
                and e["customer"] == customer
                and start <= int(e["timestamp"]) < end
            ]
        if self.formulas[name] == "last":
            if not chosen:
                return 0.0
            newest = max(range(len(chosen)), key=lambda i: (int(chosen[i]["timestamp"]), i))
            return float(chosen[newest]["value"])
        return float(sum(int(e["value"]) for e in chosen))

    def summary_json(self, meter: str, customer: str, start: int, end: int) -> dict[str, Any]:
        """The list Stripe answers ``GET …/event_summaries`` with."""
        value = self.summary(meter, customer, start, end) or 0.0
        return {
            "object": "list",
            "data": [
                {
                    "id": f"mtrusg_{meter}_{start}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": value,
                    "customer": customer,
                    "meter": meter,
                    "start_time": start,
                    "end_time": end,
                    "livemode": False,
                }
            ],
            "has_more": False,
            "url": f"/v1/billing/meters/{meter}/event_summaries",
        }

    def meters_json(self) -> dict[str, Any]:
        """The list Stripe answers ``GET /v1/billing/meters`` with."""
        data = [meter_json(name, formula) for name, formula in self.formulas.items()]
        return {"object": "list", "data": data, "has_more": False, "url": "/v1/billing/meters"}
