"""Reading Stripe JSON: small pure helpers shared by the mirror's ``to_row`` functions.

Stripe objects arrive in whatever API version the webhook endpoint was made with, so every
reader here tolerates a missing field, ``null``, and an expandable reference given either
as an id or as the expanded object.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from adapter.errors import MetersyncError


class MirrorError(MetersyncError):
    """A payload the mirror cannot apply, whatever the retry: it is marked failed at once."""


def timestamp(value: object) -> datetime | None:
    """A Stripe unix timestamp (seconds) as an aware UTC datetime; ``None`` if absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(int(value), UTC)


def ref(value: object) -> str | None:
    """The id of an expandable reference: an id string, or an expanded object's ``id``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def dig(obj: object, *path: str) -> Any:  # noqa: ANN401  Stripe JSON: callers check the type
    """``obj[path[0]][path[1]]…``, or ``None`` as soon as a step is missing or not a dict."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def text(value: object, *, limit: int) -> str | None:
    """A string column value, cut to the column's length; ``None`` for anything else."""
    return value[:limit] if isinstance(value, str) else None


def integer(value: object) -> int | None:
    """An integer column value; ``None`` for anything that is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def decimal(value: object) -> Decimal | None:
    """A decimal from an int or a decimal string (``quantity_decimal``); ``None`` if not."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def listed(obj: object, key: str) -> tuple[list[dict[str, Any]], bool]:
    """The dicts in list object ``obj[key]`` (``{"data": [...], "has_more": …}``), and
    whether that list is complete (no ``has_more``, which webhook payloads may cut)."""
    container = dig(obj, key)
    data = dig(container, "data")
    if not isinstance(data, list):
        return [], False
    return [d for d in data if isinstance(d, dict)], not bool(dig(container, "has_more"))


def object_id(obj: Mapping[str, Any]) -> str:
    """The object's Stripe id, or :class:`MirrorError`."""
    found = obj.get("id")
    if not isinstance(found, str) or not found:
        kind = obj.get("object", "object")
        raise MirrorError(f"the {kind} in this event has no id; it cannot be mirrored")
    return found


def is_stub(obj: Mapping[str, Any]) -> bool:
    """Is this Stripe's deleted-object reply ``{"id", "object", "deleted": true}``?"""
    return obj.get("deleted") is True


def is_deletion(obj: Mapping[str, Any], *, kind: str) -> bool:
    """Does applying ``obj`` for event type ``kind`` mark the object deleted?"""
    return is_stub(obj) or kind.endswith(".deleted")


def base_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The columns every mirrored object has; a deleted stub gives only id and flag."""
    if is_stub(obj):
        return {"id": object_id(obj), "deleted": True}
    meta = obj.get("metadata")
    return {
        "id": object_id(obj),
        "livemode": bool(obj.get("livemode", False)),
        "created": timestamp(obj.get("created")),
        "meta": dict(meta) if isinstance(meta, Mapping) else {},
        "deleted": False,
    }
