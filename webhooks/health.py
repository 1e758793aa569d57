"""``GET /healthz`` and ``GET /metrics``: open routes for load balancers and Prometheus.

``/healthz`` runs ``SELECT 1`` on the database and, when ``METERSYNC_REDIS_URL`` is set,
pings Redis (the broker). Without a Redis URL the broker is the embedded one, which this
process starts only when it first hands over a delivery, so it reports ``embedded``
unchecked. 200 ``{"status": "ok", …}`` when all is well; otherwise 503 naming what failed,
with the usual ``error`` object so that clients reading errors need no special case.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from webhooks.errors import error_body
from webhooks.metrics import Metrics
from webhooks.state import AppState, app_state

log = structlog.get_logger("metersync.http")
router = APIRouter()


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"[:300]


def _failed(check: str, exc: BaseException) -> str:
    """Log a failed check and give its answer, ``error: …``."""
    said = _one_line(exc)
    log.warning("health.check_failed", check=check, error=said)
    return f"error: {said}"


def check_database(state: AppState) -> str:
    """``ok`` or what went wrong (never the password of the URL)."""
    try:
        with state.metersync().engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()
    except Exception as exc:  # noqa: BLE001  any failure is the answer of a health check
        return _failed("database", exc)
    return "ok"


def check_broker(state: AppState) -> str:
    """``ok``, ``embedded`` (no Redis URL: nothing to check) or what went wrong."""
    try:
        client = state.redis()
        if client is None:
            return "embedded"
        client.ping()
    except Exception as exc:  # noqa: BLE001  any failure is the answer of a health check
        return _failed("broker", exc)
    return "ok"


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """Whether the database and the broker answer."""
    state = app_state(request)
    checks = {"database": check_database(state), "broker": check_broker(state)}
    failed = {name: result for name, result in checks.items() if result.startswith("error")}
    body: dict[str, Any] = {"status": "error" if failed else "ok", **checks}
    if not failed:
        return JSONResponse(body)
    message = "; ".join(f"{name} {result}" for name, result in failed.items())
    body.update(error_body("unhealthy", message))
    return JSONResponse(body, status_code=503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text exposition (see :mod:`webhooks.metrics`)."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
