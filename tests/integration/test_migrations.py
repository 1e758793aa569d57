"""Schema migrations: refusing an old schema, upgrading, and upgrading concurrently."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import adapter
import adapter.store.alert_models
import adapter.store.credit_models
import adapter.store.mirror_models  # registers the mirror tables in SQLModel.metadata
from adapter.errors import MetersyncError, SchemaOutOfDate
from adapter.store import db
from adapter.store.mirror_models import Price
from adapter.store.models import table
from config.settings import Settings
from tests.servers import Postgres

_SPAWN = multiprocessing.get_context("spawn")
#: Tables the first migration creates (besides alembic_version).
TABLES = {
    "installation",
    "account",
    "meter",
    "billing_period",
    "usage_report",
    "usage_event",
    "schedule",
    "audit_log",
    "price_allowance",
    "credit_grant",
    "credit_entry",
    "alert",
    "alert_firing",
    "alert_delivery",
    "stripe_customer",
    "subscription",
    "subscription_item",
    "invoice",
    "invoice_line",
    "invoice_report",
    "price",
    "stripe_meter",
    "webhook_delivery",
    "sync_state",
    "reconcile_run",
    "reconcile_pair",
    "reconcile_correction",
}


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


@pytest.fixture
def fresh_url(postgres_server: Postgres) -> Iterator[str]:
    """An empty PostgreSQL database: no tables, no migrations."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture
def engine(fresh_url: str) -> Iterator[sa.Engine]:
    """An engine on the empty database."""
    eng = db.make_engine(fresh_url)
    try:
        yield eng
    finally:
        eng.dispose()


def _upgrade_worker(url: str, barrier: Barrier, results: Queue[tuple[str, object]]) -> None:
    """Process entry point: upgrade ``url`` as soon as every process is ready."""
    engine = db.make_engine(url)
    try:
        barrier.wait(timeout=60)
        results.put(("ok", db.upgrade(engine)))
    except BaseException:  # noqa: BLE001  process entry point: every failure goes to the test as a traceback
        results.put(("error", traceback.format_exc()))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_unmigrated_postgres_is_refused(fresh_url: str, engine: sa.Engine) -> None:
    """connect() on an empty PostgreSQL database raises SchemaOutOfDate naming the fix,
    and creates nothing."""
    with pytest.raises(SchemaOutOfDate, match="run `metersync db upgrade`") as caught:
        adapter.connect(Settings(database_url=fresh_url))
    assert isinstance(caught.value, MetersyncError)
    assert f"needs {db.head_revision(engine)}" in str(caught.value)
    assert "at nothing" in str(caught.value)
    assert _tables(engine) == set()
    assert db.current_revision(engine) is None


@pytest.mark.postgres
def test_upgrade_brings_postgres_to_head(fresh_url: str, engine: sa.Engine) -> None:
    """db.upgrade() applies every migration; connect() then works without auto-migrate."""
    head = db.head_revision(engine)
    assert head is not None
    assert db.upgrade(engine) == head
    assert db.current_revision(engine) == head
    assert _tables(engine) == TABLES | {"alembic_version"}
    ms = adapter.connect(Settings(database_url=fresh_url))
    try:
        ms.accounts.upsert("acct_1")
        ms.meters.upsert("api_calls")
        assert not ms.increment("acct_1", 2, meter="api_calls").duplicate
    finally:
        ms.close()


@pytest.mark.postgres
def test_migrations_create_exactly_the_models(engine: sa.Engine, tmp_path: Path) -> None:
    """After upgrading, the database matches the SQLModel tables on PostgreSQL and SQLite."""
    sqlite = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    for eng in (engine, sqlite):
        db.upgrade(eng)
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        # TEXT vs SQLModel's length-less string is the same column; anything else is drift.
        drift = [d for d in diff if not (isinstance(d, list) and d[0][0] == "modify_type")]
        assert drift == [], f"{eng.dialect.name}: models and migrations differ: {drift}"
    sqlite.dispose()


def _columns(engine: sa.Engine, table_name: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table_name)}


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_price_rating_columns_downgrade_and_upgrade_again(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """0005 adds price.nickname and price.custom_unit_amount; downgrading to 0004 drops
    them and keeps the prices, upgrading again brings them back empty."""
    url = (
        f"sqlite:///{tmp_path / 'p.db'}"
        if dialect == "sqlite"
        else request.getfixturevalue("fresh_url")
    )
    eng = db.make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(resources.files("adapter") / "migrations"))
    config.attributes["engine"] = eng
    try:
        db.upgrade(eng)
        price = table(Price)
        with eng.begin() as conn:
            conn.execute(
                price.insert().values(
                    id="price_1",
                    meta={},
                    updated_at=datetime.now(UTC),
                    nickname="Plan",
                    custom_unit_amount={"minimum": 100},
                )
            )
        assert {"nickname", "custom_unit_amount"} <= _columns(eng, "price")

        command.downgrade(config, "0004")

        assert db.current_revision(eng) == "0004"
        assert {"nickname", "custom_unit_amount"} & _columns(eng, "price") == set()
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM price")).scalars().all() == ["price_1"]

        assert db.upgrade(eng) == db.head_revision(eng)
        with eng.connect() as conn:
            got = conn.execute(sa.select(price.c.nickname, price.c.custom_unit_amount)).one()
        assert tuple(got) == (None, None)
    finally:
        eng.dispose()


