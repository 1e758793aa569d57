"""Logging in with the ops token and out again.

``POST /dashboard/login`` with the right token sets the signed session cookie
(:mod:`webhooks.dashboard.session`) and goes on to the page asked for; a wrong token
shows the form again with an error (401). ``POST /dashboard/logout`` (CSRF-checked)
expires the cookie. The token is compared in constant time and never logged or shown.
"""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from webhooks.dashboard import session as sessions
from webhooks.dashboard.guard import PREFIX, CheckedAction, back, operator, ops_token, read_form
from webhooks.dashboard.render import clear_cookie, page, redirect, set_cookie

log = structlog.get_logger("metersync.dashboard")
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _form(request: Request, *, next_path: str, error: str | None, status: int) -> HTMLResponse:
    # Plain http on a public name: the browser would drop the Secure cookie; say so.
    url = request.url
    insecure = url.scheme == "http" and sessions.cookie_secure(url.scheme, url.hostname)
    return page(
        request, "login.html", operator=None, status=status, title="Log in",
        next=next_path, error=error, insecure=insecure,
    )  # fmt: skip


@router.get("/login", response_model=None)
async def login_form(request: Request, next: str = PREFIX) -> Response:
    """The login form; an operator already logged in goes straight on."""
    target = back({"next": next}, PREFIX)
    if operator(request) is not None:
        return RedirectResponse(target, status_code=303)
    return _form(request, next_path=target, error=None, status=200)


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the token; set the session cookie and go on, or show the form again."""
    token = ops_token(request)
    form = await read_form(request)
    target = back(form, PREFIX)
    if not sessions.token_ok(token, form.get("token")):
        log.warning("dashboard.login_refused", client=_client(request))
        return _form(
            request, next_path=target, status=401,
            error="That is not the ops token (METERSYNC_OPS_TOKEN). Try again.",
        )  # fmt: skip
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    set_cookie(response, request, sessions.COOKIE, sessions.new_session(token), sessions.LIFETIME)
    log.info("dashboard.login", client=_client(request))
    return response


@router.post("/logout")
async def logout(request: Request, _action: CheckedAction) -> RedirectResponse:
    """End the session in this browser."""
    response = redirect(request, f"{PREFIX}/login", notice="Logged out.")
    clear_cookie(response, request, sessions.COOKIE)
    log.info("dashboard.logout")
    return response
