"""`dc-agent upgrade` and `[agent] auto_upgrade`, with wheels of this project built at other versions
(tests/support/wheels.py) in a throwaway venv, pip offline (no index, only the test's wheels), and a fake
systemctl (tests/support/fake_systemctl.py) that runs the service as a plain process against the fake live API.

The wheels: 0.0.1 (the installed one), 9.9.0 (good), 9.9.1 (`dc-agent --version` fails: its cli module raises),
9.9.2 (`--version` works, `dc-agent run` dies at start: its loop module raises).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.dc_agent.fleet import EXAMPLE, wait_until
from tests.support.live_api import running_live_api
from tests.support.wheels import build_wheel, make_venv, pip_env, pip_install

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BROKEN = 'raise RuntimeError("this build is broken")\n'


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    cli = (REPO / "dc_agent/cli.py").read_text()
    loop = (REPO / "dc_agent/loop.py").read_text()
    return {"old": build_wheel("0.0.1", out), "new": build_wheel("9.9.0", out),
            "broken": build_wheel("9.9.1", out, {"dc_agent/cli.py": cli + BROKEN}),
            "dies": build_wheel("9.9.2", out, {"dc_agent/loop.py": loop + BROKEN})}


class Site:
    """A venv with dc-agent 0.0.1, pip offline, and a config whose state dir the upgrade reads."""

    def __init__(self, base: Path, wheels: dict[str, Path]) -> None:
        self.base = base
        self.env = pip_env(wheels["new"].parent)
        self.python = make_venv(base / "venv", self.env)
        self.agent = base / "venv" / "bin" / "dc-agent"
        pip_install(self.python, self.env, str(wheels["old"]))
        self.config = base / "hv" / "config.toml"
        self.config.parent.mkdir()
        self.config.write_text(tomli_w.dumps({"agent": {"api_url": "http://127.0.0.1:9", "provider_pubkey": "ab" * 32},
                                              "provisioner": {"type": "manual"}}))

    def dc_agent(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.agent), *args], capture_output=True, text=True, timeout=timeout,
                              env=env or self.env, cwd=self.base)

    def version(self) -> str:
        try:
            res = self.dc_agent("--version")
        except OSError:  # pip is replacing it right now
            return "missing"
        return res.stdout.strip() if res.returncode == 0 else f"broken (exit {res.returncode})"

    def upgrade(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.dc_agent("upgrade", "--config", str(self.config), *args, env=env)


@pytest.fixture
def site(tmp_path: Path, wheels: dict[str, Path]) -> Site:
    return Site(tmp_path, wheels)


class TestInstall:
    def test_check_only_says_what_would_be_installed(self, site):
        res = site.upgrade("--check", "--version", "9.9.0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "dc-agent 0.0.1 -> 9.9.0" in res.stdout and site.version() == "dc-agent 0.0.1"

    def test_upgrade_to_the_new_wheel(self, site):
        """--version from the (offline) wheel directory: 9.9.0 installed and running, the old one saved."""
        res = site.upgrade("--version", "9.9.0", "--no-restart")
        assert res.returncode == 0, res.stdout + res.stderr
        assert site.version() == "dc-agent 9.9.0"
        assert "restart skipped (--no-restart)" in res.stdout
        assert (site.config.parent / "state/upgrade/previous/dc_agent-0.0.1-py3-none-any.whl").exists()
        again = site.upgrade("--version", "9.9.0", "--no-restart")
        assert again.returncode == 0 and "nothing else to install" in again.stdout

    def test_a_broken_wheel_is_rolled_back(self, site, wheels):
        """--from a wheel whose `dc-agent --version` fails: the saved 0.0.1 is installed again, exit 1."""
        res = site.upgrade("--from", str(wheels["broken"]), "--no-restart")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "does not work" in res.stderr and "rolled back: dc-agent 0.0.1 is installed" in res.stdout
        assert "Traceback" not in res.stderr.split("`")[0]
        assert site.version() == "dc-agent 0.0.1"

    def test_an_unknown_version_changes_nothing(self, site, wheels):
        res = site.upgrade("--version", "7.7.7", "--no-restart")
        assert res.returncode == 1 and "pip cannot find what to install" in res.stderr, res.stdout + res.stderr
        res = site.upgrade("--from", str(wheels["new"]), "--version", "9.9.1", "--no-restart")
        assert res.returncode == 1 and "holds dc-agent 9.9.0, not the --version 9.9.1" in res.stderr, res.stderr
        assert site.version() == "dc-agent 0.0.1"


def fake_systemd(site: Site, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """PATH with the fake systemctl first; its state directory."""
    bindir, state = site.base / "fakebin", site.base / "systemd"
    bindir.mkdir()
    state.mkdir()
    tool = bindir / "systemctl"
    tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests/support/fake_systemctl.py"}" "$@"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    env = {**env, "PATH": f"{bindir}:{env.get('PATH', '')}", "FAKE_SYSTEMD_DIR": str(state),
           "FAKE_SYSTEMD_AGENT": str(site.agent), "FAKE_SYSTEMD_CONFIG": str(site.config)}
    return env, state


def live_agent_config(site: Site, server: Any, **agent: Any) -> None:
    """`dc-agent setup` (the installed 0.0.1) against the fake live API, with the example script."""
    _provider, pool_id = server.create_pool(provisioner_type="script")
    site.config.unlink()
    res = site.dc_agent("setup", "--token", server.setup_token(pool_id), "--api-url", server.url, "--config",
                        str(site.config), "--label", "hv-upgrade")
    assert res.returncode == 0, res.stdout + res.stderr
    data = tomllib.loads(site.config.read_text())
    data["agent"].update(poll_interval_seconds=1, shutdown_grace_seconds=5, **agent)
    data["provisioner"]["script"] = {"command": [sys.executable, str(EXAMPLE), "provision", "--dir",
                                                 str(site.base / "vms")]}
    site.config.write_text(tomli_w.dumps(data))
    site.pool_id = pool_id  # type: ignore[attr-defined]


def status_json(site: Site) -> dict[str, Any]:
    try:
        return json.loads((site.config.parent / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_restart_under_systemd_and_roll_back_when_the_new_one_dies(site, wheels):
    """Under (fake) systemd: the pool's upgradeToVersion is only logged (auto_upgrade off); 0.0.1 -> 9.9.0 restarts
    the unit and waits for a 9.9.0 heartbeat; then 9.9.2, which dies at start, is rolled back to 9.9.0 and the unit
    restarted again with it."""
    with running_live_api(site.base / "api") as server:
        live_agent_config(site, server)
        server.set_upgrade(site.pool_id, "9.9.0")  # type: ignore[attr-defined]  # ignored: auto_upgrade is off
        env, state = fake_systemd(site, site.env)
        try:
            assert subprocess.run(["systemctl", "start", "dc-agent"], env=env, timeout=120).returncode == 0
            wait_until(lambda: "auto_upgrade is off" in (state / "agent.log").read_text(), 30, "the upgrade request")
            assert not (site.config.parent / "state/upgrade/attempted.json").exists()
            res = site.upgrade("--version", "9.9.0", "--health-timeout", "60", env=env)
            assert res.returncode == 0, res.stdout + res.stderr + (state / "agent.log").read_text()[-3000:]
            assert "runs dc-agent 9.9.0 and heartbeats" in res.stdout and status_json(site)["version"] == "9.9.0"

            res = site.upgrade("--from", str(wheels["dies"]), "--health-timeout", "60", env=env)
            assert res.returncode == 1, res.stdout + res.stderr
            assert "rolled back: dc-agent 9.9.0 is installed and running" in res.stdout, res.stdout + res.stderr
            assert site.version() == "dc-agent 9.9.0"
            wait_until(lambda: status_json(site).get("version") == "9.9.0", 30, "9.9.0 running again")
            restarts = [line for line in (state / "calls.log").read_text().splitlines() if line.startswith("restart")]
            assert len(restarts) == 3  # 9.9.0, 9.9.2, 9.9.0 again
        finally:
            subprocess.run(["systemctl", "stop", "dc-agent"], env=env, timeout=120)


def test_auto_upgrade_acts_once_on_the_servers_version(site):
    """auto_upgrade = true and the pool asks for 9.9.0: the running 0.0.1 starts `dc-agent upgrade` detached
    (--no-restart outside systemd), the venv gets 9.9.0, and the version is recorded as tried."""
    with running_live_api(site.base / "api") as server:
        live_agent_config(site, server, auto_upgrade=True)
        server.set_upgrade(site.pool_id, "9.9.0")  # type: ignore[attr-defined]
        log = open(site.base / "agent.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([str(site.agent), "run", "--config", str(site.config), "--log-format", "json"],
                                stdout=log, stderr=subprocess.STDOUT, env=site.env, cwd=site.base)
        log.close()
        try:
            wait_until(lambda: site.version() == "dc-agent 9.9.0" or proc.poll() is not None, 90, "the upgrade")
            assert proc.poll() is None, (site.base / "agent.log").read_text()[-3000:]
            tried = json.loads((site.config.parent / "state/upgrade/attempted.json").read_text())
            assert list(tried) == ["9.9.0"]
            upgrade_log = (site.config.parent / "state/upgrade/upgrade-9.9.0.log").read_text()
            wait_until(lambda: "restart skipped" in (site.config.parent / "state/upgrade/upgrade-9.9.0.log")
                       .read_text(), 60, "the upgrade to finish")
            events = [json.loads(line) for line in (site.base / "agent.log").read_text().splitlines()
                      if line.startswith("{")]
            started = [e for e in events if "upgrade" in e.get("event", "") and e.get("upgrade_to_version")]
            assert len(started) == 1, (started, upgrade_log)
        finally:
            proc.terminate()
            proc.wait(60)
