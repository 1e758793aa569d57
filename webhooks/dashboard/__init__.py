"""The operator dashboard at ``/dashboard``: server-rendered Jinja2 pages with Chart.js
charts (vendored under ``static/vendor``, so it works offline), behind the ops token.

- :mod:`~webhooks.dashboard.session`: signed session cookies and CSRF tokens (pure);
- :mod:`~webhooks.dashboard.guard`: who may see a page or take an action;
- :mod:`~webhooks.dashboard.login`: logging in and out;
- :mod:`~webhooks.dashboard.pages` and :mod:`~webhooks.dashboard.views`: what each page
  shows, through the library and the bounded queries of :mod:`~webhooks.dashboard.data`;
- :mod:`~webhooks.dashboard.actions`: retry, replay, pause, resume, change (audited);
- :mod:`~webhooks.dashboard.render`: templates, headers, cookies, notices.

:func:`mount` adds it all to an app. Errors on dashboard paths are HTML pages; the app's
JSON errors elsewhere are unchanged.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from webhooks.dashboard import actions, login, pages
from webhooks.dashboard.guard import PREFIX, DashboardError, LoginRequired
from webhooks.dashboard.render import error_page

Handler = Callable[[Request, Exception], Response | Awaitable[Response]]

__all__ = ["PREFIX", "mount"]


def _dashboard_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DashboardError)
    return error_page(exc.status, exc.title, exc.message)


def _login_required(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    target = f"{PREFIX}/login?next={quote(exc.next_path, safe='/')}"
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def _as_html(handler: Handler) -> Handler:
    """``handler`` unchanged outside the dashboard; on its paths, its JSON error shown
    as an HTML page (same status, same message)."""

    async def handle(request: Request, exc: Exception) -> Response:
        answer = handler(request, exc)
        response = await answer if inspect.isawaitable(answer) else answer
        if not request.url.path.startswith(PREFIX):
            return response
        try:
            error: dict[str, Any] = json.loads(bytes(response.body))["error"]
            message = str(error["message"])
        except (ValueError, KeyError, TypeError):
            message = "The request failed."
        return error_page(response.status_code, f"Error {response.status_code}", message)

    return handle


def mount(app: FastAPI) -> None:
    """Serve the dashboard on ``app``: pages, actions, static files and HTML errors.
    Call it after the app's own exception handlers are installed."""
    for kind, handler in list(app.exception_handlers.items()):
        app.exception_handlers[kind] = _as_html(handler)
    app.add_exception_handler(DashboardError, _dashboard_error)
    app.add_exception_handler(LoginRequired, _login_required)
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(actions.router)
    static = StaticFiles(packages=[("webhooks.dashboard", "static")])
    app.mount(f"{PREFIX}/static", static, name="dashboard-static")
