"""Checking local meters against Stripe's: the pure rules, and check() on fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import pytest

from adapter.domain.aggregation import AGGREGATIONS, Aggregation
from adapter.errors import ConfigurationError
from adapter.gateway import StripeMeter
from adapter.pushing.meter_check import (
    CheckResult,
    MeterProblem,
    check,
    check_meters,
    stripe_meter_for,
)
from adapter.store.catalog import MeterInfo
from config.settings import Settings

if TYPE_CHECKING:
    from adapter.client import Metersync


def local(
    name: str, aggregation: Aggregation = "sum", *, event_name: str | None = None
) -> MeterInfo:
    """A local meter as the catalog returns it."""
    return MeterInfo(1, name, event_name or name, aggregation, "down", None)


def remote(  # noqa: PLR0913  a Stripe meter's fields, by keyword, each independent
    event_name: str,
    formula: str = "sum",
    *,
    id: str | None = None,
    status: str = "active",
    customer_key: str = "stripe_customer_id",
    value_key: str = "value",
) -> StripeMeter:
    """A Stripe meter that fits a local sum meter unless told otherwise."""
    return StripeMeter(
        id=id or f"mtr_{event_name}",
        event_name=event_name,
        status=status,
        formula=formula,
        customer_key=customer_key,
        value_key=value_key,
    )


def only(problems: list[MeterProblem]) -> MeterProblem:
    """The single problem found."""
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize(
    ("aggregation", "formula"),
    [("sum", "sum"), ("count", "sum"), ("max", "last"), ("last", "last")],
)
def test_fitting_stripe_meter_is_ok(aggregation: Aggregation, formula: str) -> None:
    """An active meter with the formula the aggregation needs and our payload keys is OK."""
    assert check_meters([local("m", aggregation)], [remote("m", formula)]) == []


def test_missing_stripe_meter() -> None:
    """No Stripe meter with the event name: the fix says what meter to create."""
    problem = only(check_meters([local("api_calls", event_name="api.calls")], [remote("other")]))
    assert (problem.meter, problem.event_name) == ("api_calls", "api.calls")
    assert problem.problem == "no Stripe meter has event name 'api.calls'"
    assert "create a Stripe meter with event name 'api.calls', formula 'sum'" in problem.fix
    assert "'stripe_customer_id'" in problem.fix
    assert "`metersync meters add api_calls --event-name EVENT_NAME`" in problem.fix


def test_no_stripe_meters_at_all() -> None:
    """With an empty Stripe account, every local meter is missing its Stripe meter."""
    problems = check_meters([local("a"), local("b", "max")], [])
    assert [p.meter for p in problems] == ["a", "b"]
    assert all(p.problem.startswith("no Stripe meter has event name") for p in problems)
    assert "formula 'last'" in problems[1].fix


def test_inactive_stripe_meter_is_reactivated() -> None:
    """An inactive meter that otherwise fits: the fix is to reactivate it."""
    problem = only(check_meters([local("m")], [remote("m", id="mtr_1", status="inactive")]))
    assert problem.problem == "Stripe meter mtr_1 is inactive and accepts no events"
    assert "reactivate Stripe meter mtr_1" in problem.fix
    assert "/v1/billing/meters/mtr_1/reactivate" in problem.fix


@pytest.mark.parametrize("aggregation", ["sum", "count"])
def test_count_meter_would_count_reports_as_one(aggregation: Aggregation) -> None:
    """Sum and count meters refuse a Stripe count meter: it would count each report as 1."""
    problem = only(check_meters([local("m", aggregation)], [remote("m", "count", id="mtr_c")]))
    assert "Stripe meter mtr_c has formula 'count'" in problem.problem
    assert "ignores their value" in problem.problem
    assert "would count as 1" in problem.problem
    assert "needs a 'sum' meter" in problem.problem
    assert "create a Stripe meter with event name 'm', formula 'sum'" in problem.fix
    assert "cannot change" in problem.fix


@pytest.mark.parametrize("aggregation", ["sum", "count"])
def test_sum_and_count_refuse_a_last_meter(aggregation: Aggregation) -> None:
    """Totals sent in parts must be added up: a last meter would keep only the latest part."""
    problem = only(check_meters([local("m", aggregation)], [remote("m", "last")]))
    assert "formula 'last'" in problem.problem
    assert "needs a 'sum' meter" in problem.problem
    assert "formula 'sum'" in problem.fix


@pytest.mark.parametrize(("aggregation", "formula"), [("max", "sum"), ("last", "count")])
def test_max_and_last_need_a_last_meter(aggregation: Aggregation, formula: str) -> None:
    """Max and last send the current value again and again: only a last meter fits."""
    problem = only(check_meters([local("m", aggregation)], [remote("m", formula)]))
    assert f"formula {formula!r}" in problem.problem
    assert "needs a 'last' meter" in problem.problem
    assert "formula 'last'" in problem.fix


def test_unknown_formula_is_a_problem() -> None:
    """A formula metersync does not know (a future Stripe one) is never taken as fitting."""
    problem = only(check_meters([local("m")], [remote("m", "average")]))
    assert "formula 'average'" in problem.problem
    assert "needs a 'sum' meter" in problem.problem


def test_other_customer_key() -> None:
    """A meter reading the customer from another payload key would find no customer."""
    problem = only(check_meters([local("m")], [remote("m", id="mtr_k", customer_key="cust")]))
    assert problem.problem == (
        "Stripe meter mtr_k reads the customer from payload key 'cust', "
        "but metersync sends it as 'stripe_customer_id'"
    )
    assert "customer payload key 'stripe_customer_id'" in problem.fix


def test_other_value_key() -> None:
    """A meter reading the value from another payload key would find no value."""
    problem = only(check_meters([local("m")], [remote("m", id="mtr_v", value_key="qty")]))
    assert problem.problem == (
        "Stripe meter mtr_v reads the value from payload key 'qty', "
        "but metersync sends it as 'value'"
    )
    assert "value payload key 'value'" in problem.fix


def test_several_problems_of_one_meter_make_one_entry_with_one_fix() -> None:
    """Inactive, wrong formula and wrong keys: one entry naming all, fixed by a new meter."""
    found = remote("m", "count", id="mtr_x", status="inactive", customer_key="c", value_key="v")
    problem = only(check_meters([local("m")], [found]))
    reasons = problem.problem.split("; ")
    assert reasons[0] == "Stripe meter mtr_x is inactive and accepts no events"
    assert any("formula 'count'" in r for r in reasons)
    assert any("payload key 'c'" in r for r in reasons)
    assert any("payload key 'v'" in r for r in reasons)
    # Reactivating would not help: formula and keys are fixed at creation.
    assert "reactivate" not in problem.fix
    assert problem.fix.startswith("create a Stripe meter with event name 'm', formula 'sum'")


def test_active_meter_with_lasting_problem_is_deactivated_first() -> None:
    """An active meter that cannot fit is to be replaced: the fix deactivates it first."""
    problem = only(check_meters([local("m")], [remote("m", "count", id="mtr_old")]))
    assert problem.fix.startswith("deactivate Stripe meter mtr_old and create a Stripe meter")


def test_multiple_meters_report_only_the_broken_ones_in_order() -> None:
    """Of several local meters, each broken one gets exactly one entry, in catalog order."""
    meters = [
        local("api_calls"),
        local("gone", event_name="gone_event"),
        local("peak", "max"),
        local("seats", "last"),
        local("tokens", "count"),
    ]
    stripe = [
        remote("api_calls"),
        remote("peak", "sum"),
        remote("seats", "last"),
        remote("tokens", "sum", status="inactive"),
        remote("unused", "count"),
    ]
    problems = check_meters(meters, stripe)
    assert [(p.meter, p.event_name) for p in problems] == [
        ("gone", "gone_event"),
        ("peak", "peak"),
        ("tokens", "tokens"),
    ]
    assert problems[0].problem.startswith("no Stripe meter")
    assert "needs a 'last' meter" in problems[1].problem
    assert "is inactive" in problems[2].problem


def test_two_local_meters_may_share_one_stripe_meter() -> None:
    """Local meters with the same event name are each checked against that Stripe meter."""
    meters = [local("a", event_name="e"), local("b", "max", event_name="e")]
    problem = only(check_meters(meters, [remote("e", "sum")]))
    assert problem.meter == "b"


def test_active_meter_wins_over_a_deactivated_one_with_the_same_event_name() -> None:
    """A deactivated meter replaced by an active one with its event name is no problem."""
    stripe = [remote("m", "count", id="mtr_old", status="inactive"), remote("m", id="mtr_new")]
    assert check_meters([local("m")], stripe) == []
    assert stripe_meter_for(local("m"), stripe) == stripe[1]


def test_recorded_meter_id_breaks_a_tie() -> None:
    """Among equally active meters, the one the catalog recorded is the one matched."""
    info = MeterInfo(1, "m", "m", "sum", "down", "mtr_b")
    stripe = [remote("m", id="mtr_a"), remote("m", id="mtr_b")]
    assert stripe_meter_for(info, stripe) == stripe[1]
    assert stripe_meter_for(local("m"), stripe) == stripe[0]


def test_event_names_match_exactly() -> None:
    """Event names are compared as they are: no case folding or trimming."""
    assert stripe_meter_for(local("m", event_name="API_calls"), [remote("api_calls")]) is None


# check(): the impure wrapper, on fakes.


@dataclass
class FakeMeters:
    """Stands in for ``Metersync.meters``."""

    found: list[MeterInfo]

    def list(self) -> list[MeterInfo]:
        return self.found


@dataclass
class FakeMetersync:
    """Stands in for a connected ``Metersync``: settings and the meter catalog."""

    settings: Settings
    meters: FakeMeters


@dataclass
class FakeGateway:
    """Stands in for the gateway; counts its listings."""

    meters: list[StripeMeter]
    calls: list[str] = field(default_factory=list)

    def list_meters(self) -> list[StripeMeter]:
        self.calls.append("list_meters")
        return self.meters


def fake_ms(meters: list[MeterInfo], *, key: str | None = None) -> Metersync:
    """A fake metersync with these local meters and, optionally, a Stripe key (check()
    reads only its ``settings`` and ``meters``)."""
    return cast("Metersync", FakeMetersync(Settings(stripe_api_key=key), FakeMeters(meters)))


def test_check_lists_stripe_meters_once_and_splits_ok_from_problems() -> None:
    """check() reads Stripe's meters through the gateway and sorts local meters by outcome."""
    meters = [local("a"), local("b", "max"), local("c")]
    gateway = FakeGateway([remote("a"), remote("b", "sum")])
    result = check(fake_ms(meters, key="sk_test_unit"), gateway=gateway)
    assert isinstance(result, CheckResult)
    assert gateway.calls == ["list_meters"]
    assert [p.meter for p in result.problems] == ["b", "c"]
    assert [m.name for m in result.ok] == ["a"]
    assert result.meters == meters
    assert result.remote == gateway.meters
    assert result.passed is False


def test_check_passes_when_every_meter_fits() -> None:
    """With every meter fitting, there are no problems and every meter is OK."""
    meters = [local("a"), local("b", "last")]
    gateway = FakeGateway([remote("a"), remote("b", "last")])
    result = check(fake_ms(meters), gateway=gateway)
    assert (result.passed, result.problems, result.ok) == (True, [], meters)


def test_check_without_key_or_gateway_needs_a_key() -> None:
    """Without a Stripe key there is nothing to check against: a configuration error."""
    with pytest.raises(ConfigurationError, match="needs a Stripe API key") as caught:
        check(fake_ms([local("a")]))
    assert "METERSYNC_STRIPE_API_KEY" in str(caught.value)


def test_every_aggregation_has_a_fitting_formula() -> None:
    """No local aggregation is left without a Stripe meter it can report to."""
    fitting = {
        aggregation: [
            formula
            for formula in ("sum", "count", "last")
            if not check_meters([local("m", aggregation)], [remote("m", formula)])
        ]
        for aggregation in AGGREGATIONS
    }
    assert fitting == {"sum": ["sum"], "count": ["sum"], "max": ["last"], "last": ["last"]}
