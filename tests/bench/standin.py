"""A minimal local stand-in for Stripe's meter event endpoints, for the push benchmark.

Run it as its own process, so its work does not share the benchmark's interpreter::

    python -m tests.bench.standin --rate 1000 --latency-ms 20

It prints ``port <n>`` once it listens on 127.0.0.1, then serves:

- ``POST /v1/billing/meter_events`` (form body): 200 with the event, or 400 for an
  identifier it has seen (Stripe's wording, so the gateway counts it as delivered);
- ``POST /v2/billing/meter_event_session``: a session token that expires in 15 minutes;
- ``POST /v2/billing/meter_event_stream`` (JSON ``{"events": [...]}``): ``{}``;
- ``GET /_stats``: accepted calls and events, duplicates and 429s, as JSON.

Every request waits ``--latency-ms`` before it is answered. Meter event calls (v1) go
through a global token bucket of ``--rate`` calls/s (burst ``--burst``, one second's worth
by default); a call that finds the bucket empty gets 429 ``rate_limit_error`` at once,
as Stripe answers. Stream events have their own bucket (``--stream-rate`` events/s),
off by default.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

#: Stripe's wording for a second event with a known identifier (the gateway matches it).
DUPLICATE = "An event already exists with identifier {identifier}."


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


class Handler(BaseHTTPRequestHandler):
    """One request to the stand-in."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Stripe's clients expect
    #: Headers and body go out in two writes; with Nagle on, the body waits for the
    #: client's delayed ACK of the headers (about 40 ms on Linux) on every answer.
    disable_nagle_algorithm = True
    server: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a line per request would cost more than the request."""

    def do_GET(self) -> None:
        """Only ``/_stats``."""
        if self.path == "/_stats":
            self._answer(200, self.server.stats.counts)
        else:
            self._answer(404, _error("invalid_request_error", f"no route GET {self.path}"))

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
        events = len(json.loads(body or b"{}").get("events", []))
        stats = self.server.stats
        if self.server.stream_events is not None and not self.server.stream_events.take(events):
            stats.add("stream_429")
            return 429, _error("rate_limit_error", "Too many events; try again later.")
        stats.add("stream_calls")
        stats.add("stream_events", events)
        return 200, {}

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

    def __init__(self, *, rate: float, burst: float, latency: float, stream_rate: float) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls = TokenBucket(rate, burst)
        self.stream_events = TokenBucket(stream_rate, stream_rate) if stream_rate else None
        self.latency = latency
        self.stats = Stats()


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="v1 calls/s (default 1000)")
    parser.add_argument("--burst", type=float, help="bucket size (default: one second's rate)")
    parser.add_argument("--latency-ms", type=float, default=20, help="added to every answer")
    parser.add_argument("--stream-rate", type=float, default=0, help="stream events/s (0: off)")
    args = parser.parse_args()
    server = StandIn(
        rate=args.rate,
        burst=args.burst or args.rate,
        latency=args.latency_ms / 1000,
        stream_rate=args.stream_rate,
    )
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
