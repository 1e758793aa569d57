"""``metersync report now``, ``reports`` and ``retry``: push reports to Stripe and follow
what became of them."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapter.cli.context import connected, console, print_json
from adapter.cli.errors import fail
from adapter.cli.usage import show_decimal
from adapter.domain.statuses import ReportStatus
from adapter.pushing.pusher import PushResult
from adapter.reading.reports import ReportInfo

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: Colours of the statuses in tables; a status not listed is printed plain.
STATUS_STYLES = {
    "sent": "green",
    "dry_run": "cyan",
    "failed": "red",
    "sending": "yellow",
    "unlinked": "magenta",
}
#: Summary words per push status, in summary order. The first three always show.
SUMMARY_WORDS = {
    "sent": "sent",
    "dry_run": "dry run",
    "failed": "failed",
    "sending": "still sending",
    "skipped_free": "skipped (free account)",
    "unlinked": "waiting for a Stripe customer",
    "expired": "expired",
    "superseded": "superseded",
}
#: How wide tables may grow off a terminal (cron mail, pipes, logs): wide enough that
#: only long error messages wrap.
PIPE_WIDTH = 160
#: How many characters of an identifier a table shows on each side of the cut.
ID_HEAD, ID_TAIL = 11, 6


def jsonable(record: DataclassInstance) -> dict[str, Any]:
    """A dataclass as JSON-ready data: ISO 8601 times, decimals as exact strings."""
    data = dataclasses.asdict(record)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = utc(value).isoformat()
        elif isinstance(value, Decimal):
            data[key] = str(value)
    return data


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive time is taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def show_timestamp(at: datetime | None) -> str:
    """A UTC instant as ISO 8601 to the second, ``Z``-suffixed; ``-`` for none."""
    if at is None:
        return "-"
    return utc(at).isoformat(timespec="seconds").replace("+00:00", "Z")


def short_identifier(identifier: str | None) -> str:
    """The readable start and the hash end of an identifier; ``--json`` has it whole."""
    if identifier is None:
        return "-"
    if len(identifier) <= ID_HEAD + ID_TAIL + 1:
        return identifier
    return f"{identifier[:ID_HEAD]}…{identifier[-ID_TAIL:]}"


def status_text(status: str, *, duplicate: bool = False) -> Text:
    """A status, coloured when the console has colours; a duplicate says so."""
    return Text(status + (" (duplicate)" if duplicate else ""), style=STATUS_STYLES.get(status, ""))


def results_table(results: Sequence[PushResult], *, title: str) -> Table:
    """One row per pushed report (the meter alone when its event name is the same); the
    error column only when some push has an error. Narrow terminals fold long cells."""
    errors = any(r.error for r in results)
    table = Table(title=title)
    table.add_column("report", justify="right", style="bold", no_wrap=True)
    table.add_column("account", overflow="fold")
    table.add_column("meter → event", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("timestamp (UTC)", overflow="fold")
    table.add_column("identifier", overflow="fold")
    if errors:
        table.add_column("error", overflow="fold")
    for r in results:
        cells: list[str | Text] = [
            str(r.report_id),
            Text(r.account),
            Text(r.meter if r.meter == r.event_name else f"{r.meter} → {r.event_name}"),
            status_text(r.status, duplicate=r.duplicate),
            "-" if r.value is None else str(r.value),
            show_timestamp(r.timestamp),
            short_identifier(r.identifier),
        ]
        if errors:
            cells.append(Text(r.error or "-"))
        table.add_row(*cells)
    return table


def events_title(dry_run: bool) -> str:
    """The title of a table of push results."""
    return (
        "Meter events that would be sent (dry run)" if dry_run else "Meter events pushed to Stripe"
    )


def print_table(table: Table) -> None:
    """Print a table fitted to the terminal; off a terminal, as wide as it needs (up to
    :data:`PIPE_WIDTH`), since a log has no width to fit and folded cells are hard to grep.
    An explicit ``COLUMNS`` always wins."""
    if console.is_terminal or os.environ.get("COLUMNS"):
        console.print(table)
        return
    Console(file=console.file, width=PIPE_WIDTH, highlight=False, markup=False).print(table)


def counts(results: Sequence[PushResult]) -> dict[str, int]:
    """How many reports ended in each status."""
    return dict(Counter(r.status for r in results))


def summary(results: Sequence[PushResult]) -> str:
    """``3 reports: 2 sent, 1 dry run, 0 failed``, plus any other status that occurred."""
    found = counts(results)
    parts = [
        f"{found.get(status, 0)} {word}"
        for index, (status, word) in enumerate(SUMMARY_WORDS.items())
        if index < 3 or found.get(status)
    ]
    parts.extend(f"{n} {status}" for status, n in found.items() if status not in SUMMARY_WORDS)
    duplicates = sum(1 for r in results if r.duplicate)
    if duplicates:
        parts[0] += f" ({duplicates} already at Stripe)"
    total = len(results)
    return f"{total} report{'s' if total != 1 else ''}: " + ", ".join(parts)


def dry_run_note(events: int) -> str:
    """The line saying that nothing left this machine, and why."""
    why = "dry run: no Stripe key is configured (METERSYNC_STRIPE_API_KEY)"
    if events == 0:
        return f"{why}; nothing would be sent"
    what = "event above is" if events == 1 else "events above are"
    return f"{why}, so nothing left this machine; the meter {what} what would have been sent"


def undelivered(results: Sequence[PushResult]) -> str | None:
    """Why a push needs an operator (reports ``failed`` or left ``sending``), or None."""
    failed = [r.report_id for r in results if r.status == "failed"]
    sending = [r.report_id for r in results if r.status == "sending"]
    reasons = []
    if failed:
        which = failed[0] if len(failed) == 1 else "REPORT_ID"
        reasons.append(
            f"{_ids(failed)} failed: fix the cause shown, then `metersync retry {which}`"
        )
    if sending:
        reasons.append(
            f"{_ids(sending)} still sending after a transient error: the next "
            "`metersync report now` (or the worker) sends it again"
        )
    return "; ".join(reasons) or None


def _ids(report_ids: Sequence[int]) -> str:
    return f"report{'s' if len(report_ids) > 1 else ''} {', '.join(map(str, report_ids))}"


report_app = typer.Typer(help="Push usage reports to Stripe.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@report_app.command("now")
def now(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Close every open report and push every closed one to Stripe, now.

    With no Stripe key configured this is a dry run: each report is recorded as dry_run
    and nothing is sent. Exits 1 when any report failed or is still sending, so a cron
    job notices.
    """
    with connected(ctx) as ms:
        dry_run = ms.settings.dry_run
        results = ms.report_now()
    if as_json:
        reports = [jsonable(r) for r in results]
        print_json({"dry_run": dry_run, "counts": counts(results), "reports": reports})
    elif not results:
        console.print("nothing to report: no open or closed reports")
    else:
        print_table(results_table(results, title=events_title(dry_run)))
        console.print(summary(results))
    if dry_run and not as_json:
        console.print(dry_run_note(len(results)))
    problem = undelivered(results)
    if problem is not None:
        raise fail(problem)


