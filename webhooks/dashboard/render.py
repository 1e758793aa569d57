"""Rendering dashboard pages: the Jinja2 environment, its filters, the security headers
every page carries, cookies, and the one-shot notice an action leaves for the next page.

Templates are autoescaped and undefined names fail loudly. No script or style is inline:
the Content-Security-Policy allows this origin's files only, and chart data travels as
``<script type="application/json">`` blocks that are read, never executed.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from adapter.domain.money import format_amount
from webhooks.dashboard import session as sessions
from webhooks.dashboard.guard import PREFIX, Operator, ops_token

#: The cookie carrying an action's outcome to the page it redirects to.
NOTICE_COOKIE = "metersync_notice"
#: Headers on every dashboard page.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: datetime | None) -> str:
    """A UTC time to the second, or ``-``."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Decimal | int | float | None) -> str:
    """A quantity with thousands separators and no trailing zeros, or ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    exact = Decimal(value)
    if exact == exact.to_integral_value():
        return f"{int(exact):,}"
    return f"{exact.normalize():,f}"


def seconds(value: float | None) -> str:
    """A duration, in seconds below two minutes, else minutes or hours."""
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def segment(value: str) -> str:
    """``value`` quoted as one path segment (account names may hold ``/``)."""
    return quote(value, safe="")


def _money(amount: int | None, currency: str | None) -> str:
    return format_amount(amount, currency)


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("webhooks.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(when=when, number=number, seconds=seconds, money=_money, segment=segment)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """Set a dashboard cookie: HttpOnly, SameSite=Strict, the dashboard path only, and
    Secure unless the page is plain http on loopback (see :func:`session.cookie_secure`)."""
    response.set_cookie(
        name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict",
        secure=sessions.cookie_secure(request.url.scheme, request.url.hostname),
    )  # fmt: skip


def clear_cookie(response: Response, request: Request, name: str) -> None:
    """Expire a dashboard cookie."""
    response.delete_cookie(
        name, path=PREFIX, httponly=True, samesite="strict",
        secure=sessions.cookie_secure(request.url.scheme, request.url.hostname),
    )  # fmt: skip


def html(template: str, **context: Any) -> str:  # noqa: ANN401  template values are any type
    """A template rendered with the dashboard's common names."""
    return ENV.get_template(template).render(prefix=PREFIX, **context)


def page(
    request: Request,
    template: str,
    *,
    operator: Operator | None,
    status: int = 200,
    **context: Any,  # noqa: ANN401  template values are any type
) -> HTMLResponse:
    """A full page, with the notice the last action left (then forgotten)."""
    sealed = request.cookies.get(NOTICE_COOKIE)
    notice = sessions.open_notice(ops_token(request), sealed) if sealed else None
    body = html(template, operator=operator, notice=notice, path=request.url.path, **context)
    response = HTMLResponse(body, status_code=status, headers=HEADERS)
    if sealed is not None:
        clear_cookie(response, request, NOTICE_COOKIE)
    return response


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    """An error page. It reads no settings and no cookie, so it renders whatever failed."""
    body = html("error.html", operator=None, notice=None, path="", title=title, message=message)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def redirect(request: Request, to: str, *, notice: str | None = None) -> RedirectResponse:
    """303 to ``to`` (a dashboard path), leaving ``notice`` for the page there."""
    response = RedirectResponse(to, status_code=303, headers={"Cache-Control": "no-store"})
    if notice is not None:
        sealed = sessions.seal_notice(ops_token(request), notice[:600])
        set_cookie(response, request, NOTICE_COOKIE, sealed, max_age=60)
    return response
