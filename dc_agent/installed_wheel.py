"""The installed dc-agent, packed back into a wheel: what `dc-agent upgrade` rolls back to.

There is no index to download the running version from (dc-agent is not on PyPI, and a provider's own wheel
may be gone), so the files pip installed (the distribution's RECORD, inside site-packages) are zipped again
with their dist-info; pip recreates the console scripts from entry_points.txt. An editable install packs
to its editable hooks, so a rollback restores the same link to the source tree. Standard library only: this
runs while pip replaces the package around it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import zipfile
from pathlib import Path

DIST = "dc-agent"
SKIP_IN_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def installed_version(name: str = DIST) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def save(dest: Path, name: str = DIST) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` of the installed distribution into `dest`; its path.
    OSError or ValueError (not installed, files missing) when it cannot be made."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"{name} is not installed in this environment") from None
    version = dist.version
    info_dir = None
    entries: list[tuple[str, bytes]] = []
    for file in dist.files or []:
        rel = file.as_posix()
        if rel.startswith("../") or "/__pycache__/" in f"/{rel}" or rel.endswith(".pyc"):
            continue  # console scripts (made again from entry_points.txt), byte code
        top, _, leaf = rel.partition("/")
        if top.endswith(".dist-info"):
            info_dir = top
            if leaf in SKIP_IN_INFO:
                continue
        entries.append((rel, Path(str(dist.locate_file(file))).read_bytes()))
    if info_dir is None or not entries:
        raise ValueError(f"{name} {version}: its RECORD lists no files to pack")
    wheel_name = re.sub(r"[^\w.]+", "_", name)
    out_info = f"{wheel_name}-{version}.dist-info"
    entries = [(out_info + rel[len(info_dir):] if rel.startswith(info_dir + "/") else rel, data) for rel, data in entries]
    if not any(rel == f"{out_info}/WHEEL" for rel, _ in entries):
        entries.append((f"{out_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: dc-agent upgrade\n"
                                             b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    record = "".join(f"{rel},{_hash(data)},{len(data)}\n" for rel, data in entries) + f"{out_info}/RECORD,,\n"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{wheel_name}-{version}-py3-none-any.whl"
    tmp = path.with_suffix(".whl.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in entries:
            zf.writestr(rel, data)
        zf.writestr(f"{out_info}/RECORD", record)
    tmp.replace(path)
    return path
