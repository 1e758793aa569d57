"""metersync: record usage locally, report it to Stripe exactly once, query it per period.

import adapter
ms = adapter.connect()
ms.increment("acct_1", 10, meter="api_calls", idempotency_key="req-1")
"""

from adapter.client import Metersync, connect
from adapter.domain.rating import rate
from adapter.errors import InvalidUsage, MetersyncError, RatingError
from adapter.reading.usage import MeterUsage, Usage
from adapter.recording.recorder import BatchResult, Receipt, Rejected

__all__ = [
    "BatchResult",
    "InvalidUsage",
    "MeterUsage",
    "Metersync",
    "MetersyncError",
    "RatingError",
    "Receipt",
    "Rejected",
    "Usage",
    "connect",
    "rate",
]
