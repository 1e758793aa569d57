"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import time_machine

from tests.e2e.helpers import NOW


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No METERSYNC_* settings, .env file, terminal width or colours leak in from outside."""
    for name in list(os.environ):
        if name.startswith("METERSYNC_") or name in {"STRIPE_API_KEY", "FORCE_COLOR", "COLUMNS"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def frozen() -> Iterator[None]:
    """The clock stands still at :data:`tests.e2e.helpers.NOW`, so windows, ticks and
    timestamps are known."""
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The log events of the test. Captured because in-process the CLI's logging is not
    configured, and structlog's default would print them into stdout (and --json output)."""
    with structlog.testing.capture_logs() as captured:
        yield captured
