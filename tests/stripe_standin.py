"""A real local HTTP stand-in for Stripe's meter endpoints, with faults.

It serves ``POST /v1/billing/meter_events``, and for reconciliation ``GET
/v1/billing/meters``, ``GET /v1/billing/meters/{id}/event_summaries`` and ``POST
/v1/billing/meter_event_adjustments`` (cancel), all over one
:class:`~tests.stripe_meter_model.MeterModel` whose ``formulas`` say which meters exist.

It accepts each identifier once and rejects a repeat exactly like Stripe does (400
``invalid_request_error``, ``An event already exists with identifier <id>.``, header
``Stripe-Should-Retry: false``), records every accepted event, and can misbehave on
purpose (see :class:`Faults`). It listens on 127.0.0.1 only, in a background thread
(:func:`start`) or as its own process::

    python -m tests.stripe_standin --port 0 --faults '{"fail_after_record_every": 3}'

which prints ``listening on http://127.0.0.1:<port>`` once ready. Tests in other processes
read what it recorded from ``GET /_standin/events`` and change its faults with
``POST /_standin/faults`` (a JSON object of :class:`Faults` fields). Drift is planted
with ``POST /_standin/meters`` (``{"event_name": "sum"|"last"}``), ``POST /_standin/drop``
(``{"identifier": …}``: Stripe lost an event) and ``POST /_standin/plant`` (an event
Stripe holds that nobody sent through metersync). ``GET /v1/prices`` and ``GET
/v1/prices/{id}`` serve the prices ``POST /_standin/prices`` (a JSON list) planted, with
their ``tiers`` only when expanded, as at Stripe (:class:`~tests.stripe_prices.PriceBook`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.stripe_meter_model import MeterModel
from tests.stripe_prices import PRICES, PriceBook

#: The endpoints this stand-in serves.
METER_EVENTS = "/v1/billing/meter_events"
ADJUSTMENTS = "/v1/billing/meter_event_adjustments"
METERS = "/v1/billing/meters"
#: Where tests read what was recorded, change the faults, and plant drift.
EVENTS, FAULTS = "/_standin/events", "/_standin/faults"
SET_METERS, DROP, PLANT = "/_standin/meters", "/_standin/drop", "/_standin/plant"
SET_PRICES = "/_standin/prices"


@dataclass
class Faults:
    """What to do wrong; every fault is off by default."""

    #: Every Nth meter event call: record the event, then answer 500 (an ambiguous outcome).
    fail_after_record_every: int = 0
    #: Answer 429 (recording nothing) during the first this-many seconds of every
    #: ``rate_limit_period`` seconds, counted from the first meter event call.
    rate_limit_burst: float = 0.0
    rate_limit_period: float = 2.0
    #: Every Nth meter event call: record the event, then sleep ``delay`` seconds before
    #: answering 200 (past the client's timeout when ``delay`` is larger).
    slow_every: int = 0
    delay: float = 0.0
    #: Seconds to sleep before handling any meter event call.
    latency: float = 0.0


@dataclass
class Recorded:
    """Everything the stand-in saw, guarded by ``lock``."""

    events: list[dict[str, Any]] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)
    calls: int = 0
    duplicates: int = 0
    rate_limited: int = 0
    failed_after_record: int = 0
    slow: int = 0
    in_flight: int = 0
    #: Summary reads and cancels served (reconciliation).
    summaries: int = 0
    cancels: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        with self.lock:
            return {
                "events": list(self.events),
                "calls": self.calls,
                "duplicates": self.duplicates,
                "rate_limited": self.rate_limited,
                "failed_after_record": self.failed_after_record,
                "slow": self.slow,
                "in_flight": self.in_flight,
                "summaries": self.summaries,
                "cancels": self.cancels,
            }


class StandinServer(ThreadingHTTPServer):
    """The HTTP server, holding the faults and what was recorded."""

    daemon_threads = True

    def __init__(self, port: int = 0, faults: Faults | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.recorded = Recorded()
        #: What Stripe holds: accepted events minus cancels, plus planted drift.
        self.model = MeterModel()
        #: The prices Stripe holds.
        self.prices = PriceBook()
        self.set_faults(faults or Faults())

    @property
    def url(self) -> str:
        """The base address to give the Stripe client."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults; the rate-limit clock restarts at the next call."""
        self.faults = faults
        self.faults_since: float | None = None

    def rate_limited_now(self) -> bool:
        """Whether a call arriving now falls in a 429 burst."""
        faults = self.faults
        if faults.rate_limit_burst <= 0:
            return False
        if self.faults_since is None:
            self.faults_since = time.monotonic()
        elapsed = time.monotonic() - self.faults_since
        return elapsed % max(faults.rate_limit_period, 1e-3) < faults.rate_limit_burst


