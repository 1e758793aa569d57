"""The FastAPI app: Stripe webhook receiver, usage and ops API, health and metrics.

``uvicorn webhooks.app:app`` serves :data:`app`, configured from the environment; nothing
connects until the first request needs it (the database, then the broker for the first
webhook). ``metersync serve`` and ``metersync run`` build their own with
:func:`create_app`, sharing their connection.

Routes: ``POST /webhooks/stripe`` (:mod:`webhooks.receiver`), ``POST /v1/usage``,
``GET /v1/accounts/{account}/usage``, ``GET|PUT /v1/schedule`` (:mod:`webhooks.api`,
token rules in :mod:`webhooks.auth`), ``GET /healthz`` and ``GET /metrics``
(:mod:`webhooks.health`). Every error is JSON ``{"error": {"type": …, "message": …}}``
(:mod:`webhooks.errors`), except on the operator dashboard at ``/dashboard``
(:mod:`webhooks.dashboard`, behind the ops token), whose pages and errors are HTML.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from adapter.client import Metersync
from config.logging import configure_logging
from config.settings import Settings
from webhooks import api, dashboard, errors, health, receiver
from webhooks.metrics import Metrics
from webhooks.state import AppState


def _version() -> str:
    try:
        return version("metersync")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def create_app(
    settings: Settings | None = None,
    *,
    ms: Metersync | None = None,
    enqueue: Callable[[int], object] | None = None,
) -> FastAPI:
    """The app. ``settings`` default to ``ms.settings``, else the environment (read on
    first use). ``ms`` is used as given (and not closed); without it the app connects on
    first use and closes at shutdown. ``enqueue(delivery_id)`` hands a stored webhook
    delivery to the workers; by default the workers' hand-off found through the
    ``metersync.handoff`` entry point (``process_webhook.send`` on the broker the settings
    name, built on first use; see :mod:`workers.bootstrap`)."""
    state = AppState(settings, ms=ms, enqueue=enqueue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        configure_logging(state.settings.log_level)  # does nothing if already configured
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="metersync",
        version=_version(),
        summary="Usage-based billing on Stripe: webhook receiver, usage and ops API.",
        lifespan=lifespan,
    )
    app.state.metersync = state
    app.state.metrics = Metrics(lambda: state.metersync().engine)
    errors.install(app)
    app.include_router(receiver.router)
    app.include_router(api.router)
    app.include_router(health.router)
    dashboard.mount(app)
    return app


#: The app ``uvicorn webhooks.app:app`` serves, configured from the environment.
app = create_app()
