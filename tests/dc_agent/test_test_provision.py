"""`dc-agent test-provision`: a real provision -> health -> terminate round trip, as a separate process, on the
script driver (examples/script-provisioner.py), on Proxmox (fakepve) and on Docker (a real dockerd, when the
machine has one); clean-up after a failure and after Ctrl-C; the manual driver refused; exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.dc_agent.fleet import EXAMPLE, REPO, dc_agent_command, wait_until
from tests.support.dockerd import docker_daemon  # noqa: F401 - a fixture
from tests.support.fakepve_server import FakePveServer, build

PROVIDER = "ab" * 32


def example(directory: Path, log: Path, *actions: str, delay: float = 0.0, fail_every: int = 0,
            **extra: Any) -> dict[str, Any]:
    """The example script's commands (provision, plus `actions`), recording calls in `log`."""
    keys = {"list": "list_command", "terminate": "terminate_command", "find": "find_command",
            "health": "health_command"}
    out = {"command": [sys.executable, str(EXAMPLE), "provision", "--dir", str(directory), "--log", str(log),
                       "--delay", str(delay), "--fail-every", str(fail_every)], "kill_grace_seconds": 1}
    out.update({keys[a]: [sys.executable, str(EXAMPLE), a, "--dir", str(directory), "--log", str(log)] for a in actions})
    out.update(extra)
    return out


