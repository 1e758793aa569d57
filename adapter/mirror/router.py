"""One table from Stripe event type to the handler that mirrors its object.

Types not in the table are stored, marked ``ignored`` and acknowledged. ``invoice.upcoming``
is one of them on purpose: it describes an invoice that does not exist yet and has no id.
"""

from __future__ import annotations

from typing import Any, Protocol

from adapter.mirror import alerts, credit_grants, customers, invoices, meters, prices, subscriptions
from adapter.mirror.context import Apply


class Handler(Protocol):
    """A resource's ``apply``: mirror ``obj`` for an event of type ``kind`` (``"sync"`` for
    ``metersync sync``) and say ``"processed"`` or ``"skipped"``."""

    def __call__(self, ctx: Apply, obj: dict[str, Any], *, kind: str) -> str: ...


_SUBSCRIPTION_EVENTS = (
    "created",
    "updated",
    "deleted",
    "paused",
    "resumed",
    "pending_update_applied",
    "pending_update_expired",
    "trial_will_end",
)
_INVOICE_EVENTS = (
    "created",
    "finalized",
    "paid",
    "payment_failed",
    "payment_succeeded",
    "voided",
    "marked_uncollectible",
    "updated",
    "deleted",
)

#: Event type → handler.
HANDLERS: dict[str, Handler] = {
    **{f"customer.{e}": customers.apply for e in ("created", "updated", "deleted")},
    **{f"customer.subscription.{e}": subscriptions.apply for e in _SUBSCRIPTION_EVENTS},
    **{f"invoice.{e}": invoices.apply for e in _INVOICE_EVENTS},
    **{f"price.{e}": prices.apply for e in ("created", "updated", "deleted")},
    **{
        f"billing.meter.{e}": meters.apply
        for e in ("created", "updated", "deactivated", "reactivated")
    },
    "billing.alert.triggered": alerts.apply,
    **{f"billing.credit_grant.{e}": credit_grants.apply for e in ("created", "updated")},
}

#: Stripe ``object`` name → handler, for objects read by ``metersync sync``.
OBJECT_HANDLERS: dict[str, Handler] = {
    "customer": customers.apply,
    "subscription": subscriptions.apply,
    "invoice": invoices.apply,
    "price": prices.apply,
    "billing.meter": meters.apply,
}


def handles(event_type: str) -> bool:
    """Does metersync mirror events of this type?"""
    return event_type in HANDLERS


def route(ctx: Apply, event_type: str, obj: dict[str, Any]) -> str:
    """Apply ``obj`` from an event of ``event_type``: ``processed``, ``skipped`` or
    ``ignored`` (a type metersync does not mirror)."""
    handler = HANDLERS.get(event_type)
    if handler is None:
        return "ignored"
    return handler(ctx, obj, kind=event_type)
