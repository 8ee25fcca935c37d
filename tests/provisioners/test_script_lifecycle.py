"""The script driver's lifecycle commands (health, stop/start, password, SSH key) in the native protocol,
against examples/script-provisioner.py and small scripts that look at their own process."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from pathlib import Path

import pytest

from provisioners import capabilities
from provisioners.base import Contract, ProvisionError, Unsupported
from provisioners.script import ScriptProvisioner
from tests.provisioners.test_script import script

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "script-provisioner.py"
PASSWORD = "S3cret-Pa55-never-shown"
ACTIONS = {"command": "provision", "find_command": "find", "list_command": "list", "terminate_command": "terminate",
           "health_command": "health", "stop_command": "stop", "start_command": "start",
           "reset_password_command": "reset_password", "rotate_ssh_key_command": "rotate_ssh_key"}


def example(tmp_path: Path, *keys: str) -> ScriptProvisioner:
    """The example script configured for `command` and `keys` (all commands when none are named)."""
    wanted = keys or tuple(ACTIONS)
    settings = {key: [sys.executable, str(EXAMPLE), ACTIONS[key], "--dir", str(tmp_path / "vms"), "--delay", "0"]
                for key in {"command", *wanted}}
    return ScriptProvisioner(settings)


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "vms").glob("*.json"))]


@pytest.fixture
def made(tmp_path):
    """A driver with every command and one provisioned instance's external id."""
    drv = example(tmp_path)
    return drv, drv.provision(Contract(contract_id="c-1"), threading.Event()).external_id


class TestCommands:
    def test_health_follows_stop_and_start(self, tmp_path, made):
        """health is healthy while running, unhealthy once stopped, healthy again after start."""
        drv, ext = made
        assert drv.check_instance(ext).status == "healthy"
        drv.stop(ext)
        assert records(tmp_path)[0]["state"] == "stopped"
        stopped = drv.check_instance(ext)
        assert (stopped.status, stopped.detail) == ("unhealthy", "stopped")
        drv.start(ext)
        drv.start(ext)  # already running: done
        assert drv.check_instance(ext).status == "healthy" and records(tmp_path)[0]["state"] == "running"

    def test_health_of_an_unknown_instance_and_of_a_broken_check(self, tmp_path, made):
        """An instance the script does not know is unhealthy; a check that prints no status is unknown."""
        drv, _ext = made
        assert drv.check_instance("nope").status == "unhealthy"
        odd = ScriptProvisioner({"command": ["true"], "health_command": [script(tmp_path, "h.sh", "echo '{}'\n")]})
        result = odd.check_instance("x")
        assert result.status == "unknown" and '"status"' in result.detail

    def test_reset_password_keeps_only_a_hash(self, tmp_path, made):
        """The example records the SHA-256 of the password it received, per user, never the password."""
        drv, ext = made
        drv.set_password(ext, PASSWORD, "debian")
        assert records(tmp_path)[0]["passwords"] == {"debian": hashlib.sha256(PASSWORD.encode()).hexdigest()}
        assert all(PASSWORD not in p.read_text() for p in (tmp_path / "vms").iterdir() if p.is_file())

    def test_rotate_ssh_key_replaces_the_old_key(self, tmp_path, made):
        """newKey is added, oldKey removed; repeating the same rotation changes nothing."""
        drv, ext = made
        drv.rotate_ssh_key(ext, "ssh-ed25519 AAAA one")
        drv.rotate_ssh_key(ext, "ssh-ed25519 BBBB two", "ssh-ed25519 AAAA one")
        drv.rotate_ssh_key(ext, "ssh-ed25519 BBBB two", "ssh-ed25519 AAAA one")
        assert records(tmp_path)[0]["sshKeys"] == ["ssh-ed25519 BBBB two"]

    def test_a_failing_command_is_a_provision_error(self, tmp_path, made):
        """stop of an unknown instance: the script exits 1 and the error carries its stderr."""
        drv, _ext = made
        with pytest.raises(ProvisionError, match="no instance 'ghost'"):
            drv.stop("ghost")

    def test_the_existing_commands_are_unchanged(self, tmp_path, made):
        """find/list/terminate behave as before the lifecycle commands: no state field appears until used."""
        drv, ext = made
        assert drv.find("c-1").external_id == ext
        assert [(i.external_id, i.contract_id) for i in drv.list_instances()] == [(ext, "c-1")]
        assert set(records(tmp_path)[0]) == {"contractId", "details"}
        drv.terminate(ext)
        assert drv.list_instances() == []


