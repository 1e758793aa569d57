"""Embedded defaults and Stripe limits that the adapter respects."""

from datetime import timedelta

#: SQLite file used when no database URL is configured.
DATABASE_URL = "sqlite:///./metersync.db"
#: Schedule used until an operator stores another one.
REPORT_SCHEDULE = "every 1h"
#: How often the scheduler starts a reconcile run (same syntax as the report schedule).
RECONCILE_SCHEDULE = "every 1d"
#: Stripe processes meter events asynchronously: a pair sent to more recently than this
#: is reported as settling, not compared.
RECONCILE_SETTLE_SECONDS = 600
#: Summary reads reconcile keeps in flight at once (each still waits for the read pace).
RECONCILE_CONCURRENCY = 8
#: Seconds between the scheduler's credit drawdowns (and alert checks).
CREDIT_INTERVAL = 10.0
#: Meter used when a call names none; created as a ``sum`` meter on first use.
DEFAULT_METER = "usage"
#: Stripe refuses meter events more than this far in the future.
MAX_FUTURE_SKEW = timedelta(minutes=5)
#: Stripe refuses meter events older than this.
STRIPE_MAX_EVENT_AGE = timedelta(days=35)
#: We refuse events a little younger than Stripe's limit, so the report they land in
#: can still be pushed after the next schedule tick.
PUSH_MARGIN = timedelta(hours=1)
#: Stripe accepts at most this many significant digits in a meter event value.
MAX_SIGNIFICANT_DIGITS = 15
#: Most decimal places a quantity may have, so that sums stay exact in 60 digits.
MAX_DECIMAL_PLACES = 30
#: Longest Stripe ``event_name`` and ``identifier``.
MAX_STRIPE_NAME = 100
#: Longest idempotency key we store.
MAX_IDEMPOTENCY_KEY = 255
#: Oldest ``Stripe-Signature`` timestamp accepted, in seconds (Stripe's own default).
WEBHOOK_TOLERANCE = 300
#: Largest webhook body accepted; Stripe's events are far smaller.
WEBHOOK_MAX_BODY = 1024 * 1024
#: Times a webhook delivery is processed before it is marked ``failed``.
WEBHOOK_MAX_ATTEMPTS = 5
