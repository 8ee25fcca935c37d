"""`dc-agent upgrade`: a new dc-agent in the venv this one runs from, the service restarted, and a rollback when
the new version does not work.

    1. what pip would install (`pip install --dry-run --report`): `--check` stops here;
    2. the installed version saved as a wheel (<state_dir>/upgrade/previous/, dc_agent.installed_wheel);
    3. `python -m pip install --upgrade SPEC` (SPEC: dc-agent==V, or the wheel / directory of --from);
    4. the new `<venv>/bin/dc-agent --version` must run and name the installed version;
    5. `systemctl restart <unit>` (its stop is the agent's drain) when the unit is active, then wait until the
       unit is active and the agent's status.json shows the new version with a heartbeat after the restart;
    6. on a failure in 3-5: the saved wheel reinstalled (`--force-reinstall --no-deps`), checked, restarted.

Only the standard library is used once pip has started changing the installed files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dc_agent import installed_wheel
from dc_agent.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail

PIP_TIMEOUT = 900
SYSTEMCTL_TIMEOUT = 300


class UpgradeError(Exception):
    """A step failed; the message says which and why."""


def say(text: str) -> None:
    print(f"upgrade: {text}", flush=True)


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


class Venv:
    """The venv dc-agent runs from, and pip in it."""

    def __init__(self) -> None:
        self.prefix = Path(sys.prefix)
        self.python = Path(sys.executable)
        self.agent = self.prefix / "bin" / "dc-agent"

    def pip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(self.python), "-m", "pip", *args, "--no-input", "--disable-pip-version-check"],
                             capture_output=True, text=True, timeout=PIP_TIMEOUT)
        if check and res.returncode != 0:
            raise UpgradeError(f"pip {args[0]} failed (exit {res.returncode}):\n{_tail(res.stderr or res.stdout)}")
        return res

    def installed(self) -> str | None:
        """The dc-agent version installed now, read by a fresh interpreter (this one has the old one loaded)."""
        res = subprocess.run([str(self.python), "-c", "import importlib.metadata as m; print(m.version('dc-agent'))"],
                             capture_output=True, text=True, timeout=60)
        return res.stdout.strip() or None if res.returncode == 0 else None

    def agent_version(self) -> str:
        """What `<venv>/bin/dc-agent --version` says; UpgradeError when it does not run."""
        try:
            res = subprocess.run([str(self.agent), "--version"], capture_output=True, text=True, timeout=60)
        except OSError as exc:
            raise UpgradeError(f"{self.agent} cannot run: {exc}") from None
        words = res.stdout.split()
        if res.returncode != 0 or len(words) != 2 or words[0] != "dc-agent":
            raise UpgradeError(f"`{self.agent} --version` failed (exit {res.returncode}):\n"
                               f"{_tail(res.stderr or res.stdout)}")
        return words[1]


def spec_of(version: str | None, source: Path | None) -> tuple[list[str], str]:
    """(pip arguments, a description) for what to install."""
    if source is None:
        return [f"dc-agent=={version}" if version else "dc-agent"], "the package index"
    source = source.expanduser().absolute()
    if source.is_file():
        if source.suffix != ".whl":
            raise UpgradeError(f"--from {source}: not a wheel (.whl); pass a wheel, a project directory or a "
                               "directory of wheels")
        return [str(source)], str(source)
    if source.is_dir():
        if (source / "pyproject.toml").exists() or (source / "setup.py").exists():
            return [str(source)], f"the project in {source}"
        return ["--find-links", str(source), f"dc-agent=={version}" if version else "dc-agent"], f"the wheels in {source}"
    raise UpgradeError(f"--from {source}: no such file or directory")


def would_install(venv: Venv, args: list[str]) -> str | None:
    """The dc-agent version pip would install for `args` (None: the installed one already satisfies them)."""
    res = venv.pip("install", "--upgrade", "--dry-run", "--quiet", "--report", "-", *args, check=False)
    if res.returncode != 0:
        raise UpgradeError(f"pip cannot find what to install:\n{_tail(res.stderr or res.stdout)}")
    try:
        report = json.loads(res.stdout)
    except ValueError:
        raise UpgradeError(f"pip's --report is not JSON:\n{_tail(res.stdout)}") from None
    for item in report.get("install") or []:
        meta = item.get("metadata") or {}
        if str(meta.get("name", "")).lower().replace("_", "-") == "dc-agent":
            return str(meta.get("version"))
    return None


class Service:
    """The systemd unit that runs the agent, through systemctl."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.systemctl = shutil.which("systemctl")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.systemctl is not None
        return subprocess.run([self.systemctl, *args], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT)

    def state(self) -> str:
        return self._run("is-active", self.unit).stdout.strip() if self.systemctl else "no systemd"

    def manages_agent(self) -> str | None:
        """None when the unit is active under systemd (restart it), else why no restart can happen."""
        if not self.systemctl:
            return "systemctl is not installed (not under systemd)"
        loaded = self._run("show", "--property=LoadState", "--value", self.unit).stdout.strip()
        if loaded != "loaded":
            return f"systemd has no unit {self.unit}.service (LoadState: {loaded or 'unknown'})"
        state = self.state()
        return None if state == "active" else f"{self.unit}.service is {state or 'not active'}"

    def restart(self) -> None:
        res = self._run("restart", self.unit)
        if res.returncode != 0:
            raise UpgradeError(f"systemctl restart {self.unit} failed (exit {res.returncode}): "
                               f"{(res.stderr or res.stdout).strip()[:500]}")


