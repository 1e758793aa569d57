"""Explaining a mirrored invoice (``adapter.reading.explain``): each metered line beside the
reports linked to it, on SQLite and PostgreSQL, with meter events pushed through an
intercepted Stripe gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import responses

import adapter
from adapter.client import Metersync
from adapter.mirror.linking import link_invoice
from adapter.reading.explain import (
    LinkedReport,
    UnknownInvoice,
    disagreement,
    explain_invoice,
    sent_total,
)
from adapter.store.mirror_models import Invoice, InvoiceLine
from adapter.store.models import UsageReport, table
from config.settings import Settings
from tests import mirror_helpers as mh
from tests.gateways import EVENTS_URL, accept_meter_event, make_gateway

_LINES, _INVOICES, _REPORTS = table(InvoiceLine), table(Invoice), table(UsageReport)


@pytest.fixture(autouse=True)
def _empty_mirror(ms: Metersync) -> None:
    """Every test starts with empty mirror tables."""
    mh.clear_mirror(ms.engine)


@pytest.fixture
def live(ms: Metersync, db_url: str, stripe_api: responses.RequestsMock) -> Iterator[Metersync]:
    """The ``ms`` database through a client pushing to Stripe, whose meter events
    endpoint (intercepted) accepts everything."""
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=accept_meter_event)
    settings = Settings(database_url=db_url, auto_migrate=True)
    client = adapter.connect(settings, gateway=make_gateway(attempts=1))
    yield client
    client.close()


@pytest.fixture
def billed(live: Metersync) -> tuple[datetime, datetime]:
    """acct_1 used 2 + 3 api_calls (mtr_calls) and peaked at 4 then 6 (mtr_peak, a
    ``last`` meter) in two hourly windows of a period; a draft cycle invoice for it was
    flushed and linked, and every report pushed. Returns the period."""
    h = mh.hour(5)
    period = (h - timedelta(hours=1), h + timedelta(hours=2))
    mh.link_meter(live, "api_calls", "mtr_calls")
    mh.mirror_stripe_meter(live, "mtr_peak", event_name="peak", formula="last")
    mh.record(live, "api_calls", h, ((10, 2), (70, 3)))
    mh.record(live, "peak", h, ((15, 4), (75, 6)))
    mh.mirror_invoice(
        live,
        period=period,
        created=datetime.now(UTC),
        lines=[
            {"id": "il_calls", "stripe_meter_id": "mtr_calls", "quantity": Decimal(5)},
            {"id": "il_peak", "stripe_meter_id": "mtr_peak", "quantity": Decimal(6)},
            {"id": "il_seats", "stripe_meter_id": "mtr_seats", "quantity": Decimal(0)},
            {"id": "il_fee", "quantity": Decimal(1)},
        ],
    )
    mh.draft(live)
    live.report_now()
    return period


def set_quantity(ms: Metersync, line_id: str, quantity: Decimal) -> None:
    """Change what Stripe billed on a line."""
    with ms.engine.begin() as conn:
        conn.execute(_LINES.update().where(_LINES.c.id == line_id).values(quantity=quantity))


def test_agreeing_lines_list_their_reports(
    live: Metersync, billed: tuple[datetime, datetime]
) -> None:
    """Each metered line shows its meters, period, quantity and linked reports; the sum
    line agrees with the values sent added up, the last line with the last value sent."""
    found = explain_invoice(live.engine, "in_1")
    assert (found.invoice_id, found.status, found.account) == ("in_1", "draft", "acct_1")
    assert found.flushed_at is not None
    assert found.other_lines == 1
    calls, peak, seats = found.lines
    assert (calls.line_id, calls.meters, calls.formula) == ("il_calls", ("api_calls",), "sum")
    assert (calls.period_start, calls.period_end) == billed
    assert [(r.status, r.sent_value, r.events) for r in calls.reports] == [
        ("sent", 2, 1), ("sent", 3, 1),
    ]  # fmt: skip
    assert (calls.quantity, calls.sent, calls.events, calls.agree, calls.reason) == (
        5, 5, 2, True, None,
    )  # fmt: skip
    assert (peak.meters, peak.formula, peak.sent, peak.agree) == (("peak",), "last", 6, True)
    assert [r.value for r in peak.reports] == [4, 6]
    assert (seats.meters, seats.reports, seats.agree) == ((), (), True)


def test_disagreeing_lines_say_why(live: Metersync, billed: tuple[datetime, datetime]) -> None:
    """A line whose quantity differs from what was sent says why: more billed than sent,
    a report not sent yet, no local meter for the Stripe meter."""
    set_quantity(live, "il_calls", Decimal(9))
    set_quantity(live, "il_seats", Decimal(2))
    h = mh.hour(5)
    mh.record(live, "peak", h, ((100, 8),))
    live.report_now()  # sends 8: Stripe billed 6, so metersync sent more
    calls, peak, seats = explain_invoice(live.engine, "in_1").lines
    assert (calls.agree, calls.sent) == (False, 5)
    assert calls.reason is not None
    assert calls.reason.startswith("Stripe billed 4 more than metersync sent")
    assert seats.reason == "no local meter reports to this Stripe meter"
    assert peak.agree  # the report of 8 is not linked: it came after the flush
    with live.engine.begin() as conn:
        link_invoice(conn, "in_1")
    _, peak, _ = explain_invoice(live.engine, "in_1").lines
    assert (peak.sent, peak.agree) == (8, False)
    assert peak.reason == "metersync sent 2 more than Stripe billed for this line"
    report = mh.report_at(live, "api_calls", h + timedelta(minutes=10))
    with live.engine.begin() as conn:
        conn.execute(_REPORTS.update().where(_REPORTS.c.id == report.id).values(status="closed"))
    calls, _, _ = explain_invoice(live.engine, "in_1").lines
    assert calls.reason == f"report {report.id} is not sent yet"


def test_reports_sent_after_finalisation_are_named(
    live: Metersync, billed: tuple[datetime, datetime]
) -> None:
    """On a finalised invoice created over an hour before the reports were sent, a short
    quantity is put down to the late sends."""
    set_quantity(live, "il_calls", Decimal(0))
    with live.engine.begin() as conn:
        conn.execute(_INVOICES.update().values(status="open", created=billed[1]))
    calls = explain_invoice(live.engine, "in_1").lines[0]
    ids = ", ".join(str(r.id) for r in calls.reports)
    assert calls.reason == f"reports {ids} are sent after the invoice was finalised"


def test_unknown_invoice_is_a_clear_error(ms: Metersync) -> None:
    """An invoice the mirror does not hold raises UnknownInvoice naming it."""
    with pytest.raises(UnknownInvoice, match="no invoice 'in_nope' in the mirror"):
        explain_invoice(ms.engine, "in_nope")


def test_to_dict_is_json_ready(live: Metersync, billed: tuple[datetime, datetime]) -> None:
    """to_dict gives strings for decimals and ISO times, and round-trips through JSON."""
    data = json.loads(json.dumps(explain_invoice(live.engine, "in_1").to_dict()))
    calls = data["lines"][0]
    assert (calls["quantity"], calls["sent"], calls["agree"]) == ("5", "5", True)
    assert calls["period_start"] == billed[0].isoformat()
    assert calls["reports"][0]["sent_value"] == "2"


def test_sent_total_and_reason_rules() -> None:
    """The pure rules: only sent reports count; 'last' takes the newest timestamp; a
    dry run or a failure is named before the size of the difference."""
    t = datetime(2026, 1, 1, tzinfo=UTC)

    def rep(i: int, status: str, sent: int | None, hours: int) -> LinkedReport:
        at = t + timedelta(hours=hours)
        value = None if sent is None else Decimal(sent)
        return LinkedReport(i, "m", t, t, status, 1, Decimal(1), value, at, at)

    def why(quantity: int | None, sent: int, reports: list[LinkedReport]) -> str | None:
        return disagreement(
            quantity=None if quantity is None else Decimal(quantity),
            sent=Decimal(sent),
            reports=reports,
            has_meters=True,
            finalised_by=None,
        )

    reports = [rep(1, "sent", 5, 2), rep(2, "sent", 3, 1), rep(3, "dry_run", 7, 3)]
    assert sent_total("sum", reports) == 8
    assert sent_total("last", reports) == 5
    assert why(8, 8, reports) is None
    assert why(15, 8, reports) == "report 3 is a dry run (nothing sent)"
    assert why(1, 0, [rep(4, "failed", None, 0)]) == "report 4 is failed or expired"
    assert why(None, 0, []) == "Stripe's line carries no quantity"
    assert why(3, 0, []) == "no local report is linked to this line"
