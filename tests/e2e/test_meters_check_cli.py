"""``metersync meters check`` end to end: a SQLite file, Stripe's meter listing intercepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import responses
from responses import matchers
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from config.settings import Settings
from tests import stripe_events as se
from tests.e2e.helpers import row

runner = CliRunner()
METERS_URL = "https://api.stripe.com/v1/billing/meters"
KEY = "sk_test_metersync_meters_check"


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite database with four local meters: two sums, a count and a max."""
    url = f"sqlite:///{tmp_path}/check.db"
    ms = adapter.connect(Settings(database_url=url))
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.meters.upsert("requests", event_name="requests_total", aggregation="count")
    ms.meters.upsert("peak_gb", event_name="storage_peak", aggregation="max")
    ms.meters.upsert("tokens", aggregation="sum")
    ms.close()
    return url


def stripe_meter(
    event_name: str, formula: str = "sum", *, id: str | None = None, **fields: str
) -> dict[str, Any]:
    """A billing meter as Stripe's API returns it, named ``mtr_<event_name>`` unless
    ``id`` is given; ``fields`` are :func:`tests.stripe_events.meter`'s other options."""
    meter_id = id or f"mtr_{event_name}"
    return se.meter(meter_id, event_name=event_name, formula=formula, created=se.T0, **fields)


def listing(*meters: dict[str, Any], has_more: bool = False) -> dict[str, Any]:
    """One page of ``GET /v1/billing/meters``."""
    return {"object": "list", "url": "/v1/billing/meters", "has_more": has_more, "data": meters}


def fitting() -> list[dict[str, Any]]:
    """Stripe meters that fit every local meter of the ``url`` fixture."""
    return [
        stripe_meter("api_calls"),
        stripe_meter("requests_total", "sum"),
        stripe_meter("storage_peak", "last"),
        stripe_meter("tokens"),
    ]


def check(url: str, *args: str, key: str | None = KEY) -> Result:
    """Run ``metersync --database-url URL meters check ARGS…`` with a wide terminal."""
    env = {"COLUMNS": "1000"}  # table cells on one line each, so rows can be read back
    if key is not None:
        env["METERSYNC_STRIPE_API_KEY"] = key
    return runner.invoke(app, ["--database-url", url, "meters", "check", *args], env=env)


def test_all_meters_ok(url: str, stripe_api: responses.RequestsMock) -> None:
    """Every meter with a fitting active Stripe meter: a table of OK rows and exit 0."""
    stripe_api.get(METERS_URL, json=listing(*fitting()))
    result = check(url)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert row(result.stdout, "api_calls") == [
        "api_calls", "api_calls", "mtr_api_calls", "sum → sum", "OK", "-",
    ]  # fmt: skip
    assert row(result.stdout, "requests") == [
        "requests", "requests_total", "mtr_requests_total", "count → sum", "OK", "-",
    ]  # fmt: skip
    assert row(result.stdout, "peak_gb")[3:5] == ["max → last", "OK"]
    assert "all 4 meters can report to Stripe" in result.stdout
    [call] = stripe_api.calls
    assert call.request.headers["Authorization"] == f"Bearer {KEY}"
    assert call.request.url == f"{METERS_URL}?limit=100"


def test_problems_exit_1_with_a_fix_per_meter(url: str, stripe_api: responses.RequestsMock) -> None:
    """A count meter, an inactive meter and a missing one: each row says why, exit 1."""
    stripe_api.get(
        METERS_URL,
        json=listing(
            stripe_meter("api_calls"),
            stripe_meter("requests_total", "count", id="mtr_count"),
            stripe_meter("storage_peak", "last", id="mtr_off", status="inactive"),
        ),
    )
    result = check(url)
    assert result.exit_code == 1, result.output
    assert row(result.stdout, "api_calls")[4] == "OK"
    requests = row(result.stdout, "requests")
    assert requests[2:4] == ["mtr_count", "count → count"]
    assert "would count as 1" in requests[4]
    assert requests[5].startswith("deactivate Stripe meter mtr_count and create a Stripe meter")
    peak = row(result.stdout, "peak_gb")
    assert peak[4] == "Stripe meter mtr_off is inactive and accepts no events"
    assert peak[5].startswith("reactivate Stripe meter mtr_off")
    tokens = row(result.stdout, "tokens")
    assert tokens[2:5] == ["-", "sum → -", "no Stripe meter has event name 'tokens'"]
    assert "create a Stripe meter with event name 'tokens', formula 'sum'" in tokens[5]
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: 3 of 4 meters cannot report to Stripe: their events would be refused or "
        "miscounted; apply the fixes shown"
    ]
    assert "can report to Stripe" not in result.stdout


