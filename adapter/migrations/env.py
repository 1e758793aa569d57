"""Alembic environment: runs on the engine metersync hands it, under a migration lock."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

# Imported for their side effect: each registers its tables on SQLModel.metadata.
import adapter.store.alert_models
import adapter.store.credit_models
import adapter.store.mirror_models
import adapter.store.models
import adapter.store.reconcile_models  # noqa: F401

target_metadata = SQLModel.metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes upgrading at once: the second waits, then finds nothing to do.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7218391)")
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the engine given by metersync, or one built from the URL."""
    engine = context.config.attributes.get("engine")
    if engine is None:
        engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `metersync db upgrade`")
run_migrations_online()