class _Handler(BaseHTTPRequestHandler):
    server: StandinServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read the recorded events, not an access log."""

    def do_GET(self) -> None:
        """Serve the recorded events, the meters, a meter's event summary, or prices."""
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == EVENTS:
            self._json(200, self.server.recorded.summary())
        elif url.path == METERS:
            self._json(200, self.server.model.meters_json())
        elif len(parts) == 5 and url.path.startswith(METERS) and parts[4] == "event_summaries":
            self._summary(parts[3], {k: v[0] for k, v in parse_qs(url.query).items()})
        elif url.path == PRICES or url.path.startswith(f"{PRICES}/"):
            if self._authorized():
                self._json(*self.server.prices.answer(url.path, parse_qs(url.query)))
        else:
            self._error(404, "invalid_request_error", f"Unrecognized request URL ({self.path}).")

    def do_POST(self) -> None:
        """Serve meter events, or take new faults, drift or prices."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == FAULTS:
            self.server.set_faults(Faults(**json.loads(body or b"{}")))
            self._json(200, dataclasses.asdict(self.server.faults))
        elif self.path == SET_PRICES:
            self._json(200, {"prices": self.server.prices.add(json.loads(body or b"[]"))})
        elif self.path in (SET_METERS, DROP, PLANT):
            self._control(self.path, json.loads(body or b"{}"))
        elif self.path == ADJUSTMENTS:
            self._cancel({k: v[0] for k, v in parse_qs(body.decode()).items()})
        elif self.path == METER_EVENTS:
            recorded = self.server.recorded
            with recorded.lock:
                recorded.in_flight += 1
            try:
                self._meter_event(parse_qs(body.decode()))
            finally:
                with recorded.lock:
                    recorded.in_flight -= 1
        else:
            self._error(404, "invalid_request_error", f"Unrecognized request URL ({self.path}).")

    def _meter_event(self, form: dict[str, list[str]]) -> None:
        faults, recorded = self.server.faults, self.server.recorded
        if faults.latency:
            time.sleep(faults.latency)
        if not self.headers.get("Authorization", "").startswith("Bearer sk_"):
            self._error(401, "invalid_request_error", "Invalid API Key provided.")
            return
        if self.server.rate_limited_now():  # before anything is recorded, as at Stripe
            with recorded.lock:
                recorded.rate_limited += 1
            self._error(429, "rate_limit_error", "Request rate limit exceeded.")
            return
        event = _event(form)
        if event is None:
            self._error(400, "invalid_request_error", "Missing required param: event_name.")
            return
        with recorded.lock:
            recorded.calls += 1
            call = recorded.calls
            duplicate = event["identifier"] in recorded.identifiers
            if duplicate:
                recorded.duplicates += 1
            else:
                recorded.identifiers.add(event["identifier"])
                recorded.events.append(event)
                self.server.model.add({k: v for k, v in event.items() if k != "payload"})
        if duplicate:
            message = f"An event already exists with identifier {event['identifier']}."
            self._error(400, "invalid_request_error", message, retry="false")
            return
        if faults.fail_after_record_every and call % faults.fail_after_record_every == 0:
            with recorded.lock:
                recorded.failed_after_record += 1
            self._error(500, "api_error", "An unknown error occurred.")
            return
        if faults.slow_every and call % faults.slow_every == 0:
            with recorded.lock:
                recorded.slow += 1
            time.sleep(faults.delay)
        self._json(200, {"object": "billing.meter_event", "livemode": False, **event})

    def _summary(self, meter: str, query: dict[str, str]) -> None:
        if not self._authorized():
            return
        try:
            start, end = int(query["start_time"]), int(query["end_time"])
            customer = query["customer"]
        except (KeyError, ValueError):
            self._error(400, "invalid_request_error", "customer, start_time and end_time required")
            return
        if start % 60 or end % 60:
            self._error(400, "invalid_request_error", "start_time must be minute-aligned.")
            return
        if self.server.model.summary(meter, customer, start, end) is None:
            self._error(404, "invalid_request_error", f"No such billing meter: '{meter}'")
            return
        with self.server.recorded.lock:
            self.server.recorded.summaries += 1
        self._json(200, self.server.model.summary_json(meter, customer, start, end))

    def _cancel(self, form: dict[str, str]) -> None:
        if not self._authorized():
            return
        if form.get("type") != "cancel" or not form.get("cancel[identifier]"):
            self._error(400, "invalid_request_error", "Missing required param: cancel.")
            return
        refused = self.server.model.cancel(form.get("event_name", ""), form["cancel[identifier]"])
        if refused is not None:
            self._error(400, "invalid_request_error", refused)
            return
        with self.server.recorded.lock:
            self.server.recorded.cancels += 1
        body = {"object": "billing.meter_event_adjustment", "status": "pending", "type": "cancel"}
        self._json(200, {**body, "event_name": form.get("event_name")})

    def _control(self, path: str, body: dict[str, Any]) -> None:
        """Say which meters exist, or plant drift (an event lost, or one nobody sent)."""
        model = self.server.model
        if path == SET_METERS:
            model.formulas.update(body)
            self._json(200, model.meters_json())
        elif path == DROP:
            self._json(200, {"dropped": model.drop(body["identifier"])})
        else:
            self._json(200, {"planted": model.add(body)})

    def _authorized(self) -> bool:
        if self.headers.get("Authorization", "").startswith("Bearer sk_"):
            return True
        self._error(401, "invalid_request_error", "Invalid API Key provided.")
        return False

    def _error(self, status: int, kind: str, message: str, *, retry: str | None = None) -> None:
        headers = {"Stripe-Should-Retry": retry} if retry else {}
        self._json(status, {"error": {"type": kind, "message": message}}, headers)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_standin_{uuid.uuid4().hex[:14]}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): the event stays recorded


def _event(form: dict[str, list[str]]) -> dict[str, Any] | None:
    """The meter event in a form body, or None when it has no name or identifier."""

    def one(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    event_name, identifier = one("event_name"), one("identifier")
    if not event_name or not identifier:
        return None
    timestamp = one("timestamp")
    return {
        "event_name": event_name,
        "identifier": identifier,
        "customer": one("payload[stripe_customer_id]"),
        "value": one("payload[value]"),
        "timestamp": int(timestamp) if timestamp else int(time.time()),
        "created": int(time.time()),
        "payload": {
            key[len("payload[") : -1]: values[0]
            for key, values in form.items()
            if key.startswith("payload[")
        },
    }


def start(faults: Faults | None = None, *, port: int = 0) -> StandinServer:
    """A stand-in serving in a daemon thread; call ``shutdown()`` when done."""
    server = StandinServer(port, faults)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in in the foreground until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--faults", default="{}", help="JSON object of Faults fields")
    args = parser.parse_args(argv)
    server = StandinServer(args.port, Faults(**json.loads(args.faults)))
    print(f"listening on {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
