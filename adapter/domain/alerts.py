"""Alert rules: what each metric measures and when its threshold is crossed. Pure."""

from __future__ import annotations

from decimal import Decimal

from adapter.domain import validation
from adapter.errors import InvalidUsage

#: ``usage``: a meter's quantity in the period; ``cost``: the rated cost so far (one meter,
#: or all of them), in minor units; ``credit_balance``: credit left, in minor units.
METRICS = ("usage", "cost", "credit_balance")


def crossed(metric: str, value: Decimal, threshold: Decimal) -> bool:
    """Usage and cost cross going up (reached), credit balance going down (at or below)."""
    if metric == "credit_balance":
        return value <= threshold
    return value >= threshold


def check_rule(*, name: object, metric: object, threshold: object, meter: str | None) -> Decimal:
    """Refuse an alert that could never fire or is ambiguous; the threshold as a Decimal."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidUsage(f"an alert needs a name of 1-100 characters, got {name!r}")
    if metric not in METRICS:
        raise InvalidUsage(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "usage" and meter is None:
        raise InvalidUsage("a usage alert names the meter whose quantity it watches (--meter)")
    if metric == "credit_balance" and meter is not None:
        raise InvalidUsage("a credit_balance alert watches the account's credit, not a meter")
    value = validation.to_quantity(threshold)
    if metric in ("cost", "credit_balance") and value != value.to_integral_value():
        raise InvalidUsage(f"a {metric} threshold is whole minor units (cents), got {threshold!r}")
    return value