class TestUnconfigured:
    @pytest.mark.parametrize("call, setting", [
        (lambda d: d.stop("x"), "stop_command"),
        (lambda d: d.start("x"), "start_command"),
        (lambda d: d.set_password("x", PASSWORD), "reset_password_command"),
        (lambda d: d.rotate_ssh_key("x", "ssh-ed25519 AAAA"), "rotate_ssh_key_command"),
    ])
    def test_a_missing_command_is_unsupported_naming_the_setting(self, call, setting):
        """Without its command an action raises Unsupported that names the setting enabling it."""
        with pytest.raises(Unsupported, match=rf"\[provisioner.script\] {setting}"):
            call(ScriptProvisioner({"command": ["true"]}))

    def test_no_health_command_answers_unknown(self):
        """Without health_command the check is the base default: unknown, naming the setting."""
        result = ScriptProvisioner({"command": ["true"]}).check_instance("x")
        assert result.status == "unknown" and "health_command" in result.detail

    def test_capabilities_report_only_configured_commands(self, tmp_path):
        """capabilities() lists what is configured; pause needs both stop and start."""
        assert capabilities(ScriptProvisioner({"command": ["true"]})) == ["provision"]
        assert capabilities(example(tmp_path, "stop_command", "health_command")) == ["provision", "health"]
        assert capabilities(example(tmp_path, "stop_command", "start_command", "rotate_ssh_key_command")) == \
            ["provision", "pause", "ssh_key"]
        assert capabilities(example(tmp_path)) == ["provision", "health", "pause", "password", "ssh_key"]


class TestPasswordSecrecy:
    def test_password_reaches_stdin_only(self, tmp_path):
        """The script sees the password on stdin, and not in its /proc/PID/cmdline or environ."""
        spy = script(tmp_path, "spy.sh", f"""
            cat > {tmp_path}/stdin.json
            cat /proc/$$/cmdline > {tmp_path}/cmdline
            cat /proc/$$/environ > {tmp_path}/environ
            cat /proc/$PPID/cmdline > {tmp_path}/parent-cmdline
        """)
        ScriptProvisioner({"command": ["true"], "reset_password_command": [spy, "--user-flag"]}).set_password(
            "vm-1", PASSWORD, "root")
        assert json.loads((tmp_path / "stdin.json").read_text()) == \
            {"externalId": "vm-1", "username": "root", "password": PASSWORD}
        assert b"--user-flag" in (tmp_path / "cmdline").read_bytes()  # the spy did read its own argv
        assert b"DC_AGENT_ACTION=reset_password" in (tmp_path / "environ").read_bytes()
        for name in ("cmdline", "environ", "parent-cmdline"):
            assert PASSWORD.encode() not in (tmp_path / name).read_bytes(), name

    def test_a_script_echoing_the_password_does_not_leak_it(self, tmp_path, caplog):
        """A failing script that prints the password: the error (what the agent logs and reports) masks it,
        and nothing the driver logged while running it holds it."""
        leaky = script(tmp_path, "leaky.sh", """
            read -r line
            echo "could not set password from: $line" >&2
            exit 2
        """)
        caplog.set_level(logging.DEBUG)
        with pytest.raises(ProvisionError) as info:
            ScriptProvisioner({"command": ["true"], "reset_password_command": [leaky]}).set_password("vm-1", PASSWORD)
        assert "exited with status 2" in str(info.value) and "***" in str(info.value)
        assert PASSWORD not in str(info.value) and PASSWORD not in caplog.text