def show_window(info: ReportInfo) -> str:
    """``2026-03-04 10:00 → 11:00``, with the end's date when it differs."""
    start, end = utc(info.window_start), utc(info.window_end)
    end_format = "%H:%M" if end.date() == start.date() else "%Y-%m-%d %H:%M"
    return f"{start:%Y-%m-%d %H:%M} → {end.strftime(end_format)}"


def reports_table(found: Sequence[ReportInfo]) -> Table:
    """One row per report, newest first."""
    table = Table(title="Reports (newest first)")
    table.add_column("id", justify="right", style="bold", no_wrap=True)
    table.add_column("account", overflow="fold")
    table.add_column("meter", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("window (UTC)")
    for numeric in ("events", "value", "sent value", "attempts"):
        table.add_column(numeric, justify="right", overflow="fold")
    table.add_column("last error", overflow="fold")
    for info in found:
        table.add_row(
            str(info.id),
            Text(info.account),
            Text(info.meter),
            status_text(info.status),
            show_window(info),
            str(info.events),
            show_decimal(info.value),
            "-" if info.sent_value is None else show_decimal(info.sent_value),
            str(info.attempts),
            Text(info.last_error or "-"),
        )
    return table


StatusOption = Annotated[
    ReportStatus | None,
    typer.Option(
        "--status",
        help="Only reports with this status: open and closed wait to be pushed; sending "
        "is in flight (or hit a transient error); the others are final.",
        show_default=False,
    ),
]
Limit = Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Show at most N reports.")]


def list_reports(
    ctx: typer.Context,
    status: StatusOption = None,
    limit: Limit = 100,
    as_json: AsJson = False,
) -> None:
    """List the newest reports: window, events, total, what was sent, attempts, last error."""
    with connected(ctx) as ms:
        found = ms.reports(status=status.value if status else None, limit=limit)
    show_listing(
        found,
        reports_table,
        as_json=as_json,
        empty=f"no {status.value + ' ' if status else ''}reports; usage goes into reports as "
        "it is recorded",
    )


def show_listing(
    found: Sequence[Any], table: Callable[[Any], Table], *, as_json: bool, empty: str
) -> None:
    """Print a list command's rows: JSON, ``empty`` when there are none, or the table."""
    if as_json:
        print_json([jsonable(info) for info in found])
    elif not found:
        console.print(empty)
    else:
        print_table(table(found))


ReportId = Annotated[
    int, typer.Argument(metavar="REPORT_ID", help="The report to push again (see `reports`).")
]


def retry(ctx: typer.Context, report_id: ReportId, as_json: AsJson = False) -> None:
    """Push a failed (or stuck sending) report again, with the identifier it was sent with,
    so a send that did reach Stripe is not billed twice. Exits 1 if it fails again."""
    with connected(ctx) as ms:
        dry_run = ms.settings.dry_run
        result = ms.retry(report_id)
    if as_json:
        print_json(jsonable(result))
    else:
        print_table(results_table([result], title=events_title(dry_run)))
        console.print(summary([result]))
        if dry_run:
            console.print(dry_run_note(1))
    problem = undelivered([result])
    if problem is not None:
        raise fail(problem)
