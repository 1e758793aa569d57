"""The statuses a usage report goes through. Pure: no I/O.

``open → closed → sending → sent``, or ``dry_run`` (no API key), ``skipped_free`` (free
account), ``unlinked`` (no Stripe customer yet; pushed once linked), ``failed`` (Stripe
refused it; ``last_error`` says why), ``expired`` (too old for Stripe), ``superseded``
(its event was cancelled at Stripe for a newer value at the same second). ``moved`` is
never stored: it is what a push says of a report whose events went to a later period.
"""

from __future__ import annotations

from enum import StrEnum


class ReportStatus(StrEnum):
    """A report's status; equal to its stored text."""

    OPEN = "open"
    CLOSED = "closed"
    SENDING = "sending"
    SENT = "sent"
    DRY_RUN = "dry_run"
    SKIPPED_FREE = "skipped_free"
    UNLINKED = "unlinked"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


#: What a push says of a report whose events all went to a later period (never stored).
MOVED_STATUS = "moved"


#: Statuses a push acts on.
PUSHABLE = (ReportStatus.CLOSED, ReportStatus.SENDING)
#: Statuses of a decided report that Stripe holds, or will once its send goes through.
HELD = frozenset(
    {ReportStatus.CLOSED, ReportStatus.SENDING, ReportStatus.SENT, ReportStatus.DRY_RUN}
)
