"""Everything metersync raises on purpose derives from :class:`MetersyncError`."""

from __future__ import annotations


class MetersyncError(Exception):
    """Base class of every error metersync raises on purpose."""


class InvalidUsage(MetersyncError):
    """Bad input to a usage call: nothing was stored."""


class UnknownAccount(InvalidUsage):
    """The account named in a usage call does not exist."""


class UnknownMeter(InvalidUsage):
    """The meter named in a usage call does not exist."""


class InvalidQuantity(InvalidUsage):
    """A quantity that is negative, not finite, not a number or too precise."""


class InvalidTimestamp(InvalidUsage):
    """A timestamp that is malformed, too far in the future or too old to bill."""


class InvalidPeriod(InvalidUsage):
    """A usage query period that is malformed or empty."""


class NoSubscription(InvalidUsage):
    """The account has no subscription Stripe bills, so there is no invoice to preview."""


class ConfigurationError(MetersyncError):
    """Settings or stored configuration that cannot work (bad schedule, bad meter)."""


class SchemaOutOfDate(MetersyncError):
    """The database schema is behind this version of metersync."""


class RatingError(MetersyncError):
    """A price (or quantity) that cannot be rated as Stripe would; names the price and field."""

    def __init__(self, message: str, *, price: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        #: The Stripe price id, when the price has one.
        self.price = price
        #: The price field (or ``quantity``) that could not be rated.
        self.field = field
