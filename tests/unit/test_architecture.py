"""Which way dependencies point: the import-linter contracts in ``pyproject.toml`` (pure
domain, a library that imports neither the HTTP app nor the workers, the two independent
of each other, Stripe only in the gateway, layered stages), and the same boundaries with
type-only imports counted too."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest
from importlinter import cli

ROOT = Path(__file__).resolve().parents[2]
#: The library's packages other than the CLI, the declared composition root.
LIBRARY = [
    "adapter.client",
    "adapter.usage",
    "adapter.errors",
    "adapter.domain",
    "adapter.store",
    "adapter.recording",
    "adapter.reading",
    "adapter.pushing",
    "adapter.mirror",
    "adapter.reconciling",
    "adapter.gateway",
]


def imports_between(graph: grimp.ImportGraph, source: str, target: str) -> list[str]:
    """Every direct import from ``source`` (or below it) of ``target`` (or below it), as
    ``importer -> imported`` lines."""
    found = []
    for module in sorted(graph.find_descendants(source) | {source}):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported == target or imported.startswith(target + "."):
                found.append(f"{module} -> {imported}")
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The project's import graph, imports under ``if TYPE_CHECKING`` included."""
    return grimp.build_graph("adapter", "webhooks", "workers", "config", cache_dir=None)


def test_the_import_linter_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lint-imports`` on pyproject.toml's contracts exits 0 (it prints what broke)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


@pytest.mark.parametrize(("source", "target"), [("webhooks", "workers"), ("workers", "webhooks")])
def test_the_app_and_the_workers_do_not_import_each_other_even_for_types(
    graph: grimp.ImportGraph, source: str, target: str
) -> None:
    """No import, not even a type-only one, from the HTTP app into the workers or back:
    the CLI and the ``metersync.handoff`` entry point wire them."""
    assert imports_between(graph, source, target) == []


@pytest.mark.parametrize("target", ["webhooks", "workers"])
def test_the_library_does_not_import_the_app_or_the_workers_even_for_types(
    graph: grimp.ImportGraph, target: str
) -> None:
    """Outside ``adapter.cli``, nothing in ``adapter`` imports ``webhooks`` or
    ``workers``, type-only imports included."""
    assert [line for source in LIBRARY for line in imports_between(graph, source, target)] == []


def test_the_check_finds_an_import_that_breaks_a_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper above reports a forbidden import when one exists, also one inside a
    function or under ``if TYPE_CHECKING``: the checks can fail."""
    for package, body in {
        "front": "def handler():\n    from back import jobs\n",
        "back": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import front.app\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        name = "app.py" if package == "front" else "jobs.py"
        (tmp_path / package / name).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = grimp.build_graph("front", "back", cache_dir=None)
    assert imports_between(found, "front", "back") == ["front.app -> back.jobs"]
    assert imports_between(found, "back", "front") == ["back.jobs -> front.app"]
    for package in ("front", "back"):
        sys.modules.pop(package, None)
