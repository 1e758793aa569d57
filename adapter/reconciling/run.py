"""``metersync reconcile``: compare, per (Stripe customer, meter, billing period), what
metersync sent with Stripe's meter event summaries, and repair drift when asked.

How a run goes:

- **Pairs.** Every linked, paying account (or the one named) and every meter with a
  report overlapping the account's chosen period, in (account id, meter id, period)
  order. Free accounts and accounts without a Stripe customer are listed as ``skipped``;
  pairs that never sent Stripe anything are not listed (there is nothing to compare).
- **Periods.** ``current`` and ``previous`` come from each account's ``billing_period``
  rows (the calendar month when none is known, as ``get_usage`` does); ``START..END``
  compares the same dates for every account. The CLI defaults to ``current``, the
  scheduled run compares ``previous`` and ``current``: the previous period still
  matters during the hour before its invoice finalises and for a late correction.
- **Calls.** At most one summary call per pair and period, paced inside Stripe's read
  limit (``METERSYNC_RECONCILE_READ_RATE``, else 80 % of the read limit like ``sync``),
  plus one meter listing per run when a meter's Stripe id is not known yet. A pair whose
  newest send is younger than the settle delay is ``settling`` and costs no call. Pairs
  go in batches of :data:`BATCH`: one database read for the batch, up to
  ``METERSYNC_RECONCILE_CONCURRENCY`` summary reads in flight at once (Stripe answers
  in tens to hundreds of milliseconds, so one read at a time could not use the limit),
  one transaction storing the batch's verdicts.
- **Resume.** Finished pairs are stored with the run's cursor in one transaction (a
  batch, or the pairs up to a repaired one, which is stored at once); a run stopped by a
  Stripe failure (or killed) is resumed by the next run of the same request within a
  day, after its last stored pair. A killed run reads again at most one batch.
- **Repair** (only with ``repair=True``; otherwise nothing is written to Stripe): see
  :mod:`adapter.domain.drift` for the plans and :mod:`adapter.reconciling.repair` for sending them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from adapter.domain import drift, validation
from adapter.errors import InvalidPeriod, MetersyncError
from adapter.gateway import Pace, StripeCallError, read_pace
from adapter.reconciling import store
from adapter.reconciling.batch import Batch, MeterIds, cancel_reads
from adapter.reconciling.pairs import pairs_to_compare
from adapter.store.models import utcnow

if TYPE_CHECKING:
    from adapter.gateway import Gateway
    from adapter.pushing.library import Library

log = structlog.get_logger("metersync.reconcile")
#: An unfinished run of the same request younger than this is resumed, not restarted.
RESUME_WITHIN = timedelta(days=1)
#: Pairs compared together: one database read, their summary reads in flight at once,
#: one transaction storing their verdicts.
BATCH = 200
#: ``(pairs done, pairs in the run)`` after every batch.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class PairResult:
    """One row of a run's report."""

    account: str
    customer: str | None
    meter: str
    period_start: datetime
    period_end: datetime
    expected: int
    stripe: float | None
    difference: float | None
    verdict: str
    repair: str
    repaired: bool
    note: str


