"""The scheduler's credit tick: every ``METERSYNC_CREDIT_INTERVAL`` seconds (default 10)
the leading scheduler draws down every account that has credit and checks every alert,
so balances, alerts and what is pushed to Stripe lag usage by at most that long.
``ms.credits.balance`` draws the account it is asked about itself, so what a caller reads
is always current.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from adapter.alerting.evaluate import Fired
from adapter.client import Metersync
from adapter.store.credits import accounts_with_grants

log = structlog.get_logger("metersync.scheduler")


class CreditTicker:
    """Draws down every account with grants once per interval, and sends pending grants
    and voids to Stripe."""

    def __init__(
        self,
        ms: Metersync,
        *,
        on_fire: Callable[[Fired], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ms, self._monotonic, self._on_fire = ms, monotonic, on_fire
        self._interval = ms.settings.credit_interval
        self._next = float("-inf")

    def run_once(self) -> int | None:
        """Draw every account with grants if the interval passed, then check the alerts
        (a firing calls ``on_fire``: the Dramatiq hook); how many accounts changed."""
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
        self.sync_stripe()
        self._ms.alerts.check(on_fire=self._on_fire, drawn=True)
        return changed

    def sync_stripe(self) -> None:
        """Send pending grants and owed voids to Stripe (a few per tick; see
        :mod:`adapter.crediting.stripe_grants`): a grant Stripe could not take, or made
        while its account was unlinked, goes out on a later tick."""
        try:
            sweep = self._ms.credits.sync_stripe()
        except Exception:  # logged; drawdown and alerts still run, and the next tick retries
            log.exception("credits.stripe_sync_failed")
            return
        if sweep.changed:
            log.info("credits.stripe_synced", pushed=sweep.pushed, voided=sweep.voided)
