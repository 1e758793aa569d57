"""``metersync sync`` end to end on SQLite and PostgreSQL: Stripe's list endpoints played
in-process by ``responses`` behind a loopback API base, the real mirror filling its tables,
and the key kept out of every line the command prints or logs."""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import responses
import sqlalchemy as sa
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from adapter.cli.sync import NO_KEY
from adapter.mirror import sync as syncing
from config.settings import Settings
from tests import stripe_events as se
from tests.e2e.helpers import error_line, row
from tests.stripe_lists import StripeLists, error

pytestmark = pytest.mark.usefixtures("logs")
runner = CliRunner()
#: Loopback and closed: should ``responses`` ever miss a call, it goes nowhere.
BASE = "http://127.0.0.1:1"
#: Shaped like a real test-mode secret key, so the gateway's masking applies to it.
KEY = "sk_test_51E2eMeterSyncSecretKey0123456789abcdef"
WITH_KEY = {"METERSYNC_STRIPE_API_KEY": KEY, "METERSYNC_STRIPE_API_BASE": BASE}
#: Mirror tables the object sync fills, and the ids ``fill`` puts in each.
FILLED = {
    "stripe_meter": {"mtr_api"},
    "price": {"price_api"},
    "stripe_customer": {"cus_1", "cus_2", "cus_3"},
    "subscription": {"sub_1", "sub_2"},
    "subscription_item": {"si_1", "si_2"},
    "invoice": {"in_1"},
}


@pytest.fixture
def stripe(stripe_api: responses.RequestsMock) -> StripeLists:
    """Stripe's lists, empty until a test fills them."""
    return StripeLists(stripe_api, base=BASE, request_ids="req_e2e_")


@pytest.fixture
def url(db_url: str) -> str:
    """An empty, migrated database (SQLite file or PostgreSQL)."""
    adapter.connect(Settings(database_url=db_url, auto_migrate=True)).close()
    return db_url


def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args], env=env)


def assert_no_key(result: Result, logs: list[MutableMapping[str, Any]]) -> None:
    """The key's secret part is in nothing the command printed or logged."""
    secret = KEY.removeprefix("sk_test_")
    assert secret not in result.output
    assert secret not in json.dumps(logs, default=str)


def query(url: str, sql: str) -> list[sa.Row[Any]]:
    """The rows one SQL statement returns from the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


def ids(url: str, table_name: str) -> set[str]:
    """The ids in one mirror table."""
    return {obj_id for (obj_id,) in query(url, f"SELECT id FROM {table_name}")}


def count(url: str, table_name: str) -> int:
    """How many rows one table holds."""
    ((found,),) = query(url, f"SELECT count(*) FROM {table_name}")
    return int(found)


def linked(url: str) -> dict[str, str | None]:
    """Account name → Stripe customer id."""
    rows = query(url, "SELECT name, stripe_customer_id FROM account")
    return {name: customer for name, customer in rows}


def current_period() -> tuple[int, int]:
    """A billing period around now."""
    now = int(time.time())
    return now - 10 * se.DAY, now + 20 * se.DAY


def fill(stripe: StripeLists) -> None:
    """One meter and price; three customers (two pages) naming their accounts; two
    subscriptions, one in each API shape; one paid invoice."""
    period = current_period()
    stripe.objects["meters"] = [se.meter("mtr_api")]
    stripe.objects["prices"] = [se.price("price_api", meter="mtr_api")]
    stripe.objects["customers"] = [se.customer(f"cus_{n}", account=f"acct_{n}") for n in (3, 2, 1)]
    stripe.objects["subscriptions"] = [
        se.subscription(
            f"sub_{n}",
            customer_id=f"cus_{n}",
            period=period,
            shape=shape,
            items=[se.item(f"si_{n}", subscription=f"sub_{n}", period=period, shape=shape)],
        )
        for n, shape in ((2, se.LEGACY), (1, se.BASIL))
    ]
    stripe.objects["invoices"] = [
        se.invoice(
            "in_1",
            customer_id="cus_1",
            status="paid",
            billing_reason="subscription_create",
            period=period,
            created=period[0],
            lines=[se.line("il_1", subscription_item="si_1", period=period)],
        )
    ]


# --- without a key ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--events"], ["--only", "customers", "--json"]])
def test_without_a_key_sync_fails_and_changes_nothing(
    url: str,
    stripe_api: responses.RequestsMock,
    logs: list[MutableMapping[str, Any]],
    args: list[str],
) -> None:
    """No key: exit 1 with the NO_KEY line, no call to Stripe, nothing written, and none
    of the other configured secrets printed."""
    secrets = {"whsec_e2eWebhookSecret123", "ops-token-e2e-7f3a9c"}
    env = {
        "METERSYNC_STRIPE_WEBHOOK_SECRET": "whsec_e2eWebhookSecret123",
        "METERSYNC_OPS_TOKEN": "ops-token-e2e-7f3a9c",
        "METERSYNC_STRIPE_API_BASE": BASE,
    }
    result = cli(url, "sync", *args, env=env)
    assert result.exit_code == 1
    assert error_line(result) == f"error: {NO_KEY}"
    assert result.stdout == ""
    assert not any(secret in result.output for secret in secrets)
    assert len(stripe_api.calls) == 0
    for table_name in ("sync_state", "webhook_delivery", *FILLED):
        assert count(url, table_name) == 0, table_name


def test_without_a_key_sync_does_not_create_the_database(tmp_path: Path) -> None:
    """The key is checked before connecting: no SQLite file is created or migrated."""
    database = tmp_path / "never.db"
    result = cli(f"sqlite:///{database}", "sync")
    assert result.exit_code == 1
    assert error_line(result) == f"error: {NO_KEY}"
    assert not database.exists()


def test_placeholder_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A placeholder key is bad input (exit 2): the message names the setting, never the
    value given."""
    env = {"METERSYNC_STRIPE_API_KEY": "sk_test_changeme"}
    result = cli(f"sqlite:///{tmp_path}/placeholder.db", "sync", env=env)
    assert result.exit_code == 2
    assert error_line(result) == (
        "error: invalid settings: METERSYNC_STRIPE_API_KEY: expected a Stripe secret key "
        "starting with sk_ or rk_"
    )
    assert "changeme" not in result.output


