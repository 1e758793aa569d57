"""Shared fixtures: a fresh metersync on SQLite and on PostgreSQL.

Tests that need a server use the local one when it answers, otherwise a throwaway one.
Under ``CI=true`` a test that cannot get its server fails instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import hypothesis
import pytest
import responses
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from config.settings import Settings
from tests.servers import NoServer, Postgres, Redis, find_postgres, find_redis

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# CI runs the same examples every time, so a red run can be reproduced and is never luck;
# local runs keep exploring new examples.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if IN_CI:
    hypothesis.settings.load_profile("ci")


def _unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: server tests must run)", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def postgres_server() -> Postgres:
    """A PostgreSQL server for the whole run."""
    try:
        return find_postgres()
    except NoServer as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def redis_server() -> Redis:
    """A Redis server for the whole run."""
    try:
        return find_redis()
    except NoServer as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Postgres) -> Iterator[str]:
    """A database migrated once for the session; tests empty it before use."""
    url = postgres_server.create_database()
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    ms.close()
    yield url
    postgres_server.drop_database(url)


_TABLES = (
    "usage_event, usage_report, billing_period, audit_log, schedule, meter, account, "
    "stripe_customer, subscription, subscription_item, invoice, invoice_line, price, "
    "stripe_meter, webhook_delivery, invoice_report, sync_state, reconcile_run, reconcile_pair, "
    "reconcile_correction"
)
# installation is kept: its namespace is made once, by the migration.


def _empty(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """An empty, migrated database: SQLite in a temporary file, or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/metersync.db"
    url: str = request.getfixturevalue("postgres_url")
    _empty(url)
    return url


@pytest.fixture
def ms(db_url: str) -> Iterator[Metersync]:
    """A connected metersync with account ``acct_1`` and meters of every aggregation."""
    client = adapter.connect(Settings(database_url=db_url, auto_migrate=True))
    client.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    client.meters.upsert("api_calls", aggregation="sum")
    client.meters.upsert("requests", aggregation="count")
    client.meters.upsert("peak", aggregation="max")
    client.meters.upsert("seats", aggregation="last")
    yield client
    client.close()


@pytest.fixture
def stripe_api() -> Iterator[responses.RequestsMock]:
    """Intercepts every HTTP call; a call nothing was registered for fails."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
