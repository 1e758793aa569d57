"""The scheduled reconcile: the scheduler enqueues the ``reconcile`` actor once per tick of
``METERSYNC_RECONCILE_SCHEDULE`` (not again after a restart), and the actor runs a
report-only reconcile of the previous and current periods."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import responses
import sqlalchemy as sa
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits.backends import StubBackend

from adapter.client import Metersync
from adapter.store.models import table, utcnow
from adapter.store.reconcile_models import ReconcileRun
from tests.gateways import make_gateway
from tests.stripe_meters import StripeMeters
from workers.actors import declare
from workers.broker import QUEUE, BrokerHandle
from workers.scheduler import Scheduler

_RUNS = table(ReconcileRun)


@pytest.fixture
def stub() -> Iterator[BrokerHandle]:
    """An in-process broker and rate-limit backend."""
    handle = BrokerHandle(StubBroker(), StubBackend(), "stub")
    yield handle
    handle.close()


def queued(handle: BrokerHandle) -> list[str]:
    """Actor names of the messages waiting on the queue."""
    broker = handle.broker
    assert isinstance(broker, StubBroker)
    return [Message.decode(data).actor_name for data in list(broker.queues[QUEUE].queue)]


def test_the_scheduler_enqueues_one_reconcile_per_tick(ms: Metersync, stub: BrokerHandle) -> None:
    """Within one daily tick a second look enqueues nothing; the next day's tick does."""
    now = [datetime(2026, 11, 20, 3, 0, tzinfo=UTC)]
    scheduler = Scheduler(ms, declare(stub, ms), client=None, clock=lambda: now[0])
    assert scheduler.reconcile_once() == datetime(2026, 11, 20, tzinfo=UTC)
    now[0] += timedelta(hours=5)
    assert scheduler.reconcile_once() is None
    now[0] += timedelta(days=1)
    assert scheduler.reconcile_once() == datetime(2026, 11, 21, tzinfo=UTC)
    assert [name for name in queued(stub) if name == "reconcile"] == ["reconcile", "reconcile"]


def test_a_restarted_scheduler_does_not_start_a_second_run_in_a_tick(
    ms: Metersync, stub: BrokerHandle
) -> None:
    """A scheduled run that started in today's tick counts for the tick after a restart."""
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    with ms.engine.begin() as conn:
        conn.execute(
            _RUNS.insert().values(
                trigger="schedule",
                period="previous,current",
                repair=False,
                as_of=now,
                status="finished",
                pairs=0,
                drifting=0,
                counts={},
                started_at=now - timedelta(hours=8),
                updated_at=now,
            )
        )
    scheduler = Scheduler(ms, declare(stub, ms), client=None, clock=lambda: now)
    assert scheduler.reconcile_once() is None
    assert "reconcile" not in queued(stub)


def test_the_reconcile_actor_runs_a_report_only_reconcile(
    ms: Metersync, stub: BrokerHandle, stripe_api: responses.RequestsMock
) -> None:
    """The actor compares previous and current periods, writes nothing to Stripe, and
    leaves a finished run started by the schedule."""
    stripe = StripeMeters(stripe_api)
    stripe.model.formulas["api_calls"] = "sum"
    ms.use_gateway(make_gateway(attempts=1))
    ms.settings = ms.settings.model_copy(
        update={"reconcile_settle_seconds": 0, "reconcile_read_rate": 1000.0}
    )
    ms.increment("acct_1", 5, meter="api_calls", timestamp=utcnow() - timedelta(hours=2))
    ms.report_now()
    stripe.model.events.clear()  # Stripe lost it: drift that a report-only run leaves alone
    posts = len(stripe.posts())
    actors = declare(stub, ms)
    actors.reconcile.send("previous,current")
    worker = Worker(stub.broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        stub.broker.join(QUEUE, timeout=20_000)
        worker.join()
    finally:
        worker.stop()
    with ms.engine.connect() as conn:
        run = conn.execute(sa.select(_RUNS)).one()
    assert (run.trigger, run.status, run.drifting, run.counts) == (
        "schedule",
        "finished",
        1,
        {"missing": 1},
    )
    assert len(stripe.posts()) == posts
