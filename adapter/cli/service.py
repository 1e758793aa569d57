"""Long-running commands: ``metersync worker``, ``metersync scheduler`` and ``metersync run``."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn
from dramatiq import Worker

from adapter.cli.context import connected, console, state
from adapter.client import Metersync
from adapter.errors import MetersyncError

if TYPE_CHECKING:
    from workers.actors import Actors

Threads = Annotated[
    int, typer.Option("--threads", min=1, max=64, help="Worker threads per process.")
]


def worker(
    ctx: typer.Context,
    processes: Annotated[
        int, typer.Option("--processes", min=1, max=32, help="Worker processes to run.")
    ] = 1,
    threads: Threads = 4,
) -> None:
    """Run Dramatiq workers that push closed reports to Stripe (Ctrl-C stops them)."""
    children = [
        subprocess.Popen(_self_command(ctx, "worker", "--threads", str(threads)))  # noqa: S603
        for _ in range(processes - 1)
    ]
    stop = _stop_on_signal()
    try:
        with connected(ctx) as ms, _services(ms, worker_threads=threads, scheduler=False):
            stop.wait()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)


def scheduler(ctx: typer.Context) -> None:
    """Run the scheduler: close due reports on each tick of the stored schedule and
    enqueue their pushes. Several may run; one acts at a time."""
    stop = _stop_on_signal()
    with connected(ctx) as ms, _services(ms, worker_threads=0, scheduler=True):
        stop.wait()


def run(
    ctx: typer.Context,
    threads: Threads = 4,
    host: Annotated[
        str | None, typer.Option(help="HTTP address (default METERSYNC_HTTP_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65_535, help="HTTP port (default METERSYNC_HTTP_PORT, 8000)."),
    ] = None,
) -> None:
    """Run the webhook receiver and HTTP API, the scheduler and a worker in one process,
    on the embedded defaults unless configured (Ctrl-C stops them)."""
    stop = _stop_on_signal()
    with (
        connected(ctx) as ms,
        _services(ms, worker_threads=threads, scheduler=True) as actors,
        _http(ms, actors, host=host or ms.settings.http_host, port=_port(port, ms)),
    ):
        stop.wait()


def _port(port: int | None, ms: Metersync) -> int:
    return ms.settings.http_port if port is None else port


@contextmanager
def _http(ms: Metersync, actors: Actors, *, host: str, port: int) -> Iterator[None]:
    """The FastAPI app under uvicorn in a thread of this process."""
    from webhooks.app import create_app  # noqa: PLC0415  composition root: loaded when run

    app = create_app(
        ms.settings, ms=ms, enqueue=lambda delivery_id: actors.enqueue_deliveries([delivery_id])
    )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="metersync-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise MetersyncError(f"the HTTP server could not listen on {host}:{port}")
        time.sleep(0.05)
    console.print(f"metersync: HTTP on http://{host}:{port} (POST /webhooks/stripe)")
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def _services(ms: Metersync, *, worker_threads: int, scheduler: bool) -> Iterator[Actors]:
    # The CLI composes the workers only when a command runs them.
    from workers.actors import declare  # noqa: PLC0415  composition root: loaded when run
    from workers.broker import make_broker  # noqa: PLC0415  composition root: loaded when run
    from workers.scheduler import Scheduler  # noqa: PLC0415  composition root: loaded when run

    handle = make_broker(ms.settings)
    actors = declare(handle, ms)
    stop = threading.Event()
    running: list[threading.Thread] = []
    worker = None
    if worker_threads:
        worker = Worker(handle.broker, worker_threads=worker_threads)
        worker.start()
    if scheduler:
        loop = Scheduler(ms, actors, client=handle.client)
        running.append(threading.Thread(target=loop.run, args=(stop,), daemon=True))
        running[-1].start()
    mode = "dry run (no Stripe key)" if ms.settings.dry_run else "Stripe"
    console.print(f"metersync: broker {handle.kind}, {mode}; Ctrl-C to stop")
    try:
        yield actors
    finally:
        stop.set()
        for thread in running:
            thread.join(timeout=5)
        if worker is not None:
            worker.stop()
        handle.close()


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM, installed before anything starts, so a signal
    that arrives while services are still starting stops them cleanly too."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    return done


def _self_command(ctx: typer.Context, *args: str) -> list[str]:
    command = [sys.executable, "-m", "adapter.cli"]
    url = state(ctx).database_url
    if url:
        command += ["--database-url", url]
    return [*command, *args]
