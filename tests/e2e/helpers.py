"""Helpers shared by the CLI tests."""

from __future__ import annotations


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the Rich table row whose first cell is ``first_cell``."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")
