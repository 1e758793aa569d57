"""``metersync preview`` and ``metersync prices`` end to end on a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses
from typer.testing import CliRunner, Result

from adapter.cli import app
from tests.billing_world import billed_database, stripe_preview
from tests.e2e.helpers import row

runner = CliRunner()
PREVIEW_URL = "https://api.stripe.com/v1/invoices/create_preview"


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A database where acct_1 pays 2 x 49.00 USD and used 15,000 graduated API calls."""
    return billed_database(f"{tmp_path}/preview.db")


def cli(url: str, *args: str) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args])


def test_preview_table(url: str) -> None:
    """preview prints the base fee, the metered line with tiers, subtotal and total."""
    result = cli(url, "preview", "acct_1")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "price_base")[-1] == "98.00"
    assert "amounts in USD" in result.stdout
    assert row(result.stdout, "api_calls")[1:] == [
        "15000",
        "1000",
        "14000",
        "255.00",
        "255.00",
    ]
    tier = row(result.stdout, "tier 2: 1001-10000")
    assert (tier[1], tier[-1]) == ("9000", "180.00")
    assert row(result.stdout, "total")[-1] == "353.00"


def test_preview_json(url: str) -> None:
    """preview --json prints InvoicePreview.to_dict()."""
    result = cli(url, "preview", "acct_1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["total"], data["subscription"], data["complete"]) == (35300, "sub_1", True)
    assert data["lines"][1]["overage"] == "14000"


def test_preview_of_an_unknown_account_is_a_clean_error(url: str) -> None:
    """An unknown account exits 2 (usage error) with one line naming it."""
    result = cli(url, "preview", "nobody")
    assert result.exit_code != 0
    assert "nobody" in result.stderr
    assert "Traceback" not in result.output


def test_compare_without_a_key_says_what_to_set(url: str) -> None:
    """--compare without a Stripe key fails with the variable to set."""
    result = cli(url, "preview", "acct_1", "--compare")
    assert result.exit_code != 0
    assert "METERSYNC_STRIPE_API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("amount", "code", "verdict"), [(25500, 0, "agree to the cent"), (25400, 1, "DIFFER")]
)
def test_compare_with_stripe(
    url: str, monkeypatch: pytest.MonkeyPatch, amount: int, code: int, verdict: str
) -> None:
    """--compare shows Stripe's amounts beside ours and exits 1 when a line differs."""
    monkeypatch.setenv("METERSYNC_STRIPE_API_KEY", "sk_test_" + "x" * 24)
    with responses.RequestsMock() as stripe:
        stripe.post(PREVIEW_URL, json=stripe_preview(amount))
        result = cli(url, "preview", "acct_1", "--compare")
    assert result.exit_code == code, result.output
    assert verdict in result.stdout
    line = row(result.stdout, "api_calls")
    assert line[-1] == ("yes" if code == 0 else "NO")


def test_prices_list_and_rate(url: str) -> None:
    """prices list shows how each price rates; prices rate shows the tiers and the amount."""
    listed = cli(url, "prices", "list")
    assert listed.exit_code == 0, listed.output
    assert "graduated (3 tiers)" in listed.stdout
    rated = cli(url, "prices", "rate", "price_api", "12000")
    assert rated.exit_code == 0, rated.output
    assert "12000 units of price_api: 210.00 USD" in rated.stdout
    unknown = cli(url, "prices", "rate", "price_nope", "1")
    assert unknown.exit_code != 0
    assert "prices list" in unknown.stderr


def test_prices_allowance_round_trip(url: str) -> None:
    """allowance sets, shows and removes a plan's included units; the preview uses it."""
    assert cli(url, "prices", "allowance", "price_api", "5000").exit_code == 0
    shown = cli(url, "prices", "allowance", "price_api")
    assert "price_api: 5000" in shown.stdout
    data = json.loads(cli(url, "preview", "acct_1", "--json").stdout)
    assert (data["lines"][1]["included"], data["lines"][1]["overage_amount"]) == ("5000", 17500)
    bad = cli(url, "prices", "allowance", "price_api", "--", "-3")
    assert bad.exit_code != 0
    assert "negative" in bad.stderr
    assert "removed" in cli(url, "prices", "allowance", "price_api", "--remove").stdout
