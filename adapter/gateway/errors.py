"""Errors the Stripe gateway raises: retry later, or give up and tell an operator."""

from __future__ import annotations

from adapter.errors import MetersyncError


class StripeCallError(MetersyncError):
    """A call to Stripe that did not succeed; carries what Stripe said about it."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        stripe_message: str | None = None,
    ) -> None:
        super().__init__(message)
        #: HTTP status of the last response, ``None`` when no response arrived.
        self.status = status
        #: Stripe's error code (``resource_missing``, ``idempotency_error``...), if any.
        self.code = code
        #: Stripe's ``Request-Id``, to quote to Stripe support or find in the dashboard logs.
        self.request_id = request_id
        #: Stripe's own message, with any API key masked.
        self.stripe_message = stripe_message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self)!r}, status={self.status!r}, "
            f"code={self.code!r}, request_id={self.request_id!r})"
        )


class TransientError(StripeCallError):
    """Stripe could not take the call now (network, 409, 429, 5xx): retry it later."""


class PermanentError(StripeCallError):
    """Stripe refused the call and sending it again will not help: fix it, then retry."""
