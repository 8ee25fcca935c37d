"""Wheels of this project at any version, built here with the standard library, and throwaway venvs to install
them in, for the `dc-agent upgrade` tests.

Why not `pip wheel --no-build-isolation`: the test venv's setuptools (the one venv bundles) cannot build a wheel
without the `wheel` package, and build isolation would download setuptools. A pure-Python wheel is only a zip
of the packages plus a dist-info directory (METADATA, WHEEL, entry_points.txt, RECORD), which this writes from
pyproject.toml. `patch` replaces files' text in the wheel, to make a broken build.

The venvs are made `--without-pip`, with a .pth file that appends this venv's site-packages: pip and every
dependency come from there, so nothing is downloaded, while dc-agent itself is installed into the new venv
(its site-packages comes first on sys.path).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("dc_agent", "dc_common", "provisioners", "pool_api")
DATA_SUFFIXES = (".py", ".html", ".css", ".js", ".ini", ".svg", ".png", ".mako")


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def build_wheel(version: str, dest: Path, patch: dict[str, str] | None = None) -> Path:
    """dc_agent-<version>-py3-none-any.whl in `dest`, from this checkout's files (`patch`: path -> new text)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    patch = dict(patch or {})
    patch.setdefault("dc_agent/__init__.py", (REPO / "dc_agent/__init__.py").read_text().replace(
        f'__version__ = "{project["version"]}"', f'__version__ = "{version}"'))
    files: dict[str, bytes] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            rel = path.relative_to(REPO).as_posix()
            if path.is_file() and "__pycache__" not in rel and path.suffix in DATA_SUFFIXES:
                files[rel] = patch.pop(rel).encode() if rel in patch else path.read_bytes()
    for rel, text in patch.items():
        files[rel] = text.encode()
    info = f"dc_agent-{version}.dist-info"
    metadata = [f"Metadata-Version: 2.1", "Name: dc-agent", f"Version: {version}",
                f"Requires-Python: {project.get('requires-python', '>=3.11')}"]
    metadata += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests.support.wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    scripts = "".join(f"{name} = {target}\n" for name, target in project.get("scripts", {}).items())
    files[f"{info}/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    files[f"{info}/top_level.txt"] = ("\n".join(PACKAGES) + "\n").encode()
    record = "".join(f"{name},{_hash(data)},{len(data)}\n" for name, data in files.items()) + f"{info}/RECORD,,\n"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"dc_agent-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    out.write_bytes(buf.getvalue())
    return out


def pip_env(find_links: Path) -> dict[str, str]:
    """An environment in which pip reads no config, asks no index and finds wheels only in `find_links`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "DC_AGENT_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(find_links),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
    env.pop("INVOCATION_ID", None)
    return env


def make_venv(path: Path, env: dict[str, str]) -> Path:
    """A venv at `path` whose dependencies (and pip) are this venv's; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120, env=env)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(site, "_dc_agent_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, env: dict[str, str], *args: str) -> None:
    res = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", *args], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
