"""The dashboard's actions (``POST``): retry a report, replay a webhook delivery, pause,
resume or change the schedule. Each needs a session and its CSRF token (see
:mod:`webhooks.dashboard.guard`), is audited as :data:`ACTOR` and logged, and answers
303 back to the page it came from with a notice saying what happened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from adapter.errors import ConfigurationError, InvalidUsage, MetersyncError
from adapter.mirror import process
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import AuditLog, table, utcnow
from webhooks.dashboard.guard import PREFIX, CheckedAction, back
from webhooks.dashboard.render import redirect
from webhooks.state import app_state

if TYPE_CHECKING:
    from adapter.client import Metersync

log = structlog.get_logger("metersync.dashboard")
router = APIRouter(prefix=PREFIX, include_in_schema=False)
#: Who the audit log names for every dashboard action.
ACTOR = "dashboard"
_AUDIT, _DELIVERIES = table(AuditLog), table(WebhookDelivery)


def audit(ms: Metersync, action: str, subject: str, detail: dict[str, Any]) -> None:
    """Write one audit row for a dashboard action."""
    with ms.engine.begin() as conn:
        conn.execute(
            _AUDIT.insert().values(
                at=utcnow(), actor=ACTOR, action=action, subject=subject, detail=detail
            )
        )


@router.post("/reports/{report_id}/retry")
def retry(request: Request, report_id: int, action: CheckedAction) -> RedirectResponse:
    """Push a failed report again (``ms.retry``): a dry run without a Stripe key."""
    ms = app_state(request).metersync()
    try:
        result = ms.retry(report_id)
    except InvalidUsage as exc:  # no such report, or one that is not failed or sending
        notice = f"Report {report_id} was not retried: {exc}"
    else:
        audit(ms, "report.retried", f"report:{report_id}", {"status": result.status})
        log.info("dashboard.retried", actor=ACTOR, report_id=report_id, status=result.status)
        said = f": {result.error}" if result.error else ""
        notice = f"Report {report_id} retried: now {result.status}{said}"
    return redirect(request, back(action.form, f"{PREFIX}/reports"), notice=notice)


def _exists(ms: Metersync, delivery_id: int) -> bool:
    with ms.engine.connect() as conn:
        query = sa.select(_DELIVERIES.c.id).where(_DELIVERIES.c.id == delivery_id)
        return conn.execute(query).first() is not None


def _replay(ms: Metersync, delivery_id: int) -> str:
    """Apply a delivery again and push what it closed, as ``metersync webhooks replay``."""
    gateway = ms.gateway()
    refetch = getattr(gateway, "retrieve", None) if gateway is not None else None
    try:
        processed = process.replay(ms, delivery_id, refetch=refetch)
    except MetersyncError as exc:  # a payload that cannot apply, Stripe refusing a refetch
        return f"Replaying delivery {delivery_id} failed: {exc}"
    except Exception as exc:  # kept on the delivery and logged; said on the page
        log.exception("dashboard.replay_failed", delivery_id=delivery_id)
        return f"Replaying delivery {delivery_id} failed: {process.describe(exc)}"
    pusher = ms.pusher()
    pushed = [pusher.push(report_id).status for report_id in processed.to_push]
    audit(ms, "webhook.replayed", f"delivery:{delivery_id}", {"status": processed.status})
    log.info("dashboard.replayed", actor=ACTOR, delivery_id=delivery_id, status=processed.status)
    said = f" ({processed.error})" if processed.error else ""
    reports = f"; pushed {len(pushed)} reports: {', '.join(pushed)}" if pushed else ""
    return f"Delivery {delivery_id} replayed: now {processed.status}{said}{reports}"


@router.post("/webhooks/{delivery_id}/replay")
def replay(request: Request, delivery_id: int, action: CheckedAction) -> RedirectResponse:
    """Apply a stored delivery again, then push the reports it closed."""
    ms = app_state(request).metersync()
    if _exists(ms, delivery_id):
        notice = _replay(ms, delivery_id)
    else:
        notice = f"No webhook delivery {delivery_id}: nothing was replayed"
    return redirect(request, back(action.form, f"{PREFIX}/webhooks"), notice=notice)


@router.post("/schedule")
def schedule(request: Request, action: CheckedAction) -> RedirectResponse:
    """``do=pause``, ``do=resume`` or ``do=set`` with ``expression``; audited."""
    ms = app_state(request).metersync()
    what, expression = action.form.get("do", ""), action.form.get("expression", "").strip()
    before = ms.schedule.state()
    try:
        if what == "pause":
            after = ms.schedule.pause(actor=ACTOR)
        elif what == "resume":
            after = ms.schedule.resume(actor=ACTOR)
        elif what == "set" and expression:
            after = ms.schedule.set(expression[:100], actor=ACTOR)
        else:
            raise InvalidUsage("choose pause, resume, or a new schedule expression")
    except (ConfigurationError, InvalidUsage) as exc:
        notice = f"The schedule was not changed: {exc}"
    else:
        changed = (before.expression, before.paused) != (after.expression, after.paused)
        state = "paused" if after.paused else "running"
        notice = f"Schedule {after.expression}, {state}" + ("" if changed else " (unchanged)")
        log.info("dashboard.schedule", actor=ACTOR, action=what, changed=changed)
    return redirect(request, f"{PREFIX}/schedule", notice=notice)
