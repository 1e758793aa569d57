"""The Stripe gateway against Stripe's HTTP API played by ``responses``: no network, no waits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast
from urllib.parse import parse_qs

import pytest
import requests
import responses
import stripe
import tenacity
from pydantic import SecretStr
from responses import matchers

from adapter.errors import ConfigurationError, MetersyncError
from adapter.gateway import (
    Delivery,
    Gateway,
    MeterEventStream,
    PermanentError,
    StreamEvent,
    TransientError,
    classify,
    idempotency_key,
    rfc3339,
)
from adapter.gateway import client as gateway_client
from config.settings import Settings
from tests.gateways import Sleeps, stripe_client

KEY = "sk_test_51FakeKeyForMetersyncTests0000000000"
API = "https://api.stripe.test"
EVENTS_BASE = "https://meter-events.stripe.test"
METER_EVENTS = f"{API}/v1/billing/meter_events"
METERS = f"{API}/v1/billing/meters"
SESSION = f"{API}/v2/billing/meter_event_session"
STREAM = f"{EVENTS_BASE}/v2/billing/meter_event_stream"
WHEN = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)
DUPLICATE = "An event already exists with identifier rep_42."


def make_client() -> stripe.StripeClient:
    return stripe_client(KEY, api=API, meter_events=EVENTS_BASE)


@pytest.fixture
def gateway(sleeps: Sleeps) -> Gateway:
    return Gateway(client=make_client(), attempts=4, wait=tenacity.wait_fixed(0.5), sleep=sleeps)


def send(gateway: Gateway, **overrides: object) -> Delivery:
    args: dict[str, Any] = {
        "event_name": "api_calls",
        "stripe_customer_id": "cus_123",
        "value": 1234,
        "timestamp": WHEN,
        "identifier": "rep_42",
    }
    return gateway.send_meter_event(**{**args, **overrides})


def stripe_error(
    message: str, *, type_: str = "invalid_request_error", **extra: str | None
) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, **extra}}


def add_error(
    http: responses.RequestsMock,
    url: str,
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **error: str | None,
) -> None:
    http.post(
        url,
        status=status,
        json=stripe_error(message, **error),
        headers={"Request-Id": f"req_{status}", **(headers or {})},
    )


def add_ok(http: responses.RequestsMock) -> None:
    http.post(
        METER_EVENTS,
        json={"object": "billing.meter_event", "identifier": "rep_42"},
        headers={"Request-Id": "req_ok"},
    )


def form(call: responses.Call) -> dict[str, list[str]]:
    return parse_qs(call.request.body)


# --- classify -------------------------------------------------------------------------------


def _err(
    cls: type[stripe.StripeError],
    status: int | None,
    message: str = "boom",
    headers: dict[str, str] | None = None,
) -> stripe.StripeError:
    make: Any = cls  # some stripe error constructors are untyped
    if cls is stripe.InvalidRequestError:  # it takes `param` second
        return cast(stripe.StripeError, make(message, None, http_status=status, headers=headers))
    return cast(stripe.StripeError, make(message, http_status=status, headers=headers))


def _connection_error(*, should_retry: bool) -> stripe.StripeError:
    make: Any = stripe.APIConnectionError
    return cast(stripe.StripeError, make("Connection reset by peer", should_retry=should_retry))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_err(stripe.InvalidRequestError, 400, message=DUPLICATE), "delivered"),
        (_err(stripe.InvalidRequestError, 400, message="Invalid value."), "permanent"),
        (_err(stripe.InvalidRequestError, 404, message="No such meter."), "permanent"),
        (_err(stripe.AuthenticationError, 401), "permanent"),
        (_err(stripe.PermissionError, 403), "permanent"),
        (_err(stripe.IdempotencyError, 400), "permanent"),
        (_err(stripe.APIError, 409), "transient"),
        (_err(stripe.RateLimitError, 429), "transient"),
        (_err(stripe.RateLimitError, 400), "transient"),
        (_err(stripe.APIError, 500), "transient"),
        (_err(stripe.APIError, 503), "transient"),
        (_err(stripe.APIError, 500, headers={"Stripe-Should-Retry": "false"}), "transient"),
        (
            _err(stripe.InvalidRequestError, 400, headers={"stripe-should-retry": "true"}),
            "transient",
        ),
        (_connection_error(should_retry=True), "transient"),
        (_connection_error(should_retry=False), "transient"),
        (_err(stripe.TemporarySessionExpiredError, 401), "transient"),
    ],
    ids=lambda value: value if isinstance(value, str) else repr(value),
)
def test_classify(error: stripe.StripeError, expected: str) -> None:
    """Each kind of Stripe error maps to delivered, transient or permanent."""
    assert classify(error) == expected


# --- send_meter_event -------------------------------------------------------------------------


def test_success_sends_exact_form_and_idempotency_key(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A meter event goes out as the exact form Stripe expects, keyed by its identifier."""
    add_ok(http)

    delivery = send(gateway)

    assert delivery == Delivery("rep_42", "req_ok", duplicate=False)
    (call,) = http.calls
    assert form(call) == {
        "event_name": ["api_calls"],
        "payload[stripe_customer_id]": ["cus_123"],
        "payload[value]": ["1234"],
        "timestamp": [str(int(WHEN.timestamp()))],
        "identifier": ["rep_42"],
    }
    assert call.request.headers["Idempotency-Key"] == idempotency_key("rep_42")
    assert call.request.headers["Authorization"] == f"Bearer {KEY}"


