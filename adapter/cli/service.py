"""Long-running commands: ``metersync worker``, ``metersync scheduler`` and ``metersync run``."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from adapter.cli.context import connected, console, state
from adapter.client import Metersync

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
    try:
        with connected(ctx) as ms, _services(ms, worker_threads=threads, scheduler=False):
            _wait_for_signal()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)


def scheduler(ctx: typer.Context) -> None:
    """Run the scheduler: close due reports on each tick of the stored schedule and
    enqueue their pushes. Several may run; one acts at a time."""
    with connected(ctx) as ms, _services(ms, worker_threads=0, scheduler=True):
        _wait_for_signal()


def run(ctx: typer.Context, threads: Threads = 4) -> None:
    """Run the scheduler and a worker in one process, on the embedded defaults unless
    configured (the webhook receiver joins them in a later release)."""
    with connected(ctx) as ms, _services(ms, worker_threads=threads, scheduler=True):
        _wait_for_signal()


@contextmanager
def _services(ms: Metersync, *, worker_threads: int, scheduler: bool) -> Iterator[None]:
    from dramatiq import Worker

    from workers.actors import declare
    from workers.broker import make_broker
    from workers.scheduler import Scheduler

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
        yield
    finally:
        stop.set()
        for thread in running:
            thread.join(timeout=5)
        if worker is not None:
            worker.stop()
        handle.close()


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def _self_command(ctx: typer.Context, *args: str) -> list[str]:
    command = [sys.executable, "-m", "adapter.cli"]
    url = state(ctx).database_url
    if url:
        command += ["--database-url", url]
    return [*command, *args]
