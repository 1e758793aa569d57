"""The ``metersync`` command line, end to end on SQLite files and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from adapter.cli.meters import AggregationChoice, RoundingChoice
from adapter.domain.aggregation import AGGREGATIONS
from adapter.store import db
from adapter.store.catalog import ROUNDINGS
from config.settings import Settings
from tests.e2e.helpers import row
from tests.servers import Postgres

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own."""
    return f"sqlite:///{tmp_path}/cli.db"


def cli(url: str, *args: str) -> Result:
    """Run ``metersync --database-url URL ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, *args])


def assert_clean_error(result: Result, code: int, message: str) -> None:
    """The command failed with ``code`` and one ``error:`` line, with no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def recorded(url: str) -> str:
    """A database where acct_1 used 10 + 5 api_calls and peak readings 3 then 7."""
    ms = adapter.connect(Settings(database_url=url))
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.meters.upsert("peak", aggregation="max")
    ms.increment("acct_1", 10, meter="api_calls", idempotency_key="k1")
    ms.increment("acct_1", "5", meter="api_calls", idempotency_key="k2")
    ms.increment("acct_1", 3, meter="peak")
    ms.increment("acct_1", 7, meter="peak")
    ms.close()
    return url


def test_version() -> None:
    """--version prints the installed package version and exits 0."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"metersync {version('metersync')}"


def test_accounts_add_then_list_table(url: str) -> None:
    """accounts add stores customer, free flag and metadata; accounts list shows them."""
    added = cli(url, "accounts", "add", "acme", "--stripe-customer", "cus_42", "--free",
                "--metadata", "plan=pro", "--metadata", "region=eu")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "'acme' saved" in added.stdout
    assert "cus_42" in added.stdout
    listed = cli(url, "accounts", "list")
    assert listed.exit_code == 0, listed.output
    assert row(listed.stdout, "acme") == [
        "acme",
        "cus_42",
        "yes",
        '{"plan": "pro", "region": "eu"}',
    ]


def test_accounts_list_json_after_update(url: str) -> None:
    """A second add updates only the fields given; --json lists the stored values."""
    assert cli(url, "accounts", "add", "acme", "--free", "--metadata", "a=1").exit_code == 0
    assert cli(url, "accounts", "add", "acme", "--paid").exit_code == 0
    assert cli(url, "accounts", "add", "zeta").exit_code == 0
    result = cli(url, "accounts", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["acme", "zeta"]
    assert rows[0]["free"] is False
    assert rows[0]["metadata"] == {"a": "1"}
    assert rows[1]["stripe_customer_id"] is None
    assert rows[1]["metadata"] == {}


def test_accounts_list_empty(url: str) -> None:
    """With no accounts, list says how to add one, and --json prints an empty list."""
    assert "metersync accounts add" in cli(url, "accounts", "list").stdout
    assert json.loads(cli(url, "accounts", "list", "--json").stdout) == []


def test_accounts_add_bad_metadata(url: str) -> None:
    """A --metadata value without '=' is a usage error (exit 2) naming the option."""
    result = cli(url, "accounts", "add", "acme", "--metadata", "nope")
    assert result.exit_code == 2
    assert "key=value" in result.stderr
    assert "--metadata" in result.stderr


def test_accounts_add_bad_customer_id(url: str) -> None:
    """A customer id that is not cus_… is refused with exit 2 and one error line."""
    result = cli(url, "accounts", "add", "acme", "--stripe-customer", "acme-inc")
    assert_clean_error(result, 2, "stripe_customer_id must look like cus_")


def test_meters_add_then_list(url: str) -> None:
    """meters add stores event name, aggregation and rounding; list shows them as table and JSON."""
    added = cli(url, "meters", "add", "peak_gb", "--event-name", "storage_peak",
                "--aggregation", "max", "--rounding", "up")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert cli(url, "meters", "add", "api_calls").exit_code == 0
    table = cli(url, "meters", "list").stdout
    assert row(table, "peak_gb") == ["peak_gb", "storage_peak", "max", "up", "-"]
    assert row(table, "api_calls") == ["api_calls", "api_calls", "sum", "down", "-"]
    found = {m["name"]: m for m in json.loads(cli(url, "meters", "list", "--json").stdout)}
    assert found["peak_gb"]["aggregation"] == "max"
    assert found["peak_gb"]["rounding"] == "up"
    assert found["api_calls"]["event_name"] == "api_calls"


def test_meters_add_rejects_unknown_aggregation(url: str) -> None:
    """An aggregation outside sum|count|max|last is a usage error before anything is stored."""
    result = cli(url, "meters", "add", "m", "--aggregation", "avg")
    assert result.exit_code == 2
    assert "--aggregation" in result.stderr
    assert json.loads(cli(url, "meters", "list", "--json").stdout) == []


def test_meters_aggregation_change_refused_once_used(recorded: str) -> None:
    """Changing the aggregation of a meter holding usage exits 2 with the adapter's reason."""
    result = cli(recorded, "meters", "add", "api_calls", "--aggregation", "max")
    assert_clean_error(result, 2, "already holds usage")


