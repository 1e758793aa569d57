"""``metersync schedule show|set|pause|resume`` end to end on a SQLite file."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import adapter
from adapter.cli import app
from adapter.store.schedule import ScheduleChange, ScheduleState
from config.settings import Settings

#: The clock stands still at :data:`tests.e2e.helpers.NOW`, so ticks and times are known.
pytestmark = pytest.mark.usefixtures("frozen")
runner = CliRunner()
#: Every accepted form, as the help texts must name them.
FORMS = ["'every 30s'", "'every 15m'", "'every 1h'", "'every 1d'", "5-field cron"]


@pytest.fixture(autouse=True)
def os_user_alice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS user is ``alice`` (the audit log's actor is ``cli:alice``)."""
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own (created on first use)."""
    return f"sqlite:///{tmp_path}/cli.db"


def cli(url: str, *args: str) -> Result:
    """Run ``metersync --database-url URL schedule ARGS…`` in-process."""
    return runner.invoke(app, ["--database-url", url, "schedule", *args])


def ok(url: str, *args: str) -> list[str]:
    """Run a schedule command that must succeed; its stdout lines."""
    result = cli(url, *args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout.splitlines()


def stored(url: str) -> tuple[ScheduleState, list[ScheduleChange]]:
    """The stored schedule and its audit rows (newest first), read through the library."""
    ms = adapter.connect(Settings(database_url=url))
    try:
        return ms.schedule.state(), ms.schedule.history(limit=50)
    finally:
        ms.close()


def test_show_fresh_database(url: str) -> None:
    """show on a fresh database: the settings schedule, running, its next tick, set by
    settings, and no changes yet."""
    assert ok(url, "show") == [
        "schedule: every 1h (running)",
        "next tick: 2026-03-04T11:00:00+00:00 (UTC)",
        "last changed: 2026-03-04T10:07:30+00:00 by settings",
        "recent changes: none recorded",
    ]


def test_set_prints_old_to_new_and_stores_with_cli_actor(url: str) -> None:
    """set prints old → new and the next tick, stores the parsed form and audits it as
    cli:<os user>."""
    assert ok(url, "set", "Every  15m") == [
        "schedule: every 1h → every 15m",
        "next tick: 2026-03-04T10:15:00+00:00 (UTC)",
    ]
    state, history = stored(url)
    assert (state.expression, state.updated_by) == ("every 15m", "cli:alice")
    assert [(c.action, c.actor, c.detail) for c in history] == [
        ("schedule.set", "cli:alice", {"old": "every 1h", "new": "every 15m"})
    ]


def test_set_same_expression_says_nothing_changed(url: str) -> None:
    """Setting the schedule in force again exits 0, says so and writes no audit row."""
    ok(url, "set", "*/10 * * * *")
    assert ok(url, "set", "*/10  *  * * *") == ["schedule is already */10 * * * *; nothing changed"]
    assert len(stored(url)[1]) == 1


def test_pause_and_resume(url: str) -> None:
    """pause and resume print old → new; repeating either says nothing changed."""
    assert ok(url, "pause") == [
        "schedule every 1h: running → paused",
        "no report is closed until `metersync schedule resume`; usage is still recorded",
    ]
    assert ok(url, "pause") == ["schedule every 1h is already paused; nothing changed"]
    assert stored(url)[0].paused is True
    assert ok(url, "resume") == [
        "schedule every 1h: paused → running",
        "next tick: 2026-03-04T11:00:00+00:00 (UTC)",
    ]
    assert ok(url, "resume") == ["schedule every 1h is already running; nothing changed"]
    state, history = stored(url)
    assert state.paused is False
    assert [c.action for c in history] == ["schedule.resumed", "schedule.paused"]


def test_set_while_paused_stays_paused(url: str) -> None:
    """A new expression set while paused is stored, and the output says it stays paused."""
    ok(url, "pause")
    lines = ok(url, "set", "every 1d")
    assert lines == [
        "schedule: every 1h → every 1d",
        "next tick: none while paused",
        "the schedule stays paused: no report is closed until `metersync schedule resume`",
    ]
    state, _ = stored(url)
    assert (state.expression, state.paused) == ("every 1d", True)


def test_show_after_changes_lists_the_last_five_newest_first(url: str) -> None:
    """show lists who changed the schedule last, when, and the latest 5 changes."""
    for expression in ["every 2m", "every 5m", "every 10m", "every 15m", "every 30m"]:
        ok(url, "set", expression)
    ok(url, "pause")
    at = "2026-03-04T10:07:30+00:00"  # the clock stands still: order follows the rows
    assert ok(url, "show") == [
        "schedule: every 30m (paused: no report is closed until `metersync schedule resume`)",
        "next tick: none while paused",
        f"last changed: {at} by cli:alice",
        "recent changes (newest first):",
        f"  {at}  cli:alice  schedule.paused running → paused",
        f"  {at}  cli:alice  schedule.set every 15m → every 30m",
        f"  {at}  cli:alice  schedule.set every 10m → every 15m",
        f"  {at}  cli:alice  schedule.set every 5m → every 10m",
        f"  {at}  cli:alice  schedule.set every 2m → every 5m",
    ]


def test_show_json(url: str) -> None:
    """show --json gives the state, next_tick null while paused, and the changes."""
    ok(url, "set", "every 30m")
    ok(url, "pause")
    data = json.loads(cli(url, "show", "--json").stdout)
    assert {k: v for k, v in data.items() if k != "history"} == {
        "expression": "every 30m",
        "paused": True,
        "next_tick": None,
        "updated_by": "cli:alice",
        "updated_at": "2026-03-04T10:07:30+00:00",
    }
    paused = {"old": "running", "new": "paused", "expression": "every 30m"}
    assert [(h["action"], h["actor"], h["detail"]) for h in data["history"]] == [
        ("schedule.paused", "cli:alice", paused),
        ("schedule.set", "cli:alice", {"old": "every 1h", "new": "every 30m"}),
    ]
    assert {h["at"] for h in data["history"]} == {"2026-03-04T10:07:30+00:00"}
    ok(url, "resume")
    resumed = json.loads(cli(url, "show", "--json").stdout)
    assert (resumed["paused"], resumed["next_tick"]) == (False, "2026-03-04T10:30:00+00:00")
    assert len(resumed["history"]) == 3


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("bogus", "use 'every 30s', 'every 15m', 'every 1h', 'every 1d' or a 5-field cron"),
        ("every 7m", "does not divide a day evenly"),
        ("every 5s", "shorter than every 30s"),
    ],
)
def test_bad_expression_exits_2_and_changes_nothing(
    url: str, tmp_path: Path, expression: str, message: str
) -> None:
    """A bad expression exits 2 with one error line saying what is accepted, needs no
    database, and leaves a stored schedule unchanged."""
    result = cli(url, "set", expression)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: schedule {expression!r}")
    assert message in line
    assert not (tmp_path / "cli.db").exists()
    ok(url, "show")
    assert cli(url, "set", expression).exit_code == 2
    state, history = stored(url)
    assert (state.expression, state.updated_by, history) == ("every 1h", "settings", [])


def test_actor_when_the_os_user_is_unknown(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no OS user name to be found, changes are audited as cli:unknown."""

    def no_user() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", no_user)
    ok(url, "pause")
    assert stored(url)[0].updated_by == "cli:unknown"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["show", "set", "pause", "resume", *FORMS]),
        (["set"], ["EXPRESSION", *FORMS]),
        (["show"], ["--json", "last changes"]),
        (["pause"], ["usage is still recorded", "schedule resume"]),
        (["resume"], ["next tick"]),
    ],
    ids=lambda c: " ".join(c) or "group",
)
def test_help(command: list[str], expected: list[str]) -> None:
    """Each schedule command's --help exits 0 and names what it does; the group's and
    set's name every accepted form."""
    result = runner.invoke(app, ["schedule", *command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # help is wrapped to the terminal's width
    for word in expected:
        assert word in text, f"{word!r} missing from help of schedule {command}"


def test_root_help_lists_schedule() -> None:
    """metersync --help lists the schedule command group."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "schedule" in result.stdout
