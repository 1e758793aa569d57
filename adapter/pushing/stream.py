"""Pushing reports on Stripe's v2 meter event stream, up to 100 per call.

Each report is decided exactly as for the v1 transport (:class:`~adapter.pushing.pusher.Pusher`:
the identifier, value and timestamp are stored before any call), then the whole batch
goes out in one stream request. Stripe validates stream events later and answers
nothing per event, so a report is ``sent`` once its request was accepted; a batch that
failed is sent again whole, and Stripe drops the identifiers it already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from adapter.domain.statuses import PUSHABLE, ReportStatus
from adapter.gateway import MeterEventStream, PermanentError, TransientError
from adapter.pushing import rows
from adapter.pushing.pusher import Pusher, PushResult, gone, result
from adapter.pushing.rows import Loaded
from adapter.store.models import utcnow

log = structlog.get_logger("metersync.push")


class StreamPusher(Pusher):
    """A :class:`Pusher` that sends on the v2 stream; ``gateway=None`` is the dry run."""

    _stream: MeterEventStream | None = None

    def push_many(
        self, report_ids: Sequence[int], *, now: datetime | None = None
    ) -> list[PushResult]:
        """Decide every report, then send the ones that need a call in one stream batch."""
        now = now or utcnow()
        settled: list[PushResult] = []
        waiting: list[Loaded] = []
        for report_id in report_ids:
            with self._engine.begin() as conn:
                row = rows.load(conn, report_id)
                if row is None:
                    settled.append(gone(report_id))
                    continue
                if row.status not in PUSHABLE:
                    settled.append(result(row, row.status, error=f"report is {row.status}"))
                    continue
                outcome, row = self.prepare(conn, row, now)
            if outcome is not None:
                settled.append(outcome)
            elif row.replaces:  # a cancel must go first: this one goes alone, on v1
                settled.append(self.send(row, now))
            else:
                waiting.append(row)
        return settled + (self._send_batch(waiting, now) if waiting else [])

    def _send_batch(self, batch: list[Loaded], now: datetime) -> list[PushResult]:
        assert self._gateway is not None
        if self._stream is None:
            self._stream = self._gateway.stream()
        try:
            self._stream.send(row.event() for row in batch)
        except PermanentError as exc:
            log.error("report.batch_failed", reports=len(batch), error=str(exc))
            return self._finish_all(batch, ReportStatus.FAILED, now=now, error=str(exc))
        except TransientError as exc:
            log.warning("report.batch_retry_later", reports=len(batch), error=str(exc))
            self._store(batch, {"last_error": str(exc)})
            return [result(row, ReportStatus.SENDING, error=str(exc)) for row in batch]
        log.info("report.batch_pushed", reports=len(batch))
        return self._finish_all(batch, ReportStatus.SENT, now=now)

    def _finish_all(
        self, batch: list[Loaded], status: str, *, now: datetime, error: str | None = None
    ) -> list[PushResult]:
        self._store(batch, rows.outcome_values(status, now=now, error=error))
        return [result(row, status, error=error) for row in batch]

    def _store(self, batch: list[Loaded], values: dict[str, Any]) -> None:
        """Set ``values`` on every report of the batch (at most 100), in one statement."""
        with self._autocommit.begin() as conn:
            rows.store_many(conn, [row.id for row in batch], values)
