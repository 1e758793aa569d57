"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No METERSYNC_* settings, .env file, terminal width or colours leak in from outside."""
    for name in list(os.environ):
        if name.startswith("METERSYNC_") or name in {"STRIPE_API_KEY", "FORCE_COLOR", "COLUMNS"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
