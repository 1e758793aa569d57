"""Stripe Price objects as the API returns them, for the rating tests."""

from __future__ import annotations

from typing import Any


def per_unit_price(
    unit_amount: int | None = None,
    *,
    decimal: str | None = None,
    transform: dict[str, Any] | None = None,
    pid: str = "price_unit",
    currency: str = "usd",
) -> dict[str, Any]:
    """A per-unit Stripe Price object as the API returns it."""
    return {
        "id": pid,
        "object": "price",
        "currency": currency,
        "billing_scheme": "per_unit",
        "tiers_mode": None,
        "unit_amount": unit_amount,
        "unit_amount_decimal": decimal,
        "transform_quantity": transform,
        "custom_unit_amount": None,
    }


def tiered_price(
    mode: str, tiers: list[dict[str, Any]], *, pid: str = "price_tiers", currency: str = "usd"
) -> dict[str, Any]:
    """A tiered Stripe Price object, ``tiers`` expanded."""
    return {
        "id": pid,
        "object": "price",
        "currency": currency,
        "billing_scheme": "tiered",
        "tiers_mode": mode,
        "unit_amount": None,
        "unit_amount_decimal": None,
        "transform_quantity": None,
        "custom_unit_amount": None,
        "tiers": tiers,
    }


def price_tier(
    up_to: int | str | None, unit: int | None = None, flat: int | None = None
) -> dict[str, Any]:
    """One tier as Stripe returns it (``*_decimal`` mirrors the integer, as Stripe does)."""
    return {
        "up_to": up_to,
        "unit_amount": unit,
        "unit_amount_decimal": None if unit is None else str(unit),
        "flat_amount": flat,
        "flat_amount_decimal": None if flat is None else str(flat),
    }
