"""A ``metersync run`` process under test: start it on a free loopback port, talk to its
HTTP API (signed webhooks, usage, ops), poll with deadlines, stop it with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.signing import SECRET, signed_headers

T = TypeVar("T")
#: The ops token the service is started with.
OPS_TOKEN = "ops-token-e2e-flow"
#: A Stripe key the stand-in accepts (it checks the ``sk_`` prefix only).
API_KEY = "sk_test_standin"
_CLI = (sys.executable, "-m", "adapter.cli")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the
    last value seen) once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last: {value!r}"
            )
        time.sleep(interval)


@dataclass
class Response:
    """An HTTP answer: status and decoded JSON body."""

    status: int
    body: Any


@dataclass
class Service:
    """A running ``metersync run`` process and its HTTP address."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """One request; error statuses are answers too, not exceptions."""
        url = self.base + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return Response(answer.status, json.loads(answer.read() or b"null"))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, json.loads(exc.read() or b"null"))

    def ops(self, method: str, path: str, body: object = None, **params: str) -> Response:
        """A request to the ops/usage API with the bearer token."""
        headers = {"Authorization": f"Bearer {OPS_TOKEN}", "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode()
        return self.request(method, path, data=data, headers=headers, params=params)

    def webhook(self, event: dict[str, Any]) -> Response:
        """POST one Stripe event, signed as Stripe signs it."""
        payload = json.dumps(event).encode()
        return self.request(
            "POST", "/webhooks/stripe", data=payload, headers=signed_headers(payload, SECRET)
        )

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors="replace")

    def stop(self, *, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait up to ``timeout`` seconds; the exit code, or None when it
        did not exit in time (it is then killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None


def start_service(
    settings: Mapping[str, str], *, workdir: Path, threads: int = 4, timeout: float = 30.0
) -> Service:
    """Start ``metersync run`` with ``settings`` (``METERSYNC_*`` variables) on a free
    loopback port and wait until ``GET /healthz`` answers 200."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PYTHONUNBUFFERED": "1",
        "METERSYNC_HTTP_HOST": "127.0.0.1",
        **settings,
    }
    log = workdir / "metersync-run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*_CLI, "run", "--port", str(port), "--threads", str(threads)],
            cwd=workdir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    service = Service(proc, f"http://127.0.0.1:{port}", log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"metersync run exited {proc.returncode}:\n{service.output()}")
        try:
            return service.request("GET", "/healthz").status == 200
        except OSError:  # not listening yet
            return False

    try:
        wait_for(healthy, timeout=timeout, what="GET /healthz", interval=0.2)
    except BaseException:
        service.stop(timeout=5)
        raise
    return service
