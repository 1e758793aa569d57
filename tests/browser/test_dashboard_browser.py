"""The dashboard in a real browser: headless Chromium, driven by Playwright, against uvicorn
serving a seeded SQLite file and PostgreSQL database. Logs in and out, loads every page,
checks the seeded figures and the drawn charts, retries a failed report, replays a failed
delivery, pauses and resumes the schedule; takes the README's screenshots."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from adapter.store.models import AuditLog, table
from tests.browser.conftest import SCREENSHOTS, Served, login
from tests.browser.seed import EVENTS_24H, FAILED_ERROR

pytestmark = pytest.mark.browser
_AUDIT = table(AuditLog)
#: Every page an operator can open.
PAGES = (
    "/dashboard", "/dashboard/accounts", "/dashboard/accounts/acct_1", "/dashboard/reports",
    "/dashboard/webhooks", "/dashboard/schedule",
)  # fmt: skip


def charts_drawn(page: Page) -> int:
    """How many canvases on the page Chart.js has drawn a chart on."""
    count: int = page.evaluate(
        "() => [...document.querySelectorAll('canvas[data-chart]')]"
        ".filter(c => window.Chart && window.Chart.getChart(c)).length"
    )
    return count


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Save a full-page screenshot; copy it to the README's when asked or missing."""
    taken = tmp_path / name
    page.screenshot(path=str(taken), full_page=True)
    assert taken.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kept = SCREENSHOTS / name
    if os.environ.get("METERSYNC_UPDATE_SCREENSHOTS") == "1" or not kept.exists():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(taken, kept)


def audit_actions(served: Served, actor: str = "dashboard") -> list[str]:
    """Audit actions written by ``actor``, oldest first."""
    with served.ms.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_AUDIT.c.action).where(_AUDIT.c.actor == actor).order_by(_AUDIT.c.id)
        )
        return [r.action for r in rows]


def test_a_wrong_token_shows_an_error_and_no_page(served: Served, page: Page) -> None:
    """The dashboard sends a visitor to the login form; a wrong token is refused there."""
    page.goto(f"{served.url}/dashboard/reports")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard/reports$"))
    page.fill("#token", "not-the-token")
    page.click("form.login button")
    expect(page.locator(".error")).to_contain_text("not the ops token")
    assert page.context.cookies() == []
    expect(page.locator("nav")).to_have_count(0)


def test_login_opens_the_overview_with_the_seeded_figures(
    served: Served, page: Page, tmp_path: Path
) -> None:
    """Overview: the events in the last day's reports, 1.5 s push latency, the waiting
    delivery's lag, 1 drifting pair, 2 failed items, both charts drawn."""
    login(page, served.url)
    expect(page).to_have_url(f"{served.url}/dashboard")
    expect(page.locator("#events-24h")).to_have_text(f"{EVENTS_24H:,}")
    expect(page.locator("#latency-p50")).to_have_text("1.5 s")
    expect(page.locator("#webhook-lag")).to_have_text(re.compile(r"^\d+\.\d min$"))
    expect(page.locator("#drifting")).to_have_text("1")
    expect(page.locator("#needing-action")).to_have_text("2")
    expect(page.locator("#failed-reports")).to_contain_text(FAILED_ERROR)
    expect(page.locator("#failed-deliveries")).to_contain_text("RuntimeError: handler crashed")
    expect(page.locator("#drift")).to_contain_text("missing")
    expect(page.locator("#report-statuses")).to_contain_text("dry_run")
    assert charts_drawn(page) == 2
    if served.backend == "sqlite":
        screenshot(page, "overview.png", tmp_path)


def test_account_page_shows_usage_cost_credit_alerts_and_preview(
    served: Served, page: Page, tmp_path: Path
) -> None:
    """acct_1: 15,000 calls (12,000 sent, 3,000 pending) rated 255.00 USD; 245.00 USD of
    credit left; the preview's 353.00 subtotal less credit is 98.00; the fired alert."""
    login(page, served.url)
    page.goto(f"{served.url}/dashboard/accounts/acct_1")
    row = page.locator('#usage tr[data-meter="api_calls"] td')
    expect(row).to_have_text(
        ["api_calls", "sum", "15,000", "12,000", "3,000", "2", "255.00 USD", "price_api"]
    )
    expect(page.locator("#credit-balance")).to_have_text("245.00 USD")
    expect(page.locator("#preview-subtotal")).to_have_text("353.00 USD")
    expect(page.locator("#preview-total")).to_have_text("98.00 USD")
    expect(page.locator("#grants")).to_contain_text("prepaid pack")
    expect(page.locator("#alerts")).to_contain_text("10k calls")
    expect(page.locator("#firings")).to_contain_text("10k calls")
    assert charts_drawn(page) == 2
    periods = page.evaluate(
        "() => window.Chart.getChart(document.querySelector('[data-chart=chart-periods]'))"
        ".data.datasets.find(d => d.label === 'api_calls').data"
    )
    assert periods[-2:] == [4000, 15000]  # last period, then this one
    if served.backend == "sqlite":
        screenshot(page, "account.png", tmp_path)


