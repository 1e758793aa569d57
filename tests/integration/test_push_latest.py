"""Late events on Stripe ``last`` meters, and usage waiting for its Stripe customer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import responses
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.store.models import UsageReport, table
from adapter.store.unlinked import claim_released, expire_stale
from config.settings import Settings
from tests.conftest import _empty
from tests.integration.test_latest_properties import FakeStripe, _gateway

_REPORTS = table(UsageReport)


@pytest.fixture
def live(db_url: str) -> Iterator[Metersync]:
    """A metersync on the fake Stripe with a linked account and a ``last`` meter."""
    ms = adapter.connect(Settings(database_url=db_url, auto_migrate=True), gateway=_gateway())
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_1")
    ms.meters.upsert("seats", aggregation="last")
    yield ms
    ms.close()


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """The fake Stripe, answering on ``responses``."""
    stand_in = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        stand_in.install(rsps)
        yield stand_in


def _hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def test_late_older_event_in_a_sent_window_changes_nothing(
    live: Metersync, fake: FakeStripe
) -> None:
    """An older event arriving after its window was sent leaves Stripe at the newer value,
    with no call, and get_usage says Stripe is up to date."""
    start = _hour() - timedelta(hours=5)
    live.set_billing_period("acct_1", start, start + timedelta(hours=10))
    live.increment("acct_1", 5, meter="seats", timestamp=start + timedelta(minutes=50))
    live.report_now()
    live.increment("acct_1", 7, meter="seats", timestamp=start + timedelta(minutes=10))
    results = live.report_now()
    assert [r.status for r in results] == ["sent"]
    assert len(fake.events) == 1
    assert fake.held("cus_1", "seats") == 5
    usage = live.get_usage("acct_1").meters["seats"]
    assert (usage.quantity, usage.sent, usage.pending) == (5, 5, 0)


def test_late_newer_event_goes_after_everything_sent(live: Metersync, fake: FakeStripe) -> None:
    """A newer event for an older window than one already sent still wins at Stripe."""
    start = _hour() - timedelta(hours=5)
    live.set_billing_period("acct_1", start, start + timedelta(hours=10))
    live.increment("acct_1", 5, meter="seats", timestamp=start + timedelta(hours=2, minutes=5))
    live.increment("acct_1", 3, meter="seats", timestamp=start + timedelta(minutes=5))
    live.report_now()
    live.increment("acct_1", 9, meter="seats", timestamp=start + timedelta(hours=2, minutes=6))
    live.report_now()
    assert fake.held("cus_1", "seats") == 9
    assert live.get_usage("acct_1").meters["seats"].pending == 0


def test_newer_value_on_the_periods_last_second_replaces_the_send_there(
    live: Metersync, fake: FakeStripe
) -> None:
    """With the period's last second taken, a newer value is sent there after Stripe
    cancels the earlier event, whose report becomes superseded."""
    end = _hour()
    live.set_billing_period("acct_1", end - timedelta(hours=3), end)
    last = end - timedelta(seconds=1)
    live.increment("acct_1", 5, meter="seats", timestamp=last)
    live.report_now()
    live.increment("acct_1", 8, meter="seats", timestamp=last + timedelta(microseconds=500_000))
    live.report_now()
    assert fake.held("cus_1", "seats") == 8
    assert sorted(e["cancelled"] for e in fake.events.values()) == [False, True]
    assert sorted(r.status for r in live.reports()) == ["sent", "superseded"]
    usage = live.get_usage("acct_1", period_start=end - timedelta(hours=3), period_end=end)
    assert usage.meters["seats"].sent == 8


def test_link_by_upsert_releases_waiting_reports(live: Metersync, fake: FakeStripe) -> None:
    """Reports of an account with no customer wait unlinked; the link releases them for
    the scheduler's claim, and they reach Stripe."""
    live.accounts.upsert("newbie")
    live.increment("newbie", 4, meter="seats")
    assert [r.status for r in live.report_now()] == ["unlinked"]
    assert fake.events == {}
    live.accounts.upsert("newbie", stripe_customer_id="cus_new")
    later = datetime.now(UTC) + timedelta(seconds=10)
    claimed = claim_released(live.engine, now=later)
    assert claimed == [r.id for r in live.reports() if r.account == "newbie"]
    assert claim_released(live.engine, now=later) == []  # handed over once
    assert [r.status for r in live.report_now()] == ["sent"]
    assert fake.held("cus_new", "seats") == 4


def test_unlinked_report_too_old_for_stripe_expires_with_its_reason(live: Metersync) -> None:
    """A report that waits beyond Stripe's 35 days ends expired, saying it waited."""
    live.accounts.upsert("ghost")
    live.increment("ghost", 1, meter="seats")
    live.report_now()
    assert expire_stale(live.engine, now=datetime.now(UTC)) == 0
    assert expire_stale(live.engine, now=datetime.now(UTC) + timedelta(days=40)) == 1
    [report] = live.reports()
    assert report.status == "expired"
    assert "waited for a Stripe customer" in (report.last_error or "")


def test_report_closed_before_the_link_goes_to_the_new_customer(
    live: Metersync, fake: FakeStripe
) -> None:
    """A report closed while its account had no customer is sent to the customer linked
    before its push, and never marked unlinked."""
    live.accounts.upsert("racer")
    live.increment("racer", 2, meter="seats")
    with live.engine.begin() as conn:  # the link lands between close and push
        conn.execute(
            table(UsageReport).update().values(status="closed", closed_at=datetime.now(UTC))
        )
    live.accounts.upsert("racer", stripe_customer_id="cus_racer")
    assert [r.status for r in live.report_now()] == ["sent"]
    assert fake.held("cus_racer", "seats") == 2
    with live.engine.connect() as conn:
        statuses = conn.execute(sa.select(_REPORTS.c.status)).scalars().all()
    assert statuses == ["sent"]


@pytest.mark.postgres
def test_a_link_committing_during_the_push_is_seen_not_stranded(
    postgres_url: str, fake: FakeStripe
) -> None:
    """A push that meets a link still uncommitted waits for it and sends to the new
    customer; without the share lock it would mark the report unlinked after the link
    had released the account's waiting reports, and strand it."""
    _empty(postgres_url)
    ms = adapter.connect(Settings(database_url=postgres_url), gateway=_gateway())
    try:
        ms.meters.upsert("seats", aggregation="last")
        ms.accounts.upsert("racer")
        ms.increment("racer", 2, meter="seats")
        linker = ms.engine.connect()
        link = linker.begin()
        accounts = sa.table("account", sa.column("name"), sa.column("stripe_customer_id"))
        linker.execute(
            accounts.update().where(accounts.c.name == "racer").values(stripe_customer_id="cus_r")
        )
        results: list[str] = []
        pusher = threading.Thread(target=lambda: results.extend(r.status for r in ms.report_now()))
        pusher.start()
        pusher.join(timeout=1.0)
        assert pusher.is_alive(), "the push should wait for the uncommitted link"
        link.commit()
        linker.close()
        pusher.join(timeout=10)
        assert results == ["sent"]
        assert fake.held("cus_r", "seats") == 2
    finally:
        ms.close()
