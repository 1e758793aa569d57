"""Bearer-token authentication of the ops and usage API.

Which routes need the token:

- ``POST /v1/usage``, ``PUT /v1/schedule`` (writes) and ``GET /v1/accounts/{account}/usage``,
  ``GET /v1/schedule`` (reads: usage is business data, not for anyone who can reach the
  port) all need ``Authorization: Bearer $METERSYNC_OPS_TOKEN``.
- ``POST /webhooks/stripe`` is authenticated by Stripe's signature instead, and
  ``GET /healthz`` and ``GET /metrics`` are open (they reveal counts, never usage of an
  account), so that load balancers and Prometheus need no secret.

How a request is refused:

- no ``METERSYNC_OPS_TOKEN`` configured: 403 ``ops_api_disabled`` on every protected route,
  whatever the request carries (there is no token it could carry);
- no ``Authorization`` header, or not a ``Bearer`` one: 401 with ``WWW-Authenticate: Bearer``;
- the wrong token: 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750
  says a bad token is 401, not 403: the client may retry with another).

Tokens are compared in constant time and never logged. The audit log names changes made
through the API ``api``, or ``api:<name>`` when the request says who it acts for in an
``X-Metersync-Actor`` header. That name is the caller's own claim: the token is shared,
so it identifies the operator no better than the caller chooses to.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import Depends, Request

from webhooks.errors import BadRequest, Forbidden, Unauthorized
from webhooks.state import app_state

#: Header naming who an API change is made for (see the module docstring).
ACTOR_HEADER = "X-Metersync-Actor"
_ACTOR = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_token(authorization: str | None, expected: str | None) -> None:
    """Accept a ``Bearer`` credential equal to ``expected`` or raise the error to answer."""
    if expected is None:
        raise Forbidden(
            "the ops API is disabled: set METERSYNC_OPS_TOKEN on the server and send it "
            "as 'Authorization: Bearer <token>'",
            type="ops_api_disabled",
        )
    if authorization is None or not authorization.strip():
        raise Unauthorized(
            "missing 'Authorization: Bearer <token>' (the METERSYNC_OPS_TOKEN)",
            headers=_CHALLENGE,
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized(
            "the bearer token does not match METERSYNC_OPS_TOKEN",
            type="invalid_token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def actor_name(header: str | None) -> str:
    """``api``, or ``api:<name>`` for a well-formed ``X-Metersync-Actor``."""
    if header is None:
        return "api"
    name = header.strip()
    if not _ACTOR.fullmatch(name):
        raise BadRequest(f"{ACTOR_HEADER} must be 1 to 64 letters, digits or . _ @ + -")
    return f"api:{name}"


async def require_ops(request: Request) -> str:
    """FastAPI dependency: authenticate the request; return the actor for the audit log."""
    token = app_state(request).settings.ops_token
    check_token(
        request.headers.get("authorization"),
        None if token is None else token.get_secret_value(),
    )
    return actor_name(request.headers.get(ACTOR_HEADER))


#: The actor of an authenticated request (see :func:`require_ops`).
OpsActor = Annotated[str, Depends(require_ops)]
