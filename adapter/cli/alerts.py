"""``metersync alerts add|list|remove|rearm|check|history``: usage, cost and credit alerts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_json
from adapter.cli.usage import AsJson, show_decimal

app = typer.Typer(
    help="Alerts on usage, rated cost or credit balance: each fires once per billing period "
    "when crossed, to the log, the Dramatiq hook and a signed webhook.",
    no_args_is_help=True,
)
AlertId = Annotated[int, typer.Argument(metavar="ALERT_ID", help="From `metersync alerts list`.")]


@app.command("add")
def add(  # noqa: PLR0913  a Typer command: one parameter per option
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="What to call the alert.")],
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="usage (a meter's quantity), cost (rated, minor units) or credit_balance "
            "(minor units; fires at or below the threshold).",
        ),
    ],
    threshold: Annotated[str, typer.Option("--threshold", help="The value that fires it.")],
    account: Annotated[
        str | None, typer.Option("--account", help="One account (default: every account).")
    ] = None,
    meter: Annotated[
        str | None, typer.Option("--meter", help="The meter (usage: required; cost: optional).")
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook",
            metavar="URL",
            help="Post firings here (default: METERSYNC_ALERT_WEBHOOK_URL).",
        ),
    ] = None,
) -> None:
    """Add an alert."""
    with connected(ctx) as ms:
        found = ms.alerts.add(
            name, metric=metric, threshold=threshold, account=account, meter=meter,
            webhook_url=webhook, actor="cli",
        )  # fmt: skip
    console.print(f"alert {found.id} ({found.name}): {_rule(found.metric, found.threshold)}")


@app.command("list")
def list_alerts(
    ctx: typer.Context,
    include_removed: Annotated[bool, typer.Option("--all", help="Include removed alerts.")] = False,
    as_json: AsJson = False,
) -> None:
    """List alerts."""
    with connected(ctx) as ms:
        found = ms.alerts.list(include_removed=include_removed)
    if as_json:
        print_json([a.to_dict() for a in found])
        return
    if not found:
        console.print("no alerts; add one with `metersync alerts add`")
        return
    table = Table(title="Alerts")
    for column in ("id", "name", "rule", "account", "meter", "generation", "active"):
        table.add_column(column)
    for a in found:
        table.add_row(
            str(a.id), a.name, _rule(a.metric, a.threshold), a.account or "every account",
            a.meter or "", str(a.generation), "yes" if a.active else "no",
        )  # fmt: skip
    console.print(table)


@app.command("remove")
def remove(ctx: typer.Context, alert_id: AlertId) -> None:
    """Stop an alert (its history is kept)."""
    with connected(ctx) as ms:
        found = ms.alerts.remove(alert_id, actor="cli")
    console.print(f"alert {found.id} ({found.name}) removed")


@app.command("rearm")
def rearm(ctx: typer.Context, alert_id: AlertId) -> None:
    """Let an alert fire once more in periods where it already fired."""
    with connected(ctx) as ms:
        found = ms.alerts.rearm(alert_id, actor="cli")
    console.print(f"alert {found.id} ({found.name}) re-armed: generation {found.generation}")


@app.command("check")
def check(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Evaluate every alert now (the scheduler does this every METERSYNC_CREDIT_INTERVAL)."""
    with connected(ctx) as ms:
        fired = ms.alerts.check()
    if as_json:
        print_json([f.to_dict() for f in fired])
        return
    for f in fired:
        console.print(
            f"fired: alert {f.alert_id} ({f.alert}) for {f.account}: {f.metric} "
            f"{show_decimal(f.value)} crossed {show_decimal(f.threshold)}"
        )
    if not fired:
        console.print("no alert crossed its threshold (or each already fired this period)")


@app.command("history")
def history(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option("--account", help="One account.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest firings to show.")] = 50,
    as_json: AsJson = False,
) -> None:
    """Firings, newest first: local alerts and Stripe's billing.alert.triggered side by side."""
    with connected(ctx) as ms:
        found = ms.alerts.history(account=account, limit=limit)
    if as_json:
        print_json([f.to_dict() for f in found])
        return
    table = Table(title="Alert firings, newest first")
    for column in (
        "id",
        "source",
        "alert",
        "account",
        "value",
        "threshold",
        "fired (UTC)",
        "webhook",
    ):
        table.add_column(column)
    for f in found:
        hooks = ", ".join(f"{n} {status}" for status, n in sorted(f.deliveries.items()))
        table.add_row(
            str(f.id), f.source, f.alert or f.stripe_alert_id or "", f.account or "",
            show_decimal(f.value), show_decimal(f.threshold),
            f.fired_at.strftime("%Y-%m-%d %H:%M:%S"), hooks,
        )  # fmt: skip
    console.print(table)


def _rule(metric: str, threshold: object) -> str:
    sign = "<=" if metric == "credit_balance" else ">="
    return f"{metric} {sign} {threshold}"
