"""``adapter.reconciling.run`` on SQLite and PostgreSQL against Stripe's meter endpoints played by
``responses``: a planted drift of each kind (missing on a sum meter, a cancellable and an
uncancellable excess, a wrong last value, a pair still settling), repairs that make the
next run match, nothing written to Stripe without ``repair``, pacing and resuming."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import responses
import sqlalchemy as sa

from adapter.client import Metersync
from adapter.reconciling import run as reconciling
from adapter.reconciling.run import Progress, ReconcileSummary
from adapter.store.models import AuditLog, Meter, UsageReport, table, utcnow
from tests.gateways import make_gateway
from tests.stripe_meter_model import meter_id
from tests.stripe_meters import StripeMeters
from webhooks.metrics import Metrics, read_snapshot

FORMULAS = {"api_calls": "sum", "requests": "sum", "peak": "last", "seats": "last"}
#: Usage recorded this long ago lands in an hourly window that is over.
AGO = timedelta(hours=2)


@dataclass
class World:
    """A metersync whose usage was pushed to the fake Stripe, and that fake."""

    ms: Metersync
    stripe: StripeMeters

    def run(
        self,
        *,
        repair: bool = False,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> ReconcileSummary:
        """A reconcile run with no pacing wait."""
        gateway = self.ms.gateway()
        assert gateway is not None
        return reconciling.reconcile(
            self.ms,
            gateway,
            pace=lambda: None,
            repair=repair,
            concurrency=concurrency,
            progress=progress,
        )

    def report(self, meter: str, status: str = "sent") -> sa.Row[Any]:
        """The newest report of ``meter`` with ``status``."""
        reports, meters = table(UsageReport), table(Meter)
        query = (
            sa.select(reports)
            .join(meters, meters.c.id == reports.c.meter_id)
            .where(meters.c.name == meter, reports.c.status == status)
            .order_by(reports.c.id.desc())
        )
        with self.ms.engine.connect() as conn:
            found = conn.execute(query).first()
        assert found is not None, f"no {status} report of {meter}"
        return found


def verdicts(summary: ReconcileSummary) -> dict[str, str]:
    """Meter name → verdict (one account)."""
    return {pair.meter: pair.verdict for pair in summary.pairs}


@pytest.fixture
def world(ms: Metersync, stripe_api: responses.RequestsMock) -> World:
    """acct_1 used all four meters two hours ago; every report is sent and Stripe holds
    exactly what was sent; the settle delay is 0 so pairs compare at once."""
    stripe = StripeMeters(stripe_api)
    stripe.model.formulas.update(FORMULAS)
    ms.use_gateway(make_gateway(attempts=1))
    ms.settings = ms.settings.model_copy(update={"reconcile_settle_seconds": 0})
    now = utcnow()
    ms.set_billing_period("acct_1", now - timedelta(days=5), now + timedelta(days=25))
    at = now - AGO
    for meter, quantity in (("api_calls", 5), ("requests", 1), ("peak", 9), ("seats", 7)):
        ms.increment("acct_1", quantity, meter=meter, timestamp=at)
    ms.increment("acct_1", 3, meter="api_calls", timestamp=at + timedelta(seconds=1))
    assert {r.status for r in ms.report_now()} == {"sent"}
    return World(ms, stripe)


def test_a_clean_run_matches_every_pair_and_posts_nothing(world: World) -> None:
    """Stripe holding what was sent: every pair matches, with one summary call per pair
    plus one meter listing, and no POST at all."""
    posts = len(world.stripe.posts())
    summary = world.run()
    assert verdicts(summary) == dict.fromkeys(FORMULAS, "match")
    assert {p.meter: p.expected for p in summary.pairs} == {
        "api_calls": 8,
        "requests": 1,
        "peak": 9,
        "seats": 7,
    }
    assert len(world.stripe.posts()) == posts
    gets = [path for method, path in world.stripe.calls if method == "GET"]
    assert len(gets) == len(FORMULAS) + 1
    assert summary.calls == len(FORMULAS) + 1


def test_missing_on_a_sum_meter_is_sent_as_one_correction(world: World) -> None:
    """A lost event shows as missing; without repair nothing is POSTed, with repair one
    correction of the difference is sent, and the next run matches and counts it."""
    world.stripe.model.drop(world.report("api_calls").identifier)
    posts = len(world.stripe.posts())
    found = world.run()
    pair = next(p for p in found.pairs if p.meter == "api_calls")
    assert (pair.verdict, pair.expected, pair.stripe, pair.difference) == ("missing", 8, 0.0, 8)
    assert len(world.stripe.posts()) == posts
    fixed = world.run(repair=True)
    pair = next(p for p in fixed.pairs if p.meter == "api_calls")
    assert pair.repaired
    assert pair.repair.startswith("sent 8 as ms-fix-")
    assert world.stripe.posts()[posts:] == ["/v1/billing/meter_events"]
    again = world.run()
    assert verdicts(again) == dict.fromkeys(FORMULAS, "match")
    assert next(p for p in again.pairs if p.meter == "api_calls").expected == 8


def test_a_repair_run_again_reuses_the_correction_identifier(world: World) -> None:
    """A correction stored but never confirmed (the run died mid-call) is sent again with
    the same identifier, which Stripe rejects as a duplicate: counted once."""
    world.stripe.model.drop(world.report("api_calls").identifier)
    world.run(repair=True)
    with world.ms.engine.begin() as conn:
        conn.execute(sa.text("UPDATE reconcile_correction SET status = 'sending'"))
    summary = world.run(repair=True)
    assert "api_calls" in {p.meter for p in summary.pairs if p.repair.startswith("sent 8")}
    events = [e for e in world.stripe.model.events if e["identifier"].startswith("ms-fix-")]
    assert len(events) == 1
    assert world.stripe.model.summary("mtr_api_calls", "cus_123", 0, 2**40) == 8.0


def test_an_excess_from_a_failed_report_stripe_took_is_cancelled(world: World) -> None:
    """A report marked failed whose event Stripe did take shows as excess, and repair
    cancels exactly that identifier; the next run matches."""
    at = utcnow() - AGO + timedelta(minutes=5)
    world.ms.increment("acct_1", 4, meter="api_calls", timestamp=at)
    world.ms.report_now()
    late = world.report("api_calls")
    with world.ms.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE usage_report SET status = 'failed', attempted_at = :t WHERE id = :i"),
            {"t": utcnow(), "i": late.id},
        )
    found = world.run()
    pair = next(p for p in found.pairs if p.meter == "api_calls")
    assert (pair.verdict, pair.expected, pair.stripe) == ("excess", 8, 12.0)
    fixed = world.run(repair=True)
    pair = next(p for p in fixed.pairs if p.meter == "api_calls")
    assert pair.repair == f"cancelled {late.identifier} (4)"
    assert world.stripe.posts()[-1] == "/v1/billing/meter_event_adjustments"
    assert verdicts(world.run()) == dict.fromkeys(FORMULAS, "match")


def test_an_excess_nothing_explains_is_left_for_the_operator(world: World) -> None:
    """An event metersync never sent cannot be cancelled by it: the verdict stays excess,
    the note says to fix it by hand, and repair POSTs nothing."""
    sent = world.report("api_calls")
    stamp = int(sent.sent_timestamp.timestamp())
    foreign = {"event_name": "api_calls", "identifier": "other-app-1", "customer": "cus_123"}
    world.stripe.model.add({**foreign, "value": "2", "timestamp": stamp})
    posts = len(world.stripe.posts())
    summary = world.run(repair=True)
    pair = next(p for p in summary.pairs if p.meter == "api_calls")
    assert (pair.verdict, pair.difference, pair.repaired) == ("excess", -2.0, False)
    assert "fix it by hand" in pair.note
    assert len(world.stripe.posts()) == posts


def test_a_wrong_last_value_is_corrected_with_a_newer_event(world: World) -> None:
    """Stripe holding another newest value on a last meter: repair sends the expected
    value with a timestamp after every event in the range; the next run matches."""
    sent = world.report("seats")
    stamp = int(sent.sent_timestamp.timestamp()) + 1
    stray = {"event_name": "seats", "identifier": "stray", "customer": "cus_123"}
    world.stripe.model.add({**stray, "value": "99", "timestamp": stamp})
    found = world.run(repair=True)
    pair = next(p for p in found.pairs if p.meter == "seats")
    assert (pair.verdict, pair.stripe, pair.repaired) == ("wrong_value", 99.0, True)
    correction = world.stripe.model.events[-1]
    assert (correction["value"], correction["timestamp"] > stamp) == ("7", True)
    assert verdicts(world.run()) == dict.fromkeys(FORMULAS, "match")


def test_pairs_sent_within_the_settle_delay_are_settling_and_cost_no_call(
    world: World,
) -> None:
    """With the default 10-minute settle delay the pairs just pushed are settling: no
    summary is read for them."""
    world.ms.settings = world.ms.settings.model_copy(update={"reconcile_settle_seconds": 600})
    summary = world.run()
    assert verdicts(summary) == dict.fromkeys(FORMULAS, "settling")
    assert not any("event_summaries" in path for _, path in world.stripe.calls)


def test_free_accounts_are_skipped_and_unknown_meters_reported(world: World) -> None:
    """A free account's pairs are skipped; a meter Stripe has no meter for is
    unknown_meter; neither costs a summary call."""
    world.ms.accounts.upsert("acct_free", stripe_customer_id="cus_free", free=True)
    world.ms.increment("acct_free", 1, meter="api_calls", timestamp=utcnow() - AGO)
    del world.stripe.model.formulas["seats"]
    summary = world.run()
    by_pair = {(p.account, p.meter): p.verdict for p in summary.pairs}
    assert by_pair[("acct_free", "api_calls")] == "skipped"
    assert by_pair[("acct_1", "seats")] == "unknown_meter"
    summaries = [path for _, path in world.stripe.calls if "event_summaries" in path]
    assert len(summaries) == 3


def test_an_interrupted_run_resumes_after_its_last_finished_pair(world: World) -> None:
    """Stripe failing on the third summary stops the run; the next run resumes with the
    remaining pairs only, and reports all four."""
    world.stripe.summary_faults.append((500, {"error": {"type": "api_error", "message": "x"}}))
    world.stripe.summary_faults.insert(0, (200, _summary(8)))
    world.stripe.summary_faults.insert(1, (200, _summary(1)))
    with pytest.raises(reconciling.ReconcileStopped) as stopped:
        world.run(concurrency=1)  # the faults go to the reads in the order they arrive
    assert "run the same `metersync reconcile` again" in str(stopped.value)
    assert len(stopped.value.summary.pairs) == 2
    before = sum("event_summaries" in path for _, path in world.stripe.calls)
    resumed = world.run()
    after = sum("event_summaries" in path for _, path in world.stripe.calls)
    assert resumed.resumed
    assert resumed.run_id == stopped.value.summary.run_id
    assert after - before == 2
    assert verdicts(resumed) == dict.fromkeys(FORMULAS, "match")


def test_reads_in_flight_together_still_store_only_the_pairs_before_a_failure(
    world: World,
) -> None:
    """With the summary reads of a batch in flight at once, a pair whose read keeps
    failing stops the run with the pairs before it stored (run order, not arrival
    order), the later pairs not; the rerun reads the rest and every pair matches."""
    world.stripe.failing_meters.add(meter_id("peak"))
    with pytest.raises(reconciling.ReconcileStopped) as stopped:
        world.run(concurrency=4)
    assert [pair.meter for pair in stopped.value.summary.pairs] == ["api_calls", "requests"]
    world.stripe.failing_meters.clear()
    before = sum("event_summaries" in path for _, path in world.stripe.calls)
    resumed = world.run(concurrency=4)
    after = sum("event_summaries" in path for _, path in world.stripe.calls)
    assert (resumed.resumed, after - before) == (True, 2)
    assert verdicts(resumed) == dict.fromkeys(FORMULAS, "match")


def test_pairs_are_stored_batch_by_batch_in_run_order(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches smaller than the run: every pair is compared once, in run order, the
    cursor ends at the last pair and progress is told after each batch."""
    monkeypatch.setattr(reconciling, "BATCH", 3)
    told: list[tuple[int, int]] = []
    summary = world.run(progress=lambda done, total: told.append((done, total)))
    assert [pair.meter for pair in summary.pairs] == list(FORMULAS)
    assert verdicts(summary) == dict.fromkeys(FORMULAS, "match")
    assert told == [(3, 4), (4, 4)]


