"""Who may use the dashboard, on SQLite and PostgreSQL, over HTTP without a browser: no
page or action without a session, CSRF on every action, cookie flags, no secret in any
page, no redirect off the site, no read of raw events."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import responses
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

import adapter
from adapter.client import Metersync
from tests.browser.conftest import dashboard_settings
from tests.browser.seed import STRIPE_KEY, TOKEN, WEBHOOK_SECRET, Seeded, clear_ledger, seed
from tests.gateways import make_gateway
from webhooks.app import create_app
from webhooks.dashboard import session as sessions

#: Every page, each needing a session.
PAGES = (
    "/dashboard", "/dashboard/accounts", "/dashboard/accounts/acct_1",
    "/dashboard/accounts/acct_unlinked", "/dashboard/reports?status=failed",
    "/dashboard/webhooks", "/dashboard/schedule",
)  # fmt: skip
LOCAL = "http://127.0.0.1"


@pytest.fixture
def world(db_url: str) -> Iterator[tuple[Metersync, Seeded]]:
    """A seeded database, opened with every secret configured and a Stripe gateway that
    ``responses`` refuses (a page calling Stripe would fail)."""
    plain = adapter.connect(dashboard_settings(db_url))
    clear_ledger(plain)
    seeded = seed(plain)
    plain.close()
    settings = dashboard_settings(db_url).model_copy(
        update={"stripe_api_key": SecretStr(STRIPE_KEY)}
    )
    ms = adapter.connect(settings)
    ms.use_gateway(make_gateway(STRIPE_KEY, attempts=1))
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        yield ms, seeded
    clear_ledger(ms)
    ms.close()


def client(ms: Metersync, *, base: str = LOCAL, token: str | None = TOKEN) -> TestClient:
    """A client of the app on ``ms`` with ``token`` as the ops token."""
    update = {"ops_token": SecretStr(token) if token else None}
    app = create_app(ms.settings.model_copy(update=update), ms=ms, enqueue=lambda _id: None)
    return TestClient(app, base_url=base, follow_redirects=False)


def logged_in(ms: Metersync, *, base: str = LOCAL) -> tuple[TestClient, str]:
    """A client with a session, and that session's CSRF token (read from a page)."""
    http = client(ms, base=base)
    answer = http.post("/dashboard/login", data={"token": TOKEN})
    assert answer.status_code == 303
    found = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/dashboard").text)
    assert found is not None
    return http, found.group(1)


def state(ms: Metersync, seeded: Seeded) -> tuple[Any, ...]:
    """What the actions could change: the failed report, the delivery, the schedule."""
    with ms.engine.connect() as conn:
        report = conn.execute(
            sa.text("SELECT status, attempts FROM usage_report WHERE id = :id"),
            {"id": seeded.failed_report},
        ).one()
        delivery = conn.execute(
            sa.text("SELECT status, attempts FROM webhook_delivery WHERE id = :id"),
            {"id": seeded.failed_delivery},
        ).one()
        audits = conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one()
    schedule = ms.schedule.state()
    return tuple(report), tuple(delivery), schedule.expression, schedule.paused, audits


def actions(seeded: Seeded) -> list[tuple[str, dict[str, str]]]:
    """Every action, with a form that would change something."""
    return [
        (f"/dashboard/reports/{seeded.failed_report}/retry", {}),
        (f"/dashboard/webhooks/{seeded.failed_delivery}/replay", {}),
        ("/dashboard/schedule", {"do": "pause"}),
        ("/dashboard/schedule", {"do": "set", "expression": "every 15m"}),
        ("/dashboard/logout", {}),
    ]


def test_no_page_without_a_session(world: tuple[Metersync, Seeded]) -> None:
    """Every page redirects to the login form, which comes back to it afterwards."""
    http = client(world[0])
    for path in PAGES:
        answer = http.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/dashboard/login?next=/dashboard")
    assert http.get("/dashboard/login").status_code == 200


def test_no_action_without_a_session(world: tuple[Metersync, Seeded]) -> None:
    """Every action answers 401 without a session, and nothing changes."""
    ms, seeded = world
    http = client(ms)
    before = state(ms, seeded)
    for path, form in actions(seeded):
        answer = http.post(path, data=form | {"csrf_token": "anything"})
        assert answer.status_code == 401, path
        assert "log in" in answer.text
    assert state(ms, seeded) == before


@pytest.mark.parametrize("csrf", ["missing", "wrong", "other session"])
def test_no_action_without_its_csrf_token(world: tuple[Metersync, Seeded], csrf: str) -> None:
    """With a session, an action whose CSRF token is missing, wrong or another
    session's answers 403 and changes nothing."""
    ms, seeded = world
    http, _mine = logged_in(ms)
    _other_client, theirs = logged_in(ms)
    given = {
        "missing": {},
        "wrong": {"csrf_token": "x" * 43},
        "other session": {"csrf_token": theirs},
    }
    before = state(ms, seeded)
    for path, form in actions(seeded):
        answer = http.post(path, data=form | given[csrf])
        assert answer.status_code == 403, path
        assert "nothing was changed" in answer.text
    assert state(ms, seeded) == before
    assert http.get("/dashboard").status_code == 200  # still logged in: logout was refused too


