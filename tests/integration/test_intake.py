"""The receiver's group commit (webhooks.intake.GroupWriter) on SQLite and PostgreSQL:
concurrent deliveries are written together, each stored once and enqueued once; one bad
row fails only its own request; a broker failure never loses a stored row."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.mirror import deliveries
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import table
from config.settings import Settings
from tests.conftest import _empty
from tests.signing import event
from webhooks.intake import GroupWriter

_DELIVERIES = table(WebhookDelivery)


def _row(n: int) -> dict[str, Any]:
    obj = {"id": f"cus_{n}", "object": "customer"}
    payload = json.loads(event(f"evt_intake_{n}", "customer.updated", obj=obj))
    return deliveries.row(payload, source="webhook")


class Recorder:
    """An enqueue that records ids and the size of each write it saw, optionally failing."""

    def __init__(self, *, fail: bool = False) -> None:
        self.ids: list[int] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, delivery_id: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        with self.lock:
            self.ids.append(delivery_id)


def _stored(ms: Metersync) -> dict[str, int]:
    with ms.engine.connect() as conn:
        rows = conn.execute(sa.select(_DELIVERIES.c.event_id, _DELIVERIES.c.id)).all()
    return {event_id: row_id for event_id, row_id in rows}


async def _store_all(writer: GroupWriter, rows: list[dict[str, Any]]) -> list[Any]:
    return await asyncio.gather(*(writer.store(r) for r in rows), return_exceptions=True)


def test_concurrent_deliveries_are_grouped_and_each_stored_once(ms: Metersync) -> None:
    """300 deliveries at once (every tenth sent twice) are written in fewer transactions
    than deliveries; each event id gets one row, one id and one enqueue, and its copy
    answers as a duplicate."""
    writes: list[int] = []
    real = deliveries.store_rows

    def counting(engine: sa.Engine, rows: Sequence[dict[str, Any]]) -> list[int | None]:
        writes.append(len(rows))
        return real(engine, rows)

    rows = [_row(n) for n in range(300)]
    rows += [_row(n) for n in range(0, 300, 10)]
    recorder = Recorder()
    writer = GroupWriter(lambda: ms.engine, recorder, max_group=100)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deliveries, "store_rows", counting)
        outcomes = asyncio.run(_store_all(writer, rows))

    stored = _stored(ms)
    assert len(stored) == 300
    ids = [o for o in outcomes if isinstance(o, int)]
    assert sorted(ids) == sorted(stored.values())
    assert outcomes[300:] == [None] * 30  # the copies
    assert sorted(recorder.ids) == sorted(ids)
    assert len(writes) < len(rows)
    assert max(writes) <= 100
    assert sum(writes) == len(rows)


def test_a_delivery_stored_earlier_is_a_duplicate(ms: Metersync) -> None:
    """An event id already in the table answers None and is not enqueued again."""
    first = deliveries.store(ms.engine, _row(1)["payload"], source="webhook")
    recorder = Recorder()
    writer = GroupWriter(lambda: ms.engine, recorder)

    outcomes = asyncio.run(_store_all(writer, [_row(1), _row(2)]))

    assert first is not None
    assert outcomes[0] is None
    assert isinstance(outcomes[1], int)
    assert recorder.ids == [outcomes[1]]


@pytest.mark.postgres
def test_a_bad_row_fails_only_its_own_request(postgres_url: str) -> None:
    """On PostgreSQL (SQLite does not enforce VARCHAR lengths) an event id longer than its
    column fails the multi-row insert; the group is then written row by row, so only that
    delivery gets the DataError."""
    _empty(postgres_url)
    ms = adapter.connect(Settings(database_url=postgres_url))
    bad = _row(2)
    bad["event_id"] = "evt_" + "x" * 300
    writer = GroupWriter(lambda: ms.engine, Recorder())

    outcomes = asyncio.run(_store_all(writer, [_row(1), bad, _row(3)]))

    assert isinstance(outcomes[0], int)
    assert isinstance(outcomes[2], int)
    assert isinstance(outcomes[1], sa.exc.DataError)
    assert set(_stored(ms)) == {"evt_intake_1", "evt_intake_3"}
    ms.close()


def test_a_broker_failure_still_stores_and_answers(ms: Metersync) -> None:
    """Enqueue raising does not fail the request: the row is committed (the outbox) and
    the scheduler's sweep will enqueue it."""
    writer = GroupWriter(lambda: ms.engine, Recorder(fail=True))

    outcomes = asyncio.run(_store_all(writer, [_row(1), _row(2)]))

    assert all(isinstance(o, int) for o in outcomes)
    with ms.engine.connect() as conn:
        statuses = conn.execute(sa.select(_DELIVERIES.c.status)).scalars().all()
    assert statuses == ["received", "received"]


def test_an_unreachable_database_fails_every_waiting_request(ms: Metersync) -> None:
    """When the engine cannot be had, each request of the group gets the error and
    nothing is enqueued; the next group tries again."""

    def no_engine() -> sa.Engine:
        raise ConnectionError("database down")

    recorder = Recorder()
    writer = GroupWriter(no_engine, recorder)

    outcomes = asyncio.run(_store_all(writer, [_row(1), _row(2)]))

    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    assert recorder.ids == []
    assert _stored(ms) == {}


def test_a_cancelled_request_still_gets_its_row_written(ms: Metersync) -> None:
    """A client hanging up (its request task cancelled) does not stop the write: the row
    is stored and enqueued, so Stripe's retry finds it as a duplicate."""
    recorder = Recorder()
    writer = GroupWriter(lambda: ms.engine, recorder)

    async def scenario() -> None:
        task = asyncio.ensure_future(writer.store(_row(1)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The write goes on; wait for the writer's task (every other task) to finish.
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))

    asyncio.run(scenario())

    assert set(_stored(ms)) == {"evt_intake_1"}
    assert len(recorder.ids) == 1