def test_each_run_writes_one_audit_log_row_with_counts(world: World) -> None:
    """One audit_log row per finished run, with the verdict counts."""
    world.stripe.model.drop(world.report("requests").identifier)
    summary = world.run()
    audit = table(AuditLog)
    with world.ms.engine.connect() as conn:
        rows = conn.execute(sa.select(audit).where(audit.c.action == "reconcile")).all()
    assert len(rows) == 1
    assert (rows[0].actor, rows[0].detail["counts"], rows[0].detail["drifting"]) == (
        "cli",
        {"match": 3, "missing": 1},
        1,
    )
    assert summary.drifting == 1


def test_reads_go_through_the_pace(world: World) -> None:
    """Every Stripe request of a run waits for the pace first."""
    paced: list[int] = []
    gateway = world.ms.gateway()
    assert gateway is not None
    summary = reconciling.reconcile(world.ms, gateway, pace=lambda: paced.append(1))
    assert len(paced) == summary.calls == len(FORMULAS) + 1


def _summary(value: float) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": "s", "aggregated_value": value}],
        "has_more": False,
    }


def test_the_drift_gauge_shows_the_newest_runs_unrepaired_pairs(world: World) -> None:
    """/metrics reports the newest finished run's drifting pairs by verdict; after a
    repair run they are gone."""
    world.stripe.model.drop(world.report("api_calls").identifier)
    world.run()
    text = Metrics(lambda: world.ms.engine).render().decode()
    assert 'metersync_reconcile_drifting_pairs{verdict="missing"} 1.0' in text
    assert 'metersync_reconcile_drifting_pairs{verdict="excess"} 0.0' in text
    world.run(repair=True)
    snap = read_snapshot(world.ms.engine, now=utcnow())
    assert (snap.drifting, snap.reconciled_at > 0) == ({}, True)


def test_the_client_reconciles_through_its_gateway(world: World) -> None:
    """``ms.reconcile()`` runs the same comparison, started by the API."""
    summary = world.ms.reconcile(period="current")
    assert verdicts(summary) == dict.fromkeys(FORMULAS, "match")
