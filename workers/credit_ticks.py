"""The scheduler's credit tick: every ``METERSYNC_CREDIT_INTERVAL`` seconds (default 10)
the leading scheduler draws down every account that has credit, so balances, alerts on
them and what is pushed to Stripe lag usage by at most that long. ``ms.credits.balance``
draws the account it is asked about itself, so what a caller reads is always current.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from adapter.client import Metersync
from adapter.store.credits import accounts_with_grants

log = structlog.get_logger("metersync.scheduler")


class CreditTicker:
    """Draws down every account with grants once per interval."""

    def __init__(self, ms: Metersync, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ms, self._monotonic = ms, monotonic
        self._interval = ms.settings.credit_interval
        self._next = float("-inf")

    def run_once(self) -> int | None:
        """Draw every account with grants if the interval passed; how many changed."""
        now = self._monotonic()
        if now < self._next:
            return None
        self._next = now + self._interval
        changed = 0
        with self._ms.engine.connect() as conn:
            names = accounts_with_grants(conn)
        for name in names:
            result = self._ms.credits.draw(name)
            if result.changed:
                changed += 1
                log.info(
                    "credits.drawn", account=name, drawn=result.drawn,
                    released=result.released, expired=result.expired,
                )  # fmt: skip
        return changed