def _status(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_healthy(service: Service, state_dir: Path, version: str, since_ns: int, timeout: float) -> str | None:
    """None once the unit is active and status.json shows `version` heartbeating after `since_ns`; else why not."""
    deadline = time.monotonic() + timeout
    why = "no status yet"
    while time.monotonic() < deadline:
        state = service.state()
        status = _status(state_dir)
        if state in ("failed", "inactive"):
            return f"{service.unit}.service is {state} after the restart (journalctl -u {service.unit})"
        if state != "active":
            why = f"{service.unit}.service is {state}"
        elif status.get("version") != version or int(status.get("updatedNs") or 0) < since_ns:
            why = f"status.json shows version {status.get('version') or '?'}, not {version} yet"
        elif int(status.get("lastHeartbeatNs") or 0) < since_ns:
            why = f"version {version} runs but has no heartbeat yet ({status.get('lastError') or 'no error'})"
        else:
            return None
        time.sleep(1.0)
    return f"not healthy after {timeout:.0f} s: {why}"


def run_upgrade(*, config: Path | None, check: bool, version: str | None, source: Path | None, restart: bool,
                unit: str, health_timeout: float) -> int:
    from dc_agent import config as cfg
    from dc_agent.errors import ConfigFileError

    venv = Venv()
    if sys.prefix == sys.base_prefix:
        fail("upgrade", f"this dc-agent does not run from a venv ({sys.prefix}): upgrade it with the tool that "
                        "installed it")
        return EXIT_FAILURE
    state_dir: Path | None = None
    try:
        state_dir = cfg.load(config).state_dir
    except ConfigFileError as exc:
        if restart and not check:
            fail("upgrade", f"{exc} (the state directory is needed to see the restarted agent; --no-restart "
                            "upgrades without it)")
            return EXIT_CONFIG
    current = installed_wheel.installed_version()
    try:
        args, where = spec_of(version, source)
        target = would_install(venv, args)
    except UpgradeError as exc:
        fail("upgrade", str(exc))
        return EXIT_FAILURE
    if version and target and target != version:
        fail("upgrade", f"{where} holds dc-agent {target}, not the --version {version} asked for; nothing changed")
        return EXIT_FAILURE
    if target is None or target == current:
        say(f"dc-agent {current} is installed; {where} has nothing else to install"
            + (f" for {version}" if version else ""))
        return EXIT_OK
    say(f"dc-agent {current} -> {target} from {where} (venv {venv.prefix})")
    if check:
        return EXIT_OK
    return _upgrade(venv, args, current, target, state_dir, Service(unit) if restart else None, health_timeout)


def _upgrade(venv: Venv, args: list[str], current: str | None, target: str, state_dir: Path | None,
             service: Service | None, health_timeout: float) -> int:
    keep_dir = state_dir / "upgrade" / "previous" if state_dir else Path(tempfile.mkdtemp(prefix="dc-agent-upgrade-"))
    try:
        saved = installed_wheel.save(keep_dir)
    except (OSError, ValueError) as exc:
        fail("upgrade", f"cannot save the installed dc-agent {current} for a rollback ({exc}); nothing changed")
        return EXIT_FAILURE
    say(f"saved dc-agent {current} as {saved} (for a rollback)")
    no_restart = "restart skipped (--no-restart)" if service is None else service.manages_agent()
    try:
        venv.pip("install", "--upgrade", *args)
        installed = venv.installed()
        if installed != target:
            raise UpgradeError(f"pip installed {installed or 'nothing readable'}, not {target}")
        reported = venv.agent_version()
        if reported != target:
            raise UpgradeError(f"the new dc-agent says it is {reported}, not {target}")
        say(f"installed dc-agent {target}; `dc-agent --version` works")
        if no_restart:
            say(f"{no_restart}: restart the agent yourself to run {target}")
            return EXIT_OK
        assert service is not None and state_dir is not None
        since = time.time_ns()
        say(f"restarting {service.unit}.service (the running agent drains first)")
        service.restart()
        problem = wait_healthy(service, state_dir, target, since, health_timeout)
        if problem:
            raise UpgradeError(problem)
        say(f"{service.unit}.service runs dc-agent {target} and heartbeats: done")
        return EXIT_OK
    except (UpgradeError, OSError, subprocess.SubprocessError) as exc:
        if _unchanged(venv, current):
            fail("upgrade", f"{exc}; nothing changed: dc-agent {current} is still installed")
            return EXIT_FAILURE
        fail("upgrade", f"dc-agent {target} does not work: {exc}")
        return _roll_back(venv, saved, current, state_dir, None if no_restart else service, health_timeout)


def _unchanged(venv: Venv, current: str | None) -> bool:
    """pip failed before touching anything (no permission, no network): the old version is intact and runs."""
    try:
        return venv.installed() == current and venv.agent_version() == current
    except (UpgradeError, OSError, subprocess.SubprocessError):
        return False


def _roll_back(venv: Venv, saved: Path, previous: str | None, state_dir: Path | None, service: Service | None,
               health_timeout: float) -> int:
    say(f"rolling back to dc-agent {previous} from {saved}")
    try:
        venv.pip("install", "--force-reinstall", "--no-deps", "--no-index", str(saved))
        back = venv.agent_version()
        if back != previous:
            raise UpgradeError(f"after the rollback dc-agent says {back}, not {previous}")
        if service is not None and state_dir is not None:
            since = time.time_ns()
            service.restart()
            problem = wait_healthy(service, state_dir, previous or "", since, health_timeout)
            if problem:
                raise UpgradeError(f"{previous} restarted but {problem}")
    except (UpgradeError, OSError, subprocess.SubprocessError) as exc:
        fail("upgrade", f"the rollback failed too: {exc}; reinstall by hand: {venv.python} -m pip install "
                        f"--force-reinstall --no-deps {saved}")
        return EXIT_FAILURE
    say(f"rolled back: dc-agent {previous} is installed" + (" and running" if service is not None else ""))
    return EXIT_FAILURE
