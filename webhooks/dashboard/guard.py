"""Who may see a dashboard page or take an action, as FastAPI dependencies.

- No ``METERSYNC_OPS_TOKEN`` configured: every dashboard route answers 403 saying to set
  it (there is no token to log in with).
- A page without a valid session redirects (303) to the login form, which comes back to
  the page after login.
- An action (every ``POST`` but the login) without a session answers 401, and one whose
  CSRF token is missing or wrong answers 403; in both cases nothing is changed. The
  token comes in the form's ``csrf_token`` field (or an ``X-CSRF-Token`` header).

The ops token itself is never put into a page's context: :class:`Operator` carries the
session's CSRF token only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request

from webhooks.dashboard import session as sessions
from webhooks.state import app_state

#: Where the dashboard is served.
PREFIX = "/dashboard"
#: Largest form body an action reads.
FORM_LIMIT = 16 * 1024
#: Most fields a form may have.
FORM_FIELDS = 20
_FORM_TYPE = "application/x-www-form-urlencoded"


class DashboardError(Exception):
    """Answered as an HTML page with ``status``, a title and what to do."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class LoginRequired(Exception):
    """Answered with a redirect to the login form, coming back to ``next_path``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True, slots=True)
class Operator:
    """A logged-in operator: the session and its CSRF token (never the ops token)."""

    session: sessions.Session
    csrf: str


@dataclass(frozen=True, slots=True)
class Action:
    """An authenticated, CSRF-checked action and its form fields."""

    operator: Operator
    form: dict[str, str]


def back(form: dict[str, str], default: str) -> str:
    """Where to go after a form: its ``next`` field if that is a dashboard path (never
    another site: no scheme, no ``//`` host, no backslash), else ``default``."""
    target = form.get("next", "")
    local = target == PREFIX or target.startswith((f"{PREFIX}/", f"{PREFIX}?"))
    return target if local and "//" not in target and "\\" not in target else default


def ops_token(request: Request) -> str:
    """The configured ops token, or the 403 page saying to configure one."""
    token = app_state(request).settings.ops_token
    if token is None:
        raise DashboardError(
            403,
            "Dashboard disabled",
            "The dashboard needs the ops token: set METERSYNC_OPS_TOKEN on the server, "
            "restart it, and log in with that token.",
        )
    return token.get_secret_value()


def operator(request: Request) -> Operator | None:
    """The operator whose valid session cookie ``request`` carries, if any."""
    token = ops_token(request)
    found = sessions.read_session(token, request.cookies.get(sessions.COOKIE))
    if found is None:
        return None
    return Operator(found, sessions.csrf_token(token, found))


async def require_page(request: Request) -> Operator:
    """Dependency of every page: the operator, or a redirect to the login form."""
    found = operator(request)
    if found is None:
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(request.url.path + query)
    return found


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form body (the first value of each); none if empty."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > FORM_LIMIT:
        raise DashboardError(413, "Form too large", f"a form may carry {FORM_LIMIT} bytes")
    body = await request.body()
    if not body:
        return {}
    if len(body) > FORM_LIMIT:
        raise DashboardError(413, "Form too large", f"a form may carry {FORM_LIMIT} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != _FORM_TYPE:
        raise DashboardError(415, "Not a form", f"actions take a {_FORM_TYPE} form body")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise DashboardError(400, "Bad form", "the form could not be read") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


async def require_action(request: Request) -> Action:
    """Dependency of every action: a session and its CSRF token, else 401 or 403."""
    token = ops_token(request)
    found = operator(request)
    if found is None:
        raise DashboardError(
            401, "Not logged in", "Your session has ended or was never started: log in again."
        )
    form = await read_form(request)
    given = form.get("csrf_token") or request.headers.get("x-csrf-token")
    if not sessions.csrf_ok(token, found.session, given):
        raise DashboardError(
            403,
            "Form expired",
            "The form's CSRF token is missing or does not belong to this session; nothing "
            "was changed. Reload the page and try again.",
        )
    return Action(found, form)


#: The operator of a page request (see :func:`require_page`).
PageOperator = Annotated[Operator, Depends(require_page)]
#: A checked action (see :func:`require_action`).
CheckedAction = Annotated[Action, Depends(require_action)]
