"""Prepaid credit rules: which grants cover a cost, in which order, and what is left.

Pure: grants and amounts in, allocations out. Amounts are integers in the currency's minor
unit, as Stripe's are. The order follows Stripe's credit grants, so that the credits
metersync draws mid-cycle are the ones Stripe's invoice applies: the lowest ``priority``
number first (0 is the highest priority, 100 the lowest, 50 the default), then the grant
that expires soonest (never-expiring last), then the oldest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from adapter.errors import InvalidUsage

#: Stripe's priority range and default.
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 100, 50
CATEGORIES = ("paid", "promotional")
#: What a grant may cover: every metered price of the account, or named meters or prices.
SCOPES = ("all", "meters", "prices")


@dataclass(frozen=True, slots=True)
class GrantState:
    """A grant as drawdown sees it: what is left of it and what it covers."""

    id: int
    currency: str
    remaining: int
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    scope: str
    #: Meter names (scope ``meters``) or Stripe price ids (scope ``prices``).
    targets: tuple[str, ...] = ()
    voided: bool = False

    def live(self, at: datetime) -> bool:
        """In effect at ``at``: effective, not expired, not voided."""
        if self.voided or at < self.effective_at:
            return False
        return self.expires_at is None or at < self.expires_at

    def covers(self, *, currency: str, meter: str, price: str | None) -> bool:
        """Whether this grant may pay for usage of ``meter`` billed by ``price``."""
        if currency.lower() != self.currency.lower():
            return False
        if self.scope == "all":
            return True
        if self.scope == "meters":
            return meter in self.targets
        return price is not None and price in self.targets


def order(grants: Iterable[GrantState]) -> list[GrantState]:
    """Grants in the order they are drawn: priority, soonest expiry, oldest."""
    return sorted(
        grants,
        key=lambda g: (g.priority, g.expires_at is None, g.expires_at or g.effective_at, g.id),
    )


def allocate(  # noqa: PLR0913  keyword-only facts of one draw, each its own
    amount: int,
    grants: Sequence[GrantState],
    *,
    at: datetime,
    currency: str,
    meter: str,
    price: str | None,
) -> list[tuple[int, int]]:
    """Draw up to ``amount`` from the grants that cover it at ``at``: ``(grant id, drawn)``
    pairs, in drawing order. Never more than a grant has left; what no grant covers is
    not drawn (Stripe bills it as usual)."""
    if amount < 0:
        raise ValueError(f"amount must not be negative, got {amount}")
    drawn: list[tuple[int, int]] = []
    left = amount
    for grant in order(grants):
        if left == 0:
            break
        if grant.remaining <= 0 or not grant.live(at):
            continue
        if not grant.covers(currency=currency, meter=meter, price=price):
            continue
        take = min(left, grant.remaining)
        drawn.append((grant.id, take))
        left -= take
    return drawn


def release(amount: int, drawn: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Give back up to ``amount`` of what was drawn (``(grant id, drawn)`` in drawing
    order), the last drawn first: a cost that fell (volume tiers, a new allowance)
    returns its credit to the grants in the reverse of the order it was taken."""
    if amount < 0:
        raise ValueError(f"amount must not be negative, got {amount}")
    back: list[tuple[int, int]] = []
    left = amount
    for grant_id, taken in reversed(drawn):
        if left == 0:
            break
        give = min(left, taken)
        if give > 0:
            back.append((grant_id, give))
            left -= give
    return back


def check_grant(  # noqa: PLR0913  keyword-only fields of one grant, each checked on its own
    *,
    amount: object,
    currency: object,
    priority: object,
    category: object,
    scope: object,
    targets: Sequence[str],
    effective_at: datetime,
    expires_at: datetime | None,
) -> tuple[int, str]:
    """Refuse a grant Stripe would refuse, or that could never cover anything; return the
    amount and the lower-case currency."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidUsage(
            f"a credit amount is a positive integer of minor units (cents), got {amount!r}"
        )
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise InvalidUsage(f"currency must be a three-letter ISO code like 'usd', got {currency!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidUsage(f"priority must be an integer 0-100, got {priority!r}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidUsage(f"priority must be 0 (highest) to 100 (lowest), got {priority}")
    if category not in CATEGORIES:
        raise InvalidUsage(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if scope not in SCOPES:
        raise InvalidUsage(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope != "all" and not targets:
        raise InvalidUsage(f"a grant scoped to {scope} must name at least one")
    if scope == "all" and targets:
        raise InvalidUsage("a grant for all metered prices names no meters or prices")
    if expires_at is not None and expires_at <= effective_at:
        raise InvalidUsage(
            f"expires_at {expires_at.isoformat()} must be after effective_at "
            f"{effective_at.isoformat()}"
        )
    return amount, currency.lower()