@dataclass
class ReconcileSummary:
    """What a run found (all its pairs, resumed part included) and did."""

    run_id: int
    period: str
    repair: bool
    resumed: bool
    pairs: list[PairResult] = field(default_factory=list)
    #: Stripe calls this invocation made (summaries, meter listings, repairs).
    calls: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """Pairs by verdict."""
        return dict(Counter(pair.verdict for pair in self.pairs))

    @property
    def drifting(self) -> int:
        """Pairs whose drift is still there (not repaired by this run)."""
        return sum(1 for p in self.pairs if p.verdict in drift.DRIFT and not p.repaired)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (``metersync reconcile --json``)."""
        return {
            "run_id": self.run_id,
            "period": self.period,
            "repair": self.repair,
            "resumed": self.resumed,
            "counts": self.counts,
            "drifting": self.drifting,
            "calls": self.calls,
            "pairs": [
                {
                    **asdict(p),
                    "period_start": p.period_start.isoformat(),
                    "period_end": p.period_end.isoformat(),
                }
                for p in self.pairs
            ],
        }


class ReconcileStopped(MetersyncError):
    """A Stripe call kept failing; finished pairs are kept and a rerun resumes."""

    def __init__(self, cause: StripeCallError, *, summary: ReconcileSummary) -> None:
        super().__init__(
            f"reconcile stopped: {cause} (finished pairs are kept; run the same "
            "`metersync reconcile` again to resume)"
        )
        self.cause = cause
        self.summary = summary


def reconcile_pace(ms: Library) -> Pace:
    """``METERSYNC_RECONCILE_READ_RATE`` calls/s, else :func:`read_pace` (80 % of Stripe's
    read limit, leaving room for workers and ``sync``)."""
    rate = ms.settings.reconcile_read_rate
    return Pace(rate) if rate is not None else read_pace(ms.settings)


def check_period(period: str) -> str:
    """``period`` if reconcile understands it; :class:`InvalidPeriod` saying the forms."""
    names = [part.strip() for part in period.split(",")]
    if all(name in ("current", "previous") for name in names) and names:
        return ",".join(dict.fromkeys(names))
    if ".." in period and "," not in period:
        start, end = period.split("..", 1)
        validation.period(start.strip(), end.strip())  # raises InvalidPeriod
        return f"{start.strip()}..{end.strip()}"
    raise InvalidPeriod(
        f"period {period!r} is not understood; use current, previous, or START..END "
        "with ISO dates, e.g. 2026-10-01..2026-11-01"
    )


def reconcile(  # noqa: PLR0913  the library and its gateway, then keyword-only options
    ms: Library,
    gateway: Gateway,
    *,
    period: str = "current",
    account: str | None = None,
    repair: bool = False,
    trigger: str = "cli",
    restart: bool = False,
    pace: Callable[[], None] | None = None,
    concurrency: int | None = None,
    clock: Callable[[], datetime] = utcnow,
    progress: Progress | None = None,
) -> ReconcileSummary:
    """Compare every pair of ``period`` (see the module docstring), repairing drift only
    with ``repair``; raises :class:`ReconcileStopped` when Stripe keeps failing."""
    spec = check_period(period)
    if account is not None:
        ms.accounts.get(account)  # raises UnknownAccount, with the known names
    settle = timedelta(seconds=ms.settings.reconcile_settle_seconds)
    run, resumed = store.open_run(
        ms.engine,
        period=spec,
        account=account,
        repair=repair,
        trigger=trigger,
        now=clock(),
        restart=restart,
        resume_within=RESUME_WITHIN,
    )
    summary = ReconcileSummary(run.id, spec, repair, resumed)
    counting = _CountingPace(pace or reconcile_pace(ms))
    paced = gateway.paced(counting)
    keys = pairs_to_compare(ms.engine, spec, account=account, as_of=run.as_of)
    after = store.parse_cursor(run.cursor)
    todo = [key for key in keys if after is None or key.order > after]
    meter_ids = MeterIds(paced)
    batch = Batch(ms, paced, run.id, meter_ids, repair=repair, settle=settle)
    workers = concurrency or ms.settings.reconcile_concurrency
    done = len(keys) - len(todo)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="reconcile") as pool:
            # The next batch's reads start before this one's verdicts are stored, so
            # reads stay in flight while the database works.
            chunks = [todo[first : first + BATCH] for first in range(0, len(todo), BATCH)]
            started = batch.start(chunks[0], pool, now=clock()) if chunks else []
            for n, chunk in enumerate(chunks):
                steps = started
                try:
                    started = (
                        batch.start(chunks[n + 1], pool, now=clock()) if n + 1 < len(chunks) else []
                    )
                    batch.finish(steps, now=clock())
                except StripeCallError:
                    cancel_reads(steps + started)
                    raise
                done += len(chunk)
                if progress is not None:
                    progress(done, len(keys))
    except StripeCallError as error:
        store.stop_run(ms.engine, run.id, str(error))
        summary.pairs, summary.calls = _results(ms, run.id), counting.calls
        raise ReconcileStopped(error, summary=summary) from error
    summary.pairs, summary.calls = _results(ms, run.id), counting.calls
    detail = {"repair": repair, "account": account, "resumed": resumed, "calls": counting.calls}
    store.finish_run(
        ms.engine, run, counts=summary.counts, drifting=summary.drifting, detail=detail
    )
    log.info("reconcile.run", run_id=run.id, drifting=summary.drifting, **summary.counts)
    return summary


class _CountingPace:
    """The pace, counting every Stripe request it lets through (retries included)."""

    def __init__(self, pace: Callable[[], None]) -> None:
        self._pace = pace
        self._lock = threading.Lock()
        self.calls = 0

    def __call__(self) -> None:
        self._pace()
        with self._lock:
            self.calls += 1


def _results(ms: Library, run_id: int) -> list[PairResult]:
    with ms.engine.connect() as conn:
        rows = store.run_pairs(conn, run_id)
    return [
        PairResult(
            account=r.account,
            customer=r.customer,
            meter=r.meter,
            period_start=r.period_start,
            period_end=r.period_end,
            expected=int(r.expected),
            stripe=r.stripe,
            difference=None if r.stripe is None else int(r.expected) - r.stripe,
            verdict=r.verdict,
            repair=r.repair,
            repaired=bool(r.repaired),
            note=r.note,
        )
        for r in rows
    ]
