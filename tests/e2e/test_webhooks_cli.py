"""``metersync webhooks`` and ``webhooks replay``, end to end on SQLite and PostgreSQL:
deliveries stored and processed as the receiver and worker would, then listed, filtered
and replayed through the CLI (no Stripe key: pushes are a dry run, nothing leaves)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import responses
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from adapter.cli import app
from adapter.cli.webhooks import DeliveryInfo
from adapter.client import Metersync
from adapter.mirror import deliveries, process, router
from adapter.mirror.context import Apply
from adapter.store.mirror_models import StripeCustomer, WebhookDelivery
from adapter.store.models import table
from tests import stripe_events as se
from tests.e2e.helpers import error_line, row

pytestmark = pytest.mark.usefixtures("logs")
runner = CliRunner()
_DELIVERIES, _CUSTOMERS = table(WebhookDelivery), table(StripeCustomer)
#: What a handler bug says; kept on the delivery as ``RuntimeError: handler bug``.
BUG = "handler bug"


@pytest.fixture(autouse=True)
def no_stripe_calls(stripe_api: responses.RequestsMock) -> Iterator[None]:
    """Intercepts every HTTP call: with no key configured, none may be made."""
    yield
    assert len(stripe_api.calls) == 0


def cli(url: str, *args: str) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args])


def first_cells(output: str) -> list[str]:
    """The first cell of every body row of a Rich table, top to bottom."""
    cells = [line.strip("│ ").split("│")[0].strip() for line in output.splitlines()]
    return [cell for cell in cells if cell.isdigit()]


def broken(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """A mirror handler with a bug: it raises after writing, so its work is rolled back."""
    ctx.conn.execute(_CUSTOMERS.insert().values(id="cus_half", meta={}))
    raise RuntimeError(BUG)


def stored_rows(ms: Metersync) -> list[tuple[Any, ...]]:
    """Every delivery as stored, for before/after comparisons."""
    with ms.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(_DELIVERIES).order_by(_DELIVERIES.c.id))]


def delivery_row(ms: Metersync, delivery_id: int) -> sa.Row[Any]:
    """One stored delivery."""
    with ms.engine.connect() as conn:
        return conn.execute(sa.select(_DELIVERIES).where(_DELIVERIES.c.id == delivery_id)).one()


def store(ms: Metersync, event: dict[str, Any]) -> int:
    """Store ``event`` as a verified webhook delivery, as the receiver does."""
    delivery_id = deliveries.store(ms.engine, event, source="webhook")
    assert delivery_id is not None
    return delivery_id


def fail_once(
    ms: Metersync, monkeypatch: pytest.MonkeyPatch, event: dict[str, Any], *, attempts: int = 1
) -> int:
    """Store ``event`` and let the worker try it with a broken handler until it gives up
    (``attempts`` is the limit); the handler is fixed again afterwards."""
    delivery_id = store(ms, event)
    with monkeypatch.context() as patched:
        patched.setitem(router.HANDLERS, event["type"], broken)
        with pytest.raises(RuntimeError, match=BUG):
            process.process_delivery(ms, delivery_id, max_attempts=attempts)
    return delivery_id


@pytest.fixture
def stored(ms: Metersync, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Three deliveries, oldest first: customer.created (processed), charge.succeeded
    (ignored: not mirrored) and customer.updated (failed on a handler bug). Returns their
    ids by status."""
    created = se.event("customer.created", se.customer(account="acct_1"), created=se.T0)
    processed = store(ms, created)
    assert process.process_delivery(ms, processed).status == "processed"
    charge = se.event("charge.succeeded", {"id": "ch_1", "object": "charge"}, created=se.T0 + 1)
    ignored = store(ms, charge)
    assert process.process_delivery(ms, ignored).status == "ignored"
    updated = se.customer(account="acct_1", email="new@example.com")
    failed = fail_once(ms, monkeypatch, se.event("customer.updated", updated, created=se.T0 + 2))
    return {"processed": processed, "ignored": ignored, "failed": failed}


# --- listing ---------------------------------------------------------------------------------


def test_list_shows_deliveries_newest_first(
    db_url: str, ms: Metersync, stored: dict[str, int]
) -> None:
    """The table has one row per delivery, newest first, with type, created, status,
    attempts and the error kept on the failed one."""
    result = cli(db_url, "webhooks")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Webhook deliveries (newest first)" in out
    failed = row(out, str(stored["failed"]))
    assert failed[2:] == [
        "customer.updated", "2026-01-01T00:00:02Z", "failed", "1", f"RuntimeError: {BUG}",
    ]  # fmt: skip
    assert failed[1].startswith("evt_")
    assert row(out, str(stored["ignored"]))[2:] == [
        "charge.succeeded", "2026-01-01T00:00:01Z", "ignored", "1", "-",
    ]  # fmt: skip
    assert row(out, str(stored["processed"]))[2:] == [
        "customer.created", "2026-01-01T00:00:00Z", "processed", "1", "-",
    ]  # fmt: skip
    assert first_cells(out) == [str(i) for i in sorted(stored.values(), reverse=True)]


