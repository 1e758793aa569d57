"""A minimal local stand-in for Stripe's meter event endpoints, for the push and reconcile
benchmarks.

Run it as its own process, so its work does not share the benchmark's interpreter::

    python -m tests.bench.standin --rate 1000 --latency-ms 20
    python -m tests.bench.standin --meters api_calls=sum,peak=last --read-rate 100

It prints ``port <n>`` once it listens on 127.0.0.1, then serves:

- ``POST /v1/billing/meter_events`` (form body): 200 with the event, or 400 for an
  identifier it has seen (Stripe's wording, so the gateway counts it as delivered);
- ``POST /v2/billing/meter_event_session``: a session token that expires in 15 minutes;
- ``POST /v2/billing/meter_event_stream`` (JSON ``{"events": [...]}``): ``{}``;
- ``GET /v1/billing/meters``: the meters of ``--meters`` (``event_name=formula``, formula
  ``sum`` or ``last``), ids ``mtr_<event_name>``;
- ``GET /v1/billing/meters/{id}/event_summaries?customer=&start_time=&end_time=``: one
  summary of the events it accepted (v1 or stream, once per identifier) for that
  customer with ``start_time <= timestamp < end_time``, by the meter's formula (``last``:
  the newest timestamp, a tie to the event received later); 400 without a customer or
  for ends that are not whole minutes, 404 for an unknown meter;
- ``GET /_stats``: accepted calls and events, duplicates and 429s, reads and read 429s,
  as JSON.

Events are kept for summaries only when ``--meters`` names some, so the push benchmark's
stand-in does no more work per event than before.

Every request but ``/_stats`` waits ``--latency-ms`` before it is answered. Meter event
calls (v1) go through a global token bucket of ``--rate`` calls/s (burst ``--burst``, one
second's worth by default); a call that finds the bucket empty gets 429
``rate_limit_error`` at once, as Stripe answers. Stream events have their own bucket
(``--stream-rate`` events/s), off by default. Reads (the two ``GET /v1/billing/meters…``
routes) have theirs too, ``--read-rate`` calls/s (default 100, Stripe's live read limit;
burst ``--read-burst``, one second's worth by default), answering 429
``rate_limit_error`` when empty.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.stripe_meter_model import meter_id, meter_json

#: Stripe's wording for a second event with a known identifier (the gateway matches it).
DUPLICATE = "An event already exists with identifier {identifier}."
#: The path of the meter listing; a meter's summaries are under ``{METERS}/{id}/``.
METERS = "/v1/billing/meters"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; thread-safe."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: float = 1) -> bool:
        """Take ``n`` tokens if there are that many; whether they were taken."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < n:
                return False
            self._tokens -= n
            return True


class Stats:
    """What the stand-in accepted and refused; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {
            "v1_calls": 0,
            "v1_duplicates": 0,
            "v1_429": 0,
            "sessions": 0,
            "stream_calls": 0,
            "stream_events": 0,
            "stream_429": 0,
            "reads": 0,
            "read_429": 0,
            "meter_lists": 0,
            "summaries": 0,
            "events_kept": 0,
        }
        self.identifiers: set[str] = set()

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name``."""
        with self._lock:
            self.counts[name] += n

    def first_time(self, identifier: str) -> bool:
        """Remember ``identifier``; whether it was new."""
        with self._lock:
            if identifier in self.identifiers:
                return False
            self.identifiers.add(identifier)
            return True


class MeterEvents:
    """The accepted events summaries are read from: per (event name, customer), their
    ``(timestamp, value)`` in the order received, once per identifier; thread-safe.

    An index by pair rather than :class:`~tests.stripe_meter_model.MeterModel`'s one
    list, whose scans of every event per summary would make the stand-in the bottleneck
    at thousands of pairs."""

    def __init__(self, formulas: dict[str, str]) -> None:
        self.formulas = formulas
        self.names = {meter_id(name): name for name in formulas}
        self._by_pair: dict[tuple[str, str], list[tuple[int, float]]] = {}
        self._identifiers: set[str] = set()
        self._lock = threading.Lock()

    def add(self, event_name: str, identifier: str, customer: str, value: float, at: int) -> bool:
        """Keep an event of a known meter unless its identifier is known; whether kept."""
        if event_name not in self.formulas:
            return False
        with self._lock:
            if identifier in self._identifiers:
                return False
            self._identifiers.add(identifier)
            self._by_pair.setdefault((event_name, customer), []).append((at, value))
            return True

    def summary(self, event_name: str, customer: str, start: int, end: int) -> float:
        """The aggregated value of the pair's events in ``[start, end)``."""
        with self._lock:
            chosen = [
                (t, v) for t, v in self._by_pair.get((event_name, customer), ()) if start <= t < end
            ]
        if self.formulas[event_name] == "last":
            # The newest timestamp wins; of equal ones, the event received later.
            newest = max(range(len(chosen)), key=lambda i: (chosen[i][0], i), default=None)
            return 0.0 if newest is None else chosen[newest][1]
        return float(sum(v for _, v in chosen))