def test_upgrading_twice_is_a_no_op(fresh_url: str, engine: sa.Engine) -> None:
    """A second upgrade keeps the revision and the data already stored."""
    head = db.upgrade(engine)
    ms = adapter.connect(Settings(database_url=fresh_url))
    try:
        ms.accounts.upsert("acct_1", stripe_customer_id="cus_1")
        ms.meters.upsert("api_calls")
        ms.increment("acct_1", 5, meter="api_calls", idempotency_key="k")
        assert db.upgrade(engine) == head
        assert db.current_revision(engine) == head
        assert ms.accounts.get("acct_1").stripe_customer_id == "cus_1"
        assert ms.get_usage("acct_1").meters["api_calls"].quantity == 5
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [v[0] for v in versions] == [head]
    finally:
        ms.close()


@pytest.mark.postgres
def _run_together(target: Callable[..., None], url: str, *, processes: int) -> list[Any]:
    """Start ``processes`` copies of ``target`` released together by a barrier; return
    what each put on the result queue."""
    barrier = _SPAWN.Barrier(processes)
    results = _SPAWN.Queue()
    procs = [
        _SPAWN.Process(target=target, args=(url, barrier, results), daemon=True)
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        return [results.get(timeout=90) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_upgrading_at_once_both_succeed(
    postgres_server: Postgres, round_: int
) -> None:
    """Two processes upgrading the same empty database together both end at head."""
    url = postgres_server.create_database()
    try:
        answers = _run_together(_upgrade_worker, url, processes=2)
        engine = db.make_engine(url)
        try:
            head = db.head_revision(engine)
            assert answers == [("ok", head), ("ok", head)], answers
            assert db.current_revision(engine) == head
            assert _tables(engine) == TABLES | {"alembic_version"}
        finally:
            engine.dispose()
    finally:
        postgres_server.drop_database(url)


def test_sqlite_migrates_itself_on_connect(tmp_path: Path) -> None:
    """A new SQLite file is created and brought to head by connect(), without
    auto_migrate, and connecting again keeps its data."""
    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    assert not path.exists()
    ms = adapter.connect(Settings(database_url=url, auto_migrate=False))
    try:
        assert db.current_revision(ms.engine) == db.head_revision(ms.engine)
        assert _tables(ms.engine) == TABLES | {"alembic_version"}
        ms.accounts.upsert("acct_1")
        ms.meters.upsert("api_calls")
        ms.increment("acct_1", 4, meter="api_calls")
    finally:
        ms.close()
    again = adapter.connect(Settings(database_url=url))
    try:
        assert again.get_usage("acct_1").meters["api_calls"].quantity == 4
    finally:
        again.close()


def _connect_worker(url: str, barrier: Barrier, results: Queue[tuple[str, object]]) -> None:
    """Process entry point: connect to ``url`` (migrating it) once every process is ready."""
    try:
        barrier.wait(timeout=60)
        ms = adapter.connect(Settings(database_url=url))
        try:
            results.put(("ok", db.current_revision(ms.engine)))
        finally:
            ms.close()
    except BaseException:  # noqa: BLE001  process entry point: every failure goes to the test as a traceback
        results.put(("error", traceback.format_exc()))


@pytest.mark.parametrize("round_", range(2))
def test_processes_connecting_to_a_new_sqlite_file_at_once(tmp_path: Path, round_: int) -> None:
    """Three processes opening the same new SQLite file together all migrate it safely."""
    url = f"sqlite:///{tmp_path}/race.db"
    answers = _run_together(_connect_worker, url, processes=3)
    engine = db.make_engine(url)
    try:
        head = db.head_revision(engine)
        assert answers == [("ok", head)] * 3, answers
        assert _tables(engine) == TABLES | {"alembic_version"}
    finally:
        engine.dispose()


def test_a_database_url_with_a_percent_sign_migrates(tmp_path: Path) -> None:
    """A '%' in the URL (URL-encoded passwords, socket paths) does not break migrations."""
    (tmp_path / "a%b").mkdir()  # written %25 in the URL, as URL encoding requires
    ms = adapter.connect(Settings(database_url=f"sqlite:///{tmp_path}/a%25b/metersync.db"))
    try:
        assert db.current_revision(ms.engine) == db.head_revision(ms.engine)
    finally:
        ms.close()
