"""Metersync-Signature (adapter.alerting.signing) and its settings: what metersync signs
verifies with the same secret, during a rotation too; anything else is refused, saying why."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.alerting.signing import (
    HEADER,
    MAX_HEADER,
    MalformedHeader,
    MissingHeader,
    NoMatch,
    SignatureError,
    TimestampInFuture,
    TimestampTooOld,
    sign,
    verify,
)
from adapter.errors import ConfigurationError
from config.settings import Settings

BODY = b'{"id":"alrt_fire_1","type":"metersync.alert.fired","created":1767225600}'
OLD, NEW = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"
NOW = 1_767_225_600


def check(header: str | None, secrets: list[str] | None = None, *, now: int = NOW) -> int:
    """Verify BODY at ``now`` with a 300 s tolerance."""
    return verify(BODY, header, secrets=secrets or [NEW], tolerance=300, now=now)


def test_the_header_is_stripe_style_hmac_sha256_of_timestamp_dot_body() -> None:
    """``t=<unix>,v1=<hex>`` where v1 is HMAC-SHA256(secret, f"{t}." + body)."""
    expected = hmac.new(NEW.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, secret=NEW, timestamp=NOW) == f"t={NOW},v1={expected}"
    assert HEADER == "Metersync-Signature"


def test_a_signed_body_verifies_and_returns_its_timestamp() -> None:
    """What metersync signs, a receiver with the same secret accepts."""
    assert check(sign(BODY, secret=NEW, timestamp=NOW)) == NOW


@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=64))
def test_any_body_and_secret_round_trip(body: bytes, secret: str) -> None:
    """Signing then verifying succeeds for any body and any non-empty secret."""
    header = sign(body, secret=secret, timestamp=NOW)
    assert verify(body, header, secrets=[secret], tolerance=300, now=NOW) == NOW


def test_a_receiver_with_two_secrets_accepts_either_during_rotation() -> None:
    """A receiver configured with the old and the new secret accepts bodies signed with
    either, so metersync's secret can be switched without dropping a delivery."""
    assert check(sign(BODY, secret=OLD, timestamp=NOW), [OLD, NEW]) == NOW
    assert check(sign(BODY, secret=NEW, timestamp=NOW), [OLD, NEW]) == NOW


def test_a_header_with_several_signatures_matches_on_any() -> None:
    """A header carrying a stale v1 beside a good one verifies."""
    good = sign(BODY, secret=NEW, timestamp=NOW).split(",")[1]
    assert check(f"t={NOW},v1={'0' * 64},{good}") == NOW


def test_a_tampered_body_fails() -> None:
    """One changed byte in the body makes the signature not match."""
    header = sign(BODY, secret=NEW, timestamp=NOW)
    with pytest.raises(NoMatch, match="raw body"):
        verify(BODY.replace(b"1", b"2", 1), header, secrets=[NEW], tolerance=300, now=NOW)


def test_a_wrong_secret_fails() -> None:
    """A body signed with another secret is refused as a mismatch."""
    with pytest.raises(NoMatch) as caught:
        check(sign(BODY, secret=OLD, timestamp=NOW))
    assert caught.value.code == "signature_mismatch"


def test_a_changed_timestamp_fails() -> None:
    """The timestamp is signed: moving it (to dodge the tolerance) breaks the match."""
    signature = sign(BODY, secret=NEW, timestamp=NOW - 3600).split(",")[1]
    with pytest.raises(NoMatch):
        check(f"t={NOW},{signature}")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_named(header: str | None) -> None:
    """No header (or a blank one) is refused as missing, naming the header."""
    with pytest.raises(MissingHeader, match="no Metersync-Signature header") as caught:
        check(header)
    assert caught.value.code == "signature_missing"


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("garbage", "must be 't=<unix seconds>,v1=<hex>"),
        ("t=,v1=abc", "must be 't=<unix seconds>,v1=<hex>"),
        (f"v1={'a' * 64}", "one 't=<unix seconds>'"),
        (f"t=1,t=2,v1={'a' * 64}", "one 't=<unix seconds>'"),
        (f"t=soon,v1={'a' * 64}", "one 't=<unix seconds>'"),
        (f"t=-5,v1={'a' * 64}", "one 't=<unix seconds>'"),
        (f"t={NOW}", "no v1 signature"),
        (f"t={NOW},v0={'a' * 64}", "no v1 signature"),
        ("t=1,v1=" + "a" * MAX_HEADER, "longer than"),
    ],
)
def test_a_malformed_header_is_refused_saying_how(header: str, says: str) -> None:
    """Each malformed header raises MalformedHeader with a message naming the problem."""
    with pytest.raises(MalformedHeader, match=says) as caught:
        check(header)
    assert caught.value.code == "signature_malformed"


