"""``metersync demo``: metersync end to end on the embedded defaults, step by step.

Runs on a SQLite file with no server and no configuration. Re-running it is safe: the
account and meters are upserted, and each run uses fresh idempotency keys, so the usage
of earlier runs adds up in the table.

The push at the end is a dry run unless ``METERSYNC_STRIPE_API_KEY`` holds a test-mode key
and the demo account has a Stripe customer (``--stripe-customer``): then the meter events
really go to Stripe's test mode. A live key is never used: that run is a dry run.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

import adapter
from adapter.cli.context import console, state
from adapter.cli.errors import fail
from adapter.cli.reports import events_title, print_table, results_table, summary, undelivered
from adapter.cli.usage import usage_table
from adapter.client import Metersync
from adapter.errors import InvalidUsage
from adapter.pushing.pusher import PushResult
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


def _settings(database: Path) -> tuple[Settings, bool]:
    """The demo's settings: its own SQLite file, the rest from the environment, minus a
    live Stripe key (the demo must never bill a real customer). True if one was dropped."""
    settings = Settings(database_url=f"sqlite:///{database}")
    if settings.stripe_api_key is not None and settings.effective_stripe_mode == "live":
        return settings.model_copy(update={"stripe_api_key": None}), True
    return settings, False


def _setup(ms: Metersync, stripe_customer: str | None) -> bool:
    """Upsert the demo account and meters; True when the account has a Stripe customer."""
    account = ms.accounts.upsert(
        ACCOUNT,
        stripe_customer_id=stripe_customer,
        metadata={"source": "metersync demo"},
        actor="demo",
    )
    if account.stripe_customer_id:
        billing = f"billed to Stripe customer {account.stripe_customer_id}"
    elif ms.settings.dry_run:
        billing = "with no Stripe customer linked (a dry run needs none)"
    else:
        billing = "with no Stripe customer linked, so its usage cannot be sent to Stripe yet"
    step(f"Account {account.name!r} is ready: paid, {billing}.")
    for name, aggregation in METERS:
        ms.meters.upsert(name, aggregation=aggregation, actor="demo")
    step("Meters are ready: 'api_calls' sums its events, 'storage_gb' keeps the peak reading.")
    return account.stripe_customer_id is not None


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


def _show_usage(ms: Metersync, *, earlier: bool) -> None:
    step("Usage for the current period, read from the reports (not the raw events):")
    console.print(usage_table(ms.get_usage(ACCOUNT)))
    if earlier:
        step("The table includes usage recorded by earlier demo runs on this database.")


def _push(ms: Metersync, *, linked: bool) -> list[PushResult]:
    """Close and push every report, show the meter events and the usage after them."""
    dry_run = ms.settings.dry_run
    if not dry_run and not linked:
        step(
            f"A Stripe key is configured but {ACCOUNT!r} has no Stripe customer, so nothing "
            "is pushed and the usage stays in the open reports. Run the demo again with "
            "--stripe-customer cus_… (a customer of your test-mode account) to send it."
        )
        return []
    if dry_run:
        step(
            "report_now(): close every open report and push each closed one. No Stripe key "
            "is configured (METERSYNC_STRIPE_API_KEY), so this is a dry run: each meter "
            "event is decided and recorded as dry_run, and nothing leaves this machine."
        )
    else:
        step(
            "report_now(): close every open report and push each closed one to Stripe "
            f"({ms.settings.effective_stripe_mode} mode), now; the worker does this on the "
            "schedule."
        )
    results = ms.report_now()
    print_table(results_table(results, title=events_title(dry_run)))
    detail(summary(results))
    step("Usage after the push:")
    console.print(usage_table(ms.get_usage(ACCOUNT)))
    if dry_run:
        step(
            "'sent' stays 0: in a dry run nothing reached Stripe, so all usage is still "
            "pending. With METERSYNC_STRIPE_API_KEY set to a test-mode key (sk_test_…), "
            "run the demo with --stripe-customer cus_… to send it."
        )
    else:
        step(
            "'sent' is what Stripe has received for the period, 'pending' the rest (reports "
            "of an earlier dry run are never sent)."
        )
    return results


Database = Annotated[
    Path,
    typer.Option(
        "--database",
        metavar="PATH",
        dir_okay=False,
        help="SQLite file to use; created when missing.",
    ),
]
StripeCustomer = Annotated[
    str | None,
    typer.Option(
        "--stripe-customer",
        metavar="CUS_ID",
        help="Stripe customer (cus_…) of your test-mode account to bill the demo account; "
        "with METERSYNC_STRIPE_API_KEY set to a test-mode key, the demo then sends real "
        "meter events. Kept for later runs.",
        show_default=False,
    ),
]


def demo(
    ctx: typer.Context,
    database: Database = Path("metersync.db"),
    stripe_customer: StripeCustomer = None,
) -> None:
    """Try metersync end to end on the embedded defaults: no server, no configuration.

    Creates a demo account and meters, records usage (with a repeated idempotency key and
    a rejected item), shows the usage table, then closes and pushes the reports: a dry run
    without a Stripe key, real meter events in Stripe test mode with one (and
    --stripe-customer). Safe to run again. Exits 1 if an event was refused or not sent.
    """
    if state(ctx).database_url is not None:
        raise InvalidUsage(
            "demo always runs on a SQLite file; use `metersync demo --database PATH` "
            "instead of --database-url"
        )
    settings, live_key = _settings(database)
    ms = adapter.connect(settings)
    try:
        step(f"Using the SQLite file {database}: the embedded default, no server needed.")
        if live_key:
            step("A live Stripe key is configured; the demo never bills live, so it is a dry run.")
        linked = _setup(ms, stripe_customer)
        earlier = any(m.events for m in ms.get_usage(ACCOUNT).meters.values())
        run = uuid.uuid4().hex[:8]
        _record_single(ms, run)
        _record_batch(ms, run)
        _show_usage(ms, earlier=earlier)
        results = _push(ms, linked=linked)
        where = f"metersync --database-url sqlite:///{database}"
        step(f"Look again with: {where} usage {ACCOUNT}")
        detail(f"and at the reports with: {where} reports")
    finally:
        ms.close()
    problem = undelivered(results)
    if problem is not None:
        raise fail(problem)
