"""Gravity-style convenience on a default connection made from the environment.

from adapter import usage
usage.increment(account="acct_1", quantity=10)   # default meter, +10
usage.get(account="acct_1", period_start="2026-10-10", period_end="2026-11-11")
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypedDict, Unpack

from adapter.client import DateLike, Metersync, connect
from adapter.reading.usage import Usage
from adapter.recording.recorder import Receipt


class IncrementOptions(TypedDict, total=False):
    """The other keywords of :meth:`Metersync.increment <adapter.client.Metersync.increment>`."""

    idempotency_key: str | None
    timestamp: DateLike | int | float | None
    dimensions: Mapping[str, Any] | None


_default: Metersync | None = None
_lock = threading.Lock()


def default_connection() -> Metersync:
    """The process-wide connection, made on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = connect()
        return _default


def set_default_connection(ms: Metersync | None) -> None:
    """Use ``ms`` for the functions of this module (None: connect again on next use)."""
    global _default
    with _lock:
        _default = ms


def increment(
    *,
    account: str,
    quantity: int | float | str | Decimal = 1,
    meter: str | None = None,
    **kwargs: Unpack[IncrementOptions],
) -> Receipt:
    """Add ``quantity`` (default 1) to ``account`` on ``meter`` (default: the default meter)."""
    return default_connection().increment(account, quantity, meter=meter, **kwargs)


def get(
    *,
    account: str,
    period_start: DateLike | None = None,
    period_end: DateLike | None = None,
    meter: str | None = None,
) -> Usage:
    """Usage of ``account`` over the period (default: its current billing period)."""
    return default_connection().get_usage(account, period_start, period_end, meter=meter)
