"""The ``metersync`` command line: ``app`` for tests, ``main`` for the console script."""

from adapter.cli.app import app, main

__all__ = ["app", "main"]
