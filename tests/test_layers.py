"""The packages' arrows point down: dc_common imports nothing of ours, and neither pool_api nor the drivers
import the agent (STYLE.md). Read from the source with `ast`, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"dc_agent", "dc_common", "provisioners", "pool_api", "tests", "bench", "examples"}
ALLOWED = {
    "dc_common": set(),
    "provisioners": {"dc_common", "provisioners"},
    "pool_api": {"dc_common", "pool_api"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below_it(package):
    """Each module of `package` imports only the packages it is allowed to."""
    offenders = {}
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package]
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}