def test_an_account_without_subscription_says_why_there_is_no_preview(
    served: Served, page: Page
) -> None:
    """An unlinked account's page loads and says there is no invoice to preview."""
    login(page, served.url)
    page.goto(f"{served.url}/dashboard/accounts")
    page.get_by_role("link", name="acct_unlinked").click()
    expect(page.locator("h1")).to_have_text("Account acct_unlinked")
    expect(page.locator("#preview-missing")).to_contain_text("not linked to a Stripe customer")


def test_retry_turns_the_failed_report_dry_run(served: Served, page: Page) -> None:
    """Retry on the failed report pushes it again: without a Stripe key it ends dry_run,
    the notice says so, and the audit log names the dashboard."""
    report = served.seeded.failed_report
    login(page, served.url)
    page.goto(f"{served.url}/dashboard/reports?status=failed")
    row = page.locator(f'tr[data-report="{report}"]')
    expect(row.locator(".report-status")).to_have_text("failed")
    row.get_by_role("button", name="Retry").click()
    expect(page.locator(".notice")).to_have_text(f"Report {report} retried: now dry_run")
    expect(page).to_have_url(f"{served.url}/dashboard/reports?status=failed")
    expect(page.locator(f'tr[data-report="{report}"]')).to_have_count(0)
    page.select_option("#status", "dry_run")
    page.click("form.filters button")
    expect(page.locator(f'tr[data-report="{report}"] .report-status')).to_have_text("dry_run")
    assert "report.retried" in audit_actions(served)


def test_replay_applies_the_failed_delivery_again(served: Served, page: Page) -> None:
    """Replay on the failed delivery applies it again (a type the mirror ignores)."""
    delivery = served.seeded.failed_delivery
    login(page, served.url)
    page.goto(f"{served.url}/dashboard/webhooks?status=failed")
    page.locator(f'tr[data-delivery="{delivery}"]').get_by_role("button", name="Replay").click()
    expect(page.locator(".notice")).to_have_text(f"Delivery {delivery} replayed: now ignored")
    page.goto(f"{served.url}/dashboard/webhooks")
    status = page.locator(f'tr[data-delivery="{delivery}"] .delivery-status')
    expect(status).to_have_text("ignored")


def test_pause_then_resume_the_schedule(served: Served, page: Page) -> None:
    """Pause and Resume change the stored schedule and each writes an audit row."""
    login(page, served.url)
    page.goto(f"{served.url}/dashboard/schedule")
    expect(page.locator("#schedule-paused")).to_have_text("running")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#schedule-paused")).to_have_text("paused")
    expect(page.locator("#schedule-history tbody tr").first).to_contain_text("schedule.paused")
    assert served.ms.schedule.state().paused
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#schedule-paused")).to_have_text("running")
    first = page.locator("#schedule-history tbody tr").first.locator("td")
    expect(first.nth(1)).to_have_text("dashboard")
    expect(first.nth(2)).to_have_text("schedule.resumed")
    assert not served.ms.schedule.state().paused
    assert audit_actions(served)[-2:] == ["schedule.paused", "schedule.resumed"]


def test_change_the_schedule_expression(served: Served, page: Page) -> None:
    """A new expression is stored; a bad one is refused with the reason and changes nothing."""
    login(page, served.url)
    page.goto(f"{served.url}/dashboard/schedule")
    page.fill("#expression", "every 15m")
    page.get_by_role("button", name="Change").click()
    expect(page.locator("#schedule-expression")).to_have_text("every 15m")
    page.fill("#expression", "every fortnight")
    page.get_by_role("button", name="Change").click()
    expect(page.locator(".notice")).to_contain_text("The schedule was not changed")
    expect(page.locator("#schedule-expression")).to_have_text("every 15m")
    served.ms.schedule.set("every 1h", actor="test")


def test_logout_sends_every_page_back_to_login(served: Served, page: Page) -> None:
    """After Log out the cookie is gone and every page redirects to the login form."""
    login(page, served.url)
    expect(page.locator("h1")).to_have_text("Overview")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{served.url}/dashboard/login")
    expect(page.locator(".notice")).to_have_text("Logged out.")
    assert page.context.cookies() == []
    for path in PAGES:
        page.goto(served.url + path)
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))


def test_pages_load_offline_without_script_errors(served: Served, page: Page) -> None:
    """Every page loads with only this server's files (the chart library is vendored) and
    no console error (a CSP violation would be one)."""
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, served.url)
    for path in PAGES:
        response = page.goto(served.url + path)
        assert response is not None
        assert response.status == 200, path
    assert errors == []
    assert requests
    assert all(url.startswith(served.url + "/dashboard") for url in requests), requests