def test_a_stale_timestamp_is_refused_as_a_possible_replay() -> None:
    """An authentic header signed longer ago than the tolerance is refused as too old."""
    header = sign(BODY, secret=NEW, timestamp=NOW - 301)
    with pytest.raises(TimestampTooOld, match="signed 301s ago, more than the 300s") as caught:
        check(header)
    assert caught.value.code == "signature_too_old"
    assert check(sign(BODY, secret=NEW, timestamp=NOW - 300)) == NOW - 300  # the edge is in


def test_a_future_timestamp_is_refused_beyond_the_tolerance() -> None:
    """A header signed more than the tolerance ahead of the receiver's clock is refused."""
    header = sign(BODY, secret=NEW, timestamp=NOW + 301)
    with pytest.raises(TimestampInFuture, match="301s in the future") as caught:
        check(header)
    assert caught.value.code == "signature_in_future"
    assert check(sign(BODY, secret=NEW, timestamp=NOW + 300)) == NOW + 300


def test_a_forged_old_header_is_a_mismatch_not_a_timestamp_error() -> None:
    """The signature is checked first: a forgery never reads as "too old"."""
    with pytest.raises(NoMatch):
        check(f"t={NOW - 9999},v1={'0' * 64}")


def test_every_failure_is_a_signature_error_without_the_secret() -> None:
    """Each refusal derives from SignatureError and its message never holds a secret."""
    headers = [None, "junk", f"t={NOW}", sign(BODY, secret=OLD, timestamp=NOW)]
    headers.append(sign(BODY, secret=NEW, timestamp=NOW - 999))
    messages = []
    for header in headers:
        with pytest.raises(SignatureError) as caught:
            check(header)
        messages.append(str(caught.value))
    assert len(messages) == 5
    assert not [m for m in messages if OLD in m or NEW in m]


def test_verifying_without_a_secret_is_a_configuration_error() -> None:
    """A receiver with no secret (or only blank ones) is told to configure one."""
    header = sign(BODY, secret=NEW, timestamp=NOW)
    with pytest.raises(ConfigurationError, match="METERSYNC_ALERT_WEBHOOK_SECRET"):
        verify(BODY, header, secrets=["", ""], tolerance=300, now=NOW)


def test_signing_with_an_empty_secret_is_refused() -> None:
    """An empty secret would make signatures anyone can forge: sign() refuses it."""
    with pytest.raises(ValueError, match="empty secret"):
        sign(BODY, secret="", timestamp=NOW)


# --- the settings that configure signing ------------------------------------------------


def test_a_blank_secret_or_url_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty METERSYNC_ALERT_WEBHOOK_SECRET / _URL variables mean "not configured"."""
    monkeypatch.setenv("METERSYNC_ALERT_WEBHOOK_SECRET", "  ")
    monkeypatch.setenv("METERSYNC_ALERT_WEBHOOK_URL", "")
    settings = Settings(database_url="sqlite://")
    assert (settings.alert_webhook_secret, settings.alert_webhook_url) == (None, None)


def test_the_secret_and_url_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both settings come from their METERSYNC_ variables; the secret is never shown."""
    monkeypatch.setenv("METERSYNC_ALERT_WEBHOOK_SECRET", NEW)
    monkeypatch.setenv("METERSYNC_ALERT_WEBHOOK_URL", " https://hooks.example.com/m ")
    settings = Settings(database_url="sqlite://")
    assert settings.alert_webhook_secret is not None
    assert settings.alert_webhook_secret.get_secret_value() == NEW
    assert settings.alert_webhook_url == "https://hooks.example.com/m"
    assert NEW not in repr(settings)


@pytest.mark.parametrize(
    ("secret", "says"),
    [("changeme-changeme-changeme", "placeholder"), ("CHANGE_ME_0123456789", "placeholder"),
     ("short-secret", "at least 16 characters")],
)  # fmt: skip
def test_a_placeholder_or_short_secret_is_refused_without_echoing_it(
    secret: str, says: str
) -> None:
    """Placeholders and secrets under 16 characters are refused, saying how to make one,
    and the refused value is not in the error."""
    with pytest.raises(ValueError, match=says) as caught:
        Settings(database_url="sqlite://", alert_webhook_secret=secret)
    assert "secrets.token_urlsafe" in str(caught.value)
    assert secret not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/", "hooks.example.com/x", "https://"])
def test_an_alert_webhook_url_must_be_http_or_https_with_a_host(url: str) -> None:
    """Only absolute http(s) URLs are accepted as the default alert webhook."""
    with pytest.raises(ValueError, match="http:// or https:// URL with a host"):
        Settings(database_url="sqlite://", alert_webhook_url=url)
