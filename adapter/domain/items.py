"""Usage items: parsing one item of a call, and what recording returns. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from adapter.domain import validation
from adapter.domain.windows import Window
from adapter.errors import InvalidUsage

#: The fields a usage item may carry.
ITEM_FIELDS = frozenset(
    {"account", "meter", "quantity", "timestamp", "idempotency_key", "dimensions"}
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What recording one event returns. ``duplicate`` means nothing was counted, and the
    fields describe the event that first used the key."""

    event_id: int
    report_id: int
    duplicate: bool
    account: str
    meter: str
    quantity: Decimal
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item of a batch that was not stored, and why."""

    index: int
    error: str
    item: Any = None


@dataclass(slots=True)
class BatchResult:
    """Per-item outcome of ``record_many``: ``receipts[i]`` is None for rejected items."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    receipts: list[Receipt | None] = field(default_factory=list)


@dataclass(slots=True)
class Item:
    """One usage item on its way into the database."""

    index: int
    account: str
    meter: str
    quantity: Decimal
    occurred_at: datetime
    key: str | None
    dimensions: dict[str, Any] | None
    account_id: int = 0
    meter_id: int = 0
    window: Window | None = None
    report_id: int | None = None
    event_id: int | None = None
    duplicate: bool = False

    def receipt(self) -> Receipt:
        """The receipt for this item once written."""
        assert self.event_id is not None, "item not written"
        assert self.report_id is not None, "item not written"
        return Receipt(
            self.event_id,
            self.report_id,
            self.duplicate,
            self.account,
            self.meter,
            self.quantity,
            self.occurred_at,
        )


def parse_item(index: int, raw: object, *, now: datetime, default_meter: str) -> Item:
    """Validate one item's fields (names are resolved later), raising InvalidUsage."""
    if not isinstance(raw, Mapping):
        raise InvalidUsage(f"item must be a mapping, got {type(raw).__name__}")
    if not ITEM_FIELDS.issuperset(raw):
        unknown = [k for k in raw if k not in ITEM_FIELDS]
        raise InvalidUsage(
            f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
            f"expected {', '.join(sorted(ITEM_FIELDS))}"
        )
    account = raw.get("account")
    if not isinstance(account, str) or not account or "\x00" in account:
        raise InvalidUsage(f"account must be a non-empty string without NUL, got {account!r}")
    meter = raw.get("meter") or default_meter
    if not isinstance(meter, str) or "\x00" in meter:
        raise InvalidUsage(f"meter must be a string without NUL, got {meter!r}")
    return Item(
        index=index,
        account=account,
        meter=meter,
        quantity=validation.to_quantity(raw.get("quantity", 1)),
        occurred_at=validation.event_time(raw.get("timestamp"), now=now),
        key=validation.idempotency_key(raw.get("idempotency_key")),
        dimensions=_dimensions(raw.get("dimensions")),
    )


def _dimensions(dims: object) -> dict[str, Any] | None:
    if dims is None:
        return None
    if not (
        isinstance(dims, Mapping)
        and all(isinstance(k, str) and "\x00" not in k for k in dims)
        and all(_scalar(v) for v in dims.values())
    ):
        raise InvalidUsage(
            "dimensions must map strings to strings, finite numbers or booleans (no NUL characters)"
        )
    return dict(dims)


def _scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # JSON has no NaN or Infinity
    if isinstance(value, str):
        return "\x00" not in value
    return value is None or isinstance(value, int | bool)


def mark_batch_duplicates(items: list[Item]) -> list[Item]:
    """Within one batch the first use of a key wins; later uses are duplicates of it.
    Returns the items still to insert."""
    seen: set[tuple[int, str]] = set()
    fresh: list[Item] = []
    for item in items:
        if item.key is not None:
            if (item.account_id, item.key) in seen:
                item.duplicate = True
                continue
            seen.add((item.account_id, item.key))
        fresh.append(item)
    return fresh