def test_custom_payload_keys(http: responses.RequestsMock, gateway: Gateway) -> None:
    """A meter with its own payload keys gets the customer and value under those keys."""
    add_ok(http)

    send(gateway, customer_key="customer", value_key="tokens", value=7)

    body = form(http.calls[0])
    assert body["payload[customer]"] == ["cus_123"]
    assert body["payload[tokens]"] == ["7"]
    assert "payload[value]" not in body


def test_duplicate_identifier_counts_as_delivered(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """Stripe's 'event already exists' rejection means the first send landed: success."""
    add_error(http, METER_EVENTS, 400, DUPLICATE, headers={"Stripe-Should-Retry": "false"})

    delivery = send(gateway)

    assert delivery == Delivery("rep_42", "req_400", duplicate=True)
    assert len(http.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_retryable_status_then_success(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps, status: int
) -> None:
    """A 409, 429 or 5xx is retried within the call, with the same idempotency key."""
    add_error(http, METER_EVENTS, status, "Try again.", type_="api_error")
    add_ok(http)

    delivery = send(gateway)

    assert delivery.duplicate is False
    assert delivery.request_id == "req_ok"
    assert len(http.calls) == 2
    keys = {call.request.headers["Idempotency-Key"] for call in http.calls}
    assert keys == {idempotency_key("rep_42")}
    assert sleeps == [0.5]


def test_server_errors_exhaust_attempts(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """Four 500s in a row raise TransientError naming the status and Stripe's message."""
    for _ in range(4):
        add_error(
            http, METER_EVENTS, 500, "Something went wrong on Stripe's end.", type_="api_error"
        )

    with pytest.raises(TransientError) as caught:
        send(gateway)

    assert len(http.calls) == 4
    assert len(sleeps) == 3
    error = caught.value
    assert "4 attempts" in str(error)
    assert "HTTP 500" in str(error)
    assert "Something went wrong on Stripe's end." in str(error)
    assert (error.status, error.request_id) == (500, "req_500")
    assert isinstance(error, MetersyncError)


def test_connection_error_is_retried(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """A refused connection is retried and the retry's answer is returned."""
    http.post(METER_EVENTS, body=requests.exceptions.ConnectionError("connection refused"))
    add_ok(http)

    delivery = send(gateway)

    assert delivery.request_id == "req_ok"
    assert len(http.calls) == 2
    assert len(sleeps) == 1


def test_duplicate_after_lost_response_is_delivered(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A send whose answer was lost, then refused as a duplicate on retry, is delivered."""
    http.post(METER_EVENTS, body=requests.exceptions.ReadTimeout("read timed out"))
    add_error(http, METER_EVENTS, 400, DUPLICATE, headers={"Stripe-Should-Retry": "false"})

    assert send(gateway) == Delivery("rep_42", "req_400", duplicate=True)
    assert len(http.calls) == 2


def test_connection_errors_exhaust_attempts(http: responses.RequestsMock, sleeps: Sleeps) -> None:
    """Connection errors on every attempt end as TransientError with no status."""
    gateway = Gateway(client=make_client(), attempts=2, wait=tenacity.wait_none(), sleep=sleeps)
    for _ in range(2):
        http.post(METER_EVENTS, body=requests.exceptions.ConnectionError("connection refused"))

    with pytest.raises(TransientError) as caught:
        send(gateway)

    assert caught.value.status is None
    assert "no response" in str(caught.value)
    assert "connection refused" in str(caught.value)
    assert len(http.calls) == 2


def test_should_retry_false_on_500_is_not_retried(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """Stripe-Should-Retry: false stops the in-call retry; the error stays transient."""
    add_error(
        http,
        METER_EVENTS,
        500,
        "An unknown error occurred.",
        type_="api_error",
        headers={"Stripe-Should-Retry": "false"},
    )

    with pytest.raises(TransientError) as caught:
        send(gateway)

    assert len(http.calls) == 1
    assert sleeps == []
    assert "1 attempt " in str(caught.value)


def test_should_retry_true_on_400_is_retried(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Stripe-Should-Retry: true makes even a 400 worth another try."""
    add_error(http, METER_EVENTS, 400, "Lock timeout.", headers={"Stripe-Should-Retry": "true"})
    add_ok(http)

    assert send(gateway).request_id == "req_ok"
    assert len(http.calls) == 2


def test_invalid_value_is_permanent(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """A 400 other than a duplicate raises PermanentError at once with Stripe's details."""
    message = "Value must be a whole number with at most 15 significant digits."
    add_error(http, METER_EVENTS, 400, message, code="parameter_invalid_integer")

    with pytest.raises(PermanentError) as caught:
        send(gateway)

    error = caught.value
    assert len(http.calls) == 1
    assert sleeps == []
    assert error.stripe_message == message
    assert message in str(error)
    assert (error.status, error.code, error.request_id) == (
        400,
        "parameter_invalid_integer",
        "req_400",
    )
    assert "req_400" in str(error)


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (403, "invalid_request_error", "secret_key_required"),
        (404, "invalid_request_error", "resource_missing"),
        (400, "idempotency_error", None),
    ],
)
def test_other_refusals_are_permanent(
    http: responses.RequestsMock, gateway: Gateway, status: int, type_: str, code: str | None
) -> None:
    """403, 404 and an idempotency clash are not retried."""
    add_error(http, METER_EVENTS, status, "Refused.", type_=type_, code=code)

    with pytest.raises(PermanentError) as caught:
        send(gateway)

    assert caught.value.status == status
    assert len(http.calls) == 1


def test_bad_key_is_permanent_and_never_echoed(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A 401 raises PermanentError whose text and repr never contain the API key."""
    add_error(http, METER_EVENTS, 401, f"Invalid API Key provided: {KEY}")

    with pytest.raises(PermanentError) as caught:
        send(gateway)

    error = caught.value
    assert error.status == 401
    assert "Invalid API Key provided: sk_test_…" in str(error)
    for text in (str(error), repr(error), error.stripe_message or "", repr(gateway)):
        assert KEY not in text
    assert error.__cause__ is None
    assert error.__suppress_context__ is True


def test_naive_timestamp_is_refused_before_sending(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A timestamp without a time zone is a programming error; nothing is sent."""
    with pytest.raises(ValueError, match="no time zone"):
        send(gateway, timestamp=datetime(2026, 11, 3, 14, 0))

    assert len(http.calls) == 0


def test_default_backoff_is_bounded(http: responses.RequestsMock) -> None:
    """The default jittered backoff waits between attempts and never beyond max_wait."""
    sleeps = Sleeps()
    gateway = Gateway(client=make_client(), attempts=4, max_wait=0.25, sleep=sleeps)
    for _ in range(4):
        add_error(http, METER_EVENTS, 503, "Unavailable.", type_="api_error")

    with pytest.raises(TransientError):
        send(gateway)

    assert len(sleeps) == 3
    assert all(0 <= seconds <= 0.25 for seconds in sleeps)


def test_attempts_must_be_positive() -> None:
    """A gateway that would never try is refused at construction."""
    with pytest.raises(ValueError, match="at least 1"):
        Gateway(client=make_client(), attempts=0)


# --- from_settings ----------------------------------------------------------------------------


def test_from_settings_uses_configured_bases_and_no_stripe_retries(
    http: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's client talks to the configured base and leaves retries to us."""
    monkeypatch.setenv("METERSYNC_STRIPE_API_KEY", KEY)
    settings = Settings(
        stripe_api_base="http://stripe.local:12111",
        stripe_meter_events_base="http://events.local:12112",
    )
    gateway = Gateway.from_settings(settings, attempts=1)
    http.post(
        "http://stripe.local:12111/v1/billing/meter_events",
        status=500,
        json=stripe_error("down", type_="api_error"),
    )

    with pytest.raises(TransientError):
        send(gateway)

    assert len(http.calls) == 1  # stripe-python did not retry behind our back
    assert http.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(gateway)


def test_from_settings_without_key_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no key there is nothing to build: dry-run mode has no gateway."""
    monkeypatch.delenv("METERSYNC_STRIPE_API_KEY", raising=False)
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)

    with pytest.raises(ConfigurationError, match="METERSYNC_STRIPE_API_KEY"):
        Gateway.from_settings(Settings(_env_file=None))


# --- list_meters ------------------------------------------------------------------------------


def meter(meter_id: str, event_name: str, formula: str, value_key: str = "value") -> dict[str, Any]:
    return {
        "id": meter_id,
        "object": "billing.meter",
        "event_name": event_name,
        "status": "active",
        "default_aggregation": {"formula": formula},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": value_key},
    }


def meter_page(*meters: dict[str, Any], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "url": "/v1/billing/meters", "has_more": has_more, "data": meters}


def test_list_meters_follows_pages(http: responses.RequestsMock, gateway: Gateway) -> None:
    """Every page is fetched and each meter's formula and payload keys are read."""
    http.get(
        METERS,
        match=[responses.matchers.query_param_matcher({"limit": "100"})],
        json=meter_page(meter("mtr_1", "api_calls", "sum"), has_more=True),
    )
    http.get(
        METERS,
        match=[responses.matchers.query_param_matcher({"limit": "100", "starting_after": "mtr_1"})],
        json=meter_page(meter("mtr_2", "storage_gb", "last", value_key="gb"), has_more=False),
    )

    meters = gateway.list_meters()

    assert [(m.id, m.event_name, m.formula, m.value_key) for m in meters] == [
        ("mtr_1", "api_calls", "sum", "value"),
        ("mtr_2", "storage_gb", "last", "gb"),
    ]
    assert meters[0].customer_key == "stripe_customer_id"
    assert meters[0].status == "active"


def test_list_meters_retries_a_failed_page(http: responses.RequestsMock, gateway: Gateway) -> None:
    """A 500 while listing is retried like any other call."""
    http.get(METERS, status=500, json=stripe_error("oops", type_="api_error"))
    http.get(METERS, json=meter_page(meter("mtr_1", "api_calls", "sum"), has_more=False))

    assert [m.id for m in gateway.list_meters()] == ["mtr_1"]


# --- v2 meter event stream --------------------------------------------------------------------


class Clock:
    """A settable clock for session expiry."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def add_session(http: responses.RequestsMock, token: str, expires_at: datetime) -> None:
    http.post(
        SESSION,
        json={
            "id": f"mes_{token}",
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": rfc3339(expires_at - timedelta(minutes=15)),
            "expires_at": rfc3339(expires_at),
            "livemode": False,
        },
    )


def events(count: int) -> list[StreamEvent]:
    return [
        StreamEvent("api_calls", "cus_123", value=i, timestamp=WHEN, identifier=f"ev_{i}")
        for i in range(count)
    ]


def stream_calls(http: responses.RequestsMock) -> list[Any]:
    return [call for call in http.calls if call.request.url == STREAM]


def session_calls(http: responses.RequestsMock) -> list[Any]:
    return [call for call in http.calls if call.request.url == SESSION]


@pytest.fixture
def clock() -> Clock:
    return Clock(WHEN)


@pytest.fixture
def stream(gateway: Gateway, clock: Clock) -> MeterEventStream:
    return gateway.stream(clock=clock)


def test_stream_sends_chunks_of_100_with_session_token(
    http: responses.RequestsMock, stream: MeterEventStream
) -> None:
    """250 events go out as 100, 100 and 50, as JSON with RFC 3339 times, on the token."""
    add_session(http, "tok_1", WHEN + timedelta(minutes=15))
    http.post(STREAM, json={})

    assert stream.send(events(250)) == 250

    calls = stream_calls(http)
    bodies = [json.loads(call.request.body) for call in calls]
    assert [len(body["events"]) for body in bodies] == [100, 100, 50]
    assert bodies[0]["events"][0] == {
        "event_name": "api_calls",
        "identifier": "ev_0",
        "payload": {"stripe_customer_id": "cus_123", "value": "0"},
        "timestamp": "2026-11-03T14:00:00.000Z",
    }
    assert {call.request.headers["Authorization"] for call in calls} == {"Bearer tok_1"}
    assert session_calls(http)[0].request.headers["Authorization"] == f"Bearer {KEY}"
    assert len(session_calls(http)) == 1


def test_stream_session_is_cached_then_renewed_before_expiry(
    http: responses.RequestsMock, stream: MeterEventStream, clock: Clock
) -> None:
    """The token is reused until 60 s before it expires, then a new session is made."""
    expiry = WHEN + timedelta(minutes=15)
    add_session(http, "tok_1", expiry)
    add_session(http, "tok_2", expiry + timedelta(minutes=15))
    http.post(STREAM, json={})

    stream.send(events(1))
    clock.now = expiry - timedelta(seconds=61)
    stream.send(events(1))
    clock.now = expiry - timedelta(seconds=59)
    stream.send(events(1))

    tokens = [call.request.headers["Authorization"] for call in stream_calls(http)]
    assert tokens == ["Bearer tok_1", "Bearer tok_1", "Bearer tok_2"]
    assert len(session_calls(http)) == 2


def test_stream_expired_token_is_renewed_and_resent_once(
    http: responses.RequestsMock, stream: MeterEventStream, sleeps: Sleeps
) -> None:
    """A 401 temporary_session_expired gets a new session and the same chunk again."""
    add_session(http, "tok_1", WHEN + timedelta(minutes=15))
    add_session(http, "tok_2", WHEN + timedelta(minutes=30))
    add_error(
        http,
        STREAM,
        401,
        "The meter event session has expired.",
        type_="temporary_session_expired",
        code="billing_meter_event_session_expired",
    )
    http.post(STREAM, json={})

    assert stream.send(events(3)) == 3

    calls = stream_calls(http)
    assert [call.request.headers["Authorization"] for call in calls] == [
        "Bearer tok_1",
        "Bearer tok_2",
    ]
    assert calls[0].request.body == calls[1].request.body
    assert sleeps == []  # a renewed session is not a retry


def test_stream_server_error_is_retried_then_transient(
    http: responses.RequestsMock, gateway: Gateway, clock: Clock
) -> None:
    """Stream chunks share the gateway's retry policy and error mapping."""
    stream = gateway.stream(clock=clock)
    add_session(http, "tok_1", WHEN + timedelta(minutes=15))
    for _ in range(4):
        add_error(http, STREAM, 500, "Stream unavailable.", type_="api_error")

    with pytest.raises(TransientError, match="HTTP 500"):
        stream.send(events(1))

    assert len(stream_calls(http)) == 4
    assert len(session_calls(http)) == 1


def test_stream_event_timestamps_are_utc() -> None:
    """RFC 3339 output is in UTC whatever zone the datetime came in."""
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 11, 3, 16, 0, 0, 123456, tzinfo=plus_two)
    assert rfc3339(moment) == "2026-11-03T14:00:00.123Z"


def test_from_settings_applies_the_configured_request_timeout(
    http: responses.RequestsMock,
) -> None:
    """METERSYNC_STRIPE_TIMEOUT bounds every Stripe request (stripe-python's default is 80 s)."""
    settings = Settings(
        stripe_api_key=SecretStr("sk_test_timeout"), stripe_timeout=3.5, stripe_api_base=API
    )
    # Answered only when requests is given timeout=3.5; any other call is a connection error.
    http.post(
        METER_EVENTS,
        json={"object": "billing.meter_event", "identifier": "rep_42"},
        headers={"Request-Id": "req_ok"},
        match=[matchers.request_kwargs_matcher({"timeout": 3.5})],
    )
    assert send(Gateway.from_settings(settings, attempts=1)).request_id == "req_ok"


# --- throttle -------------------------------------------------------------------------------


def test_throttle_runs_before_every_attempt_including_retries_of_a_429(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A throttled gateway asks the shared rate limit before the first call and each retry."""
    order: list[str] = []
    add_error(http, METER_EVENTS, 429, "Too many requests.", type_="rate_limit_error")
    add_ok(http)
    throttled = gateway.throttled(lambda: order.append(f"throttle {len(http.calls)}"))

    assert send(throttled).request_id == "req_ok"

    assert order == ["throttle 0", "throttle 1"]
    assert len(http.calls) == 2


def test_throttle_that_gives_up_is_transient_and_sends_nothing(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """No rate-limit slot in time: a TransientError, and Stripe is never called."""

    def full() -> None:
        raise TransientError("no Stripe rate-limit slot within 10s")

    with pytest.raises(TransientError, match="rate-limit slot"):
        send(gateway.throttled(full))
    assert len(http.calls) == 0


def test_throttled_copy_leaves_the_original_unthrottled(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """``throttled`` returns a new gateway; the one it came from calls no throttle."""
    calls: list[int] = []
    gateway.throttled(lambda: calls.append(1))
    add_ok(http)

    send(gateway)

    assert calls == []


def test_http_client_shares_a_session_that_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no proxy or CA bundle configured, the gateway's client is one keep-alive
    session that reads no environment and keeps no cookies."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy",
                 "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    client = gateway_client.http_client(timeout=7)
    session = client._session  # noqa: SLF001  stripe-python's RequestsClient shows its session nowhere else
    assert session is not None
    assert session.trust_env is False
    with responses.RequestsMock() as mock:
        mock.get("https://api.stripe.com/v1/x", headers={"Set-Cookie": "k=v; Path=/"})
        session.get("https://api.stripe.com/v1/x")
    assert len(session.cookies) == 0  # a Set-Cookie from Stripe is not kept


@pytest.mark.parametrize(
    ("name", "value"),
    [("HTTPS_PROXY", "http://127.0.0.1:3128"), ("REQUESTS_CA_BUNDLE", "/etc/ssl/ca.pem")],
)
def test_http_client_honours_a_proxy_or_ca_bundle(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A proxy or CA bundle in the environment: stripe-python's default client, which
    applies them on every call, instead of the shared session."""
    monkeypatch.setenv(name, value)
    client = gateway_client.http_client(timeout=7)
    assert client._session is None  # noqa: SLF001  stripe-python's RequestsClient shows its session nowhere else
