"""``metersync serve``: the webhook receiver and the HTTP API under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from adapter.cli.context import connected, console
from config.settings import Settings

#: Log levels uvicorn knows; anything else in METERSYNC_LOG_LEVEL means ``info``.
_UVICORN_LEVELS = frozenset({"critical", "error", "warning", "info", "debug", "trace"})

Host = Annotated[
    str | None,
    typer.Option("--host", help="Address to listen on (default METERSYNC_HTTP_HOST, 127.0.0.1)."),
]
Port = Annotated[
    int | None,
    typer.Option(
        "--port", min=0, max=65_535, help="Port to listen on (default METERSYNC_HTTP_PORT, 8000)."
    ),
]


def _notes(settings: Settings) -> list[str]:
    """What an operator should know before the first request arrives."""
    notes = []
    if not settings.webhook_secrets:
        notes.append(
            "METERSYNC_STRIPE_WEBHOOK_SECRET is not set: POST /webhooks/stripe answers 503"
        )
    if settings.ops_token is None:
        notes.append("METERSYNC_OPS_TOKEN is not set: the /v1 API answers 403")
    return notes


def serve(ctx: typer.Context, host: Host = None, port: Port = None) -> None:
    """Serve POST /webhooks/stripe, the usage and ops API, /healthz and /metrics (Ctrl-C
    stops it). Deliveries go to the broker, for `metersync worker` to apply."""
    from webhooks.app import create_app  # noqa: PLC0415  composition root: loaded when serving

    with connected(ctx) as ms:  # a bad database URL fails here, before listening
        settings = ms.settings
        host = settings.http_host if host is None else host
        port = settings.http_port if port is None else port
        console.print(f"metersync: HTTP on http://{host}:{port}; Ctrl-C to stop")
        for note in _notes(settings):
            console.print(f"note: {note}")
        level = settings.log_level.lower()
        uvicorn.run(
            create_app(settings, ms=ms),
            host=host,
            port=port,
            log_level=level if level in _UVICORN_LEVELS else "info",
        )