def test_json_output(url: str, stripe_api: responses.RequestsMock) -> None:
    """--json prints one object per meter with the Stripe meter matched and any problem."""
    meters = fitting()
    meters[3] = stripe_meter("tokens", id="mtr_keys", value_key="quantity")
    stripe_api.get(METERS_URL, json=listing(*meters))
    result = check(url, "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is False
    by_name = {m["meter"]: m for m in data["meters"]}
    assert list(by_name) == ["api_calls", "peak_gb", "requests", "tokens"]
    assert by_name["peak_gb"] == {
        "meter": "peak_gb",
        "event_name": "storage_peak",
        "aggregation": "max",
        "stripe_meter_id": "mtr_storage_peak",
        "formula": "last",
        "stripe_status": "active",
        "ok": True,
        "problem": None,
        "fix": None,
    }
    tokens = by_name["tokens"]
    assert (tokens["ok"], tokens["stripe_meter_id"]) == (False, "mtr_keys")
    assert tokens["problem"] == (
        "Stripe meter mtr_keys reads the value from payload key 'quantity', "
        "but metersync sends it as 'value'"
    )
    assert "value payload key 'value'" in tokens["fix"]


def test_json_output_all_ok(url: str, stripe_api: responses.RequestsMock) -> None:
    """--json with every meter fitting: ok is true, exit 0, nothing else on stdout."""
    stripe_api.get(METERS_URL, json=listing(*fitting()))
    result = check(url, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert [m["ok"] for m in data["meters"]] == [True] * 4


def test_meter_on_a_later_page_is_found(url: str, stripe_api: responses.RequestsMock) -> None:
    """Stripe's listing is read to its last page before anything is called missing."""
    first, *rest = fitting()
    stripe_api.get(
        METERS_URL,
        json=listing(*rest, has_more=True),
        match=[matchers.query_param_matcher({"limit": "100"})],
    )
    stripe_api.get(
        METERS_URL,
        json=listing(first),
        match=[matchers.query_param_matcher({"limit": "100", "starting_after": "mtr_tokens"})],
    )
    result = check(url)
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "api_calls")[2:5] == ["mtr_api_calls", "sum → sum", "OK"]
    assert len(stripe_api.calls) == 2


def test_no_key_exits_2_without_calling_stripe(
    url: str, stripe_api: responses.RequestsMock
) -> None:
    """Without a Stripe key the check cannot run: exit 2, one error line, no HTTP call."""
    result = check(url, key=None)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: checking meters against Stripe needs a Stripe API key")
    assert "METERSYNC_STRIPE_API_KEY" in lines[0]
    assert "Traceback" not in result.output
    assert len(stripe_api.calls) == 0


def test_key_refused_by_stripe_exits_1_without_showing_it(
    url: str, stripe_api: responses.RequestsMock
) -> None:
    """A key Stripe refuses (401): exit 1 with Stripe's reason, the key itself masked."""
    stripe_api.get(
        METERS_URL,
        status=401,
        json={"error": {"type": "invalid_request_error", "message": f"Invalid API Key: {KEY}"}},
    )
    result = check(url)
    assert result.exit_code == 1, result.output
    assert "error: Stripe refused the call (HTTP 401)" in result.stderr
    assert "Invalid API Key" in result.stderr
    assert KEY not in result.output
    assert len(stripe_api.calls) == 1  # a refusal is not retried


def test_no_local_meters(tmp_path: Path, stripe_api: responses.RequestsMock) -> None:
    """With no local meters there is nothing to refuse: a hint and exit 0."""
    stripe_api.get(METERS_URL, json=listing(stripe_meter("api_calls")))
    result = check(f"sqlite:///{tmp_path}/empty.db")
    assert result.exit_code == 0, result.output
    assert "no meters yet; add one with `metersync meters add NAME`" in result.stdout


def test_help_names_the_rules() -> None:
    """meters check --help says what is checked and what the exit codes mean."""
    result = runner.invoke(app, ["meters", "check", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Exits 1 when any meter cannot work" in result.stdout
    assert "--json" in result.stdout
