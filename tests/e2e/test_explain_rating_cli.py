"""``metersync explain INVOICE_ID``, end to end on a SQLite file: the rating table puts
metersync's rating of each priced line beside Stripe's amount and flags a difference."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

import adapter
from adapter.cli import app
from config.settings import Settings
from tests import stripe_events as se
from tests.billing_world import API, BASE
from tests.e2e.helpers import NOW, row
from tests.mirror_helpers import deliver, mirror_invoice

#: The clock stands still at :data:`tests.e2e.helpers.NOW`; log events stay out of stdout.
pytestmark = pytest.mark.usefixtures("frozen", "logs")
runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> str:
    """API (graduated) and BASE (49.00 licensed) mirrored by webhook, and an open invoice
    in_1 of cus_123: 15,000 calls billed 255.00 (agrees) and 2 seats billed 98.01 (one
    cent over metersync's 98.00). Returns the database URL."""
    url = f"sqlite:///{tmp_path}/explain_rating.db"
    ms = adapter.connect(Settings(database_url=url))
    try:
        ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
        created = int(NOW.timestamp()) - 3600
        for price in (API, BASE):
            deliver(ms, se.event("price.created", price, created=created))
        mirror_invoice(
            ms,
            period=(NOW - timedelta(days=30), NOW),
            status="open",
            lines=[
                {"id": "il_api", "price_id": "price_api", "quantity": Decimal(15000),
                 "amount": 25500, "currency": "usd"},
                {"id": "il_base", "price_id": "price_base", "quantity": Decimal(2),
                 "amount": 9801, "currency": "usd"},
            ],
        )  # fmt: skip
    finally:
        ms.close()
    return url


def test_explain_prints_the_rating_table_and_flags_the_difference(url: str) -> None:
    """The rating table shows 'yes' on the agreeing line and 'NO' on the one a cent off,
    followed by that line's note; the command exits 0 with nothing on stderr."""
    result = runner.invoke(app, ["--database-url", url, "explain", "in_1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Rating: metersync vs Stripe, amounts in USD" in out
    api, base = row(out, "il_api"), row(out, "il_base")
    assert (api[0], api[-1]) == ("il_api", "yes")
    assert (base[0], base[-1]) == ("il_base", "NO")
    assert base[2:5] == ["2", "98.01", "98.00"]
    flat = " ".join(out.split())
    assert (
        "il_base: Stripe billed 9801, metersync rates 9800: a proration, a discount on the "
        "line, or a price changed since the invoice was made?"
    ) in flat
    assert not [line for line in out.splitlines() if line.startswith("il_api:")]  # no note
    assert result.stderr == ""
