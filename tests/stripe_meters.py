"""Stripe's meter endpoints for reconciliation tests, played by ``responses`` over a
:class:`~tests.stripe_meter_model.MeterModel`: meter events, the meter list, event
summaries and meter event adjustments (cancel). Every request is kept in ``calls``."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import responses

from tests.stripe_lists import API
from tests.stripe_meter_model import MeterModel

Answer = tuple[int, dict[str, str], str]


def _error(status: int, message: str, *, retry: str | None = None) -> Answer:
    headers = {"Request-Id": "req_err"} | ({"Stripe-Should-Retry": retry} if retry else {})
    body = {"error": {"type": "invalid_request_error", "message": message}}
    return status, headers, json.dumps(body)


class StripeMeters:
    """The endpoints at ``base``; ``model.formulas`` says which meters exist."""

    def __init__(self, http: responses.RequestsMock, *, base: str = API) -> None:
        self.model = MeterModel()
        #: ``(method, path)`` of every request, in order.
        self.calls: list[tuple[str, str]] = []
        #: Answers to give the next summary requests instead of the model's (status, body).
        self.summary_faults: list[tuple[int, dict[str, Any]]] = []
        #: Stripe meter ids whose summaries answer 500 (whatever order reads arrive in).
        self.failing_meters: set[str] = set()
        http.add_callback(responses.POST, f"{base}/v1/billing/meter_events", callback=self._event)
        http.add_callback(
            responses.POST, f"{base}/v1/billing/meter_event_adjustments", callback=self._cancel
        )
        http.add_callback(responses.GET, f"{base}/v1/billing/meters", callback=self._meters)
        summaries = re.compile(re.escape(base) + r"/v1/billing/meters/[^/]+/event_summaries.*")
        http.add_callback(responses.GET, summaries, callback=self._summary)

    def posts(self) -> list[str]:
        """The paths of every POST made."""
        return [path for method, path in self.calls if method == "POST"]

    def _note(self, request: requests.PreparedRequest) -> None:
        self.calls.append((request.method, urlsplit(request.url).path))

    def _event(self, request: requests.PreparedRequest) -> Answer:
        self._note(request)
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        event = {
            "event_name": form["event_name"],
            "identifier": form["identifier"],
            "customer": form["payload[stripe_customer_id]"],
            "value": form["payload[value]"],
            "timestamp": int(form["timestamp"]),
        }
        if not self.model.add(event):
            message = f"An event already exists with identifier {event['identifier']}."
            return _error(400, message, retry="false")
        return 200, {"Request-Id": "req_event"}, json.dumps({"object": "billing.meter_event"})

    def _cancel(self, request: requests.PreparedRequest) -> Answer:
        self._note(request)
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        refused = self.model.cancel(form["event_name"], form["cancel[identifier]"])
        if refused is not None:
            return _error(400, refused)
        body = {"object": "billing.meter_event_adjustment", "status": "pending", "type": "cancel"}
        return 200, {"Request-Id": "req_cancel"}, json.dumps(body)

    def _meters(self, request: requests.PreparedRequest) -> Answer:
        self._note(request)
        return 200, {"Request-Id": "req_meters"}, json.dumps(self.model.meters_json())

    def _summary(self, request: requests.PreparedRequest) -> Answer:
        self._note(request)
        url = urlsplit(request.url)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        start, end = int(query["start_time"]), int(query["end_time"])
        if start % 60 or end % 60:
            return _error(400, "start_time and end_time must be minute-aligned.")
        if self.summary_faults:
            status, body = self.summary_faults.pop(0)
            return status, {"Request-Id": "req_fault"}, json.dumps(body)
        meter = url.path.split("/")[4]
        if meter in self.failing_meters:
            body = {"error": {"type": "api_error", "message": "summaries unavailable"}}
            return 500, {"Request-Id": "req_fault"}, json.dumps(body)
        body = self.model.summary_json(meter, query["customer"], start, end)
        return 200, {"Request-Id": "req_summary"}, json.dumps(body)