def test_list_filters_by_status(db_url: str, ms: Metersync, stored: dict[str, int]) -> None:
    """--status failed lists only the failed delivery; --limit 1 only the newest."""
    result = cli(db_url, "webhooks", "--status", "failed")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, str(stored["failed"]))[4] == "failed"
    assert "processed" not in result.stdout
    assert "ignored" not in result.stdout

    newest = cli(db_url, "webhooks", "--limit", "1", "--json")
    assert [d["id"] for d in json.loads(newest.stdout)] == [stored["failed"]]


def test_list_json_is_complete(db_url: str, ms: Metersync, stored: dict[str, int]) -> None:
    """--json gives every field of every delivery, newest first, times in ISO 8601."""
    result = cli(db_url, "webhooks", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["id"] for d in data] == sorted(stored.values(), reverse=True)
    assert all(set(d) == {f.name for f in fields(DeliveryInfo)} for d in data)
    failed = data[0]
    assert failed["type"] == "customer.updated"
    assert (failed["status"], failed["attempts"], failed["error"]) == (
        "failed", 1, f"RuntimeError: {BUG}",
    )  # fmt: skip
    assert (failed["object_id"], failed["source"], failed["processed_at"]) == (
        "cus_123", "webhook", None,
    )  # fmt: skip
    assert failed["created"] == "2026-01-01T00:00:02+00:00"
    assert data[2]["processed_at"] is not None


def test_empty_list_says_so(db_url: str, ms: Metersync) -> None:
    """With nothing stored the command says where deliveries come from; --json gives []."""
    result = cli(db_url, "webhooks")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "no webhook deliveries; Stripe's events arrive at /webhooks/stripe"
    )
    store(ms, se.event("charge.succeeded", {"id": "ch_1", "object": "charge"}, created=se.T0))
    failed = cli(db_url, "webhooks", "--status", "failed")
    assert failed.stdout.startswith("no failed webhook deliveries")
    assert json.loads(cli(db_url, "webhooks", "--status", "failed", "--json").stdout) == []


def test_bad_status_is_a_usage_error(db_url: str, ms: Metersync, stored: dict[str, int]) -> None:
    """A status that does not exist is refused by the CLI with exit 2, naming the valid
    ones, before anything is read."""
    result = cli(db_url, "webhooks", "--status", "broken")
    assert result.exit_code == 2
    assert "Invalid value for '--status'" in result.stderr
    assert "'received', 'processed', 'ignored', 'skipped', 'failed'" in result.stderr
    assert result.stdout == ""


# --- replay ----------------------------------------------------------------------------------


def test_replay_after_the_fix_processes_the_failed_delivery(
    db_url: str, ms: Metersync, stored: dict[str, int]
) -> None:
    """Once the handler bug is gone, replaying the failed delivery applies it: processed,
    error cleared, the mirror updated, nothing left to push."""
    failed = stored["failed"]
    result = cli(db_url, "webhooks", "replay", str(failed))
    assert result.exit_code == 0, result.output
    event_id = delivery_row(ms, failed).event_id
    assert f"delivery {failed} (customer.updated, {event_id}): processed" in result.stdout
    assert "no reports to push" in result.stdout
    after = delivery_row(ms, failed)
    assert (after.status, after.attempts, after.error) == ("processed", 1, None)
    with ms.engine.connect() as conn:
        emails = dict(conn.execute(sa.select(_CUSTOMERS.c.id, _CUSTOMERS.c.email)).all())
    assert emails == {"cus_123": "new@example.com"}
    assert cli(db_url, "webhooks", "--status", "failed").stdout.startswith(
        "no failed webhook deliveries"
    )


