"""fakepve is AGPL: the product (provisioners/, dc_agent/, pool_api/) never imports it or depends on it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("provisioners", "dc_agent", "pool_api")
# import_module("fakepve…"), __import__('fakepve'), or an import statement inside a string for exec.
DYNAMIC_IMPORT = re.compile(r"""(?:\bimport\s+fakepve\b|\bfrom\s+fakepve\b|["']fakepve(?:\.[\w.]+)?["'])""")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_product_code_never_imports_fakepve() -> None:
    """No product module imports fakepve, not even lazily (the grep catches importlib strings)."""
    files = [p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")]
    assert any(p.name == "proxmox.py" for p in files)
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if any(m == "fakepve" or m.startswith("fakepve.") for m in imported_modules(p))
                 or DYNAMIC_IMPORT.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_fakepve_is_a_test_only_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not any("fakepve" in dep for dep in project["dependencies"])
    assert any(dep.startswith("fakepve") for dep in project["optional-dependencies"]["test"])


def test_loading_the_driver_does_not_load_fakepve() -> None:
    """Importing and building the driver in a fresh interpreter leaves fakepve out of sys.modules."""
    code = (
        "import sys\n"
        "from provisioners import load\n"
        "load('proxmox', {'api_url': 'https://pve1:8006', 'api_token_id': 'a@pve!t', 'api_token_secret': 's',"
        " 'node': 'pve1', 'template_vmid': 9000, 'storage': 'local-lvm'})\n"
        "assert not any(m == 'fakepve' or m.startswith('fakepve.') for m in sys.modules), 'fakepve loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
