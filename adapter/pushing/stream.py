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

from adapter.gateway import MeterEventStream, PermanentError, StreamEvent, TransientError
from adapter.pushing.pusher import (
    _REPORTS,
    PUSHABLE,
    Pusher,
    PushResult,
    _load,
    _result,
    gone,
    outcome_values,
)
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
        waiting: list[Any] = []
        for report_id in report_ids:
            with self._engine.begin() as conn:
                row = _load(conn, report_id)
                if row is None:
                    settled.append(gone(report_id))
                    continue
                if row.status not in PUSHABLE:
                    settled.append(_result(row, row.status, error=f"report is {row.status}"))
                    continue
                outcome, row = self._prepare(conn, row, now)
            if outcome is not None:
                settled.append(outcome)
            elif row.replaces:  # a cancel must go first: this one goes alone, on v1
                settled.append(self._send(row, now))
            else:
                waiting.append(row)
        return settled + (self._send_batch(waiting, now) if waiting else [])

    def _send_batch(self, rows: list[Any], now: datetime) -> list[PushResult]:
        assert self._gateway is not None
        if self._stream is None:
            self._stream = self._gateway.stream()
        try:
            self._stream.send(_event(row) for row in rows)
        except PermanentError as exc:
            log.error("report.batch_failed", reports=len(rows), error=str(exc))
            return self._finish_all(rows, "failed", now=now, error=str(exc))
        except TransientError as exc:
            log.warning("report.batch_retry_later", reports=len(rows), error=str(exc))
            self._store(rows, {"last_error": str(exc)})
            return [_result(row, "sending", error=str(exc)) for row in rows]
        log.info("report.batch_pushed", reports=len(rows))
        return self._finish_all(rows, "sent", now=now)

    def _finish_all(
        self, rows: list[Any], status: str, *, now: datetime, error: str | None = None
    ) -> list[PushResult]:
        self._store(rows, outcome_values(status, now=now, error=error))
        return [_result(row, status, error=error) for row in rows]

    def _store(self, rows: list[Any], values: dict[str, Any]) -> None:
        """Set ``values`` on every report of the batch (at most 100), in one statement."""
        ids = [row.id for row in rows]
        with self._autocommit.begin() as conn:
            conn.execute(_REPORTS.update().where(_REPORTS.c.id.in_(ids)).values(**values))


def _event(row: Any) -> StreamEvent:
    return StreamEvent(
        event_name=row.event_name,
        stripe_customer_id=row.stripe_customer_id,
        value=int(row.sent_value),
        timestamp=row.sent_timestamp,
        identifier=row.identifier,
    )
