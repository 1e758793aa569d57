"""Can every local meter report to Stripe? Checks the local catalog against Stripe's meters.

:func:`check_meters` is the rule list and is pure: meters in, problems out, no I/O. The
module imports no Stripe library at load time; :func:`check` is the one entry point that
lists the account's meters, through the gateway.

A local meter works when a Stripe meter with its event name is active, aggregates with the
formula its reports need (see :func:`adapter.domain.reporting.stripe_formula`) and reads the
payload keys metersync sends. A meter's formula and payload keys cannot change after
Stripe creates it, so those problems are fixed with a new Stripe meter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from adapter.domain.reporting import stripe_formula
from adapter.errors import ConfigurationError

if TYPE_CHECKING:
    from adapter.gateway import StripeMeter
    from adapter.pushing.library import Library
    from adapter.store.catalog import MeterInfo

#: The payload key that carries the Stripe customer id in every event metersync sends.
CUSTOMER_KEY = "stripe_customer_id"
#: The payload key that carries the value in every event metersync sends.
VALUE_KEY = "value"


class MeterLister(Protocol):
    """What :func:`check` needs of a gateway: :meth:`adapter.gateway.Gateway.list_meters`."""

    def list_meters(self) -> list[StripeMeter]:
        """Every meter on the Stripe account."""
        ...


@dataclass(frozen=True, slots=True)
class MeterProblem:
    """Why one local meter cannot report to Stripe, and what to do about it."""

    meter: str
    event_name: str
    problem: str
    fix: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of :func:`check`: every local meter, Stripe's meters, and the problems."""

    #: Every local meter, by name.
    meters: list[MeterInfo]
    #: Every meter on the Stripe account, to show which one each local meter reaches.
    remote: list[StripeMeter]
    #: One per local meter that cannot report to Stripe, by meter name.
    problems: list[MeterProblem]

    @property
    def ok(self) -> list[MeterInfo]:
        """The local meters that can report to Stripe."""
        failing = {problem.meter for problem in self.problems}
        return [info for info in self.meters if info.name not in failing]

    @property
    def passed(self) -> bool:
        """True when every local meter can report to Stripe."""
        return not self.problems


def stripe_meter_for(local: MeterInfo, remote: Sequence[StripeMeter]) -> StripeMeter | None:
    """The Stripe meter that events of ``local`` reach: same event name, active first."""
    matches = [meter for meter in remote if meter.event_name == local.event_name]
    # Stripe routes events by event name; a deactivated meter may share the name of the
    # active one that replaced it. The local record of a meter id breaks a remaining tie.
    matches.sort(key=lambda m: (m.status != "active", m.id != local.stripe_meter_id))
    return matches[0] if matches else None


def check_meters(local: list[MeterInfo], remote: list[StripeMeter]) -> list[MeterProblem]:
    """One problem per local meter that cannot report to Stripe, in the order given."""
    problems = []
    for info in local:
        problem = _problem(info, stripe_meter_for(info, remote))
        if problem is not None:
            problems.append(problem)
    return problems


def check(ms: Library, *, gateway: MeterLister | None = None) -> CheckResult:
    """Check every local meter of ``ms`` against the meters on the Stripe account.

    Lists Stripe's meters through ``gateway``, or one built from ``ms.settings``. Raises
    :class:`ConfigurationError` when there is neither, and the gateway's
    ``TransientError`` / ``PermanentError`` when Stripe does not answer the listing.
    """
    if gateway is None:
        if ms.settings.stripe_api_key is None:
            raise ConfigurationError(
                "checking meters against Stripe needs a Stripe API key: set "
                "METERSYNC_STRIPE_API_KEY (a test key sk_test_… is enough) and run again"
            )
        gateway = ms.gateway()
        assert gateway is not None  # built from the key checked above
    local = ms.meters.list()
    remote = gateway.list_meters()
    return CheckResult(meters=local, remote=remote, problems=check_meters(local, remote))


def _problem(info: MeterInfo, found: StripeMeter | None) -> MeterProblem | None:
    """The problem of one local meter with the Stripe meter its events reach, if any."""
    needed = stripe_formula(info.aggregation)
    if found is None:
        return MeterProblem(
            info.name,
            info.event_name,
            f"no Stripe meter has event name {info.event_name!r}",
            f"create a Stripe meter with event name {info.event_name!r}, {_shape(needed)}; "
            f"or point this meter at an existing one with "
            f"`metersync meters add {info.name} --event-name EVENT_NAME`",
        )
    lasting = _lasting_problems(info, found, needed)
    inactive = found.status != "active"
    if not lasting and not inactive:
        return None
    reasons = (
        [f"Stripe meter {found.id} is {found.status} and accepts no events"] if inactive else []
    )
    reasons += lasting
    if lasting:
        # Formula and payload keys are fixed at creation: reactivating would not help.
        retire = f"deactivate Stripe meter {found.id} and " if not inactive else ""
        fix = (
            f"{retire}create a Stripe meter with event name {info.event_name!r}, "
            f"{_shape(needed)} (a meter's formula and payload keys cannot change); or "
            f"point this meter at another one with "
            f"`metersync meters add {info.name} --event-name EVENT_NAME`"
        )
    else:
        fix = (
            f"reactivate Stripe meter {found.id} (Dashboard, or "
            f"POST /v1/billing/meters/{found.id}/reactivate)"
        )
    return MeterProblem(info.name, info.event_name, "; ".join(reasons), fix)


def _lasting_problems(info: MeterInfo, found: StripeMeter, needed: str) -> list[str]:
    """What about ``found`` cannot change and does not fit ``info``: formula, payload keys."""
    reasons = []
    if found.formula != needed:
        reasons.append(_formula_problem(info, found, needed))
    if found.customer_key != CUSTOMER_KEY:
        reasons.append(
            f"Stripe meter {found.id} reads the customer from payload key "
            f"{found.customer_key!r}, but metersync sends it as {CUSTOMER_KEY!r}"
        )
    if found.value_key != VALUE_KEY:
        reasons.append(
            f"Stripe meter {found.id} reads the value from payload key "
            f"{found.value_key!r}, but metersync sends it as {VALUE_KEY!r}"
        )
    return reasons


def _formula_problem(info: MeterInfo, found: StripeMeter, needed: str) -> str:
    """Why a Stripe meter's formula gives wrong totals for a local meter's reports."""
    head = f"Stripe meter {found.id} has formula {found.formula!r}"
    if found.formula == "count":
        return (
            f"{head}: it counts events and ignores their value, so each pre-aggregated "
            f"report of this {info.aggregation} meter would count as 1; "
            f"it needs a {needed!r} meter"
        )
    if needed == "sum":
        return (
            f"{head}: it keeps only the latest value of a period, but this "
            f"{info.aggregation} meter sends its total in parts that must be added up; "
            "it needs a 'sum' meter"
        )
    if found.formula == "sum":
        return (
            f"{head}: it adds values up, but this {info.aggregation} meter sends its "
            "current value again in each report; it needs a 'last' meter"
        )
    return f"{head}, which metersync cannot report to; this meter needs a {needed!r} meter"


def _shape(formula: str) -> str:
    """The settings a new Stripe meter needs, in the words of Stripe's API."""
    return (
        f"formula {formula!r}, customer payload key {CUSTOMER_KEY!r} "
        f"and value payload key {VALUE_KEY!r}"
    )
