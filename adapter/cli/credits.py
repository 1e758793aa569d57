"""``metersync credits grant|balance|history|void``: the prepaid credit ledger."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_json
from adapter.cli.usage import Account, AsJson, period_bound
from adapter.domain.money import format_amount
from adapter.store.credits import Grant

app = typer.Typer(
    help="Prepaid credit: load it, see what is left (drawn down as usage lands), void it.",
    no_args_is_help=True,
)


@app.command("grant")
def grant(  # noqa: PLR0913  a Typer command: one parameter per option
    ctx: typer.Context,
    account: Account,
    amount: Annotated[
        int,
        typer.Argument(
            metavar="AMOUNT", help="Minor units of the currency (cents): 5000 = 50.00 USD."
        ),
    ],
    currency: Annotated[str, typer.Option("--currency", help="Three-letter ISO code.")] = "usd",
    meter: Annotated[
        list[str] | None, typer.Option("--meter", help="Cover only this meter (repeatable).")
    ] = None,
    price: Annotated[
        list[str] | None, typer.Option("--price", help="Cover only this Stripe price (repeatable).")
    ] = None,
    priority: Annotated[
        int, typer.Option("--priority", help="0 (drawn first) to 100 (drawn last), as Stripe's.")
    ] = 50,
    category: Annotated[str, typer.Option("--category", help="paid or promotional.")] = "paid",
    effective: Annotated[
        str | None,
        typer.Option("--effective", metavar="WHEN", help="ISO date or datetime (default: now)."),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", metavar="WHEN", help="ISO date or datetime (default: never)."),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why the credit is given (audited).")
    ] = "",
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key: a repeat loads nothing more.")
    ] = None,
) -> None:
    """Load AMOUNT of credit to ACCOUNT for its metered usage (all of it, or --meter/--price)."""
    with connected(ctx) as ms:
        found = ms.credits.grant(
            account, amount, currency=currency, meters=meter or (), prices=price or (),
            priority=priority, category=category, effective_at=period_bound(effective),
            expires_at=period_bound(expires),
            reason=reason, idempotency_key=key, actor="cli",
        )  # fmt: skip
    console.print(
        f"grant {found.id}: {format_amount(found.amount, found.currency)} to {account} "
        f"({found.status}, {_scope(found)}, priority {found.priority}); "
        f"Stripe: {found.stripe_status}"
    )


@app.command("balance")
def balance(ctx: typer.Context, account: Account, as_json: AsJson = False) -> None:
    """Credit left now, after drawing down the usage recorded so far, and each grant."""
    with connected(ctx) as ms:
        found = ms.credits.balance(account)
    if as_json:
        print_json(found.to_dict())
        return
    if not found.grants:
        console.print(f"{account} has no credit; load some with `metersync credits grant`")
        return
    for currency, amount in sorted(found.available.items()):
        console.print(f"{account}: {format_amount(amount, currency)} left")
    for currency, amount in sorted(found.scheduled.items()):
        console.print(f"{account}: {format_amount(amount, currency)} not yet in effect")
    console.print(grants_table(found.grants))


@app.command("history")
def history(
    ctx: typer.Context,
    account: Account,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest entries to show.")] = 100,
    as_json: AsJson = False,
) -> None:
    """Every grant and the newest ledger entries (drawdowns, releases, voids, expiries)."""
    with connected(ctx) as ms:
        found = ms.credits.history(account, limit=limit)
    if as_json:
        print_json(found.to_dict())
        return
    console.print(grants_table(found.grants))
    currency = {g.id: g.currency for g in found.grants}
    table = Table(title=f"Ledger of {account}, newest first")
    for name in ("entry", "grant", "kind", "amount", "meter", "at (UTC)", "by"):
        numeric = name in ("entry", "grant", "amount")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=numeric)
    for e in found.entries:
        table.add_row(
            str(e.id), str(e.grant_id), e.kind, format_amount(e.amount, currency.get(e.grant_id)),
            e.meter or "", e.at.strftime("%Y-%m-%d %H:%M:%S"), e.actor,
        )  # fmt: skip
    console.print(table)


@app.command("void")
def void(
    ctx: typer.Context,
    grant_id: Annotated[int, typer.Argument(metavar="GRANT_ID", help="From `credits history`.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (audited).")] = "",
) -> None:
    """Cancel what is left of a grant; what it already covered stays covered."""
    with connected(ctx) as ms:
        found = ms.credits.void(grant_id, reason=reason, actor="cli")
    console.print(f"grant {found.id} voided; Stripe: {found.stripe_status}")


def grants_table(grants: tuple[Grant, ...]) -> Table:
    """One row per grant: amount, what is left, status, scope, priority, expiry."""
    table = Table(title="Credit grants")
    for name in ("grant", "amount", "left", "status", "covers", "prio", "expires", "Stripe"):
        numeric = name in ("grant", "amount", "left", "prio")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=numeric)
    for g in grants:
        table.add_row(
            str(g.id), format_amount(g.amount, g.currency), format_amount(g.remaining, g.currency),
            g.status, _scope(g), str(g.priority),
            g.expires_at.strftime("%Y-%m-%d") if g.expires_at else "never", g.stripe_status,
        )  # fmt: skip
    return table


def _scope(g: Grant) -> str:
    return "all metered prices" if g.scope == "all" else f"{g.scope}: {', '.join(g.targets)}"
