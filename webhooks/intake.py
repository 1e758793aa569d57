"""Group commit for the receiver: deliveries verified while a transaction is being written
wait and are written together in the next one.

At low load each group holds one delivery and costs what a single insert does; under load
one multi-row INSERT and one commit serve the whole group, which is what lets one process
acknowledge a thousand deliveries a second. A request is answered only after its own row
is committed (and handed to the workers), so a 200 still means "stored".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from fastapi.concurrency import run_in_threadpool

from adapter.mirror import deliveries

log = structlog.get_logger("metersync.webhook")
#: Most deliveries written in one transaction.
MAX_GROUP = 200

#: One delivery's outcome: its new row id, ``None`` for a duplicate, or the error that
#: kept it from being stored.
Stored = int | None | Exception


class GroupWriter:
    """Writes delivery rows in groups, one group at a time, from the event loop that
    serves the requests. ``enqueue`` hands each stored delivery to the workers."""

    def __init__(
        self,
        engine: Callable[[], sa.Engine],
        enqueue: Callable[[int], object],
        *,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._engine = engine
        self._enqueue = enqueue
        self._max_group = max_group
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[Stored]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, values: dict[str, Any]) -> int | None:
        """Store one row from :func:`adapter.mirror.deliveries.row` with the next group; its id,
        or ``None`` when its event id is stored already. Raises what kept it from being
        stored (``sqlalchemy.exc.DataError`` for a value its column cannot hold...)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Stored] = loop.create_future()
        self._waiting.append((values, done))
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            self._writer = loop.create_task(self._drain())
        # Shielded: a client hanging up must not leave its row half handled; the row is
        # written (and enqueued) all the same, as the outbox expects.
        outcome = await asyncio.shield(done)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        """Write groups until nobody waits."""
        while self._waiting:
            group = self._waiting[: self._max_group]
            del self._waiting[: self._max_group]
            try:
                outcomes = await run_in_threadpool(self._write, [values for values, _ in group])
            except Exception as exc:  # noqa: BLE001  each request of the group re-raises it
                # The database is down, say: every request of the group fails with the
                # error, which the app's error handlers log.
                outcomes = [exc] * len(group)
            for (_, done), outcome in zip(group, outcomes, strict=True):
                if not done.done():
                    done.set_result(outcome)

    def _write(self, rows: Sequence[dict[str, Any]]) -> list[Stored]:
        """Insert the group in one transaction, then enqueue the new deliveries. A group
        that fails on a row's value is written one row at a time, so only that row fails."""
        engine = self._engine()
        outcomes: list[Stored]
        try:
            outcomes = list(deliveries.store_rows(engine, rows))
        except sa.exc.DataError:
            if len(rows) == 1:
                raise
            outcomes = [self._one(engine, values) for values in rows]
        for outcome in outcomes:
            if isinstance(outcome, int):
                self._hand_off(outcome)
        return outcomes

    @staticmethod
    def _one(engine: sa.Engine, values: dict[str, Any]) -> Stored:
        try:
            return deliveries.store_rows(engine, [values])[0]
        except sa.exc.DataError as exc:
            return exc

    def _hand_off(self, delivery_id: int) -> None:
        """Enqueue a stored delivery. A failure is logged and the request still succeeds:
        the row is committed and is the outbox, and the scheduler's sweep enqueues
        deliveries left ``received``. An error answer would only make Stripe resend."""
        try:
            self._enqueue(delivery_id)
        except Exception as exc:  # noqa: BLE001  any broker failure: logged, the sweep recovers
            log.warning(
                "webhook.enqueue_failed",
                delivery_id=delivery_id,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )
