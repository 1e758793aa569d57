"""Stripe credit grants (``/v1/billing/credit_grants``): create one, void one.

Mixed into :class:`adapter.gateway.Gateway` and sent through its one retry policy, so both
end like every other call: Stripe's ``billing.credit_grant`` object as the raw JSON it sent
(see :mod:`adapter.gateway.objects`), :class:`TransientError` or :class:`PermanentError`.
Both calls carry the caller's ``Idempotency-Key``: a retried create or void is replayed by
Stripe, never applied twice. Stripe applies a grant only when it makes an invoice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from adapter.gateway.errors import PermanentError
from adapter.gateway.types import aware

if TYPE_CHECKING:
    import stripe

    from adapter.gateway.objects import JsonObject
    from adapter.gateway.policy import RetryPolicy

#: Where Stripe keeps credit grants.
GRANTS_PATH = "/v1/billing/credit_grants"
#: Most prices one grant may be scoped to (Stripe's limit).
MAX_PRICES = 20


def grant_params(  # noqa: PLR0913  a credit grant's fields, by keyword, each its own
    *,
    customer: str,
    amount: int,
    currency: str,
    category: str,
    priority: int,
    effective_at: datetime | None,
    expires_at: datetime | None,
    name: str,
    prices: Sequence[str] | None,
    metadata: Mapping[str, str],
) -> dict[str, Any]:
    """The create parameters, nested as stripe-python form-encodes them
    (``amount[monetary][value]``, ``applicability_config[scope][prices][0][id]``...)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"a credit grant's amount is a positive whole number, got {amount!r}")
    if prices is not None and not 0 < len(prices) <= MAX_PRICES:
        raise ValueError(f"a grant scoped to prices names 1 to {MAX_PRICES}, got {len(prices)}")
    scope: dict[str, Any] = (
        {"price_type": "metered"} if prices is None else {"prices": [{"id": p} for p in prices]}
    )
    params: dict[str, Any] = {
        "customer": customer,
        "amount": {"type": "monetary", "monetary": {"value": amount, "currency": currency.lower()}},
        "applicability_config": {"scope": scope},
        "category": category,
        "priority": priority,
        "name": name,
        "metadata": dict(metadata),
    }
    if effective_at is not None:
        params["effective_at"] = int(aware(effective_at).timestamp())
    if expires_at is not None:
        params["expires_at"] = int(aware(expires_at).timestamp())
    return params


class CreditGranting:
    """Gateway methods that create and void Stripe credit grants."""

    if TYPE_CHECKING:  # provided by Gateway
        _client: stripe.StripeClient
        _policy: RetryPolicy

    def create_credit_grant(  # noqa: PLR0913  a credit grant's fields, by keyword: public API
        self,
        *,
        customer: str,
        amount: int,
        currency: str,
        category: str,
        priority: int,
        effective_at: datetime | None,
        expires_at: datetime | None,
        name: str,
        prices: Sequence[str] | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> JsonObject:
        """Create a monetary credit grant for ``customer``: for every metered price
        (``prices=None``) or only ``prices``; ``effective_at``/``expires_at`` sent only
        when given (Stripe's defaults: now, never)."""
        params = grant_params(
            customer=customer, amount=amount, currency=currency, category=category,
            priority=priority, effective_at=effective_at, expires_at=expires_at, name=name,
            prices=prices, metadata=metadata,
        )  # fmt: skip
        return self._post_grant(GRANTS_PATH, params, idempotency_key=idempotency_key)

    def void_credit_grant(self, grant_id: str, *, idempotency_key: str) -> JsonObject:
        """Void the Stripe credit grant ``grant_id``: what is left of it is no longer
        applied to invoices. Stripe's answer carries ``voided_at``."""
        path = f"{GRANTS_PATH}/{quote(grant_id, safe='')}/void"
        return self._post_grant(path, {}, idempotency_key=idempotency_key)

    def _post_grant(
        self, path: str, params: Mapping[str, Any], *, idempotency_key: str
    ) -> JsonObject:
        """``POST path`` with ``params`` and the idempotency key; the grant Stripe sent."""

        def send() -> JsonObject:
            response = self._client.raw_request(
                "post", path, idempotency_key=idempotency_key, **params
            )
            body = json.loads(response.body)
            if not isinstance(body, dict) or body.get("object") != "billing.credit_grant":
                raise PermanentError(
                    f"POST {path} did not answer with a credit grant as Stripe does; "
                    "check METERSYNC_STRIPE_API_BASE points at Stripe (or a faithful stand-in)"
                )
            return body

        return self._policy.call(send)
