"""Fixtures shared by the integration tests of rating, credits and alerts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapter.client import Metersync
from adapter.store.alert_models import Alert, AlertDelivery, AlertFiring
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.models import table
from tests.billing_world import bill
from tests.mirror_helpers import clear_mirror

#: The credit and alert tables, children first.
_LEDGER = [table(m) for m in (AlertDelivery, AlertFiring, Alert, CreditEntry, CreditGrant)]


def clear_ledger(ms: Metersync) -> None:
    """Empty the credit and alert tables."""
    with ms.engine.begin() as conn:
        for t in _LEDGER:
            conn.execute(t.delete())


@pytest.fixture
def billed(ms: Metersync) -> Iterator[Metersync]:
    """acct_1 billed by graduated API calls; 15,000 calls recorded (cost 25,500 cents);
    no credit and no alerts."""
    clear_ledger(ms)
    clear_mirror(ms.engine)
    bill(ms)
    yield ms
    clear_ledger(ms)
    clear_mirror(ms.engine)
