"""Reading a Stripe Price object for rating: every field checked, amounts as Decimal.

Anything that cannot be rated as Stripe would (a customer-chosen amount, an unknown
``billing_scheme``, tiers that were not expanded) raises :class:`RatingError` naming the
price and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, NamedTuple

from adapter.errors import RatingError

ZERO = Decimal(0)
#: Stripe's documented limit on decimal amounts: at most 12 decimal places.
MAX_PLACES = 12


class Tier(NamedTuple):
    """One tier: inclusive upper bound (``None`` = inf), unit and flat amounts in minor units."""

    up_to: Decimal | None
    unit: Decimal
    flat: Decimal


class Terms(NamedTuple):
    """What rating needs of a price: ``scheme`` is per_unit, graduated or volume."""

    price_id: str | None
    currency: str | None
    scheme: str
    tiers: tuple[Tier, ...]
    divide_by: int | None = None
    rounding: str = ROUND_CEILING


def parse(price: Mapping[str, Any]) -> Terms:
    """Check every field rating needs and parse it."""
    raw_id, raw_currency = price.get("id"), price.get("currency")
    pid = raw_id if isinstance(raw_id, str) else None
    currency = raw_currency if isinstance(raw_currency, str) else None
    if price.get("custom_unit_amount") is not None:
        raise error(pid, "custom_unit_amount", "customer-chosen amounts cannot be rated")
    scheme = price.get("billing_scheme") or "per_unit"
    if scheme == "per_unit":
        unit = _amount(pid, price, "unit_amount", required=True)
        divide_by, rounding = _transform(pid, price.get("transform_quantity"))
        tiers = (Tier(None, unit, ZERO),)
        return Terms(pid, currency, "per_unit", tiers, divide_by, rounding)
    if scheme != "tiered":
        problem = f"unknown value {scheme!r}; expected per_unit or tiered"
        raise error(pid, "billing_scheme", problem)
    if price.get("transform_quantity") is not None:
        raise error(pid, "transform_quantity", "Stripe does not combine it with tiers")
    mode = price.get("tiers_mode")
    if mode not in ("graduated", "volume"):
        problem = f"unknown value {mode!r}; expected graduated or volume"
        raise error(pid, "tiers_mode", problem)
    return Terms(pid, currency, mode, tuple(_tiers(pid, price.get("tiers"))))


def _transform(pid: str | None, transform: Any) -> tuple[int | None, str]:  # noqa: ANN401 - a JSON value of any shape, checked here
    """Packages: ``divide_by`` and the rounding of ``quantity / divide_by`` (up or down)."""
    if transform is None:
        return None, ROUND_CEILING
    if not isinstance(transform, Mapping):
        raise error(pid, "transform_quantity", "expected an object with divide_by and round")
    divide_by = transform.get("divide_by")
    if isinstance(divide_by, bool) or not isinstance(divide_by, int) or divide_by <= 0:
        problem = f"expected a positive integer, got {divide_by!r}"
        raise error(pid, "transform_quantity.divide_by", problem)
    mode = transform.get("round")
    if mode not in ("up", "down"):
        problem = f"unknown value {mode!r}; expected up or down"
        raise error(pid, "transform_quantity.round", problem)
    return divide_by, ROUND_CEILING if mode == "up" else ROUND_FLOOR


def _tiers(pid: str | None, raw: Any) -> list[Tier]:  # noqa: ANN401 - a JSON value of any shape, checked here
    """Parse and check ``tiers``: ascending ``up_to``, the last one open."""
    if raw is None:
        raise error(
            pid,
            "tiers",
            "missing: Stripe sends tiers only when expanded; run `metersync sync` "
            "or read the price with expand[]=tiers",
        )
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        raise error(pid, "tiers", "expected a non-empty list of tiers")
    tiers: list[Tier] = []
    previous = ZERO
    for index, tier in enumerate(raw):
        where = f"tiers[{index}]"
        if not isinstance(tier, Mapping):
            raise error(pid, where, "expected an object")
        up_to = _up_to(pid, where, tier.get("up_to"))
        last = index == len(raw) - 1
        if (up_to is None) != last:
            raise error(
                pid, f"{where}.up_to", "only the last tier may be open (null), and it must be"
            )
        if up_to is not None and up_to <= previous:
            raise error(pid, f"{where}.up_to", f"{up_to} does not rise above {previous}")
        unit = _amount(pid, tier, "unit_amount", where=where)
        flat = _amount(pid, tier, "flat_amount", where=where)
        tiers.append(Tier(up_to, unit, flat))
        previous = up_to if up_to is not None else previous
    return tiers


def _up_to(pid: str | None, where: str, value: Any) -> Decimal | None:  # noqa: ANN401 - a JSON value of any shape, checked here
    """A tier's inclusive upper bound; ``None`` for ``null`` or ``"inf"``."""
    if value is None or value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise error(
            pid, f"{where}.up_to", f"expected a positive integer, null or 'inf', got {value!r}"
        )
    return Decimal(value)


def _amount(
    pid: str | None, obj: Mapping[str, Any], field: str, *, where: str = "", required: bool = False
) -> Decimal:
    """``field_decimal`` (a string) or else ``field`` (an integer), in minor units."""
    prefix = f"{where}." if where else ""
    decimal_field = f"{field}_decimal"
    text = obj.get(decimal_field)
    read = decimal_field if text is not None else field
    if text is not None:
        value = _decimal(pid, f"{prefix}{decimal_field}", text)
    else:
        whole = obj.get(field)
        if whole is None:
            if required:
                raise error(pid, f"{prefix}{field}", f"missing (and no {decimal_field})")
            return ZERO
        if isinstance(whole, bool) or not isinstance(whole, int):
            raise error(pid, f"{prefix}{field}", f"expected an integer, got {whole!r}")
        value = Decimal(whole)
    if value < 0:
        raise error(pid, f"{prefix}{read}", f"negative amount {value}")
    return value


def _decimal(pid: str | None, field: str, text: Any) -> Decimal:  # noqa: ANN401 - a JSON value of any shape, checked here
    """A decimal amount string with at most 12 places."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise error(pid, field, f"expected a decimal string, got {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise error(pid, field, f"not a decimal number: {text!r}") from None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or (isinstance(exponent, int) and -exponent > MAX_PLACES):
        raise error(pid, field, f"{text!r} is not finite or has more than {MAX_PLACES} places")
    return value


def quantity_of(pid: str | None, quantity: Any) -> Decimal:  # noqa: ANN401 - checked here
    """An int, Decimal or numeric string as a finite Decimal; float is refused (inexact)."""
    if isinstance(quantity, bool | float):
        raise error(
            pid, "quantity", f"{quantity!r}: pass an int, Decimal or numeric string, not a float"
        )
    if isinstance(quantity, Decimal):
        value = quantity
    elif isinstance(quantity, int | str):
        try:
            value = Decimal(quantity)
        except InvalidOperation:
            raise error(pid, "quantity", f"not a number: {quantity!r}") from None
    else:
        raise error(
            pid,
            "quantity",
            f"expected an int, Decimal or numeric string, got {type(quantity).__name__}",
        )
    if not value.is_finite():
        raise error(pid, "quantity", f"not finite: {quantity!r}")
    return value


def error(pid: str | None, field: str, problem: str) -> RatingError:
    """A :class:`RatingError` naming the price and the field."""
    return RatingError(
        f"cannot rate price {pid or '(no id)'}: {field}: {problem}", price=pid, field=field
    )
