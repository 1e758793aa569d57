"""Storing verified deliveries exactly once per Stripe event id."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import table

DELIVERIES = table(WebhookDelivery)


def store(engine: sa.Engine, event: dict[str, Any], *, source: str = "webhook") -> int | None:
    """Insert a delivery for ``event`` (a Stripe event as JSON) and return its row id, or
    ``None`` when a delivery with the same event id is already stored. Two copies arriving
    at once race on the unique event id; exactly one insert wins."""
    values = row(event, source=source)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(DELIVERIES)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(DELIVERIES.c.id)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).scalar_one_or_none()


def store_rows(engine: sa.Engine, rows: Sequence[dict[str, Any]]) -> list[int | None]:
    """Insert many delivery rows (from :func:`row`) in one transaction: for each, its new
    row id, or ``None`` when its event id was stored already (also by an earlier row of
    the same call). One bad row fails them all; callers retry one at a time."""
    first: dict[str, int] = {}
    unique: list[dict[str, Any]] = []
    for n, values in enumerate(rows):
        if values["event_id"] not in first:
            first[values["event_id"]] = n
            unique.append(values)
    if not unique:
        return []
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(DELIVERIES)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(DELIVERIES.c.id, DELIVERIES.c.event_id)
    )
    with engine.begin() as conn:
        # executemany with RETURNING: SQLAlchemy sends it as few multi-row INSERTs.
        stored = {event_id: row_id for row_id, event_id in conn.execute(stmt, unique)}
    return [
        stored.get(values["event_id"]) if first[values["event_id"]] == n else None
        for n, values in enumerate(rows)
    ]


def row(event: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The delivery row for an event; refuses JSON that is not a Stripe event."""
    event_id, kind, created = event.get("id"), event.get("type"), event.get("created")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("not a Stripe event: no string 'id'")
    if not isinstance(kind, str) or not kind:
        raise ValueError("not a Stripe event: no string 'type'")
    if isinstance(created, bool) or not isinstance(created, int):
        raise ValueError("not a Stripe event: 'created' is not a unix timestamp")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    object_id = obj.get("id") if isinstance(obj, dict) else None
    return {
        "event_id": event_id,
        "type": kind,
        "created": datetime.fromtimestamp(created, UTC),
        "livemode": bool(event.get("livemode", False)),
        "object_id": object_id if isinstance(object_id, str) else None,
        "payload": event,
        "source": source,
        "status": "received",
        "attempts": 0,
        "received_at": datetime.now(UTC),
    }
