"""Stripe-Signature verification (webhooks.signature): accepts what Stripe signs with any
configured secret, refuses everything else with a specific error and no secret in it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import ConfigurationError
from tests.signing import sign
from webhooks import signature
from webhooks.signature import (
    MalformedHeader,
    MissingHeader,
    NoMatch,
    NoSignature,
    SignatureError,
    TimestampInFuture,
    TimestampTooOld,
    verify,
)

BODY = b'{"id": "evt_1", "type": "invoice.created", "created": 1767225600}'
OLD, NEW = "whsec_old_secret", "whsec_new_secret"
NOW = 1_767_225_600


def check(header: str | None, secrets: list[str] | None = None, **kw: int) -> int:
    """Verify BODY at NOW with a 300 s tolerance unless told otherwise."""
    options = {"tolerance": 300, "now": NOW, **kw}
    return verify(BODY, header, secrets or [NEW], **options)


def test_good_signature_is_accepted() -> None:
    """A header made by the signing helper with the configured secret verifies."""
    assert check(sign(BODY, NEW, timestamp=NOW)) == NOW


def test_rotated_secret_second_one_matches() -> None:
    """During a rotation any configured secret may have signed: the second one matches."""
    assert check(sign(BODY, NEW, timestamp=NOW), [OLD, NEW]) == NOW


def test_any_of_several_v1_entries_may_match() -> None:
    """Stripe sends one v1 per active secret while rolling: a later entry may match."""
    theirs = sign(BODY, "whsec_someone_else", timestamp=NOW).split(",")[1]
    ours = sign(BODY, NEW, timestamp=NOW).split(",")[1]
    assert check(f"t={NOW},{theirs},{ours}") == NOW
    assert check(f"t={NOW},{ours},v0=abc,{theirs}") == NOW


def test_wrong_secret_is_a_mismatch_without_leaking_it() -> None:
    """A signature made with another secret is refused; the message names neither the
    secret nor the expected signature."""
    with pytest.raises(NoMatch) as info:
        check(sign(BODY, OLD, timestamp=NOW))
    expected = signature.compute(BODY, NEW, NOW)
    assert NEW not in str(info.value)
    assert expected not in str(info.value)
    assert info.value.code == "signature_mismatch"


def test_tampered_body_is_a_mismatch() -> None:
    """Changing one byte of the body after signing breaks the signature."""
    header = sign(BODY, NEW, timestamp=NOW)
    with pytest.raises(NoMatch):
        verify(BODY.replace(b"evt_1", b"evt_2"), header, [NEW], tolerance=300, now=NOW)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    """No header (or an empty one) is its own error."""
    with pytest.raises(MissingHeader):
        check(header)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=abc",  # no timestamp
        "t=abc,v1=abc",  # timestamp not a number
        "t=-5,v1=abc",
        f"t={NOW},t={NOW},v1=abc",  # two timestamps
        f"t={NOW},v1",  # an entry without a value
        f"t={NOW},,v1=abc",
        "t=" + "1" * 9000,
    ],
)
def test_malformed_header(header: str) -> None:
    """Anything that is not t=<unix seconds>,v1=<hex>… is malformed."""
    with pytest.raises(MalformedHeader):
        check(header)


def test_no_v1_signature() -> None:
    """A timestamp with only other schemes carries no v1 signature to check."""
    with pytest.raises(NoSignature):
        check(f"t={NOW},v0=abcdef")


def test_stale_timestamp_is_refused() -> None:
    """A genuine signature made longer ago than the tolerance is refused (replay)."""
    with pytest.raises(TimestampTooOld) as info:
        check(sign(BODY, NEW, timestamp=NOW - 301))
    assert "301s ago" in str(info.value)


def test_tolerance_setting_is_honoured() -> None:
    """The same age passes a larger tolerance and fails a smaller one."""
    header = sign(BODY, NEW, timestamp=NOW - 100)
    assert check(header, tolerance=300) == NOW - 100
    assert check(sign(BODY, NEW, timestamp=NOW - 300), tolerance=300) == NOW - 300
    with pytest.raises(TimestampTooOld):
        check(header, tolerance=99)


def test_future_timestamp_beyond_skew_is_refused() -> None:
    """A timestamp further ahead than FUTURE_SKEW is refused; within it, accepted."""
    skew = signature.FUTURE_SKEW
    assert check(sign(BODY, NEW, timestamp=NOW + skew)) == NOW + skew
    with pytest.raises(TimestampInFuture):
        check(sign(BODY, NEW, timestamp=NOW + skew + 1))
    with pytest.raises(TimestampInFuture):
        check(sign(BODY, NEW, timestamp=NOW + 11), future=10)


def test_signature_is_checked_before_the_timestamp() -> None:
    """A forged header with a stale timestamp is a mismatch, not 'too old'."""
    with pytest.raises(NoMatch):
        check(sign(BODY, OLD, timestamp=NOW - 10_000))


def test_no_secret_configured_is_a_configuration_error() -> None:
    """Verifying with no secret is a configuration error, not a bad delivery."""
    with pytest.raises(ConfigurationError):
        verify(BODY, sign(BODY, NEW, timestamp=NOW), [], tolerance=300, now=NOW)


def test_non_ascii_signature_is_a_mismatch_not_a_crash() -> None:
    """A v1 value with non-ASCII characters is compared as bytes and simply fails."""
    with pytest.raises(NoMatch):
        check(f"t={NOW},v1=é{'a' * 63}")


def test_every_error_is_a_signature_error_with_a_code() -> None:
    """Each refusal derives from SignatureError and names itself with a distinct code."""
    kinds = [MissingHeader, MalformedHeader, NoSignature, NoMatch, TimestampTooOld]
    kinds.append(TimestampInFuture)
    codes = {kind.code for kind in kinds}
    assert all(issubclass(kind, SignatureError) for kind in kinds)
    assert len(codes) == len(kinds)


@given(
    body=st.binary(max_size=200), secret=st.text(min_size=1, max_size=40), age=st.integers(0, 300)
)
def test_signed_by_helper_always_verifies(body: bytes, secret: str, age: int) -> None:
    """Any body signed with any secret within the tolerance verifies, and fails with one
    flipped bit."""
    header = sign(body, secret, timestamp=NOW - age)
    assert verify(body, header, [secret], tolerance=300, now=NOW) == NOW - age
    tampered = bytes([body[0] ^ 1]) + body[1:] if body else b"x"
    with pytest.raises(NoMatch):
        verify(tampered, header, [secret], tolerance=300, now=NOW)
