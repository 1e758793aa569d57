"""``metersync schedule show|set|pause|resume``: the reporting schedule, changed at run time."""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Annotated

import typer

from adapter.cli.context import connected, console, print_json
from adapter.domain import schedule as schedules
from adapter.store.schedule import ScheduleChange, ScheduleState, schedule_json

#: The accepted expressions, as every help text of this group shows them.
FORMS = (
    "Accepted forms: 'every 30s', 'every 15m', 'every 1h', 'every 1d' (an interval of at "
    "least 30s that divides a day evenly, aligned to midnight UTC), or a 5-field cron "
    "expression in UTC such as '*/10 * * * *'."
)
#: How many audit rows ``schedule show`` lists.
HISTORY = 5

app = typer.Typer(
    help=(
        "Show and change the reporting schedule: each tick closes the open reports, which "
        "are then pushed to Stripe. Running schedulers pick a change up on their next tick.\n\n"
        f"{FORMS}"
    ),
    no_args_is_help=True,
)


def actor() -> str:
    """``cli:<os user>``, the name audit rows give to changes made here."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "cli:unknown"


def show_time(at: datetime) -> str:
    """An instant as ISO 8601, to the second."""
    return at.isoformat(timespec="seconds")


def describe_state(state: ScheduleState) -> str:
    """``running`` or what being paused means."""
    if not state.paused:
        return "running"
    return "paused: no report is closed until `metersync schedule resume`"


def describe_change(change: ScheduleChange) -> str:
    """One audit row: when, who, what, and old → new."""
    what = change.action
    if "old" in change.detail and "new" in change.detail:
        what += f" {change.detail['old']} → {change.detail['new']}"
    return f"{show_time(change.at)}  {change.actor}  {what}"


def _next_tick(state: ScheduleState) -> str:
    if state.next_tick is None:
        return "none while paused"
    return f"{show_time(state.next_tick)} (UTC)"


AsJson = Annotated[bool, typer.Option("--json", help="Print the schedule as JSON.")]
Expression = Annotated[
    str,
    typer.Argument(
        metavar="EXPRESSION",
        help=f"The new schedule; quote it, it contains spaces. {FORMS}",
        show_default=False,
    ),
]


@app.command("show")
def show(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Show the schedule, whether it is paused, its next tick, and the last changes."""
    with connected(ctx) as ms:
        state = ms.schedule.state()
        history = ms.schedule.history(limit=HISTORY)
    if as_json:
        print_json(schedule_json(state, history))
        return
    console.print(f"schedule: {state.expression} ({describe_state(state)})")
    console.print(f"next tick: {_next_tick(state)}")
    console.print(f"last changed: {show_time(state.updated_at)} by {state.updated_by}")
    if not history:
        console.print("recent changes: none recorded")
        return
    console.print("recent changes (newest first):")
    for change in history:
        console.print(f"  {describe_change(change)}")


@app.command(
    "set", help=f"Replace the schedule's expression. {FORMS}", short_help="Replace the expression."
)
def set_expression(ctx: typer.Context, expression: Expression) -> None:
    """Replace the schedule's expression."""
    # Checked before connecting, so that a typo needs no database (set checks again).
    schedules.parse(expression)
    with connected(ctx) as ms:
        before = ms.schedule.state()
        after = ms.schedule.set(expression, actor=actor())
    if after.expression == before.expression:  # set stores the new one in its parsed form
        console.print(f"schedule is already {after.expression}; nothing changed")
        return
    console.print(f"schedule: {before.expression} → {after.expression}")
    console.print(f"next tick: {_next_tick(after)}")
    if after.paused:
        console.print(f"the schedule stays {describe_state(after)}")


def _flip(ctx: typer.Context, *, paused: bool) -> None:
    with connected(ctx) as ms:
        before = ms.schedule.state()
        flip = ms.schedule.pause if paused else ms.schedule.resume
        after = flip(actor=actor())
    word = "paused" if paused else "running"
    if before.paused == after.paused:
        console.print(f"schedule {after.expression} is already {word}; nothing changed")
        return
    old = "running" if paused else "paused"
    console.print(f"schedule {after.expression}: {old} → {word}")
    if paused:
        console.print(
            "no report is closed until `metersync schedule resume`; usage is still recorded"
        )
    else:
        console.print(f"next tick: {_next_tick(after)}")


@app.command("pause")
def pause(ctx: typer.Context) -> None:
    """Stop closing reports at ticks; usage is still recorded.

    Windows still follow the expression while paused, so usage lands where it would have.

    `metersync schedule resume` lets the ticks close reports again.
    """
    _flip(ctx, paused=True)


@app.command("resume")
def resume(ctx: typer.Context) -> None:
    """Close reports at ticks again, from the next tick on."""
    _flip(ctx, paused=False)
