"""What the workers offer the processes that compose them: the hand-off of stored webhook
deliveries to the ``process_webhook`` actor.

The HTTP app does not import this package. ``uvicorn webhooks.app:app`` finds
:func:`webhook_handoff` through the ``metersync.handoff`` entry point that
``pyproject.toml`` declares; ``metersync serve`` and ``metersync run`` (the CLI, the
composition root) pass theirs to :func:`webhooks.app.create_app` directly.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from adapter.client import Metersync
from config.settings import Settings
from workers.actors import declare
from workers.broker import make_broker

log = structlog.get_logger("metersync.broker")
#: ``(send(delivery_id), close())``.
Handoff = tuple[Callable[[int], object], Callable[[], None]]


def webhook_handoff(settings: Settings, ms: Metersync) -> Handoff:
    """``process_webhook.send`` on the broker the settings name, and how to close it."""
    handle = make_broker(settings)
    if handle.kind == "stub":
        # No worker shares an in-process broker with this server: messages sent to it
        # are lost, and deliveries wait for the scheduler's sweep instead.
        log.warning("webhook.broker_stub", hint="set METERSYNC_REDIS_URL")
    send: Callable[[int], object] = declare(handle, ms).process_webhook.send
    return send, handle.close
