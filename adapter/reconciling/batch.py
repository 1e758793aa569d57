"""One batch of a reconcile run (see :mod:`adapter.reconciling.run`): the database read for the
batch, its summary reads in flight together, then verdicts and repairs in run order,
stored with the run's cursor."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapter.domain import drift
from adapter.gateway import PermanentError
from adapter.reconciling import store
from adapter.reconciling.repair import repair_pair

if TYPE_CHECKING:
    from adapter.gateway import Gateway
    from adapter.pushing.library import Library


@dataclass
class Step:
    """One pair of a batch on its way to a verdict."""

    key: store.PairKey
    values: dict[str, Any]
    verdict: str | None = None
    pair: drift.Pair | None = None
    pending: list[Any] = field(default_factory=list)
    span: tuple[datetime, datetime] | None = None
    read: Future[float] | None = None


class Batch:
    """Compares pairs :data:`BATCH` at a time: one database read for the batch, the
    summary reads in flight together (each through the pace), then, in run order, the
    verdicts and repairs, stored with the cursor in one transaction. A pair that was
    repaired is stored at once, so a rerun never repeats a repair it does not know of."""

    def __init__(  # noqa: PLR0913  the library, its gateway, then the run's settings
        self,
        ms: Library,
        gateway: Gateway,
        run_id: int,
        meter_ids: MeterIds,
        *,
        repair: bool,
        settle: timedelta,
    ) -> None:
        self._ms, self._gateway, self._run_id = ms, gateway, run_id
        self._meter_ids, self._repair, self._settle = meter_ids, repair, settle

    def start(
        self, keys: list[store.PairKey], pool: ThreadPoolExecutor, *, now: datetime
    ) -> list[Step]:
        """Read the batch from the database and put its summary reads in flight."""
        steps = self._prepare(keys, now=now)
        for step in steps:
            if step.span is not None and step.pair is not None:
                step.read = self._read(pool, step)
        return steps

    def finish(self, steps: list[Step], *, now: datetime) -> None:
        """Verdicts and repairs in run order, then stored; a :class:`StripeCallError` is
        raised after the pairs before the one it stopped are stored."""
        rows: list[tuple[store.PairKey, dict[str, Any]]] = []
        try:
            for step in steps:
                rows.append((step.key, self._finish(step, now=now)))
                if step.values["repair"]:
                    store.save_pairs(self._ms.engine, self._run_id, rows)
                    rows = []
        finally:
            store.save_pairs(self._ms.engine, self._run_id, rows)

    def _prepare(self, keys: list[store.PairKey], *, now: datetime) -> list[Step]:
        """Each key's step: its verdict when no read is needed, else what to read."""
        steps = []
        spans: dict[store.PairKey, tuple[datetime, datetime]] = {}
        for key in keys:
            step = Step(key, {"expected": 0, "stripe": None, "repair": "", "repaired": False})
            steps.append(step)
            if key.free or key.customer is None:
                step.verdict = "skipped"
                free = "free account: usage is never sent"
                step.values["note"] = free if key.free else "no Stripe customer linked"
            else:
                spans[key] = drift.summary_range(key.period_start, key.period_end, now=now)
        with self._ms.engine.connect() as conn:
            loaded = store.load_pairs(conn, spans)
        for step in steps:
            if step.key not in loaded:
                continue
            step.pair, step.pending = loaded[step.key]
            step.values["expected"] = drift.expected_value(step.pair.formula, step.pair.counted)
            meter_id = step.key.stripe_meter_id or self._meter_ids.get(step.key.event_name)
            if meter_id is None:
                step.verdict = "unknown_meter"
                step.values["note"] = (
                    f"no Stripe meter with event name {step.key.event_name!r}: "
                    "see `metersync meters check`"
                )
                continue
            step.values["meter_id"] = meter_id
            settling = drift.is_settling(step.pair, now=now, settle=self._settle)
            if not settling and not (self._repair and step.pending):
                step.span = spans[step.key]
        return steps

    def _read(self, pool: ThreadPoolExecutor, step: Step) -> Future[float]:
        key, span = step.key, step.span
        assert key.customer is not None
        assert span is not None
        return pool.submit(
            self._gateway.meter_event_summary,
            meter_id=step.values["meter_id"],
            customer=key.customer,
            start=span[0],
            end=span[1],
        )

    def _finish(self, step: Step, *, now: datetime) -> dict[str, Any]:
        """The pair's verdict (repairing it if asked): the values its row stores."""
        values = step.values
        values.pop("meter_id", None)
        if step.verdict is not None or step.pair is None:
            return {"verdict": step.verdict, **values}
        key, ms, gateway = step.key, self._ms, self._gateway
        if self._repair and step.pending:
            values["repair"] = repair_pair(ms, gateway, self._run_id, key, pending=step.pending)
        stripe: float | None = None
        if step.read is not None:
            try:
                stripe = step.read.result()
            except PermanentError as error:
                values["note"] = f"Stripe refused the summary: {error}"
                return {"verdict": "error", **values}
        found = drift.compare(step.pair, stripe, now=now, settle=self._settle)
        values.update(stripe=stripe, note=values.get("note") or found.note)
        if self._repair and found.verdict in drift.DRIFT and not found.plan.empty:
            values["repair"] = repair_pair(ms, gateway, self._run_id, key, plan=found.plan)
            values["repaired"] = not values["repair"].startswith("failed")
        return {"verdict": found.verdict, **values}


def cancel_reads(steps: list[Step]) -> None:
    """Drop the reads not started yet (a stopped run does not need them)."""
    for step in steps:
        if step.read is not None:
            step.read.cancel()


class MeterIds:
    """Stripe meter ids by event name: the mirror's first, Stripe's listing once per run."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._known: dict[str, str] | None = None

    def get(self, event_name: str) -> str | None:
        if self._known is None:
            meters = self._gateway.list_meters()
            meters.sort(key=lambda m: m.status == "active")  # active ones win below
            self._known = {m.event_name: m.id for m in meters}
        return self._known.get(event_name)
