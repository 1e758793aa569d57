"""Typed settings read from the environment (prefix ``METERSYNC_``) and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config import defaults

#: Fewest characters an alert webhook signing secret may have.
MIN_SECRET = 16
_HOW_TO_MAKE_ONE = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


class Settings(BaseSettings):
    """Everything metersync reads from its environment."""

    # hide_input_in_errors: a refused secret (or a database URL with its password) must
    # not be echoed into a traceback or a log by pydantic's ValidationError.
    model_config = SettingsConfigDict(
        env_prefix="METERSYNC_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    database_url: str = defaults.DATABASE_URL
    redis_url: str | None = None
    stripe_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("METERSYNC_STRIPE_API_KEY", "STRIPE_API_KEY"),
    )
    stripe_api_base: str = "https://api.stripe.com"
    stripe_meter_events_base: str = "https://meter-events.stripe.com"
    stripe_webhook_secret: SecretStr | None = None
    stripe_mode: Literal["test", "live"] | None = None
    report_schedule: str = defaults.REPORT_SCHEDULE
    ops_token: SecretStr | None = None
    default_meter: str = defaults.DEFAULT_METER
    log_level: str = "INFO"
    #: Apply pending migrations on connect. SQLite always does; PostgreSQL only when set.
    auto_migrate: bool = False
    #: Meter event calls per second, shared by every worker (unset: 25 in test mode,
    #: 1,000 in live mode, Stripe's limits).
    stripe_rate_limit: int | None = Field(default=None, gt=0)
    #: Seconds one Stripe request may take. With the gateway's 4 attempts and backoff a
    #: push stays well inside the 5-minute (customer, meter) lock of the worker.
    stripe_timeout: float = Field(default=20.0, gt=0, le=60)
    #: How the worker sends meter events: ``v1`` (one call per report, synchronous
    #: validation) or ``stream`` (Stripe's v2 high-volume stream, up to 100 per call).
    stripe_transport: Literal["v1", "stream"] = "v1"
    #: Oldest ``Stripe-Signature`` timestamp accepted, in seconds (Stripe's default: 300).
    webhook_tolerance: int = Field(default=defaults.WEBHOOK_TOLERANCE, gt=0, le=86_400)
    #: Where ``metersync serve`` and ``metersync run`` listen for HTTP.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65_535)
    #: When the scheduler starts a reconcile run (``every 1d``, a cron expression...).
    reconcile_schedule: str = defaults.RECONCILE_SCHEDULE
    #: Seconds after a pair's newest send before reconcile compares it with Stripe.
    reconcile_settle_seconds: int = Field(default=defaults.RECONCILE_SETTLE_SECONDS, ge=0)
    #: Stripe reads per second reconcile may make (unset: 80 % of Stripe's read limit).
    reconcile_read_rate: float | None = Field(default=None, gt=0)
    #: Summary reads reconcile keeps in flight at once, inside that pace.
    reconcile_concurrency: int = Field(default=defaults.RECONCILE_CONCURRENCY, ge=1, le=64)
    #: Seconds between the scheduler's drawdowns of every account with credit (and its
    #: alert checks): the most a balance seen without asking for it lags behind usage.
    credit_interval: float = Field(default=defaults.CREDIT_INTERVAL, gt=0, le=3600)
    #: Where alert firings are posted when the alert names no URL of its own (http/https).
    alert_webhook_url: str | None = None
    #: The secret every alert webhook is signed with (``Metersync-Signature``). Unset, no
    #: alert webhook is sent: each delivery is marked failed, saying to set it.
    alert_webhook_secret: SecretStr | None = None

    @property
    def webhook_secrets(self) -> list[str]:
        """Every configured webhook signing secret (comma-separated, for rotation)."""
        if self.stripe_webhook_secret is None:
            return []
        raw = self.stripe_webhook_secret.get_secret_value()
        return [part.strip() for part in raw.split(",") if part.strip()]

    @field_validator(
        "stripe_api_key", "stripe_webhook_secret", "ops_token", "alert_webhook_secret",
        "alert_webhook_url", mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An empty variable means "not configured", not an empty secret."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("stripe_api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse placeholders and publishable keys, without echoing the key."""
        if value is None:
            return None
        key = value.get_secret_value()
        if key.startswith("pk_"):
            raise ValueError("a publishable key (pk_…) cannot send meter events; use sk_ or rk_")
        if not key.startswith(("sk_", "rk_")) or key in {"sk_test_changeme", "sk_live_changeme"}:
            raise ValueError("expected a Stripe secret key starting with sk_ or rk_")
        return value

    @field_validator("alert_webhook_secret")
    @classmethod
    def _check_alert_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse placeholders and short secrets, without echoing the secret."""
        if value is None:
            return None
        secret = value.get_secret_value()
        if "changeme" in secret.lower().replace("-", "").replace("_", ""):
            raise ValueError("alert_webhook_secret is a placeholder; " + _HOW_TO_MAKE_ONE)
        if len(secret) < MIN_SECRET:
            too_short = f"alert_webhook_secret must be at least {MIN_SECRET} characters"
            raise ValueError(f"{too_short}; {_HOW_TO_MAKE_ONE}")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_alert_url(cls, value: str | None) -> str | None:
        """An absolute http(s) URL, or unset."""
        if value is None:
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("alert_webhook_url must be an http:// or https:// URL with a host")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        """Accept SQLite and PostgreSQL only, and name the driver we use for PostgreSQL."""
        if value.startswith(("postgres://", "postgresql://")):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ValueError("database_url must be sqlite:///… or postgresql+psycopg://…")
        return value

    @property
    def effective_stripe_mode(self) -> Literal["test", "live"]:
        """``stripe_mode`` if set, else read from the key prefix (test when no key)."""
        if self.stripe_mode is not None:
            return self.stripe_mode
        key = self.stripe_api_key.get_secret_value() if self.stripe_api_key else ""
        return "live" if key.startswith(("sk_live_", "rk_live_")) else "test"

    @property
    def effective_rate_limit(self) -> int:
        """Meter event calls per second across all workers."""
        if self.stripe_rate_limit is not None:
            return self.stripe_rate_limit
        return 1000 if self.effective_stripe_mode == "live" else 25

    @property
    def dry_run(self) -> bool:
        """True when no Stripe key is configured: nothing is sent to Stripe."""
        return self.stripe_api_key is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
