"""``metersync report now``, ``reports``, ``retry`` and the demo's push, end to end on
SQLite files, with Stripe's meter events API intercepted by ``responses``."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from adapter.cli.reports import ReportStatus
from adapter.reading.reports import STATUSES
from config.settings import Settings
from tests.e2e.helpers import NOW, row
from tests.gateways import EVENTS_URL, accept_meter_event

#: The clock stands still at NOW (inside the report window from 10:00 to 11:00 UTC), log
#: events stay out of stdout, and every HTTP call is intercepted: a call nothing was
#: registered for fails the command.
pytestmark = pytest.mark.usefixtures("frozen", "logs", "stripe_api")
runner = CliRunner()
#: A test-mode key: the gateway is built, and every call it makes is intercepted.
TEST_KEY = {"METERSYNC_STRIPE_API_KEY": "sk_test_metersync_report_cli"}
#: Where the reports of that window are sent: the latest second not after NOW.
SENT_AT = "2026-03-04T10:07:30"


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own."""
    return f"sqlite:///{tmp_path}/reports.db"


def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args], env=env)


@pytest.fixture
def recorded(url: str) -> str:
    """acct_1 (customer cus_123) used 10 + 5 api_calls and a peak of 7 (event name
    storage_peak); the free account free_acct used 4 api_calls."""
    for args in (
        ["accounts", "add", "acct_1", "--stripe-customer", "cus_123"],
        ["accounts", "add", "free_acct", "--free"],
        ["meters", "add", "api_calls"],
        ["meters", "add", "peak", "--event-name", "storage_peak", "--aggregation", "max"],
    ):
        assert cli(url, *args).exit_code == 0
    ms = adapter.connect(Settings(database_url=url))
    ms.increment("acct_1", 10, meter="api_calls")
    ms.increment("acct_1", 3, meter="peak")
    ms.increment("free_acct", 4, meter="api_calls")
    ms.increment("acct_1", 5, meter="api_calls")
    ms.increment("acct_1", 7, meter="peak")
    ms.close()
    return url