def write_config(tmp_path: Path, kind: str, settings: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "config.toml"
    doc: dict[str, Any] = {"agent": {"api_url": "http://127.0.0.1:9", "provider_pubkey": PROVIDER},
                           "provisioner": {"type": kind, kind: settings}}
    if extra:
        doc["provisioners"] = extra
    path.write_text(tomli_w.dumps(doc))
    return path


def test_provision(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*dc_agent_command(), "test-provision", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())


test_provision.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def calls(log: Path) -> list[tuple[str, str, str]]:
    """(action, phase, contract) lines the example script recorded."""
    if not log.exists():
        return []
    return [tuple(line.split("\t")[1:4]) for line in log.read_text().splitlines()]  # type: ignore[misc]


def left(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.json")) if directory.exists() else []


class TestScript:
    def test_round_trip(self, tmp_path):
        """Each step printed with its time; the script provisioned and terminated one test-* contract; nothing left;
        the server address in the config was never needed."""
        vms, log = tmp_path / "vms", tmp_path / "calls.log"
        config = write_config(tmp_path, "script", example(vms, log, "list", "terminate", "find", "health"))
        res = test_provision(config)
        assert res.returncode == 0, res.stdout + res.stderr
        for step in ("health", "provision", "check", "terminate", "verify"):
            assert any(line.split("]")[-1].split()[:2] == [step, "ok"] for line in res.stdout.splitlines()), res.stdout
        assert "PASSED" in res.stdout and left(vms) == []
        done = [c for c in calls(log) if c[1] == "done"]
        assert [c[0] for c in done] == ["provision", "terminate"] and done[0][2].startswith("test-")
        assert done[0][2] == done[1][2]

    def test_keep_then_remove(self, tmp_path):
        """--keep leaves the instance and prints the command that removes it; that command removes it."""
        vms, log = tmp_path / "vms", tmp_path / "calls.log"
        config = write_config(tmp_path, "script", example(vms, log, "list", "terminate", "find"))
        res = test_provision(config, "--keep")
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(left(vms)) == 1 and "skip" in res.stdout  # no health_command: the check is skipped
        hint = next(line.strip() for line in res.stdout.splitlines() if "--remove" in line)
        argv = hint.split()
        assert argv[:2] == ["dc-agent", "test-provision"]
        again = subprocess.run([*dc_agent_command(), *argv[1:]], capture_output=True, text=True, timeout=60,
                               cwd=REPO, env=_env())
        assert again.returncode == 0, again.stdout + again.stderr
        assert left(vms) == []

    def test_the_ssh_key_given_reaches_the_driver(self, tmp_path):
        """--ssh-key FILE: the contract on the script's stdin carries that key."""
        vms, seen = tmp_path / "vms", tmp_path / "contract.json"
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmC5Y8mVJ6cgFSp7WxQ2vTj0t8iN2KDo4+T7rHq1bDA me@laptop"
        (tmp_path / "id.pub").write_text(key + "\n")
        settings = example(vms, tmp_path / "calls.log", "list", "terminate")
        settings["command"] = ["sh", "-c", f'tee "{seen}" | "$0" "$@"', *settings["command"]]
        res = test_provision(write_config(tmp_path, "script", settings), "--ssh-key", str(tmp_path / "id.pub"))
        assert res.returncode == 0, res.stdout + res.stderr
        contract = json.loads(seen.read_text())
        assert contract["requesterSshPubkey"] == key
        assert (contract["cpuCores"], contract["memoryMb"], contract["storageGb"]) == (1, 1024, 10)

    def test_a_failed_provision_leaves_nothing(self, tmp_path):
        """The script fails: exit 1, the failure shown, nothing left."""
        vms, log = tmp_path / "vms", tmp_path / "calls.log"
        config = write_config(tmp_path, "script", example(vms, log, "list", "terminate", "find", fail_every=1))
        res = test_provision(config)
        assert res.returncode == 1 and "FAILED" in res.stdout and "no capacity left" in res.stdout, res.stdout
        assert left(vms) == []

    def test_an_unhealthy_instance_is_removed(self, tmp_path):
        """The instance never becomes healthy: the check fails at its deadline and the instance is terminated."""
        vms, log = tmp_path / "vms", tmp_path / "calls.log"
        settings = example(vms, log, "list", "terminate", "find")
        settings["health_command"] = [sys.executable, "-c", 'print(\'{"status": "unhealthy", "detail": "no boot"}\')']
        res = test_provision(write_config(tmp_path, "script", settings), "--health-timeout", "1")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "not healthy after 1 s: unhealthy (no boot)" in res.stdout and "FAILED" in res.stdout
        assert left(vms) == [] and [c[0] for c in calls(log) if c[1] == "done"] == ["provision", "terminate"]

    def test_ctrl_c_during_the_check_terminates_the_instance(self, tmp_path):
        """SIGINT once the instance exists: the wait stops, the instance is terminated, exit 1."""
        vms, log = tmp_path / "vms", tmp_path / "calls.log"
        settings = example(vms, log, "list", "terminate", "find")
        settings["health_command"] = [sys.executable, "-c", 'print(\'{"status": "unhealthy"}\')']
        proc = subprocess.Popen([*dc_agent_command(), "test-provision", "--config",
                                 str(write_config(tmp_path, "script", settings))],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=_env())
        try:
            wait_until(lambda: left(vms) or proc.poll() is not None, 60, "the instance to be made")
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, out
        assert "SIGINT: stopping" in out and "FAILED (interrupted)" in out
        assert left(vms) == []

    def test_ctrl_c_during_provision_stops_the_script(self, tmp_path):
        """SIGINT while the script works: the driver kills it (its cancel), find sees nothing, exit 1."""
        vms, log = tmp_path / "vms", tmp_path / "calls.log"
        config = write_config(tmp_path, "script", example(vms, log, "list", "terminate", "find", delay=60))
        proc = subprocess.Popen([*dc_agent_command(), "test-provision", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=_env())
        try:
            wait_until(lambda: any(c[:2] == ("provision", "start") for c in calls(log)) or proc.poll() is not None,
                       60, "the script to start")
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1 and "find" in out and "nothing left" in out, out
        assert left(vms) == [] and not any(c[1] == "done" for c in calls(log))


class TestRefusals:
    def test_manual_cannot_be_tested(self, tmp_path):
        config = write_config(tmp_path, "manual", {})
        res = test_provision(config)
        assert res.returncode == 1 and "manual driver" in res.stderr and "Traceback" not in res.stderr

    def test_a_config_error_is_78_and_names_the_table(self, tmp_path):
        config = write_config(tmp_path, "script", {"command": ["true"]}, {"gpu": {"type": "script", "comand": ["x"]}})
        res = test_provision(config, "--provisioner", "gpu")
        assert res.returncode == 78 and "[provisioners.gpu]" in res.stderr, res.stderr

    def test_an_unknown_provisioner_lists_the_configured_ones(self, tmp_path):
        config = write_config(tmp_path, "script", {"command": ["true"]}, {"box": {"type": "manual"}})
        res = test_provision(config, "--provisioner", "gpu")
        assert res.returncode == 1 and "configured: script (script), box (manual)" in res.stderr, res.stderr

    def test_a_bad_ssh_key_file(self, tmp_path):
        (tmp_path / "key").write_text("not a key\n")
        res = test_provision(write_config(tmp_path, "script", {"command": ["true"]}), "--ssh-key",
                             str(tmp_path / "key"))
        assert res.returncode == 1 and "not an OpenSSH public key line" in res.stderr


def clones(pve: Any) -> int:
    return int(pve.clones_started)


def test_proxmox_round_trip(tmp_path):
    """Against fakepve: a VM cloned from the template, healthy (guest agent ping), destroyed; no VM left."""
    pve = build(agent_on_clone=True)
    with FakePveServer(pve) as srv:
        config = write_config(tmp_path, "proxmox", srv.settings())
        res = test_provision(config)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "pve1/" in res.stdout and "healthy" in res.stdout
        assert srv.vms() == [] and clones(pve) == 1


def test_docker_round_trip(tmp_path, docker_daemon):  # noqa: F811 - the fixture
    """On a real dockerd: a labelled container made, running, removed; none of this test's left."""
    config = write_config(tmp_path, "docker", docker_daemon.settings())
    res = test_provision(config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "healthy: running" in res.stdout
    leftovers = [c for c in docker_daemon.containers()
                 if str((c.get("Labels") or {}).get("dc-agent.contract", "")).startswith("test-")]
    assert leftovers == []  # test-provision's contracts are test-<random>; other tests' containers may live on
