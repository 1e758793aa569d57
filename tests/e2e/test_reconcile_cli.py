"""End to end through real processes: ``metersync reconcile`` as its own process against
the Stripe stand-in over HTTP, on PostgreSQL, with a planted drift of each kind.

Four accounts' usage is pushed to the stand-in, then Stripe's side is made to differ:

- ``acct_missing``: Stripe lost the api_calls event (``sum``: missing);
- ``acct_excess``: a report metersync marked ``failed`` was taken by Stripe after all
  (``sum``: excess, cancellable because Stripe received it within 24 h);
- ``acct_last``: Stripe holds a newer event with another value (``last``: wrong value);
- ``acct_stray``: Stripe holds an event nobody sent through metersync (excess nothing
  explains: left for the operator).

A report-only run finds all four and writes nothing to Stripe; ``--repair`` fixes the
three it can; the next report-only run matches them and still shows the fourth.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from adapter.cli.reconcile import NO_KEY
from adapter.store.models import Account, Meter, UsageReport, table, utcnow
from config.settings import Settings
from tests import stripe_standin
from tests.e2e.flow import _CLI, API_KEY
from tests.e2e.helpers import error_line, row
from tests.e2e.test_webhook_flow import database, standin

pytestmark = [pytest.mark.postgres]
__all__ = ["database", "standin"]  # fixtures used here

_REPORTS, _METERS, _ACCOUNTS = table(UsageReport), table(Meter), table(Account)
FORMULAS = {"api_calls": "sum", "peak": "last"}
USAGE = {"acct_missing": 5, "acct_excess": 3, "acct_last": 9, "acct_stray": 4}


def _identifier(url: str, account: str, meter: str) -> str:
    """The identifier metersync sent the account's report of ``meter`` with."""
    reports = _REPORTS.join(_METERS, _METERS.c.id == _REPORTS.c.meter_id).join(
        _ACCOUNTS, _ACCOUNTS.c.id == _REPORTS.c.account_id
    )
    query = sa.select(_REPORTS.c.identifier).select_from(reports)
    query = query.where(_ACCOUNTS.c.name == account, _METERS.c.name == meter)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found: str = conn.execute(query).scalar_one()
        return found
    finally:
        engine.dispose()


@pytest.fixture
def world(
    database: str, standin: stripe_standin.StandinServer
) -> tuple[str, stripe_standin.StandinServer]:
    """The usage of :data:`USAGE` pushed to the stand-in two hours ago, then the drift."""
    standin.model.formulas.update(FORMULAS)
    settings = Settings(database_url=database, stripe_api_key=API_KEY, stripe_api_base=standin.url)
    ms = adapter.connect(settings)
    try:
        ms.meters.upsert("api_calls", event_name="api_calls", aggregation="sum")
        ms.meters.upsert("peak", event_name="peak", aggregation="max")
        now = utcnow()
        at = now - timedelta(hours=2)
        for n, (account, quantity) in enumerate(USAGE.items()):
            ms.accounts.upsert(account, stripe_customer_id=f"cus_{n}")
            ms.set_billing_period(account, now - timedelta(days=3), now + timedelta(days=27))
            meter = "peak" if account == "acct_last" else "api_calls"
            ms.increment(account, quantity, meter=meter, timestamp=at)
        assert {r.status for r in ms.report_now()} == {"sent"}
        with ms.engine.begin() as conn:  # sent, but metersync believes it failed
            conn.execute(
                _REPORTS.update()
                .where(_REPORTS.c.identifier == _identifier(database, "acct_excess", "api_calls"))
                .values(status="failed", last_error="planted: Stripe took it after all")
            )
    finally:
        ms.close()
    model = standin.model
    assert model.drop(_identifier(database, "acct_missing", "api_calls"))
    late = int((now - timedelta(minutes=1)).timestamp())  # newer than anything sent
    assert model.add(_planted("peak", "cus_2", 2, late, "planted-last"))
    assert model.add(_planted("api_calls", "cus_3", 6, late, "planted-stray"))
    return database, standin


def _planted(
    event_name: str, customer: str, value: int, at: int, identifier: str
) -> dict[str, Any]:
    return {
        "event_name": event_name,
        "identifier": identifier,
        "customer": customer,
        "value": str(value),
        "timestamp": at,
    }