class Handler(BaseHTTPRequestHandler):
    """One request to the stand-in."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Stripe's clients expect
    #: Headers and body go out in two writes; with Nagle on, the body waits for the
    #: client's delayed ACK of the headers (about 40 ms on Linux) on every answer.
    disable_nagle_algorithm = True
    server: StandIn

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a line per request would cost more than the request."""

    def do_GET(self) -> None:
        """``/_stats`` at once; the meter reads through the read bucket, after the latency."""
        if self.path == "/_stats":
            self._answer(200, self.server.stats.counts)
            return
        url = urlsplit(self.path)
        parts = url.path.split("/")  # "", "v1", "billing", "meters", id, "event_summaries"
        if url.path == METERS:
            route = self._meters
        elif (
            url.path.startswith(METERS + "/") and len(parts) == 6 and parts[5] == "event_summaries"
        ):
            route = self._summary
        else:
            self._answer(404, _error("invalid_request_error", f"no route GET {self.path}"))
            return
        stats = self.server.stats
        if not self.server.reads.take():
            stats.add("read_429")
            status, payload = 429, _error("rate_limit_error", "Too many requests; try again later.")
        else:
            stats.add("reads")
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            status, payload = route(parts[4] if len(parts) > 4 else "", query)
        time.sleep(self.server.latency)
        self._answer(status, payload)

    def _meters(self, _meter: str, _query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.server.stats.add("meter_lists")
        formulas = self.server.events.formulas
        data = [meter_json(name, formula) for name, formula in formulas.items()]
        return 200, {"object": "list", "data": data, "has_more": False, "url": METERS}

    def _summary(self, meter: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        events = self.server.events
        name = events.names.get(meter)
        if name is None:
            return 404, _error("invalid_request_error", f"No such billing meter: '{meter}'")
        customer = query.get("customer", "")
        try:
            start, end = int(query["start_time"]), int(query["end_time"])
        except (KeyError, ValueError):
            message = "customer, start_time and end_time are required (unix seconds)"
            return 400, _error("invalid_request_error", message)
        if not customer or start % 60 or end % 60 or end <= start:
            message = "customer is required; start_time and end_time whole minutes, start first"
            return 400, _error("invalid_request_error", message)
        self.server.stats.add("summaries")
        summary = {
            "id": f"mtrusg_{meter}_{customer}_{start}",
            "object": "billing.meter_event_summary",
            "aggregated_value": events.summary(name, customer, start, end),
            "customer": customer,
            "meter": meter,
            "start_time": start,
            "end_time": end,
            "livemode": False,
        }
        url = f"{METERS}/{meter}/event_summaries"
        return 200, {"object": "list", "data": [summary], "has_more": False, "url": url}

    def do_POST(self) -> None:
        """Route by path; every answer waits the configured latency first."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = {
            "/v1/billing/meter_events": self._meter_event,
            "/v2/billing/meter_event_session": self._session,
            "/v2/billing/meter_event_stream": self._stream,
        }.get(self.path.split("?", 1)[0])
        if route is None:
            self._answer(404, _error("invalid_request_error", f"no route POST {self.path}"))
            return
        status, payload = route(body)
        time.sleep(self.server.latency)
        self._answer(status, payload)

    def _meter_event(self, body: bytes) -> tuple[int, dict[str, Any]]:
        stats = self.server.stats
        if not self.server.calls.take():
            stats.add("v1_429")
            return 429, _error("rate_limit_error", "Too many requests; try again later.")
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        identifier = form.get("identifier") or uuid.uuid4().hex
        if not stats.first_time(identifier):
            stats.add("v1_duplicates")
            message = DUPLICATE.format(identifier=identifier)
            return 400, _error("invalid_request_error", message)
        stats.add("v1_calls")
        if self.server.keep_events:
            customer, value = form.get("payload[stripe_customer_id]"), form.get("payload[value]")
            self._keep(form.get("event_name"), identifier, customer, value, form.get("timestamp"))
        return 200, {
            "object": "billing.meter_event",
            "event_name": form.get("event_name"),
            "identifier": identifier,
            "livemode": False,
            "created": int(time.time()),
            "timestamp": int(form.get("timestamp") or 0),
            "payload": {k[8:-1]: v for k, v in form.items() if k.startswith("payload[")},
        }

    def _session(self, _body: bytes) -> tuple[int, dict[str, Any]]:
        self.server.stats.add("sessions")
        now = datetime.now(UTC)
        return 200, {
            "object": "v2.billing.meter_event_session",
            "id": f"mes_{uuid.uuid4().hex}",
            "authentication_token": f"ek_test_{uuid.uuid4().hex}",
            "created": _rfc3339(now),
            "expires_at": _rfc3339(now + timedelta(minutes=15)),
            "livemode": False,
        }

    def _stream(self, body: bytes) -> tuple[int, dict[str, Any]]:
        batch = json.loads(body or b"{}").get("events", [])
        events = len(batch)
        stats = self.server.stats
        if self.server.stream_events is not None and not self.server.stream_events.take(events):
            stats.add("stream_429")
            return 429, _error("rate_limit_error", "Too many events; try again later.")
        stats.add("stream_calls")
        stats.add("stream_events", events)
        if self.server.keep_events:
            for event in batch:
                at = datetime.fromisoformat(event["timestamp"]).timestamp()
                payload = event.get("payload", {})
                customer, value = payload.get("stripe_customer_id"), payload.get("value")
                self._keep(event.get("event_name"), event["identifier"], customer, value, at)
        return 200, {}

    def _keep(
        self,
        event_name: str | None,
        identifier: str,
        customer: str | None,
        value: str | float | None,
        at: str | float | None,
    ) -> None:
        """Keep an accepted event (a meter's default payload keys) for summaries."""
        if event_name is None or customer is None or value is None or at is None:
            return
        if self.server.events.add(event_name, identifier, customer, float(value), int(at)):
            self.server.stats.add("events_kept")

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
        self.end_headers()
        self.wfile.write(data)


class StandIn(ThreadingHTTPServer):
    """The server: its buckets, latency and counts."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(  # noqa: PLR0913  keyword-only settings of the stand-in, each independent
        self,
        *,
        rate: float,
        burst: float,
        latency: float,
        stream_rate: float,
        read_rate: float = 100,
        read_burst: float | None = None,
        meters: dict[str, str] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls = TokenBucket(rate, burst)
        self.stream_events = TokenBucket(stream_rate, stream_rate) if stream_rate else None
        self.reads = TokenBucket(read_rate, read_burst or read_rate)
        self.latency = latency
        self.stats = Stats()
        self.events = MeterEvents(meters or {})
        #: Events are kept for summaries only when there are meters to summarise.
        self.keep_events = bool(meters)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_meters(text: str) -> dict[str, str]:
    """``api_calls=sum,peak=last`` as ``{event_name: formula}``."""
    meters: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, formula = part.partition("=")
        if not name or formula not in ("sum", "last"):
            raise argparse.ArgumentTypeError(
                "--meters takes event_name=sum|last pairs, e.g. api_calls=sum,peak=last; "
                f"got {part!r}"
            )
        meters[name] = formula
    return meters


@contextmanager
def running(*options: str) -> Iterator[str]:
    """This stand-in as its own process with ``options``; yields its base URL, stopped
    afterwards."""
    command = [sys.executable, "-m", "tests.bench.standin", *options]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("port "):
            raise RuntimeError(f"the stand-in did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stats(base: str) -> dict[str, int]:
    """The counts of the stand-in at ``base``."""
    with urllib.request.urlopen(f"{base}/_stats", timeout=5) as answer:
        return dict(json.load(answer))


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="v1 calls/s (default 1000)")
    parser.add_argument("--burst", type=float, help="bucket size (default: one second's rate)")
    parser.add_argument("--latency-ms", type=float, default=20, help="added to every answer")
    parser.add_argument("--stream-rate", type=float, default=0, help="stream events/s (0: off)")
    parser.add_argument(
        "--read-rate", type=float, default=100, help="meter reads/s (default 100, Stripe live)"
    )
    parser.add_argument("--read-burst", type=float, help="read bucket size (default: 1 s's rate)")
    parser.add_argument(
        "--meters",
        type=parse_meters,
        default={},
        help="meters to list and summarise, event_name=sum|last,... (default: none, and "
        "accepted events are not kept)",
    )
    args = parser.parse_args()
    server = StandIn(
        rate=args.rate,
        burst=args.burst or args.rate,
        latency=args.latency_ms / 1000,
        stream_rate=args.stream_rate,
        read_rate=args.read_rate,
        read_burst=args.read_burst,
        meters=args.meters,
    )
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
