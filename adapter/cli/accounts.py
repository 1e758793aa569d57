"""``metersync accounts add|list``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from adapter.cli.context import connected, console, print_listing
from adapter.store.catalog import AccountInfo

app = typer.Typer(help="Create, update and list accounts.", no_args_is_help=True)


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    """``["plan=pro", "region=eu"]`` as a dict; a pair without ``=`` is a usage error."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="'--metadata'")
        metadata[key.strip()] = value
    return metadata


def _describe(info: AccountInfo) -> str:
    customer = info.stripe_customer_id or "no Stripe customer yet"
    billing = "free: usage tracked, never sent" if info.free else "paid"
    return f"account {info.name!r} saved ({customer}; {billing})"


Name = Annotated[
    str, typer.Argument(metavar="NAME", help="Local account id your application uses.")
]
StripeCustomer = Annotated[
    str | None,
    typer.Option(
        "--stripe-customer",
        metavar="CUS_ID",
        help="Stripe customer id (cus_…) that this account's usage is billed to.",
        show_default=False,
    ),
]
Free = Annotated[
    bool | None,
    typer.Option(
        "--free/--paid",
        help="Free accounts have usage tracked but never sent to Stripe. "
        "New accounts are paid; left unchanged when omitted.",
        show_default=False,
    ),
]
Metadata = Annotated[
    list[str] | None,
    typer.Option(
        "--metadata",
        metavar="KEY=VALUE",
        help="Metadata to store on the account; repeat for several pairs. "
        "Replaces the stored metadata when given.",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the accounts as JSON instead of a table.")
]


@app.command("add")
def add(
    ctx: typer.Context,
    name: Name,
    stripe_customer: StripeCustomer = None,
    free: Free = None,
    metadata: Metadata = None,
) -> None:
    """Create an account, or update the fields given of an existing one."""
    meta = parse_metadata(metadata) if metadata else None
    with connected(ctx) as ms:
        info = ms.accounts.upsert(
            name, stripe_customer_id=stripe_customer, free=free, metadata=meta, actor="cli"
        )
    console.print(_describe(info))


def _table(accounts: list[AccountInfo]) -> Table:
    table = Table(title="Accounts")
    table.add_column("account", style="bold")
    table.add_column("stripe customer")
    table.add_column("free")
    table.add_column("metadata")
    for info in accounts:
        table.add_row(
            info.name,
            info.stripe_customer_id or "-",
            "yes" if info.free else "no",
            json.dumps(info.metadata, sort_keys=True) if info.metadata else "-",
        )
    return table


@app.command("list")
def list_accounts(
    ctx: typer.Context,
    as_json: AsJson = False,
) -> None:
    """List every account, by name."""
    with connected(ctx) as ms:
        found = ms.accounts.list()
    print_listing(
        found,
        as_json=as_json,
        table=_table,
        empty="no accounts yet; add one with `metersync accounts add NAME`",
    )
