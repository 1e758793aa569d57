"""Fixtures of the dashboard tests: a seeded database served by a real uvicorn on a free
127.0.0.1 port, and Debian's Chromium, headless, driven by Playwright.

Chromium is looked for at ``$METERSYNC_TEST_CHROMIUM``, ``/usr/bin/chromium``, then on
the ``PATH`` (``.ci/run`` installs Debian's ``chromium`` when it is missing). Playwright's
own browser download is never used. Without Chromium the browser tests skip locally and
fail under ``CI=true``, as the server tests do.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from pydantic import SecretStr

import adapter
from adapter.client import Metersync
from config.settings import Settings
from tests.browser.seed import TOKEN, WEBHOOK_SECRET, Seeded, seed
from tests.conftest import IN_CI
from tests.servers import Postgres
from webhooks.app import create_app

#: Flags for Chromium on a machine whose only network is loopback: without the
#: background-networking ones it keeps trying (refused) connections of its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: Seconds a page action or navigation may take.
PAGE_TIMEOUT_MS = 15_000


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(message)


def find_chromium() -> str | None:
    """The Chromium executable to drive, if there is one."""
    candidates = [
        os.environ.get("METERSYNC_TEST_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver for the whole run."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    """Headless Chromium on a fresh user data dir."""
    executable = find_chromium()
    if executable is None:
        _unavailable(
            "no Chromium: install it (apt-get install -y chromium) or set METERSYNC_TEST_CHROMIUM"
        )
    try:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
    except Exception as exc:  # noqa: BLE001  any launch failure: skip, or fail under CI
        _unavailable(f"Chromium at {executable} did not start: {exc}")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    """A new tab with no cookies."""
    browser.clear_cookies()
    tab = browser.new_page()
    yield tab
    tab.close()


class LiveServer:
    """uvicorn serving an app on 127.0.0.1, on a port the OS picked, in a thread."""

    def __init__(self, ms: Metersync) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        app = create_app(ms.settings, ms=ms, enqueue=lambda _id: None)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@dataclass(frozen=True, slots=True)
class Served:
    """A running dashboard on a seeded database."""

    url: str
    ms: Metersync
    seeded: Seeded
    backend: str


def dashboard_settings(database_url: str) -> Settings:
    """Settings of a seeded test server: the ops token and a webhook secret, no Stripe
    key (so retries end ``dry_run``)."""
    return Settings(
        database_url=database_url,
        auto_migrate=True,
        ops_token=SecretStr(TOKEN),
        stripe_webhook_secret=SecretStr(WEBHOOK_SECRET),
    )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The dashboard on a freshly seeded SQLite file or PostgreSQL database."""
    pg: Postgres | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('dashboard')}/metersync.db"
    else:
        pg = request.getfixturevalue("postgres_server")
        url = pg.create_database("metersync_dashboard")
    ms = adapter.connect(dashboard_settings(url))
    try:
        seeded = seed(ms)
        with LiveServer(ms) as server:
            yield Served(server.url, ms, seeded, request.param)
    finally:
        ms.close()
        if pg is not None:
            pg.drop_database(url)


#: Where the README's screenshots live (shipped with the package).
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "webhooks" / "dashboard" / "static" / "screenshots"
)


def login(page: Page, base: str, token: str = TOKEN) -> None:
    """Log in through the form, as an operator would."""
    page.goto(f"{base}/dashboard/login")
    page.fill("#token", token)
    page.click("form.login button")
