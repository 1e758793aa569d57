"""``metersync db upgrade``: apply the migrations shipped with this version."""

from __future__ import annotations

import typer
from alembic.util import CommandError

from adapter.cli.context import console, state
from adapter.errors import MetersyncError
from adapter.store import db

app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Apply every pending migration to the database (METERSYNC_DATABASE_URL or
    --database-url). Safe to run again, and from several processes at once."""
    settings = state(ctx).settings()
    # Not adapter.connect(): it refuses a PostgreSQL schema behind this code, which is
    # exactly the database this command exists to bring up to date.
    engine = db.make_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        before, head = db.current_revision(engine), db.head_revision(engine)
        after = db.upgrade(engine) if before != head else before
    except CommandError as exc:  # e.g. a database migrated by a newer metersync
        raise MetersyncError(f"cannot upgrade the database at {where}: {exc}") from None
    finally:
        engine.dispose()
    if after != head:
        raise MetersyncError(f"database at {where} is at {after} after upgrading, expected {head}")
    if before == after:
        console.print(f"database at {where} is already at revision {after} (head)")
    else:
        console.print(
            f"database at {where} upgraded from revision {before or 'nothing (empty)'} "
            f"to {after} (head)"
        )