def _reconcile(url: str, base: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """``metersync reconcile --json ARGS`` in its own process; its JSON output."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "METERSYNC_DATABASE_URL": url,
        "METERSYNC_STRIPE_API_KEY": API_KEY,
        "METERSYNC_STRIPE_API_BASE": base,
        "METERSYNC_RECONCILE_SETTLE_SECONDS": "0",
    }
    done = subprocess.run(
        [*_CLI, "reconcile", "--json", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert API_KEY not in done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _verdicts(run: dict[str, Any]) -> dict[str, str]:
    return {pair["account"]: pair["verdict"] for pair in run["pairs"]}


def test_reconcile_finds_each_planted_drift_and_repair_fixes_what_it_can(
    world: tuple[str, stripe_standin.StandinServer], tmp_path: Path
) -> None:
    url, server = world
    before = len(server.model.events)

    found = _reconcile(url, server.url, tmp_path)
    assert _verdicts(found) == {
        "acct_missing": "missing",
        "acct_excess": "excess",
        "acct_last": "wrong_value",
        "acct_stray": "excess",
    }
    assert found["drifting"] == 4
    assert found["calls"] <= len(found["pairs"]) + 1  # one summary per pair, one listing
    assert len(server.model.events) == before  # nothing written to Stripe
    assert server.recorded.summary()["cancels"] == 0

    repaired = _reconcile(url, server.url, tmp_path, "--repair", "--restart")
    by_account = {pair["account"]: pair for pair in repaired["pairs"]}
    assert {a for a, p in by_account.items() if p["repaired"]} == {
        "acct_missing",
        "acct_excess",
        "acct_last",
    }
    assert not by_account["acct_stray"]["repaired"]
    assert server.recorded.summary()["cancels"] == 1

    after = _reconcile(url, server.url, tmp_path, "--restart")
    assert _verdicts(after) == {
        "acct_missing": "match",
        "acct_excess": "match",
        "acct_last": "match",
        "acct_stray": "excess",
    }
    assert after["drifting"] == 1
    start, end = (int(time.time()) - 10 * 86400) // 60 * 60, (int(time.time()) + 3600) // 60 * 60
    assert server.model.summary("mtr_api_calls", "cus_0", start, end) == USAGE["acct_missing"]
    assert server.model.summary("mtr_peak", "cus_2", start, end) == USAGE["acct_last"]
    assert server.model.summary("mtr_api_calls", "cus_1", start, end) == 0


# --- the command's face, in-process --------------------------------------------------------

runner = CliRunner()


def _cli(url: str, base: str, *args: str, key: bool = True) -> Result:
    env = {"METERSYNC_STRIPE_API_BASE": base, "METERSYNC_RECONCILE_SETTLE_SECONDS": "0"}
    if key:
        env["METERSYNC_STRIPE_API_KEY"] = API_KEY
    return runner.invoke(app, ["--database-url", url, "reconcile", *args], env=env)


def test_the_table_shows_each_pair_and_a_line_of_counts(
    world: tuple[str, stripe_standin.StandinServer], logs: list[Any]
) -> None:
    url, server = world
    result = _cli(url, server.url)
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "acct_missing")[4:8] == ["5", "0", "5", "missing"]
    assert row(result.stdout, "acct_last")[7] == "wrong_value"
    assert "4 pairs: 2 excess, 1 missing, 1 wrong_value; 4 drifting" in result.stdout


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (["--period", "last-week"], True, "period 'last-week' is not understood"),
        (["--period", "2026-11-01..2026-10-01"], True, "period"),
        (["--account", "acct_nobody"], True, "acct_nobody"),
        ([], False, NO_KEY),
    ],
)
def test_bad_input_changes_nothing_and_asks_stripe_nothing(
    world: tuple[str, stripe_standin.StandinServer],
    logs: list[Any],
    args: list[str],
    key: bool,
    message: str,
) -> None:
    url, server = world
    result = _cli(url, server.url, *args, key=key)
    assert result.exit_code == (1 if not key else 2), result.output
    assert message in error_line(result)
    assert server.recorded.summary()["summaries"] == 0
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM reconcile_run")).scalar_one() == 0
    finally:
        engine.dispose()
