"""The import graph: `core` at the bottom, `ledger` on `core` alone, `gateway` and
`consumers` never importing each other, `presence` reading the ledger and known to no
product package, `devtools` importing no test support, and a consumer, ledger or presence
process that does not load the gateway's HTTP side."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
# Which top-level packages each package may import from this project.
ALLOWED: Final = {
    "core": {"core"},
    "gateway": {"core", "gateway"},
    # Storage shared by its writers (the workers) and its readers (the presence API, the
    # CLI): it knows neither of them.
    "ledger": {"core", "ledger"},
    "consumers": {"core", "ledger", "consumers"},
    # The presence API reads the ledger the workers keep; neither of them knows of it.
    "presence": {"core", "ledger", "presence"},
    # Developer tools run the product; test support (tests/support) builds on them, not the
    # other way round.
    "devtools": {"core", "ledger", "gateway", "consumers", "presence", "devtools"},
}
PROJECT: Final = frozenset(
    {"core", "ledger", "gateway", "consumers", "presence", "devtools", "tests", "bench"}
)


def imported_packages(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every absolute import of a project package in `path`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.partition(".")[0] in PROJECT:
                yield node.lineno, name.partition(".")[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_sits_below_it(package: str) -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, imported in imported_packages(path)
        if imported not in ALLOWED[package]
    ]
    assert crossings == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    module = tmp_path / "crossing.py"
    module.write_text("import os\nfrom gateway.models import Transition\nimport consumers.runner\n")
    assert list(imported_packages(module)) == [(2, "gateway"), (3, "consumers")]


@pytest.mark.parametrize(
    "module",
    ["consumers.__main__", "ledger.cli", "consumers.migrate", "presence.__main__"],
)
def test_a_consumer_process_loads_nothing_of_the_gateway(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m.partition('.')[0] == 'gateway')\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("package", ["core", "ledger", "gateway", "consumers", "presence"])
def test_every_package_ships_its_type_information(package: str) -> None:
    # `from consumers import Event, Handler, Reject` is an API: type checkers of
    # downstream code read it only from a package marked typed (PEP 561).
    assert (ROOT / package / "py.typed").is_file()
