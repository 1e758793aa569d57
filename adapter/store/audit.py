"""Writing the audit log: operator actions and other decisions someone may ask about."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from adapter.store.models import AuditLog, table, utcnow

_AUDIT = table(AuditLog)


def audit(
    conn: sa.Connection, actor: str, action: str, subject: str, detail: Mapping[str, Any]
) -> None:
    """Append one audit row on ``conn`` (the caller's transaction)."""
    conn.execute(
        _AUDIT.insert().values(
            at=utcnow(), actor=actor, action=action, subject=subject, detail=dict(detail)
        )
    )
