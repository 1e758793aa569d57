"""``python -m adapter.cli``: the same as the ``metersync`` console script."""

from adapter.cli.app import main

main()
