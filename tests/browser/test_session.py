"""The dashboard's session cookies, CSRF tokens and notices (pure functions, no server)."""

from __future__ import annotations

import pytest

from webhooks.dashboard import session as s
from webhooks.dashboard.guard import PREFIX, back

TOKEN = "ops-token-for-session-tests-0123"


def test_a_session_reads_back_until_it_expires() -> None:
    """A new session is valid now and for 12 hours, not after."""
    cookie = s.new_session(TOKEN, now=1_000_000)
    found = s.read_session(TOKEN, cookie, now=1_000_000 + s.LIFETIME - 1)
    assert found is not None
    assert found.expires == 1_000_000 + s.LIFETIME
    assert s.read_session(TOKEN, cookie, now=1_000_000 + s.LIFETIME) is None


def test_a_session_holds_nothing_of_the_token() -> None:
    """The cookie is a signed expiry and nonce: the token is not in it, in any form."""
    cookie = s.new_session(TOKEN)
    assert TOKEN not in cookie
    assert TOKEN[:8] not in cookie


@pytest.mark.parametrize("change", ["payload", "signature", "no dot", "two dots", "empty", "long"])
def test_a_tampered_session_is_refused(change: str) -> None:
    """Any change to the cookie makes it invalid."""
    payload, signature = s.new_session(TOKEN).split(".")
    forged = {
        "payload": f"{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}",
        "signature": f"{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",
        "no dot": payload + signature,
        "two dots": f"{payload}.{signature}.x",
        "empty": "",
        "long": f"{payload}.{'A' * 600}",
    }[change]
    assert s.read_session(TOKEN, forged) is None


def test_changing_the_ops_token_ends_every_session() -> None:
    """A session signed under the old token is refused under the new one."""
    cookie = s.new_session(TOKEN)
    assert s.read_session("a-new-ops-token-0123456789", cookie) is None


def test_csrf_tokens_belong_to_one_session() -> None:
    """Each session has its own CSRF token; another's, a wrong or an empty one fails."""
    one = s.read_session(TOKEN, s.new_session(TOKEN))
    two = s.read_session(TOKEN, s.new_session(TOKEN))
    assert one is not None
    assert two is not None
    assert s.csrf_ok(TOKEN, one, s.csrf_token(TOKEN, one))
    assert not s.csrf_ok(TOKEN, one, s.csrf_token(TOKEN, two))
    assert not s.csrf_ok(TOKEN, one, "")
    assert not s.csrf_ok(TOKEN, one, None)
    assert s.csrf_token(TOKEN, one) not in s.new_session(TOKEN)


def test_the_token_check_is_exact() -> None:
    """Only the ops token itself logs in (surrounding spaces from a paste are dropped)."""
    assert s.token_ok(TOKEN, TOKEN)
    assert s.token_ok(TOKEN, f" {TOKEN}\n")
    assert not s.token_ok(TOKEN, TOKEN[:-1])
    assert not s.token_ok(TOKEN, "")
    assert not s.token_ok(TOKEN, None)


def test_a_notice_opens_only_if_sealed_by_this_server() -> None:
    """A notice survives the round trip; a forged or re-signed one does not."""
    sealed = s.seal_notice(TOKEN, "Report 5 retried: now dry_run")
    assert s.open_notice(TOKEN, sealed) == "Report 5 retried: now dry_run"
    assert s.open_notice("another-token-0123456789", sealed) is None
    payload, signature = sealed.split(".")
    assert s.open_notice(TOKEN, f"{payload}A.{signature}") is None
    assert s.open_notice(TOKEN, None) is None


@pytest.mark.parametrize(
    ("scheme", "host", "secure"),
    [
        ("https", "ops.example.com", True),
        ("http", "ops.example.com", True),
        ("https", "127.0.0.1", True),
        ("http", "127.0.0.1", False),
        ("http", "localhost", False),
        ("http", "::1", False),
    ],
)
def test_cookies_are_secure_except_plain_http_on_loopback(
    scheme: str, host: str, secure: bool
) -> None:
    """Secure everywhere but an http page on a loopback address."""
    assert s.cookie_secure(scheme, host) is secure


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dashboard/reports?status=failed", "/dashboard/reports?status=failed"),
        ("/dashboard", "/dashboard"),
        ("/dashboardx", PREFIX),
        ("https://evil.example/dashboard", PREFIX),
        ("//evil.example/dashboard", PREFIX),
        ("/dashboard//evil.example", PREFIX),
        ("/dashboard\\evil", PREFIX),
        ("", PREFIX),
    ],
)
def test_next_stays_on_the_dashboard(target: str, expected: str) -> None:
    """Where a form goes afterwards is always a dashboard path."""
    assert back({"next": target}, PREFIX) == expected
