"""Allowances per Stripe price, set in metersync: the units a plan includes before overage."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

from adapter.domain import validation
from adapter.errors import InvalidUsage
from adapter.store.audit import audit
from adapter.store.models import PriceAllowance, table, utcnow

_ALLOWANCES = table(PriceAllowance)


class Allowances:
    """Read and change allowances; every change is written to the audit log."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def set(self, price_id: str, quantity: object, *, actor: str = "api") -> Decimal:
        """Include ``quantity`` units of ``price_id`` in its plan (replacing any earlier)."""
        price = _price_id(price_id)
        value = validation.to_quantity(quantity)
        with self._engine.begin() as conn:
            conn.execute(_ALLOWANCES.delete().where(_ALLOWANCES.c.price_id == price))
            conn.execute(
                _ALLOWANCES.insert().values(
                    price_id=price, quantity=value, updated_at=utcnow(), updated_by=actor
                )
            )
            audit(conn, actor, "allowance.set", price, {"quantity": str(value)})
        return value

    def remove(self, price_id: str, *, actor: str = "api") -> bool:
        """Drop the allowance of ``price_id``; whether there was one."""
        price = _price_id(price_id)
        with self._engine.begin() as conn:
            gone = conn.execute(_ALLOWANCES.delete().where(_ALLOWANCES.c.price_id == price))
            if gone.rowcount:
                audit(conn, actor, "allowance.remove", price, {})
        return bool(gone.rowcount)

    def all(self, conn: sa.Connection | None = None) -> dict[str, Decimal]:
        """Every allowance, by price id."""
        query = sa.select(_ALLOWANCES.c.price_id, _ALLOWANCES.c.quantity)
        if conn is None:
            with self._engine.connect() as own:
                rows = own.execute(query).all()
        else:
            rows = conn.execute(query).all()
        return {r.price_id: Decimal(r.quantity) for r in rows}


def _price_id(price_id: object) -> str:
    if not isinstance(price_id, str) or not price_id.strip() or len(price_id) > 255:
        raise InvalidUsage(
            f"a Stripe price id is a non-empty string like 'price_123', got {price_id!r}"
        )
    return price_id.strip()