def test_choices_match_adapter() -> None:
    """The CLI offers exactly the aggregations and roundings the adapter accepts."""
    assert tuple(c.value for c in AggregationChoice) == AGGREGATIONS
    assert tuple(c.value for c in RoundingChoice) == ROUNDINGS


def test_usage_table(recorded: str) -> None:
    """usage shows per meter quantity, sent, pending, events, aggregation, cost and the period."""
    result = cli(recorded, "usage", "acct_1")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "api_calls") == ["api_calls", "15", "0", "15", "2", "sum", "-"]
    assert row(result.stdout, "peak") == ["peak", "7", "0", "7", "2", "max", "-"]
    assert "Usage of acct_1" in result.stdout
    assert "period: calendar_month" in result.stdout


def test_usage_json_with_dates(recorded: str) -> None:
    """usage --json with --from/--to prints Usage.to_dict() for that period."""
    ms = adapter.connect(Settings(database_url=recorded))
    expected = ms.get_usage("acct_1").to_dict()
    ms.close()
    start, end = expected["period_start"][:10], expected["period_end"][:10]
    result = cli(recorded, "usage", "acct_1", "--from", start, "--to", end, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["period_source"] == "requested"
    assert data["period_start"] == expected["period_start"]
    assert data["meters"] == expected["meters"]
    assert float(data["meters"]["api_calls"]["quantity"]) == 15
    assert float(data["meters"]["api_calls"]["pending"]) == 15
    assert data["meters"]["peak"]["events"] == 2
    assert float(data["meters"]["peak"]["quantity"]) == 7


def test_usage_outside_period_is_zero(recorded: str) -> None:
    """A requested period with no usage lists every meter with zeros."""
    result = cli(recorded, "usage", "acct_1", "--from", "2020-01-01T00:00:00Z",
                 "--to", "2020-02-01T00:00:00+00:00", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    meters = json.loads(result.stdout)["meters"]
    assert {name: (float(m["quantity"]), m["events"]) for name, m in meters.items()} == {
        "api_calls": (0, 0),
        "peak": (0, 0),
    }


def test_usage_one_meter(recorded: str) -> None:
    """--meter limits the output to that meter."""
    result = cli(recorded, "usage", "acct_1", "--meter", "peak", "--json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["meters"]) == ["peak"]


def test_usage_unknown_account(recorded: str) -> None:
    """An unknown account exits 2 with one red error line and no traceback."""
    assert_clean_error(cli(recorded, "usage", "nobody"), 2, "unknown account 'nobody'")


def test_usage_unknown_meter(recorded: str) -> None:
    """An unknown meter exits 2 and names the meters that exist."""
    result = cli(recorded, "usage", "acct_1", "--meter", "nope")
    assert_clean_error(result, 2, "known meters: api_calls, peak")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from", "2026-01-01"], "give both"),
        (["--from", "2026-02-01", "--to", "2026-01-01"], "must be after"),
        (["--from", "yesterday", "--to", "2026-01-01"], "not an ISO 8601"),
    ],
)
def test_usage_bad_period(recorded: str, extra: list[str], message: str) -> None:
    """A half-given, empty or unparsable period exits 2 with the adapter's reason."""
    assert_clean_error(cli(recorded, "usage", "acct_1", *extra), 2, message)


def test_invalid_settings_exit_2_without_the_secret(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad Stripe key in the environment is named, exits 2, and its value is never printed."""
    monkeypatch.setenv("METERSYNC_STRIPE_API_KEY", "pk_live_topsecretvalue")
    result = cli(url, "accounts", "list")
    assert_clean_error(result, 2, "METERSYNC_STRIPE_API_KEY")
    assert "topsecretvalue" not in result.output


def test_unsupported_database_url() -> None:
    """A database URL that is neither SQLite nor PostgreSQL exits 2 naming what is accepted."""
    result = cli("mysql://root@localhost/db", "accounts", "list")
    assert_clean_error(result, 2, "database_url must be sqlite")


def test_unreachable_database_hides_password() -> None:
    """An unreachable PostgreSQL exits 1 with an error line that leaves out the password."""
    result = cli("postgresql://ops:hunter2@127.0.0.1:1/metersync", "db", "upgrade")
    assert_clean_error(result, 1, "127.0.0.1")
    assert "hunter2" not in result.output


def test_database_url_option_beats_environment(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--database-url wins over METERSYNC_DATABASE_URL, which is used without it."""
    monkeypatch.setenv("METERSYNC_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    assert cli(url, "accounts", "add", "only_in_option_db").exit_code == 0
    from_env = runner.invoke(app, ["accounts", "list", "--json"])
    assert from_env.exit_code == 0, from_env.output
    assert json.loads(from_env.stdout) == []
    assert "only_in_option_db" in cli(url, "accounts", "list").stdout


def test_db_upgrade_fresh_sqlite(url: str) -> None:
    """db upgrade migrates an empty SQLite file to head, then reports it is up to date."""
    engine = sa.create_engine(url)
    head = db.head_revision(engine)
    first = cli(url, "db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "from revision nothing (empty)" in first.stdout
    assert f"to {head}" in first.stdout
    assert db.current_revision(engine) == head
    again = cli(url, "db", "upgrade")
    assert again.exit_code == 0
    assert f"already at revision {head}" in again.stdout
    engine.dispose()


@pytest.mark.postgres
def test_db_upgrade_fresh_postgres(postgres_server: Postgres) -> None:
    """A fresh PostgreSQL database is refused until db upgrade migrates it to head."""
    url = postgres_server.create_database()
    try:
        refused = cli(url, "accounts", "list")
        assert_clean_error(refused, 1, "metersync db upgrade")
        upgraded = cli(url, "db", "upgrade")
        assert upgraded.exit_code == 0, upgraded.output
        engine = sa.create_engine(url)
        head = db.head_revision(engine)
        assert db.current_revision(engine) == head
        engine.dispose()
        assert f"from revision nothing (empty) to {head}" in upgraded.stdout
        assert cli(url, "accounts", "add", "acct_pg").exit_code == 0
        assert [a["name"] for a in json.loads(cli(url, "accounts", "list", "--json").stdout)] == [
            "acct_pg"
        ]
    finally:
        postgres_server.drop_database(url)


HELP_CASES = [
    ([], ["--database-url", "--version", "accounts", "meters", "usage", "db", "demo"]),
    (["accounts"], ["add", "list"]),
    (["accounts", "add"], ["NAME", "--stripe-customer", "--free", "--paid", "--metadata"]),
    (["accounts", "list"], ["--json"]),
    (["meters"], ["add", "list"]),
    (["meters", "add"], ["NAME", "--event-name", "--aggregation", "--rounding", "sum|count"]),
    (["meters", "list"], ["--json"]),
    (["usage"], ["ACCOUNT", "--from", "--to", "--meter", "--json"]),
    (["db"], ["upgrade"]),
    (["db", "upgrade"], ["migration", "--database-url"]),
    (["demo"], ["--database", "embedded"]),
]


@pytest.mark.parametrize(("command", "expected"), HELP_CASES, ids=lambda c: " ".join(c) or "root")
def test_help(command: list[str], expected: list[str]) -> None:
    """Every command's --help exits 0 and mentions its arguments and options."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for word in expected:
        assert word in result.stdout, f"{word!r} missing from help of {command}"


def test_demo_in_process(tmp_path: Path) -> None:
    """demo records 10 + 3 api_calls and a storage peak of 4; the duplicate counted nothing."""
    database = tmp_path / "demo.db"
    result = runner.invoke(app, ["demo", "--database", str(database)])
    assert result.exit_code == 0, result.output
    assert "duplicate=True" in result.stdout
    assert "1 duplicate" in result.stdout
    assert "item 3 rejected: quantity must not be negative" in (result.stdout)
    usage = json.loads(cli(f"sqlite:///{database}", "usage", "demo_customer", "--json").stdout)
    api, storage = usage["meters"]["api_calls"], usage["meters"]["storage_gb"]
    assert (float(api["quantity"]), api["events"], float(api["sent"])) == (13, 2, 0)
    assert (float(storage["quantity"]), storage["events"]) == (4, 2)


def test_demo_refuses_database_url(url: str) -> None:
    """demo runs on its own SQLite file, so --database-url is refused with exit 2."""
    assert_clean_error(cli(url, "demo"), 2, "metersync demo --database")


def _console_script() -> str:
    beside = Path(sys.executable).parent / "metersync"
    found = str(beside) if beside.exists() else shutil.which("metersync")
    assert found, "the metersync console script is not installed"
    return found


def test_demo_console_script_fresh_and_rerun(tmp_path: Path) -> None:
    """The installed `metersync demo` works with no configuration, twice on the same file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    command = [_console_script(), "demo", "--database", str(tmp_path / "demo.db")]
    first = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, check=False)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "duplicate=True, so it counted nothing" in first.stdout
    assert row(first.stdout, "api_calls")[:5] == ["api_calls", "13", "0", "13", "2"]
    assert row(first.stdout, "storage_gb")[:5] == ["storage_gb", "4", "0", "4", "2"]
    assert "Traceback" not in first.stderr
    second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert row(second.stdout, "api_calls")[:5] == ["api_calls", "26", "0", "26", "4"]
    assert "earlier demo runs" in second.stdout
    assert not (tmp_path / "metersync.db").exists()
