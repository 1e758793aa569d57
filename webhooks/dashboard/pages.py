"""The dashboard's pages (``GET``): overview, accounts, an account, reports, webhook
deliveries and the schedule. Each needs a session (see :mod:`webhooks.dashboard.guard`)
and reads through the library or the bounded queries of :mod:`webhooks.dashboard.data`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from adapter.errors import UnknownAccount
from adapter.reading.reports import STATUSES
from webhooks.dashboard import data, views
from webhooks.dashboard.guard import PREFIX, DashboardError, PageOperator
from webhooks.dashboard.render import page
from webhooks.metrics import DELIVERY_STATUSES
from webhooks.state import app_state

router = APIRouter(prefix=PREFIX, include_in_schema=False)
#: Most rows a listing shows.
MAX_ROWS = 1000
#: Schedule changes listed.
SCHEDULE_HISTORY = 20
#: Report statuses a retry acts on (see ``ms.retry``).
RETRYABLE = ("failed", "sending")

StatusFilter = Annotated[str, Query(max_length=32)]
Limit = Annotated[int, Query(ge=1, le=MAX_ROWS)]


def _status(value: str, known: tuple[str, ...]) -> str | None:
    """The status filter, ``None`` for any; an unknown one is a 422 page."""
    if not value:
        return None
    if value not in known:
        raise DashboardError(422, "Unknown status", f"status must be one of {', '.join(known)}")
    return value


def _here(request: Request) -> str:
    """This page's path and query, for an action to come back to."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


@router.get("")
def overview(request: Request, operator: PageOperator) -> HTMLResponse:
    """Events per hour, reports and deliveries by status, latency, lag, drift, failures."""
    view = views.overview(app_state(request).metersync())
    return page(request, "overview.html", operator=operator, title="Overview", view=view)


@router.get("/accounts")
def accounts(
    request: Request, operator: PageOperator, q: Annotated[str, Query(max_length=100)] = ""
) -> HTMLResponse:
    """Accounts by name, filtered by a prefix."""
    found = data.accounts(app_state(request).metersync().engine, prefix=q.strip())
    return page(
        request, "accounts.html", operator=operator, title="Accounts", accounts=found, q=q,
        limit=data.ACCOUNT_ROWS,
    )  # fmt: skip


@router.get("/accounts/{name:path}")
def account(request: Request, name: str, operator: PageOperator) -> HTMLResponse:
    """Usage per meter (this and past periods), cost, credit, alerts and the preview."""
    try:
        view = views.account(app_state(request).metersync(), name)
    except UnknownAccount as exc:
        raise DashboardError(404, "Unknown account", str(exc)) from None
    return page(request, "account.html", operator=operator, title=f"Account {name}", view=view)


@router.get("/reports")
def reports(
    request: Request, operator: PageOperator, status: StatusFilter = "", limit: Limit = 100
) -> HTMLResponse:
    """The newest reports, by status, with retry on failed ones."""
    found = app_state(request).metersync().reports(status=_status(status, STATUSES), limit=limit)
    return page(
        request, "reports.html", operator=operator, title="Reports", reports=found,
        statuses=STATUSES, selected=status, limit=limit, max_limit=MAX_ROWS, retryable=RETRYABLE,
        back=_here(request),
    )  # fmt: skip


@router.get("/webhooks")
def webhooks(
    request: Request, operator: PageOperator, status: StatusFilter = "", limit: Limit = 100
) -> HTMLResponse:
    """The newest webhook deliveries, by status, with replay."""
    engine = app_state(request).metersync().engine
    found = data.deliveries(engine, status=_status(status, DELIVERY_STATUSES), limit=limit)
    return page(
        request, "webhooks.html", operator=operator, title="Webhook deliveries",
        deliveries=found, statuses=DELIVERY_STATUSES, selected=status, limit=limit,
        max_limit=MAX_ROWS, back=_here(request),
    )  # fmt: skip


@router.get("/schedule")
def schedule(request: Request, operator: PageOperator) -> HTMLResponse:
    """The reporting schedule, pause/resume/change, and its audited changes."""
    ms = app_state(request).metersync()
    return page(
        request, "schedule.html", operator=operator, title="Schedule",
        state=ms.schedule.state(), history=ms.schedule.history(limit=SCHEDULE_HISTORY),
    )  # fmt: skip
