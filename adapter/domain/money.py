"""Currencies' minor units, for showing amounts: Stripe amounts are integers of them."""

from __future__ import annotations

from decimal import Decimal

#: Currencies whose minor unit is the major unit (Stripe's "zero-decimal currencies").
#: UGX is left out: Stripe lists it there but, for backwards compatibility, takes and
#: returns UGX amounts with two decimals ("to charge 5 UGX, provide an amount value of
#: 500", Stripe's currency special cases), as it does ISK.
ZERO_DECIMAL = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
#: Currencies with three decimals (Stripe's "three-decimal currencies"); amounts are still
#: integers in the minor unit (fils), so 5124 KWD minor units are 5.124 KWD.
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def minor_unit_exponent(currency: str | None) -> int:
    """Digits after the decimal point of ``currency``'s major unit (0, 2 or 3)."""
    code = (currency or "").lower()
    if code in ZERO_DECIMAL:
        return 0
    return 3 if code in THREE_DECIMAL else 2


def format_amount(amount: int | None, currency: str | None, *, code: bool = True) -> str:
    """``1234, "usd"`` → ``"12.34 USD"`` (``"12.34"`` without ``code``); ``500, "jpy"`` →
    ``"500 JPY"``; ``None`` → ``"-"``."""
    if amount is None:
        return "-"
    places = minor_unit_exponent(currency)
    major = Decimal(amount).scaleb(-places)
    text = f"{major:,.{places}f}"
    return f"{text} {currency.upper()}" if currency and code else text
