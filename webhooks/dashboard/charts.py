"""Chart.js configurations as plain data. Pages embed them as JSON and
``static/dashboard.js`` hands each to the vendored Chart.js: no charting is written here,
only which numbers go on which axis."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

#: Dataset colours, in order (colour-blind safe, after Okabe and Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


def dataset(label: str, values: Sequence[Decimal | int | float], n: int) -> dict[str, Any]:
    """One series; quantities become floats (for drawing only: tables show exact values)."""
    colour = PALETTE[n % len(PALETTE)]
    return {
        "label": label,
        "data": [float(v) for v in values],
        "backgroundColor": colour,
        "borderColor": colour,
    }


def bar(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[Decimal | int | float]]],
    *,
    stacked: bool = False,
    horizontal: bool = False,
    counts: bool = False,
) -> dict[str, Any]:
    """A bar chart of ``series`` (name, one value per label), without animation so that
    what is drawn is final at once (and screenshots show it). ``counts``: whole-number
    ticks on the value axis."""
    axes: dict[str, Any] = {"x": {"stacked": stacked}, "y": {"stacked": stacked}}
    values = axes["x" if horizontal else "y"]
    values["beginAtZero"] = True
    if counts:
        values["ticks"] = {"precision": 0}
    return {
        "type": "bar",
        "data": {
            "labels": list(labels),
            "datasets": [dataset(name, values, n) for n, (name, values) in enumerate(series)],
        },
        "options": {
            "animation": False,
            "responsive": True,
            "maintainAspectRatio": False,
            "indexAxis": "y" if horizontal else "x",
            "scales": axes,
            "plugins": {"legend": {"display": len(series) > 1}},
        },
    }
