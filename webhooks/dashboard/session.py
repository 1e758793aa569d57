"""Dashboard sessions and CSRF tokens, signed with a key derived from the ops token.

A session is a cookie ``<payload>.<signature>``: the payload is base64url JSON holding
its expiry and a random nonce, the signature an HMAC-SHA256 of the payload. The key is
derived from ``METERSYNC_OPS_TOKEN`` (an HMAC of a fixed label), so:

- every process serving the app accepts every other's sessions, with nothing stored;
- changing the ops token ends every session at once;
- the cookie reveals nothing of the token (an HMAC output, never the token itself).

The CSRF token of a session is an HMAC of its nonce under the same key: a page carries
it in a hidden field of each form and every action compares it in constant time. A page
of another site can neither read it nor, with ``SameSite=Strict``, send the cookie.

Pure: standard library only, no HTTP types, so it is tested without a server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

#: The session cookie's name.
COOKIE = "metersync_session"
#: Seconds a session lasts after login.
LIFETIME = 12 * 3600
#: Separates the label of each derived key, so a session signature is never a CSRF token.
_SESSION_LABEL = b"metersync dashboard session v1"
_CSRF_LABEL = b"metersync dashboard csrf v1"
_FLASH_LABEL = b"metersync dashboard flash v1"
#: Longest cookie value read (a real one is about 120 characters).
_MAX_COOKIE = 512


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: when it ends (unix seconds) and its nonce."""

    expires: int
    nonce: str


def _key(ops_token: str, label: bytes) -> bytes:
    return hmac.new(ops_token.encode(), label, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(ops_token: str, payload: str, label: bytes = _SESSION_LABEL) -> str:
    return _b64(hmac.new(_key(ops_token, label), payload.encode(), hashlib.sha256).digest())


def new_session(ops_token: str, *, now: float | None = None) -> str:
    """A fresh signed session cookie value, valid for :data:`LIFETIME` seconds."""
    expires = int(now if now is not None else time.time()) + LIFETIME
    body = json.dumps({"exp": expires, "n": secrets.token_urlsafe(18)}, separators=(",", ":"))
    payload = _b64(body.encode())
    return f"{payload}.{_sign(ops_token, payload)}"


def read_session(ops_token: str, cookie: str | None, *, now: float | None = None) -> Session | None:
    """The session ``cookie`` holds if its signature is right and it has not expired."""
    if not cookie or len(cookie) > _MAX_COOKIE or cookie.count(".") != 1:
        return None
    payload, signature = cookie.split(".")
    if not hmac.compare_digest(signature.encode(), _sign(ops_token, payload).encode()):
        return None
    try:
        data = json.loads(_unb64(payload))
        expires, nonce = int(data["exp"]), str(data["n"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None  # signed by us, so never expected; refused all the same
    if expires <= (now if now is not None else time.time()):
        return None
    return Session(expires, nonce)


def csrf_token(ops_token: str, session: Session) -> str:
    """The CSRF token of ``session`` (the same on every page of that session)."""
    return _sign(ops_token, session.nonce, _CSRF_LABEL)


def csrf_ok(ops_token: str, session: Session, given: str | None) -> bool:
    """Whether ``given`` is the session's CSRF token (constant-time comparison)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(), csrf_token(ops_token, session).encode())


def token_ok(ops_token: str, given: str | None) -> bool:
    """Whether ``given`` is the ops token (constant-time, as the API compares it)."""
    if not given:
        return False
    return hmac.compare_digest(given.strip().encode(), ops_token.encode())


def seal_notice(ops_token: str, text: str) -> str:
    """``text`` signed, for the one-shot notice cookie an action leaves for the next page."""
    payload = _b64(text.encode())
    return f"{payload}.{_sign(ops_token, payload, _FLASH_LABEL)}"


def open_notice(ops_token: str, value: str | None) -> str | None:
    """The text of a notice sealed by :func:`seal_notice`, or None if it was not."""
    if not value or len(value) > 4 * _MAX_COOKIE or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    if not hmac.compare_digest(
        signature.encode(), _sign(ops_token, payload, _FLASH_LABEL).encode()
    ):
        return None
    try:
        return _unb64(payload).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


#: Host names a browser reaches over loopback only.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


def cookie_secure(scheme: str, host: str | None) -> bool:
    """Whether the cookie gets ``Secure``: always, except for a plain ``http`` page on a
    loopback address (local use and tests), where a browser would not keep it."""
    return not (scheme == "http" and (host or "").lower() in LOOPBACK_HOSTS)
