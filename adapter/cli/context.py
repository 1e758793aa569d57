"""What every command shares: the global options, settings, the connection and consoles."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

import adapter
from adapter.client import Metersync
from config.settings import Settings

#: Tables and step lines. No markup: names users chose may contain brackets. JSON goes
#: through :func:`print_json` instead, unstyled.
console = Console(highlight=False, markup=False, soft_wrap=True)
#: Error lines.
err_console = Console(stderr=True, highlight=False, markup=False)


@dataclass(frozen=True, slots=True)
class CliState:
    """Global options, kept on the click context for the subcommands."""

    database_url: str | None = None

    def settings(self) -> Settings:
        """Settings from the environment, with ``--database-url`` winning when given."""
        if self.database_url is None:
            return Settings()
        # An init argument goes through the same validators as the environment variable.
        return Settings(database_url=self.database_url)


def state(ctx: typer.Context) -> CliState:
    """The global options of this invocation (defaults when run without the root app)."""
    found = ctx.find_object(CliState)
    return found if found is not None else CliState()


@contextmanager
def connected(ctx: typer.Context) -> Iterator[Metersync]:
    """A connected metersync for one command, closed when the command ends."""
    ms = adapter.connect(state(ctx).settings())
    try:
        yield ms
    finally:
        ms.close()


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout, with no styling or wrapping."""
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_listing(
    found: Sequence[Any], *, as_json: bool, empty: str, table: Callable[[Any], Any]
) -> None:
    """Print a list command's result: JSON, a hint when there is nothing, or a table."""
    if as_json:
        print_json([dataclasses.asdict(info) for info in found])
    elif not found:
        console.print(empty)
    else:
        console.print(table(found))
