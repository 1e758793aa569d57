"""Stripe's preview of a subscription's next invoice (``POST /v1/invoices/create_preview``),
the reference local rating is checked against to the cent.

Mixed into :class:`adapter.gateway.Gateway` and sent through its one retry policy, so it
ends like every other call: the invoice, :class:`TransientError` or :class:`PermanentError`.
The preview comes back as the raw JSON Stripe sent (see :mod:`adapter.gateway.objects`).

A preview embeds only the first page of its ``lines``. Since ``2025-03-31.basil`` Stripe
has no endpoint that pages through a preview's lines (``GET /v1/invoices/upcoming/lines``
was removed with the upcoming invoice API, and a preview is not an invoice that
``/v1/invoices/{id}/lines`` knows), so a preview with more lines is refused rather than
returned short.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from adapter.gateway.errors import PermanentError

if TYPE_CHECKING:
    import stripe

    from adapter.gateway.objects import JsonObject
    from adapter.gateway.policy import RetryPolicy

#: Where Stripe previews an invoice.
PREVIEW_PATH = "/v1/invoices/create_preview"


class Previewing:
    """Gateway method that asks Stripe for an invoice preview."""

    if TYPE_CHECKING:  # provided by Gateway
        _client: stripe.StripeClient
        _policy: RetryPolicy

    def preview_invoice(self, *, customer: str, subscription: str) -> JsonObject:
        """Stripe's preview of ``subscription``'s next invoice for ``customer``, lines
        included; :class:`PermanentError` when Stripe holds more lines than it sent."""

        def fetch() -> JsonObject:
            response = self._client.raw_request(
                "post", PREVIEW_PATH, customer=customer, subscription=subscription
            )
            body = json.loads(response.body)
            if not isinstance(body, dict) or body.get("object") != "invoice":
                raise PermanentError(
                    f"POST {PREVIEW_PATH} did not answer with an invoice as Stripe does; "
                    "check METERSYNC_STRIPE_API_BASE points at Stripe (or a faithful stand-in)"
                )
            return body

        preview = self._policy.call(fetch)
        lines = preview.get("lines")
        if isinstance(lines, dict) and lines.get("has_more"):
            shown = len(lines.get("data") or [])
            raise PermanentError(
                f"Stripe's invoice preview of subscription {subscription} has more lines "
                f"than the {shown} it sent, and Stripe offers no way to read the rest of a "
                "preview; compare this invoice in the Stripe Dashboard instead"
            )
        return preview
