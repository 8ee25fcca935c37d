"""Acting on a heartbeat's `upgradeToVersion` (only with `[agent] auto_upgrade = true`).

The agent never upgrades itself in its own process: it starts `dc-agent upgrade --version V` detached, once
per version (the versions tried are kept in `<state_dir>/upgrade/attempted.json`, so a version that was
rolled back is not tried again after the restart that rollback causes). Under systemd the child goes
through `systemd-run` as a transient unit: the agent's unit has a read-only venv (ProtectSystem=strict),
and the `systemctl restart` of the upgrade would otherwise stop the child together with the agent's cgroup.
Outside systemd the child gets its own session and `--no-restart` (nothing would start the agent again):
the new version is used from the agent's next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ATTEMPTS_FILE = "attempted.json"
VERSION = re.compile(r"^[0-9A-Za-z.+!_-]{1,64}$")


def attempted(state_dir: Path) -> dict[str, int]:
    try:
        data = json.loads((state_dir / "upgrade" / ATTEMPTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record(state_dir: Path, version: str) -> None:
    from dc_common.fsutil import atomic_write

    data = attempted(state_dir)
    data[version] = time.time_ns()
    atomic_write(state_dir / "upgrade" / ATTEMPTS_FILE, json.dumps(data, sort_keys=True).encode())


def own_unit() -> str | None:
    """The systemd service this process runs in (from /proc/self/cgroup), or None outside systemd."""
    if not os.environ.get("INVOCATION_ID"):
        return None
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        for part in reversed(line.rpartition(":")[2].split("/")):
            if part.endswith(".service"):
                return part[: -len(".service")]
    return None


def command(version: str, config_path: Path, unit: str | None) -> list[str]:
    agent = Path(sys.prefix) / "bin" / "dc-agent"
    base = [str(agent)] if agent.exists() else [sys.executable, "-m", "dc_agent.cli"]
    argv = [*base, "upgrade", "--version", version, "--config", str(config_path)]
    argv += ["--unit", unit] if unit else ["--no-restart"]
    systemd_run = shutil.which("systemd-run") if unit else None
    if systemd_run:
        name = f"dc-agent-upgrade-{re.sub(r'[^0-9A-Za-z]', '-', version)}-{os.getpid()}"
        return [systemd_run, "--quiet", "--collect", "--no-block", f"--unit={name}", *argv]
    return argv


def launch(version: str, config_path: Path, state_dir: Path) -> str | None:
    """Start the upgrade to `version` detached; None when it was started, else why not."""
    if not VERSION.match(version):
        return f"{version!r} is not a version dc-agent can install"
    if version in attempted(state_dir):
        return "this version was tried before (see the upgrade log); upgrade by hand with `dc-agent upgrade`"
    _record(state_dir, version)
    log_path = state_dir / "upgrade" / f"upgrade-{version}.log"
    with open(log_path, "ab") as out:
        child = subprocess.Popen(command(version, config_path, own_unit()), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    threading.Thread(target=child.wait, name="upgrade-reaper", daemon=True).start()  # no zombie left
    return None
