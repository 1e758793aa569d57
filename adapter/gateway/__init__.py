"""The only package that talks to Stripe: meter events (v1, and the v2 stream), meters,
reading objects and events for ``metersync sync``, and invoice previews.

Every call goes through one short retry policy (tenacity) and ends in one of three ways:
delivered, :class:`TransientError` (try again later) or :class:`PermanentError` (an operator
must act). :func:`classify` is the whole rule list. The API key never reaches a message.
The modules inside are private; import from here.
"""

from adapter.gateway.client import Gateway
from adapter.gateway.errors import PermanentError, StripeCallError, TransientError
from adapter.gateway.objects import Pace, Page, read_pace
from adapter.gateway.policy import Outcome, classify, idempotency_key, mask_secrets
from adapter.gateway.stream import MeterEventStream, rfc3339
from adapter.gateway.types import Delivery, StreamEvent, StripeMeter

__all__ = [
    "Delivery",
    "Gateway",
    "MeterEventStream",
    "Outcome",
    "Pace",
    "Page",
    "PermanentError",
    "StreamEvent",
    "StripeCallError",
    "StripeMeter",
    "TransientError",
    "classify",
    "idempotency_key",
    "mask_secrets",
    "read_pace",
    "rfc3339",
]
