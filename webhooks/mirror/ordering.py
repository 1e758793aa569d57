"""Applying an event never moves a mirrored object backwards.

Stripe delivers at least once and in no guaranteed order, and an event's ``created`` has
one-second resolution. Each mirrored row keeps the id and ``created`` of the last event
applied to it; an incoming event (or an object read by ``metersync sync``) is weighed
against them by these rules, in order:

1. No row yet, or a row no event was applied to: apply.
2. The same event id as the last one applied: skip (a replayed delivery changes nothing).
3. Older than the last event applied: skip. The delivery is kept, marked ``skipped``.
4. Newer: apply.
5. Same second, another event or a ``metersync sync`` read (a tie; sync reads are
   stamped with their read time cut to the second, like events, so a read and an event
   of the same second meet here too):

   - With a Stripe key (``ctx.refetch``): read the object again and apply what Stripe
     holds now; if Stripe no longer has it, apply it as deleted. Only Stripe knows which
     of two same-second events came last, so this is the one exact answer.
   - Without: apply, unless the payload is *behind* the stored object on the resource's
     lifecycle (its ``rank``): deleted beats live, a canceled subscription beats an
     active one, a later billing period beats an earlier one, a paid invoice beats an
     open one beats a draft. Between equal ranks the later delivery wins. So a tie can
     settle on an older version of a field that has no lifecycle (an email, metadata),
     but never on a step back in a lifecycle, the part metersync bills by; the next
     event or ``metersync sync`` corrects the rest.

The write itself is a conditional upsert: if a concurrent transaction stored a newer
event for the same object first (PostgreSQL, where two workers may race on a new object),
the write does nothing and the event counts as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from adapter.models import utcnow
from webhooks.mirror import shapes
from webhooks.mirror.context import Apply

Rank = Callable[[Mapping[Any, Any]], tuple[Any, ...]]


def deleted_rank(row: Mapping[Any, Any]) -> tuple[Any, ...]:
    """The lifecycle of objects that only ever move from live to deleted."""
    return (bool(row.get("deleted")),)


@dataclass(frozen=True)
class Resource:
    """How one kind of Stripe object is mirrored: its table, its ``object`` name, its
    pure row function, and its lifecycle rank for same-second ties."""

    table: sa.Table
    object_type: str
    to_row: Callable[[dict[str, Any]], dict[str, Any]]
    rank: Rank = deleted_rank
    #: Values for required columns when a deleted stub is the first we hear of an object.
    stub_defaults: Mapping[str, Any] = field(default_factory=dict)

    def row(self, obj: dict[str, Any], *, kind: str) -> dict[str, Any]:
        """The row for ``obj`` applied by an event of type ``kind`` (deletions flagged)."""
        row = self.to_row(obj)
        if shapes.is_deletion(obj, kind=kind):
            row["deleted"] = True
        return row


def admit(
    ctx: Apply, resource: Resource, obj: dict[str, Any], *, kind: str
) -> dict[str, Any] | None:
    """The object to apply — the payload, or on a tie a fresh copy from Stripe — or
    ``None`` when the event must be skipped (see the module rules). Locks the row."""
    table = resource.table
    obj_id = shapes.object_id(obj)
    stored = ctx.conn.execute(
        sa.select(table).where(table.c.id == obj_id).with_for_update()
    ).first()
    if stored is None or stored.last_event_at is None:
        return obj
    if ctx.event_id is not None and stored.last_event_id == ctx.event_id:
        return None
    if ctx.event_at != stored.last_event_at:
        return obj if ctx.event_at > stored.last_event_at else None
    if ctx.refetch is not None:
        fresh = ctx.refetch(resource.object_type, obj_id)
        return fresh if fresh is not None else stub(resource.object_type, obj_id)
    behind = resource.rank(resource.row(obj, kind=kind)) < resource.rank(stored._mapping)
    return None if behind else obj


def stub(object_type: str, obj_id: str) -> dict[str, Any]:
    """Stripe's reply for a deleted object."""
    return {"id": obj_id, "object": object_type, "deleted": True}


def save(ctx: Apply, resource: Resource, row: Mapping[str, Any]) -> sa.Row[Any] | None:
    """Upsert ``row`` stamped with this event; the stored row after the write, or
    ``None`` when a newer event reached the row first (nothing was written)."""
    table = resource.table
    values = {
        **row,
        "last_event_id": ctx.event_id,
        "last_event_at": ctx.event_at,
        "updated_at": utcnow(),
    }
    insert = postgresql.insert if ctx.conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values({**resource.stub_defaults, **values})
    not_newer = sa.or_(
        table.c.last_event_at.is_(None), table.c.last_event_at <= stmt.excluded.last_event_at
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={k: stmt.excluded[k] for k in values if k != "id"},
        where=not_newer,
    ).returning(*table.c)
    return ctx.conn.execute(upsert).first()


def upsert_many(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert or overwrite child rows (items, lines) by id; their parent's ordering
    already decided that this event applies."""
    if not rows:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    columns = [k for k in rows[0] if k != "id"]
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[table.c.id], set_={k: stmt.excluded[k] for k in columns}
        ),
        rows,
    )