def error_line(result: Result) -> str:
    """The single ``error: …`` line a failed command printed on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def refuse_api_calls(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
    """Stripe refusing the api_calls event as an invalid value, accepting the others."""
    if parse_qs(request.body)["event_name"] != ["api_calls"]:
        return accept_meter_event(request)
    error = {
        "type": "invalid_request_error",
        "message": "Invalid value for payload[value]: must be a whole number.",
        "param": "payload[value]",
    }
    return 400, {"Request-Id": "req_bad"}, json.dumps({"error": error})


def sent_bodies(stripe_api: responses.RequestsMock) -> list[dict[str, list[str]]]:
    """The form bodies of every meter event posted to Stripe, in order."""
    return [parse_qs(str(call.request.body)) for call in stripe_api.calls]


def test_report_now_dry_run_table(recorded: str, stripe_api: responses.RequestsMock) -> None:
    """Without a key, report now records each report as dry_run with its value, skips the
    free account, says nothing left the machine, and exits 0."""
    result = cli(recorded, "report", "now")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert row(result.stdout, "1")[:6] == [
        "1", "acct_1", "api_calls", "dry_run", "15", f"{SENT_AT}Z",
    ]  # fmt: skip
    assert row(result.stdout, "2")[:6] == [
        "2", "acct_1", "peak → storage_peak", "dry_run", "7", f"{SENT_AT}Z",
    ]  # fmt: skip
    assert row(result.stdout, "3")[:6] == ["3", "free_acct", "api_calls", "skipped_free", "-", "-"]
    assert row(result.stdout, "1")[6].startswith("ms-a1-m1-r1…")
    assert "Meter events that would be sent (dry run)" in result.stdout
    assert "3 reports: 0 sent, 2 dry run, 0 failed, 1 skipped (free account)" in result.stdout
    assert "no Stripe key is configured" in result.stdout
    assert "nothing left this machine" in result.stdout
    assert len(stripe_api.calls) == 0


def test_report_now_json_matches_reports(recorded: str) -> None:
    """report now --json gives full identifiers, ISO timestamps and counts; reports --json
    then lists the same statuses and values."""
    result = cli(recorded, "report", "now", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True
    assert data["counts"] == {"dry_run": 2, "skipped_free": 1}
    pushed = {r["report_id"]: r for r in data["reports"]}
    assert [(r["status"], r["value"]) for r in pushed.values()] == [
        ("dry_run", 15), ("dry_run", 7), ("skipped_free", None),
    ]  # fmt: skip
    assert pushed[1]["timestamp"] == f"{SENT_AT}+00:00"
    assert pushed[1]["identifier"].startswith("ms-a1-m1-r1-w20260304T100000Z-")
    assert len(pushed[1]["identifier"]) > 30
    assert (pushed[2]["meter"], pushed[2]["event_name"]) == ("peak", "storage_peak")
    listed = json.loads(cli(recorded, "reports", "--json").stdout)
    assert [r["id"] for r in listed] == [3, 2, 1]
    for info in listed:
        sent = pushed[info["id"]]["value"]
        assert info["status"] == pushed[info["id"]]["status"]
        assert info["sent_value"] == (None if sent is None else str(sent))
    assert listed[2]["window_start"] == "2026-03-04T10:00:00+00:00"
    assert (listed[2]["events"], listed[2]["total"], listed[2]["attempts"]) == (2, "15", 1)
    again = json.loads(cli(recorded, "report", "now", "--json").stdout)
    assert again == {"dry_run": True, "counts": {}, "reports": []}


def test_reports_status_filter_table(recorded: str) -> None:
    """reports --status lists only that status, newest first, with window, events, the
    value by the meter's rule (a max meter shows its maximum, not its sum), sent value,
    attempts and last error."""
    assert [r["id"] for r in json.loads(cli(recorded, "reports", "--status", "open",
                                            "--json").stdout)] == [3, 2, 1]  # fmt: skip
    assert cli(recorded, "report", "now").exit_code == 0
    result = cli(recorded, "reports", "--status", "dry_run")
    assert result.exit_code == 0, result.output
    window = "2026-03-04 10:00 → 11:00"
    assert row(result.stdout, "1") == [
        "1", "acct_1", "api_calls", "dry_run", window, "2", "15", "15", "1", "-",
    ]  # fmt: skip
    assert row(result.stdout, "2")[:8] == [
        "2", "acct_1", "peak", "dry_run", window, "2", "7", "7",
    ]  # fmt: skip
    assert "free_acct" not in result.stdout
    assert cli(recorded, "reports", "--status", "open").stdout.strip() == (
        "no open reports; usage goes into reports as it is recorded"
    )


def test_reports_limit(recorded: str) -> None:
    """--limit N keeps the N newest reports; --limit 0 is a usage error."""
    listed = json.loads(cli(recorded, "reports", "--limit", "2", "--json").stdout)
    assert [r["id"] for r in listed] == [3, 2]
    assert cli(recorded, "reports", "--limit", "0").exit_code == 2


def test_reports_bad_status(recorded: str) -> None:
    """An unknown --status exits 2 naming the accepted statuses, which --help lists too."""
    result = cli(recorded, "reports", "--status", "done")
    assert result.exit_code == 2
    assert "'done' is not one of" in result.stderr
    assert "'skipped_free'" in result.stderr
    shown = runner.invoke(app, ["reports", "--help"], env={"COLUMNS": "200"}).stdout
    assert "|".join(STATUSES) in shown


def test_status_choices_match_adapter() -> None:
    """reports --status offers exactly the statuses the adapter lists."""
    assert tuple(s.value for s in ReportStatus) == STATUSES


def test_retry_unknown_report(recorded: str) -> None:
    """retry of a report that does not exist exits 2 with one error line."""
    result = cli(recorded, "retry", "99")
    assert result.exit_code == 2
    assert "no report 99" in error_line(result)


def test_retry_refuses_a_final_report(recorded: str) -> None:
    """retry of a dry_run report exits 2: only failed or sending reports are pushed again."""
    assert cli(recorded, "report", "now").exit_code == 0
    result = cli(recorded, "retry", "1")
    assert result.exit_code == 2
    assert "report 1 is dry_run; only failed or sending reports" in error_line(result)


def test_report_now_with_nothing_to_report(url: str) -> None:
    """On an empty database report now says there is nothing to report and exits 0."""
    result = cli(url, "report", "now")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "nothing to report: no open or closed reports",
        "dry run: no Stripe key is configured (METERSYNC_STRIPE_API_KEY); nothing would be sent",
    ]


def test_report_now_sends_to_stripe(recorded: str, stripe_api: responses.RequestsMock) -> None:
    """With a test key, report now posts one meter event per paid report and marks it sent."""
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=accept_meter_event)
    result = cli(recorded, "report", "now", env=TEST_KEY)
    assert result.exit_code == 0, result.output
    assert "Meter events pushed to Stripe" in result.stdout
    assert row(result.stdout, "1")[:5] == ["1", "acct_1", "api_calls", "sent", "15"]
    assert row(result.stdout, "2")[3:5] == ["sent", "7"]
    assert "3 reports: 2 sent, 0 dry run, 0 failed, 1 skipped (free account)" in result.stdout
    assert "dry run" not in result.stdout.replace("0 dry run", "")
    bodies = sent_bodies(stripe_api)
    assert [(b["event_name"], b["payload[value]"]) for b in bodies] == [
        (["api_calls"], ["15"]), (["storage_peak"], ["7"]),
    ]  # fmt: skip
    assert {b["payload[stripe_customer_id]"][0] for b in bodies} == {"cus_123"}
    assert {b["timestamp"][0] for b in bodies} == {str(int(NOW.timestamp()))}
    sent = json.loads(cli(recorded, "reports", "--status", "sent", "--json").stdout)
    assert [(r["id"], r["sent_value"]) for r in sent] == [(2, "7"), (1, "15")]
    usage = json.loads(cli(recorded, "usage", "acct_1", "--json").stdout)["meters"]
    assert (usage["api_calls"]["sent"], usage["api_calls"]["pending"]) == ("15", "0")


def test_stripe_refusal_fails_the_report_and_exits_1(
    recorded: str, stripe_api: responses.RequestsMock, logs: list[MutableMapping[str, Any]]
) -> None:
    """A 400 invalid value marks that report failed with Stripe's message and exits 1;
    retry after the fix resends the same identifier and exits 0."""
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=refuse_api_calls)
    result = cli(recorded, "report", "now", env=TEST_KEY)
    assert result.exit_code == 1, result.output
    failed = row(result.stdout, "1")
    assert failed[3] == "failed"
    assert failed[-1].startswith("Stripe refused the call (HTTP 400)")
    assert row(result.stdout, "2")[3] == "sent"
    assert "3 reports: 1 sent, 0 dry run, 1 failed" in result.stdout
    assert "report 1 failed" in error_line(result)
    assert "`metersync retry 1`" in result.stderr
    [stored] = json.loads(cli(recorded, "reports", "--status", "failed", "--json").stdout)
    assert stored["id"] == 1
    assert "Invalid value for payload[value]: must be a whole number." in stored["last_error"]
    assert "req_bad" in stored["last_error"]
    assert [(e["event"], e["report_id"]) for e in logs if e["log_level"] == "error"] == [
        ("report.failed", 1)
    ]
    first_identifier = sent_bodies(stripe_api)[0]["identifier"]
    stripe_api.remove(responses.POST, EVENTS_URL)
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=accept_meter_event)
    retried = cli(recorded, "retry", "1", "--json", env=TEST_KEY)
    assert retried.exit_code == 0, retried.output
    data = json.loads(retried.stdout)
    assert (data["status"], data["value"], data["error"]) == ("sent", 15, None)
    assert [data["identifier"]] == first_identifier == sent_bodies(stripe_api)[-1]["identifier"]


def test_help_texts() -> None:
    """The new commands' help names their arguments, options and exit codes."""
    expected = {
        ("report",): ["now"],
        ("report", "now"): ["--json", "dry run", "Exits 1"],
        ("reports",): ["--status", "--limit", "--json", "dry_run"],
        ("retry",): ["REPORT_ID", "--json"],
        ("demo",): ["--stripe-customer", "--database"],
    }
    for command, words in expected.items():
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for word in words:
            assert word in result.stdout, f"{word!r} missing from help of {command}"


def demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Result, str]:
    """Run ``metersync demo`` on its own file; the result and the file's URL."""
    database = tmp_path / "demo.db"
    result = runner.invoke(app, ["demo", "--database", str(database), *args], env=env)
    return result, f"sqlite:///{database}"


def test_demo_dry_run_push(tmp_path: Path, stripe_api: responses.RequestsMock) -> None:
    """With no key, the demo's push records both reports as dry_run with their values and
    says sent stays 0; nothing reaches Stripe."""
    result, url = demo(tmp_path)
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "1")[2:5] == ["api_calls", "dry_run", "13"]
    assert row(result.stdout, "2")[2:5] == ["storage_gb", "dry_run", "4"]
    assert "2 reports: 0 sent, 2 dry run, 0 failed" in result.stdout
    assert "'sent' stays 0" in result.stdout
    reports = json.loads(cli(url, "reports", "--json").stdout)
    assert [(r["status"], r["sent_value"]) for r in reports] == [
        ("dry_run", "4"), ("dry_run", "13"),
    ]  # fmt: skip
    assert len(stripe_api.calls) == 0


def test_demo_sends_in_test_mode(tmp_path: Path, stripe_api: responses.RequestsMock) -> None:
    """With a test key and --stripe-customer, the demo sends both events and the usage
    table then shows them sent, nothing pending."""
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=accept_meter_event)
    result, url = demo(tmp_path, "--stripe-customer", "cus_demo", env=TEST_KEY)
    assert result.exit_code == 0, result.output
    assert "billed to Stripe customer cus_demo" in result.stdout
    assert "2 reports: 2 sent, 0 dry run, 0 failed" in result.stdout
    bodies = sent_bodies(stripe_api)
    assert [(b["event_name"][0], b["payload[value]"][0]) for b in bodies] == [
        ("api_calls", "13"), ("storage_gb", "4"),
    ]  # fmt: skip
    assert {b["payload[stripe_customer_id]"][0] for b in bodies} == {"cus_demo"}
    usage = json.loads(cli(url, "usage", "demo_customer", "--json").stdout)["meters"]
    assert [(m["sent"], m["pending"]) for m in usage.values()] == [("13", "0"), ("4", "0")]


