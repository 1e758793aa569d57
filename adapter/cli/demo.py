"""``metersync demo``: metersync end to end on the embedded defaults, step by step.

Runs on a SQLite file with no server and no configuration. Re-running it is safe: the
account and meters are upserted, and each run uses fresh idempotency keys, so the usage
of earlier runs adds up in the table.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

import adapter
from adapter.cli.context import console, state
from adapter.cli.usage import usage_table
from adapter.client import Metersync
from adapter.errors import InvalidUsage
from config.settings import Settings

#: The account the demo records usage for.
ACCOUNT = "demo_customer"
#: Demo meters and their aggregations: a running total, and a peak reading.
METERS = (("api_calls", "sum"), ("storage_gb", "max"))


def step(text: str) -> None:
    """One explanation line (long lines wrap in the terminal, not in the output)."""
    console.print(Text.assemble(("• ", "cyan"), text), soft_wrap=True)


def detail(text: str) -> None:
    """A line about the outcome of the step above."""
    console.print(Text.assemble(("  → ", "cyan"), text), soft_wrap=True)


def _setup(ms: Metersync) -> None:
    account = ms.accounts.upsert(ACCOUNT, metadata={"source": "metersync demo"}, actor="demo")
    step(
        f"Account {account.name!r} is ready: paid, with no Stripe customer linked yet, "
        "so its usage is kept locally."
    )
    for name, aggregation in METERS:
        ms.meters.upsert(name, aggregation=aggregation, actor="demo")
    step("Meters are ready: 'api_calls' sums its events, 'storage_gb' keeps the peak reading.")


def _record_single(ms: Metersync, run: str) -> None:
    key = f"demo-{run}-1"
    first = ms.increment(ACCOUNT, 10, meter="api_calls", idempotency_key=key)
    step(
        f"increment: +10 api_calls with idempotency key {key!r} → event #{first.event_id}, "
        f"added to open report #{first.report_id}."
    )
    again = ms.increment(ACCOUNT, 10, meter="api_calls", idempotency_key=key)
    step(
        f"increment again with the same key: duplicate={again.duplicate}, so it counted "
        f"nothing (same event #{again.event_id}); a client retry cannot bill twice."
    )
    reading = ms.increment(ACCOUNT, "2.5", meter="storage_gb", idempotency_key=f"demo-{run}-2")
    step(f"increment: storage_gb reading 2.5 → open report #{reading.report_id}.")


def _record_batch(ms: Metersync, run: str) -> None:
    # (meter, quantity, key number): key 1 is the first increment's key again.
    batch = [("api_calls", 3, 3), ("storage_gb", 4, 4), ("api_calls", 10, 1), ("api_calls", -5, 5)]
    items: list[dict[str, Any]] = [
        {"account": ACCOUNT, "meter": m, "quantity": q, "idempotency_key": f"demo-{run}-{k}"}
        for m, q, k in batch
    ]
    step(
        "record_many: a batch of 4 in one transaction: 3 api_calls, a storage_gb reading of 4, "
        "the first key again, and a negative quantity."
    )
    result = ms.record_many(items)
    detail(
        f"{result.accepted} accepted, {result.duplicates} duplicate (counted nothing), "
        f"{len(result.rejected)} rejected; the valid items are kept."
    )
    for rejected in result.rejected:
        detail(f"item {rejected.index} rejected: {rejected.error}")


def _finish(ms: Metersync, database: Path, *, earlier: bool) -> None:
    step("Usage for the current period, read from the open reports (not the raw events):")
    console.print(usage_table(ms.get_usage(ACCOUNT)))
    if earlier:
        step("The table includes usage recorded by earlier demo runs on this database.")
    # Hook: pushing to Stripe. Once the push worker lands, close and push the reports here
    # with ms.report_now() and show the events Stripe received (or, with no
    # METERSYNC_STRIPE_API_KEY, the dry-run events that would have been sent).
    step(
        "Nothing was sent to Stripe: pushing reports is not part of this version yet, so "
        "the usage stays pending in the open reports."
    )
    step(f"Look again with: metersync --database-url sqlite:///{database} usage {ACCOUNT}")


Database = Annotated[
    Path,
    typer.Option(
        "--database",
        metavar="PATH",
        dir_okay=False,
        help="SQLite file to use; created when missing.",
    ),
]


def demo(ctx: typer.Context, database: Database = Path("metersync.db")) -> None:
    """Try metersync end to end on the embedded defaults: no server, no configuration.

    Creates a demo account and meters, records usage (with a repeated idempotency key and
    a rejected item), then shows the usage table. Safe to run again.
    """
    if state(ctx).database_url is not None:
        raise InvalidUsage(
            "demo always runs on a SQLite file; use `metersync demo --database PATH` "
            "instead of --database-url"
        )
    ms = adapter.connect(Settings(database_url=f"sqlite:///{database}"))
    try:
        step(f"Using the SQLite file {database}: the embedded default, no server needed.")
        _setup(ms)
        earlier = any(m.events for m in ms.get_usage(ACCOUNT).meters.values())
        run = uuid.uuid4().hex[:8]
        _record_single(ms, run)
        _record_batch(ms, run)
        _finish(ms, database, earlier=earlier)
    finally:
        ms.close()