# --- object sync -----------------------------------------------------------------------------


def test_sync_fills_the_mirror_and_shows_a_summary(
    url: str, stripe: StripeLists, logs: list[MutableMapping[str, Any]]
) -> None:
    """Every resource is read in dependency order with the key, one table row each with
    its counts; every object lands in its mirror table and customers link accounts."""
    fill(stripe)
    result = cli(url, "sync", env=WITH_KEY)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Stripe sync" in out
    assert row(out, "meters") == ["meters", "1", "1", "0", "yes"]
    assert row(out, "prices") == ["prices", "1", "1", "0", "yes"]
    assert row(out, "customers") == ["customers", "3", "3", "0", "yes"]
    assert row(out, "subscriptions") == ["subscriptions", "2", "2", "0", "yes"]
    assert row(out, "invoices") == ["invoices", "1", "1", "0", "yes"]
    assert [r for r, _ in stripe.requests] == [
        "meters", "prices", "customers", "customers", "subscriptions", "invoices",
    ]  # fmt: skip
    assert stripe.auth == [f"Bearer {KEY}"] * len(stripe.requests)
    for table_name, expected in FILLED.items():
        assert ids(url, table_name) == expected, table_name
    assert linked(url) == {"acct_1": "cus_1", "acct_2": "cus_2", "acct_3": "cus_3"}
    assert_no_key(result, logs)


def test_sync_only_customers(url: str, stripe: StripeLists) -> None:
    """--only customers reads that list alone; the table has that one row."""
    fill(stripe)
    result = cli(url, "sync", "--only", "customers", env=WITH_KEY)
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "customers") == ["customers", "3", "3", "0", "yes"]
    assert "meters" not in result.stdout
    assert {r for r, _ in stripe.requests} == {"customers"}
    assert ids(url, "stripe_customer") == FILLED["stripe_customer"]
    assert count(url, "stripe_meter") == count(url, "subscription") == 0


def test_sync_json(url: str, stripe: StripeLists) -> None:
    """--json prints only the summary, as JSON: each resource with its counts, pages and
    completion, and nothing pushed."""
    fill(stripe)
    result = cli(url, "sync", "--json", env=WITH_KEY)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["resource"] for r in data["resources"]] == list(syncing.RESOURCES)
    by_name = {r["resource"]: r for r in data["resources"]}
    assert {name: r["listed"] for name, r in by_name.items()} == {
        "meters": 1, "prices": 1, "customers": 3, "subscriptions": 2, "invoices": 1,
    }  # fmt: skip
    customers = by_name["customers"]
    assert (customers["pages"], customers["statuses"], customers["complete"]) == (
        2, {"processed": 3}, True,
    )  # fmt: skip
    assert (customers["failures"], customers["resumed_after"]) == ([], None)
    assert (data["to_push"], data["pushed"]) == ([], {})


