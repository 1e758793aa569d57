"""``metersync explain INVOICE_ID``, end to end on a SQLite file: a mirrored draft cycle
invoice, flushed and linked by the mirror's effects, shown line by line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from adapter.store.models import UsageReport, table
from config.settings import Settings
from tests.e2e.helpers import row
from tests.mirror_helpers import draft, hour, link_meter, mirror_invoice, record

#: The clock stands still at :data:`tests.e2e.helpers.NOW`; log events stay out of stdout.
pytestmark = pytest.mark.usefixtures("frozen", "logs")
runner = CliRunner()
_REPORTS = table(UsageReport)


def cli(url: str, *args: str) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args])


@pytest.fixture
def invoiced(tmp_path: Path) -> tuple[str, datetime, list[int]]:
    """acct_1 (cus_123) used 2 + 3 api_calls (Stripe meter mtr_calls) in two windows of a
    period; a draft cycle invoice billing 5 was flushed and linked, and both reports were
    delivered. Returns the database URL, the hour the usage started and the report ids."""
    url = f"sqlite:///{tmp_path}/explain.db"
    ms = adapter.connect(Settings(database_url=url))
    try:
        ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
        ms.meters.upsert("api_calls", aggregation="sum")
        link_meter(ms, "api_calls", "mtr_calls")
        h = hour(5)
        record(ms, "api_calls", h, ((10, 2), (70, 3)))
        period = (h - timedelta(hours=1), h + timedelta(hours=2))
        mirror_invoice(
            ms,
            period=period,
            created=datetime.now(UTC),
            lines=[
                {"id": "il_calls", "stripe_meter_id": "mtr_calls", "quantity": Decimal(5)},
                {"id": "il_other", "stripe_meter_id": "mtr_other", "quantity": Decimal(0)},
            ],
        )
        queued = draft(ms)
        ms.report_now()  # a dry run here: mark the reports as Stripe would have them
        with ms.engine.begin() as conn:
            conn.execute(_REPORTS.update().values(status="sent"))
    finally:
        ms.close()
    return url, h, queued


def test_explain_shows_each_line_with_its_reports(
    invoiced: tuple[str, datetime, list[int]],
) -> None:
    """The table lists each linked report (window, status, events, value, sent value);
    the verdict puts Stripe's quantity beside the total sent; a line with nothing linked
    says so; the command exits 0."""
    url, _, (first, second) = invoiced
    result = cli(url, "explain", "in_1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Invoice in_1 (draft, subscription_cycle) of cus_123 → acct_1" in out
    assert "period: 2026-03-04T04:00:00Z → 2026-03-04T07:00:00Z" in out
    assert "final flush: 2026-03-04T10:07:30Z" in out
    assert "Line il_calls: mtr_calls (sum) → api_calls" in out

    assert row(out, str(first))[:7] == [
        str(first), "api_calls", "2026-03-04 05:00 → 06:00", "sent", "1", "2", "2",
    ]  # fmt: skip
    assert row(out, str(second))[3:7] == ["sent", "1", "3", "3"]
    assert "Stripe quantity 5 · metersync sent 5 · 2 events · agree: yes" in out
    assert "no local reports are linked to this line" in out
    assert "Stripe quantity 0 · metersync sent 0 · 0 events · agree: yes" in out
    assert result.stderr == ""


def test_explain_says_why_totals_disagree(invoiced: tuple[str, datetime, list[int]]) -> None:
    """When a linked report was not delivered, the verdict says agree: no and names it."""
    url, _, (_, second) = invoiced
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(_REPORTS.update().where(_REPORTS.c.id == second).values(status="failed"))
    engine.dispose()
    result = cli(url, "explain", "in_1")
    assert result.exit_code == 0, result.output
    assert (
        f"Stripe quantity 5 · metersync sent 2 · 2 events · agree: no — report {second} is "
        "failed or expired"
    ) in result.stdout


def test_explain_json(invoiced: tuple[str, datetime, list[int]]) -> None:
    """--json gives the whole explanation, decimals as strings."""
    url, _, (first, second) = invoiced
    result = cli(url, "explain", "in_1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["invoice_id"], data["account"], data["other_lines"]) == ("in_1", "acct_1", 0)
    calls, other = data["lines"]
    assert [r["id"] for r in calls["reports"]] == [first, second]
    assert (calls["quantity"], calls["sent"], calls["agree"], calls["reason"]) == (
        "5", "5", True, None,
    )  # fmt: skip
    assert (other["meters"], other["reports"], other["agree"]) == ([], [], True)


def test_explain_unknown_invoice_exits_1(invoiced: tuple[str, datetime, list[int]]) -> None:
    """An invoice the mirror does not hold is one clear error line and exit code 1."""
    result = cli(invoiced[0], "explain", "in_missing")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no invoice 'in_missing' in the mirror")
    assert "Traceback" not in result.output