def test_demo_exits_1_when_stripe_refuses(
    tmp_path: Path, stripe_api: responses.RequestsMock
) -> None:
    """When Stripe refuses the demo's api_calls event, the demo shows the error, keeps that
    usage pending, and exits 1 naming the report to retry."""
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=refuse_api_calls)
    result, url = demo(tmp_path, "--stripe-customer", "cus_demo", env=TEST_KEY)
    assert result.exit_code == 1, result.output
    assert row(result.stdout, "1")[3] == "failed"
    assert "2 reports: 1 sent, 0 dry run, 1 failed" in result.stdout
    assert "`metersync retry 1`" in error_line(result)
    usage = json.loads(cli(url, "usage", "demo_customer", "--json").stdout)["meters"]
    assert [(m["sent"], m["pending"]) for m in usage.values()] == [("0", "13"), ("4", "0")]


def test_demo_with_key_but_no_customer_pushes_nothing(
    tmp_path: Path, stripe_api: responses.RequestsMock
) -> None:
    """With a key but no Stripe customer, the demo leaves the reports open and says how to
    send them."""
    result, url = demo(tmp_path, env=TEST_KEY)
    assert result.exit_code == 0, result.output
    assert "--stripe-customer cus_…" in result.stdout
    assert [r["status"] for r in json.loads(cli(url, "reports", "--json").stdout)] == [
        "open", "open",
    ]  # fmt: skip
    assert len(stripe_api.calls) == 0


def test_demo_never_uses_a_live_key(tmp_path: Path, stripe_api: responses.RequestsMock) -> None:
    """A live key in the environment makes the demo a dry run: no call reaches Stripe."""
    live = {"METERSYNC_STRIPE_API_KEY": "sk_live_metersync_report_cli"}
    result, _ = demo(tmp_path, "--stripe-customer", "cus_demo", env=live)
    assert result.exit_code == 0, result.output
    assert "live Stripe key" in result.stdout
    assert "2 reports: 0 sent, 2 dry run, 0 failed" in result.stdout
    assert len(stripe_api.calls) == 0
