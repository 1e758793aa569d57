"""The rating side of ``metersync explain``: each priced line of a mirrored invoice rated
locally from its mirrored price and Stripe's quantity, beside Stripe's amount.

A difference is flagged, never hidden: it means a proration, a discount applied on the
line, a price changed after the invoice was made, or a rating rule metersync gets wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.domain.rating import rating
from adapter.errors import RatingError
from adapter.store.mirror_models import InvoiceLine, Price
from adapter.store.models import table
from adapter.store.prices import price_object

_LINES, _PRICES = table(InvoiceLine), table(Price)


@dataclass(frozen=True, slots=True)
class LineRating:
    """One invoice line: Stripe's amount and metersync's rating of the same quantity."""

    line_id: str
    price_id: str
    description: str | None
    quantity: Decimal | None
    currency: str | None
    stripe_amount: int | None
    #: ``None`` when the line could not be rated (``note`` says why).
    rated_amount: int | None
    #: The tier bands behind ``rated_amount`` (JSON-ready).
    bands: tuple[dict[str, Any], ...]
    #: ``None`` when there is nothing to compare.
    agree: bool | None
    note: str | None


def rate_lines(conn: sa.Connection, invoice_id: str) -> tuple[LineRating, ...]:
    """Every line of the invoice that names a price, rated, in line id order."""
    rows = conn.execute(
        sa.select(_LINES, *(c.label(f"p_{c.name}") for c in _PRICES.c))
        .outerjoin(_PRICES, _PRICES.c.id == _LINES.c.price_id)
        .where(_LINES.c.invoice_id == invoice_id, _LINES.c.price_id.is_not(None))
        .order_by(_LINES.c.id)
    ).mappings()
    return tuple(_rate(row) for row in rows)


def _rate(row: Any) -> LineRating:  # noqa: ANN401 - a SQLAlchemy RowMapping
    """Rate one line, or say why it cannot be."""
    found, note = None, None
    if row["p_id"] is None:
        note = f"price {row['price_id']} is not mirrored: run `metersync sync`"
    elif row["quantity"] is None:
        note = "Stripe's line carries no quantity"
    else:
        price = price_object({c.name: row[f"p_{c.name}"] for c in _PRICES.c})
        try:
            found = rating(price, Decimal(row["quantity"]))
        except RatingError as error:
            note = str(error)
    rated = found.amount if found is not None else None
    agree = None if rated is None or row["amount"] is None else rated == row["amount"]
    if agree is False:
        note = (
            f"Stripe billed {row['amount']}, metersync rates {rated}: a proration, a discount "
            "on the line, or a price changed since the invoice was made?"
        )
    return LineRating(
        line_id=row["id"],
        price_id=row["price_id"],
        description=row["description"],
        quantity=row["quantity"],
        currency=row["currency"],
        stripe_amount=row["amount"],
        rated_amount=rated,
        bands=tuple(found.to_dict()["bands"]) if found is not None else (),
        agree=agree,
        note=note,
    )
