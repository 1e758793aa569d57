"""``metersync credits`` and ``metersync alerts`` end to end on a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from adapter.cli import app
from tests.billing_world import billed_database
from tests.e2e.helpers import row

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A database where acct_1 used 15,000 graduated API calls (255.00 USD)."""
    return billed_database(f"{tmp_path}/credits.db")


def cli(url: str, *args: str) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args])


def test_grant_balance_history_void(url: str) -> None:
    """grant loads credit, balance shows it drawn down, history lists the ledger, void ends it."""
    granted = cli(url, "credits", "grant", "acct_1", "50000", "--reason", "pack", "--key", "k1")
    assert granted.exit_code == 0, granted.output
    assert "grant 1: 500.00 USD to acct_1 (active" in granted.stdout
    balance = cli(url, "credits", "balance", "acct_1")
    assert "acct_1: 245.00 USD left" in balance.stdout
    assert row(balance.stdout, "1")[1:4] == ["500.00 USD", "245.00 USD", "active"]
    data = json.loads(cli(url, "credits", "balance", "acct_1", "--json").stdout)
    assert (data["amount"], data["currency"]) == (24500, "usd")
    history = cli(url, "credits", "history", "acct_1")
    assert "drawdown" in history.stdout
    assert "-255.00 USD" in history.stdout
    assert "voided" in cli(url, "credits", "void", "1", "--reason", "refund").stdout
    assert json.loads(cli(url, "credits", "balance", "acct_1", "--json").stdout)["amount"] == 0


def test_bad_grant_is_a_clean_error(url: str) -> None:
    """A zero amount or a bad currency fails with one error line and stores nothing."""
    zero = cli(url, "credits", "grant", "acct_1", "0")
    assert zero.exit_code == 2
    assert "positive integer" in zero.stderr
    bad = cli(url, "credits", "grant", "acct_1", "5", "--currency", "dollars")
    assert "three-letter" in bad.stderr
    assert "no credit" in cli(url, "credits", "balance", "acct_1").stdout


def test_alerts_add_check_history(url: str) -> None:
    """An alert added by the CLI fires once on check and shows in the history."""
    added = cli(url, "alerts", "add", "10k calls", "--metric", "usage", "--threshold", "10000",
                "--meter", "api_calls")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "usage >= 10000" in added.stdout
    assert "10k calls" in cli(url, "alerts", "list").stdout
    checked = cli(url, "alerts", "check")
    assert "fired: alert 1 (10k calls) for acct_1: usage 15000 crossed 10000" in checked.stdout
    assert "no alert crossed" in cli(url, "alerts", "check").stdout
    history = json.loads(cli(url, "alerts", "history", "--json").stdout)
    assert [(h["alert"], h["value"]) for h in history] == [("10k calls", "15000")]
    assert "removed" in cli(url, "alerts", "remove", "1").stdout


def test_bad_alert_is_a_clean_error(url: str) -> None:
    """A usage alert without a meter is refused with what to add."""
    result = cli(url, "alerts", "add", "x", "--metric", "usage", "--threshold", "1")
    assert result.exit_code == 2
    assert "--meter" in result.stderr