def test_stripe_401_stops_the_sync_without_showing_the_key(
    url: str, stripe: StripeLists, logs: list[MutableMapping[str, Any]]
) -> None:
    """Stripe refusing the key (its message quoting the key) stops the sync at once: exit 1,
    one line with Stripe's message and request id, the key masked; nothing is mirrored."""
    fill(stripe)
    stripe.fail[("meters", None)] = error(401, f"Invalid API Key provided: {KEY}")
    result = cli(url, "sync", env=WITH_KEY)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("error: sync of meters stopped: Stripe refused the call (HTTP 401)")
    assert "Invalid API Key provided: sk_test_…" in line
    assert "[request req_e2e_1]" in line
    assert "run `metersync sync` again to resume" in line
    assert_no_key(result, logs)
    assert stripe.requests == [("meters", None)]  # a 401 is not retried
    assert count(url, "stripe_meter") == count(url, "sync_state") == 0


def test_stripe_400_mid_sync_keeps_finished_pages_and_resumes(
    url: str, stripe: StripeLists, logs: list[MutableMapping[str, Any]]
) -> None:
    """A 400 on the second page of customers: exit 1 with Stripe's message and request id,
    the summary so far printed, the first page kept; the next run resumes after it."""
    fill(stripe)
    stripe.fail[("customers", "cus_2")] = error(400, "Something is wrong with this request.")
    result = cli(url, "sync", env=WITH_KEY)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("error: sync of customers stopped: Stripe refused the call (HTTP 400)")
    assert "Something is wrong with this request. [request req_e2e_4]" in line
    assert row(result.stdout, "prices") == ["prices", "1", "1", "0", "yes"]
    assert row(result.stdout, "customers") == ["customers", "2", "2", "0", "no"]
    assert "subscriptions" not in [r for r, _ in stripe.requests]
    assert ids(url, "stripe_customer") == {"cus_3", "cus_2"}
    assert_no_key(result, logs)

    again = cli(url, "sync", "--only", "customers", env=WITH_KEY)
    assert again.exit_code == 0, again.output
    assert row(again.stdout, "customers") == [
        "customers", "1", "1", "0", "yes (resumed after cus_2)",
    ]  # fmt: skip
    assert stripe.requests[-1] == ("customers", "cus_2")
    assert ids(url, "stripe_customer") == FILLED["stripe_customer"]


# --- events ----------------------------------------------------------------------------------


def test_sync_events_stores_and_applies_them(url: str, stripe: StripeLists) -> None:
    """--events stores each event Stripe lists as a ``sync`` delivery and applies them
    oldest first (a customer, then its subscription; a charge is ignored); a second run
    stores and applies nothing new."""
    now = int(time.time())
    period = current_period()
    stripe.objects["events"] = [
        se.event("charge.succeeded", {"id": "ch_7", "object": "charge"}, created=now - 60),
        se.event(
            "customer.subscription.created",
            se.subscription("sub_7", customer_id="cus_7", period=period),
            created=now - 120,
        ),
        se.event("customer.created", se.customer("cus_7", account="acct_7"), created=now - 180),
    ]
    result = cli(url, "sync", "--events", env=WITH_KEY)
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "events") == ["events", "3", "3", "2", "0", "1", "yes"]
    assert {r for r, _ in stripe.requests} == {"events"}
    assert ids(url, "stripe_customer") == {"cus_7"}
    assert ids(url, "subscription") == {"sub_7"}
    assert linked(url) == {"acct_7": "cus_7"}

    listed = json.loads(cli(url, "webhooks", "--json").stdout)
    assert [(d["type"], d["source"], d["status"]) for d in reversed(listed)] == [
        ("charge.succeeded", "sync", "ignored"),
        ("customer.subscription.created", "sync", "processed"),
        ("customer.created", "sync", "processed"),
    ]

    again = cli(url, "sync", "--events", "--json", env=WITH_KEY)
    assert again.exit_code == 0, again.output
    (events,) = json.loads(again.stdout)["resources"]
    assert (events["resource"], events["new"], events["statuses"]) == ("events", 0, {})


def test_events_and_only_do_not_mix(url: str, stripe: StripeLists) -> None:
    """--only applies to object sync: with --events it is a usage error and nothing is read."""
    result = cli(url, "sync", "--events", "--only", "customers", env=WITH_KEY)
    assert result.exit_code == 2
    assert error_line(result) == "error: --only applies to object sync, not to --events"
    assert stripe.requests == []


def test_help_says_what_sync_does(tmp_path: Path) -> None:
    """sync --help says it reads Stripe's objects into the mirror."""
    result = cli(f"sqlite:///{tmp_path}/help.db", "sync", "--help")
    assert "Read customers, subscriptions, invoices, prices and meters from Stripe" in (
        result.stdout
    )
