"""Turn the errors a user can cause into one red ``error: …`` line and an exit code.

Bad input (:class:`~adapter.errors.InvalidUsage`, a bad schedule or other
:class:`~adapter.errors.ConfigurationError`, invalid settings) exits with 2, like a usage
error; any other :class:`~adapter.errors.MetersyncError` or an unreachable database exits
with 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import typer
from pydantic import ValidationError
from rich.text import Text
from typer.core import TyperGroup

from adapter.cli.context import err_console
from adapter.errors import ConfigurationError, InvalidUsage, MetersyncError

#: Exit code for bad input: the same code click uses for a bad option.
EXIT_BAD_INPUT = 2
#: Exit code for everything else that went wrong on purpose.
EXIT_FAILED = 1


def fail(message: str, *, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` in red on stderr; return the exit to raise."""
    # soft_wrap keeps the message on one line however narrow the terminal is, and a
    # Text (not a markup string) keeps brackets in the message from being parsed.
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True)
    return typer.Exit(code)


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each bad setting and what is wrong with it, never its value."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "invalid settings: " + "; ".join(parts)


class MetersyncGroup(TyperGroup):
    """The root command group; subcommands run inside its :meth:`invoke`."""

    # ``ctx`` is typed Any: the context class lives in click or, from typer 0.29, in
    # typer's private copy of it, and an override may not narrow the parameter.
    def invoke(self, ctx: Any) -> object:  # noqa: ANN401  click's or typer's Context, by version
        """Run the command, mapping expected errors to a message and an exit code."""
        try:
            return super().invoke(ctx)
        except (InvalidUsage, ConfigurationError) as exc:
            raise fail(str(exc), code=EXIT_BAD_INPUT) from None
        except MetersyncError as exc:
            raise fail(str(exc)) from None
        except ValidationError as exc:
            raise fail(describe_settings_error(exc), code=EXIT_BAD_INPUT) from None
        except sa.exc.OperationalError as exc:
            # The driver's message names the server, never the password in the URL.
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig else "unknown"
            raise fail(f"database error: {detail}") from None
