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

   - The stored object is deleted: skip. Deletion is final at Stripe, and a re-read
     cannot always say so (a canceled subscription comes back whole).
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

:func:`apply_object` plays these rules in as few statements as it can: the common case,
an event newer than the stored one (rules 1 and 4), is one upsert that writes only over
an older event. When that upsert writes nothing, the stored row (which it locked) is read
and weighed by the rules above, exactly as :func:`admit` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from adapter.mirror import shapes
from adapter.mirror.context import Apply
from adapter.store.models import utcnow

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


@dataclass(frozen=True, slots=True)
class Applied:
    """An object an event applied, and what was stored for it."""

    #: The payload's object, or on a tie the copy Stripe holds now.
    obj: dict[str, Any]
    #: Its row, as :meth:`Resource.row` gave it.
    row: dict[str, Any]
    #: The stored row after the write.
    saved: sa.Row[Any]


def apply_object(
    ctx: Apply, resource: Resource, obj: dict[str, Any], *, kind: str
) -> Applied | None:
    """Store ``obj`` if the rules apply it (locking its row); ``None`` when the event is
    skipped. Same outcome as :func:`admit` then :func:`save`, in one statement when the
    event is newer than the stored one or the object is new."""
    try:
        row: dict[str, Any] | None = resource.row(obj, kind=kind)
    except Exception:  # noqa: BLE001  unreadable: the rules below may skip it; else row() raises
        row = None
    if row is not None:
        rule = "older" if ctx.event_id is None else "older_other"
        saved = _upsert(ctx, resource, row, rule=rule)
        if saved is not None:
            return Applied(obj, row, saved)
    admitted = admit(ctx, resource, obj, kind=kind)
    if admitted is None:
        return None
    row = resource.row(admitted, kind=kind)
    saved = save(ctx, resource, row)
    return None if saved is None else Applied(admitted, row, saved)


def admit(
    ctx: Apply, resource: Resource, obj: dict[str, Any], *, kind: str
) -> dict[str, Any] | None:
    """The object to apply — the payload, or on a tie a fresh copy from Stripe — or
    ``None`` when the event must be skipped (see the module rules). Locks the row."""
    obj_id = shapes.object_id(obj)
    stored = ctx.conn.execute(_locked_read(resource.table), {"object_id": obj_id}).first()
    if stored is None or stored.last_event_at is None:
        return obj
    if ctx.event_id is not None and stored.last_event_id == ctx.event_id:
        return None
    if ctx.event_at != stored.last_event_at:
        return obj if ctx.event_at > stored.last_event_at else None
    if stored.deleted:
        # Deletion is final at Stripe, and a re-read cannot say so for every type (a
        # canceled subscription comes back whole, not as a deleted stub): keep it.
        return None
    if ctx.refetch is not None:
        fresh = ctx.refetch(resource.object_type, obj_id)
        return fresh if fresh is not None else stub(resource.object_type, obj_id)
    behind = resource.rank(resource.row(obj, kind=kind)) < resource.rank(stored._asdict())
    return None if behind else obj


def stub(object_type: str, obj_id: str) -> dict[str, Any]:
    """Stripe's reply for a deleted object."""
    return {"id": obj_id, "object": object_type, "deleted": True}


def save(ctx: Apply, resource: Resource, row: Mapping[str, Any]) -> sa.Row[Any] | None:
    """Upsert ``row`` stamped with this event; the stored row after the write, or
    ``None`` when a newer event reached the row first (nothing was written)."""
    return _upsert(ctx, resource, row, rule="not_newer")


def upsert_many(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert or overwrite child rows (items, lines) by id; their parent's ordering
    already decided that this event applies."""
    if not rows:
        return
    columns = tuple(k for k in rows[0] if k != "id")
    conn.execute(_statement(table, conn.dialect.name, columns, "always"), rows)


def _upsert(
    ctx: Apply, resource: Resource, row: Mapping[str, Any], *, rule: str
) -> sa.Row[Any] | None:
    """Upsert ``row`` stamped with this event where ``rule`` lets it overwrite the stored
    row: ``not_newer`` (stored event not newer), ``older`` (stored event strictly older)
    or ``older_other`` (strictly older and another event). The stored row, or ``None``."""
    values = {
        **row,
        "last_event_id": ctx.event_id,
        "last_event_at": ctx.event_at,
        "updated_at": utcnow(),
    }
    columns = tuple(k for k in values if k != "id")
    stmt = _statement(resource.table, ctx.conn.dialect.name, columns, rule)
    return ctx.conn.execute(stmt, {**resource.stub_defaults, **values}).first()


#: Statements built once per (table, dialect, updated columns, rule): building one costs
#: more than running it.
_STATEMENTS: dict[tuple[str, str, tuple[str, ...], str], sa.Executable] = {}
_LOCKED_READS: dict[str, sa.Select[Any]] = {}


def _statement(table: sa.Table, dialect: str, columns: tuple[str, ...], rule: str) -> sa.Executable:
    """An upsert by id that overwrites ``columns`` where ``rule`` says (see :func:`_upsert`;
    ``always`` for child rows), returning the stored row; values are given at execution."""
    key = (table.name, dialect, columns, rule)
    found = _STATEMENTS.get(key)
    if found is not None:
        return found
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    where = None if rule == "always" else _overwrites(table, stmt.excluded, rule)
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.id], set_={k: stmt.excluded[k] for k in columns}, where=where
    )
    built = upsert if rule == "always" else upsert.returning(*table.c)
    _STATEMENTS[key] = built
    return built


def _overwrites(
    table: sa.Table, excluded: sa.ColumnCollection[str, Any], rule: str
) -> sa.ColumnElement[bool]:
    """When the upsert may overwrite the stored row (see :func:`_upsert`)."""
    stored, new = table.c.last_event_at, excluded.last_event_at
    if rule == "not_newer":
        return sa.or_(stored.is_(None), stored <= new)
    if rule == "older":
        return sa.or_(stored.is_(None), stored < new)
    if rule == "older_other":
        other = table.c.last_event_id.is_distinct_from(excluded.last_event_id)
        return sa.or_(stored.is_(None), sa.and_(stored < new, other))
    raise ValueError(f"unknown upsert rule {rule!r}")


def _locked_read(table: sa.Table) -> sa.Select[Any]:
    """``SELECT … FOR UPDATE`` of one row of ``table`` by ``:object_id``."""
    found = _LOCKED_READS.get(table.name)
    if found is None:
        found = _LOCKED_READS[table.name] = (
            sa.select(table).where(table.c.id == sa.bindparam("object_id")).with_for_update()
        )
    return found
