"""``metersync webhooks``: the Stripe webhook deliveries stored, and ``webhooks replay``,
which applies one again and pushes the reports it closed."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import sqlalchemy as sa
import structlog
import typer
from rich.table import Table
from rich.text import Text

from adapter.cli.context import connected, console, print_json
from adapter.cli.errors import fail
from adapter.cli.reports import (
    AsJson,
    dry_run_note,
    events_title,
    jsonable,
    print_table,
    results_table,
    show_listing,
    show_timestamp,
    summary,
    undelivered,
)
from adapter.errors import MetersyncError
from adapter.mirror import process
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import table

if TYPE_CHECKING:
    from adapter.client import Metersync
    from adapter.mirror.context import Processed

_DELIVERIES = table(WebhookDelivery)
#: Colours of delivery statuses; the others print plain.
STATUS_STYLES = {"processed": "green", "ignored": "cyan", "skipped": "cyan", "failed": "red"}
log = structlog.get_logger("metersync.cli")


class DeliveryStatus(StrEnum):
    """The statuses ``webhooks --status`` accepts (see ``WebhookDelivery.status``)."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """One stored delivery as operators see it (its payload left out)."""

    id: int
    event_id: str
    type: str
    created: datetime
    status: str
    attempts: int
    error: str | None
    object_id: str | None
    source: str
    received_at: datetime
    processed_at: datetime | None


_FIELDS = tuple(f.name for f in fields(DeliveryInfo))


def list_deliveries(
    engine: sa.Engine, *, status: str | None = None, limit: int = 50
) -> list[DeliveryInfo]:
    """The newest ``limit`` deliveries, optionally of one status."""
    query = sa.select(*(_DELIVERIES.c[f] for f in _FIELDS))
    if status is not None:
        query = query.where(_DELIVERIES.c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(_DELIVERIES.c.id.desc()).limit(limit)).mappings().all()
    return [DeliveryInfo(**row) for row in rows]


def delivery(engine: sa.Engine, delivery_id: int) -> DeliveryInfo | None:
    """One delivery, or ``None``."""
    query = sa.select(*(_DELIVERIES.c[f] for f in _FIELDS))
    with engine.connect() as conn:
        row = conn.execute(query.where(_DELIVERIES.c.id == delivery_id)).mappings().first()
    return None if row is None else DeliveryInfo(**row)


def deliveries_table(found: list[DeliveryInfo]) -> Table:
    """One row per delivery, newest first."""
    table = Table(title="Webhook deliveries (newest first)")
    table.add_column("id", justify="right", style="bold", no_wrap=True)
    table.add_column("event", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("created (UTC)", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("error", overflow="fold")
    for info in found:
        table.add_row(
            str(info.id),
            Text(info.event_id),
            Text(info.type),
            show_timestamp(info.created),
            Text(info.status, style=STATUS_STYLES.get(info.status, "")),
            str(info.attempts),
            Text(info.error or "-"),
        )
    return table


app = typer.Typer(
    help="Stripe webhook deliveries: list them (the default) or replay one.",
    no_args_is_help=False,
)

StatusOption = Annotated[
    DeliveryStatus | None,
    typer.Option(
        "--status",
        help="Only deliveries with this status: received waits for a worker; processed, "
        "ignored (a type metersync does not mirror) and skipped (older than what was "
        "applied) are done; failed gave up, with the error kept.",
        show_default=False,
    ),
]
Limit = Annotated[
    int, typer.Option("--limit", min=1, metavar="N", help="Show at most N deliveries.")
]


@app.callback(invoke_without_command=True)
def deliveries(
    ctx: typer.Context,
    status: StatusOption = None,
    limit: Limit = 50,
    as_json: AsJson = False,
) -> None:
    """List the newest webhook deliveries: event, type, created, status, attempts, error."""
    if ctx.invoked_subcommand is not None:
        return
    with connected(ctx) as ms:
        found = list_deliveries(ms.engine, status=status.value if status else None, limit=limit)
    which = f"{status.value} " if status else ""
    show_listing(
        found,
        deliveries_table,
        as_json=as_json,
        empty=f"no {which}webhook deliveries; Stripe's events arrive at /webhooks/stripe",
    )


DeliveryId = Annotated[
    int,
    typer.Argument(metavar="DELIVERY_ID", help="The delivery to apply again (see `webhooks`)."),
]


@app.command("replay")
def replay(ctx: typer.Context, delivery_id: DeliveryId, as_json: AsJson = False) -> None:
    """Apply a stored delivery again, then push the reports it closed, now.

    The mirror's ordering rules still hold: a replay never moves an object back to an
    older state. Exits 1 if applying it failed or a push did not get through.
    """
    with connected(ctx) as ms:
        if delivery(ms.engine, delivery_id) is None:
            raise MetersyncError(
                f"no webhook delivery {delivery_id}; list them with `metersync webhooks`"
            )
        processed = _replay(ms, delivery_id)
        pusher = ms.pusher()
        results = [pusher.push(report_id) for report_id in processed.to_push]
        after = delivery(ms.engine, delivery_id)
        dry_run = ms.settings.dry_run
    assert after is not None  # deliveries are never deleted
    if as_json:
        print_json(
            {
                "delivery": jsonable(after),
                "status": processed.status,
                "error": processed.error,
                "pushed": [jsonable(r) for r in results],
            }
        )
    else:
        _print_replay(after, processed, results, dry_run=dry_run)
    problem = _problem(processed, results)
    if problem is not None:
        raise fail(problem)


def _replay(ms: Metersync, delivery_id: int) -> Processed:
    """Run the mirror on the delivery; an error is kept on the delivery and reported as
    one line with the status it left, not a traceback (unexpected ones are logged too)."""
    gateway = ms.gateway()
    # Settles same-second ties by reading the object from Stripe, when a key is set.
    refetch = getattr(gateway, "retrieve", None) if gateway is not None else None
    try:
        return process.replay(ms, delivery_id, refetch=refetch)
    except MetersyncError as exc:  # a payload that cannot apply, or Stripe refusing a refetch
        said = str(exc)
    except Exception as exc:
        log.exception("webhook.replay_failed", delivery_id=delivery_id)
        said = process.describe(exc)
    # The mirror fails a delivery at once only when it can never apply; otherwise it is
    # ``received`` again and a worker retries it. Say which, so the hint lists it.
    now = _status_now(ms.engine, delivery_id)
    where = (
        f"the delivery is now {now}, with the error kept (`metersync webhooks --status {now}`)"
        if now is not None
        else "see `metersync webhooks`"
    )
    raise fail(f"replaying delivery {delivery_id} failed: {said}; {where}")


def _status_now(engine: sa.Engine, delivery_id: int) -> str | None:
    """The delivery's status, or ``None`` if the database cannot say."""
    try:
        found = delivery(engine, delivery_id)
    except sa.exc.SQLAlchemyError:  # the database failed too: the replay's error matters
        return None
    return found.status if found is not None else None


def _print_replay(
    info: DeliveryInfo, processed: Processed, results: list[Any], *, dry_run: bool
) -> None:
    line = f"delivery {info.id} ({info.type}, {info.event_id}): {processed.status}"
    console.print(Text(line + (f" — {processed.error}" if processed.error else "")))
    if not results:
        console.print("no reports to push")
        return
    print_table(results_table(results, title=events_title(dry_run)))
    console.print(summary(results))
    if dry_run:
        console.print(dry_run_note(len(results)))


def _problem(processed: Processed, results: list[Any]) -> str | None:
    """Why the replay needs an operator, or None."""
    if processed.status == "failed":
        return f"delivery {processed.delivery_id} failed: {processed.error or 'unknown error'}"
    return undelivered(results)
