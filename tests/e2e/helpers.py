"""Helpers shared by the CLI tests."""

from __future__ import annotations

from datetime import UTC, datetime

from typer.testing import Result

#: The clock of the tests that use the ``frozen`` fixture: a little after 10:07 UTC,
#: inside the report window from 10:00 to 11:00.
NOW = datetime(2026, 3, 4, 10, 7, 30, tzinfo=UTC)


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the Rich table row whose first cell is ``first_cell``."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def error_line(result: Result) -> str:
    """The single ``error: …`` line a failed command printed on stderr, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    return errors[0]
