"""What a mirror handler is given: one transaction, the event, and what to do after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from adapter.pushing.library import Library

#: Reads an object fresh from Stripe: ``(object type, id)`` → its JSON, ``None`` if gone.
#: Object types are Stripe's ``object`` names: ``customer``, ``subscription``,
#: ``invoice``, ``price``, ``billing.meter``.
Refetch = Callable[[str, str], "dict[str, Any] | None"]


@dataclass
class Apply:
    """One event (or one object read by ``metersync sync``) being applied to the mirror.

    Everything a handler writes goes through ``conn``, the one transaction of this apply:
    the mirror rows, billing periods, closed reports and invoice links commit together
    or not at all.
    """

    ms: Library
    conn: sa.Connection
    #: The Stripe event id; ``None`` when the object came from ``metersync sync``.
    event_id: str | None
    #: The event's ``created`` (one-second resolution); for sync, when it was read.
    event_at: datetime
    #: Set when a Stripe key is configured: used to settle same-second ties.
    refetch: Refetch | None = None
    #: Reports closed by this apply; the caller pushes them once the transaction commits.
    to_push: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Processed:
    """How processing one delivery ended, and the reports to push now."""

    delivery_id: int
    status: str
    to_push: tuple[int, ...] = ()
    error: str | None = None