def test_an_action_with_its_csrf_token_goes_through(world: tuple[Metersync, Seeded]) -> None:
    """The same session and token do change things: retry (here Stripe refuses every
    connection, so the report waits ``sending`` for the next attempt), then pause."""
    ms, seeded = world
    http, csrf = logged_in(ms)
    retried = http.post(
        f"/dashboard/reports/{seeded.failed_report}/retry", data={"csrf_token": csrf}
    )
    assert retried.status_code == 303
    paused = http.post("/dashboard/schedule", data={"do": "pause", "csrf_token": csrf})
    assert paused.status_code == 303
    report, _delivery, _expression, is_paused, _audits = state(ms, seeded)
    assert report[0] == "sending"
    assert is_paused
    assert ms.schedule.history(limit=1)[0].actor == "dashboard"


def test_the_session_cookie_is_httponly_strict_and_secure_off_loopback(
    world: tuple[Metersync, Seeded],
) -> None:
    """HttpOnly, SameSite=Strict, the dashboard path, 12 h; Secure except plain http on
    loopback."""
    ms = world[0]
    for base, secure in [
        (LOCAL, False),
        ("https://ops.example.com", True),
        ("http://ops.example.com", True),
    ]:
        answer = client(ms, base=base).post("/dashboard/login", data={"token": TOKEN})
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{sessions.COOKIE}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/dashboard", "max-age=43200"} <= flags
        assert ("secure" in flags) is secure, base
        assert TOKEN not in cookie


def test_a_forged_expired_or_rotated_session_is_refused(world: tuple[Metersync, Seeded]) -> None:
    """A tampered cookie, an expired one and one signed under an older ops token all
    lead back to the login form."""
    ms = world[0]
    good = sessions.new_session(TOKEN)
    payload, signature = good.split(".")
    cookies = [
        f"{payload}.{signature[:-2]}AA",
        f"{payload}x.{signature}",
        sessions.new_session(TOKEN, now=0),
        sessions.new_session("the-previous-ops-token"),
        "garbage",
    ]
    for cookie in cookies:
        http = client(ms)
        http.cookies.set(sessions.COOKIE, cookie, path="/dashboard")
        assert http.get("/dashboard").status_code == 303, cookie
    http = client(ms)
    http.cookies.set(sessions.COOKIE, good, path="/dashboard")
    assert http.get("/dashboard").status_code == 200


def test_without_an_ops_token_the_dashboard_is_disabled(world: tuple[Metersync, Seeded]) -> None:
    """No METERSYNC_OPS_TOKEN: every route answers 403 saying to set it."""
    ms, seeded = world
    http = client(ms, token=None)
    for path in (*PAGES, "/dashboard/login"):
        answer = http.get(path)
        assert answer.status_code == 403, path
        assert "METERSYNC_OPS_TOKEN" in answer.text
    assert http.post("/dashboard/login", data={"token": ""}).status_code == 403
    before = state(ms, seeded)
    for path, form in actions(seeded):
        assert http.post(path, data=form).status_code == 403
    assert state(ms, seeded) == before


def test_no_secret_is_rendered(world: tuple[Metersync, Seeded]) -> None:
    """Neither the ops token, the Stripe key nor the webhook secret is in any page, the
    login form, an error page or a cookie."""
    ms = world[0]
    http, _csrf = logged_in(ms)
    answers = [http.get(path) for path in PAGES]
    answers += [http.get("/dashboard/accounts/nobody"), http.get("/dashboard/reports?status=x")]
    answers += [
        client(ms).get("/dashboard/login"),
        client(ms).post("/dashboard/login", data={"token": "no"}),
    ]
    for answer in answers:
        seen = answer.text + str(answer.headers)
        for secret in (TOKEN, STRIPE_KEY, WEBHOOK_SECRET, TOKEN[:12], STRIPE_KEY[8:20]):
            assert secret not in seen, answer.request.url
    assert all(a.status_code in (200, 401, 404, 422) for a in answers)


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/v1/schedule", "/dashboard\\@evil"]
)
def test_login_never_redirects_off_the_dashboard(
    world: tuple[Metersync, Seeded], target: str
) -> None:
    """A ``next`` that is not a dashboard path is replaced by the overview."""
    answer = client(world[0]).post("/dashboard/login", data={"token": TOKEN, "next": target})
    assert answer.headers["location"] == "/dashboard"


def test_pages_carry_security_headers_and_errors_stay_json_elsewhere(
    world: tuple[Metersync, Seeded],
) -> None:
    """Pages forbid framing, inline scripts and caching; the API's errors are still JSON."""
    http, _csrf = logged_in(world[0])
    headers = http.get("/dashboard").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert (headers["x-frame-options"], headers["cache-control"]) == ("DENY", "no-store")
    assert http.get("/dashboard/nothing-here").headers["content-type"].startswith("text/html")
    api: httpx.Response = http.get("/v1/nothing-here")
    assert api.status_code == 404
    assert api.json()["error"]["type"] == "not_found"


def test_an_action_refuses_a_body_that_is_not_a_form(world: tuple[Metersync, Seeded]) -> None:
    """JSON (which a cross-site form cannot send anyway) is refused with 415."""
    ms = world[0]
    http, csrf = logged_in(ms)
    answer = http.post("/dashboard/schedule", json={"do": "pause", "csrf_token": csrf})
    assert answer.status_code == 415
    assert not ms.schedule.state().paused


def test_pages_never_read_raw_events(world: tuple[Metersync, Seeded]) -> None:
    """No statement a page runs touches usage_event: pages cost the same at 1M events."""
    ms = world[0]
    http, _csrf = logged_in(ms)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sa.event.listen(ms.engine, "before_cursor_execute", record)
    try:
        for path in PAGES:
            assert http.get(path).status_code == 200, path
    finally:
        sa.event.remove(ms.engine, "before_cursor_execute", record)
    assert statements
    assert not [s for s in statements if "usage_event" in s.lower()]