def test_replay_while_still_broken_exits_1_and_says_where_it_is(
    db_url: str, ms: Metersync, stored: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay that fails again exits 1 with one line naming the error and the status the
    delivery is left in (received: a worker tries it again), and the hint lists it."""
    failed = stored["failed"]
    monkeypatch.setitem(router.HANDLERS, "customer.updated", broken)
    result = cli(db_url, "webhooks", "replay", str(failed))
    assert result.exit_code == 1
    assert error_line(result) == (
        f"error: replaying delivery {failed} failed: RuntimeError: {BUG}; the delivery is now "
        "received, with the error kept (`metersync webhooks --status received`)"
    )
    after = delivery_row(ms, failed)
    assert (after.status, after.attempts, after.error) == ("received", 1, f"RuntimeError: {BUG}")
    listed = cli(db_url, "webhooks", "--status", "received")
    assert row(listed.stdout, str(failed))[4:] == ["received", "1", f"RuntimeError: {BUG}"]


def test_replay_of_a_payload_that_cannot_apply_names_the_delivery(
    db_url: str, ms: Metersync
) -> None:
    """A mirrored type with no data.object fails at once: exit 1, one line with the
    delivery id, the mirror's reason and its failed status."""
    event = se.event("customer.updated", {}, created=se.T0)
    event["data"] = {}
    delivery_id = store(ms, event)
    result = cli(db_url, "webhooks", "replay", str(delivery_id))
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: replaying delivery {delivery_id} failed: ")
    assert "no data.object" in line
    assert "the delivery is now failed" in line
    assert delivery_row(ms, delivery_id).status == "failed"


def test_replay_of_an_unknown_delivery_changes_nothing(
    db_url: str, ms: Metersync, stored: dict[str, int]
) -> None:
    """An id that was never stored: exit 1, one clear line, every delivery unchanged."""
    before = stored_rows(ms)
    result = cli(db_url, "webhooks", "replay", "999999")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: no webhook delivery 999999; list them with `metersync webhooks`"
    )
    assert result.stdout == ""
    assert stored_rows(ms) == before


@pytest.fixture
def renewal(ms: Metersync, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """acct_1 used 5 api_calls in its old billing period; the renewal that starts the new
    period failed on a handler bug, so the old period's report is still open. Returns the
    renewal's delivery id and the report id."""
    now = int(time.time())
    old, new = (now - 10 * se.DAY, now - 3600), (now - 3600, now + 29 * se.DAY)
    kind = "customer.subscription.updated"
    first = store(ms, se.event(kind, se.subscription(period=old), created=now - 7200))
    assert process.process_delivery(ms, first).status == "processed"
    receipt = ms.increment("acct_1", 5, meter="api_calls", timestamp=now - 5400)
    renewed = se.event(kind, se.subscription(period=new), created=now - 60)
    delivery_id = fail_once(ms, monkeypatch, renewed)
    assert receipt.report_id is not None
    assert [r.status for r in ms.reports() if r.id == receipt.report_id] == ["open"]
    return delivery_id, receipt.report_id


def test_replay_pushes_the_reports_it_closed(
    db_url: str, ms: Metersync, renewal: tuple[int, int]
) -> None:
    """Replaying the renewal closes the old period's report and pushes it at once (a dry
    run without a key): the table shows it and the summary counts it."""
    delivery_id, report_id = renewal
    result = cli(db_url, "webhooks", "replay", str(delivery_id))
    assert result.exit_code == 0, result.output
    assert f"delivery {delivery_id} (customer.subscription.updated, " in result.stdout
    assert "): processed" in result.stdout
    assert row(result.stdout, str(report_id))[1:5] == ["acct_1", "api_calls", "dry_run", "5"]
    assert "1 report: 0 sent, 1 dry run, 0 failed" in result.stdout
    assert "no Stripe key is configured" in result.stdout
    assert [r.status for r in ms.reports() if r.id == report_id] == ["dry_run"]
    assert delivery_row(ms, delivery_id).status == "processed"


def test_replay_json(db_url: str, ms: Metersync, renewal: tuple[int, int]) -> None:
    """replay --json gives the delivery as it now stands, the mirror's verdict and the
    push result of each report it closed."""
    delivery_id, report_id = renewal
    result = cli(db_url, "webhooks", "replay", str(delivery_id), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["status"], data["error"]) == ("processed", None)
    assert data["delivery"]["id"] == delivery_id
    assert (data["delivery"]["status"], data["delivery"]["attempts"]) == ("processed", 1)
    assert data["delivery"]["error"] is None
    assert [(p["report_id"], p["status"]) for p in data["pushed"]] == [(report_id, "dry_run")]


# --- help --------------------------------------------------------------------------------------


def test_help_says_what_each_command_does(tmp_path: Path) -> None:
    """webhooks --help says it lists deliveries; replay --help says it applies one again."""
    url = f"sqlite:///{tmp_path}/help.db"
    listing = cli(url, "webhooks", "--help")
    assert "Stripe webhook deliveries: list them" in listing.stdout
    replaying = cli(url, "webhooks", "replay", "--help")
    assert "Apply a stored delivery again, then push the reports it closed" in replaying.stdout
