"""The script driver: stdin/stdout contract, failures, timeouts and cancels that kill the whole group."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from provisioners.base import Cancelled, ConfigError, Contract, ProvisionError
from provisioners.script import ScriptProvisioner
from tests.support.wait import wait_until

CONTRACT = Contract(contract_id="c-42", offering_id="off-1", requester_ssh_pubkey="ssh-ed25519 AAAA test",
                    cpu_cores=2, memory_mb=2048, storage_gb=20, provisioner_type="script",
                    datacenter_country="DE", instance_config={"os": "debian-12"})


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """True when the process no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


wait_for = functools.partial(wait_until, timeout=10.0, interval=0.02)


class TestAgentDeath:
    def test_a_run_dies_with_the_agent_that_started_it(self, tmp_path):
        """SIGKILL of the agent process kills its running script at once (parent-death signal), so an
        orphan cannot finish a contract that another agent takes over after the lease ran out."""
        import shutil

        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is not installed: runs are stopped at the next agent start only")
        cmd = script(tmp_path, "prov.sh", f"""
            cat >/dev/null
            echo $$ > {tmp_path}/script.pid
            exec sleep 60
        """)
        agent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import threading
            from provisioners.script import ScriptProvisioner
            from provisioners.base import Contract
            ScriptProvisioner({{"command": [{cmd!r}], "timeout_seconds": 120}}).provision(
                Contract(contract_id="c-orphan"), threading.Event())
        """)], cwd=str(Path(__file__).resolve().parents[2]))
        try:
            pid = int(wait_for(lambda: (tmp_path / "script.pid").exists() and (tmp_path / "script.pid").read_text().strip(),
                               timeout=30, what="the script to start"))
            assert not gone(pid)
            agent.kill()
            agent.wait()
            wait_for(lambda: gone(pid), timeout=10, what="the orphaned script to die with its agent")
        finally:
            agent.kill()


class TestProvision:
    def test_a_background_child_holding_stdout_does_not_fail_a_finished_script(self, tmp_path):
        """The script printed its JSON and exited 0, leaving a background process with its stdout open
        (a console proxy, say): the result counts; the driver does not wait for the child or time out."""
        cmd = script(tmp_path, "prov.sh", f"""
            cat >/dev/null
            sleep 30 &
            echo $! > {tmp_path}/child.pid
            echo '{{"externalId": "vm-bg", "ipAddress": "192.0.2.9"}}'
            exit 0
        """)
        started = time.monotonic()
        details = ScriptProvisioner({"command": [cmd], "timeout_seconds": 20}).provision(CONTRACT, threading.Event())
        assert details.external_id == "vm-bg" and details.ip_address == "192.0.2.9"
        assert time.monotonic() - started < 15
        child = int((tmp_path / "child.pid").read_text())
        os.kill(child, signal.SIGKILL)

    def test_contract_json_on_stdin_and_details_from_stdout(self, tmp_path):
        """The script reads the contract as JSON on stdin; its stdout JSON becomes the instance details."""
        cmd = script(tmp_path, "prov.sh", f"""
            cat > {tmp_path}/stdin.json
            echo "DC_AGENT_CONTRACT_ID=$DC_AGENT_CONTRACT_ID" > {tmp_path}/env.txt
            echo '{{"externalId": "vm-7", "ipAddress": "192.0.2.7", "sshPort": 2222, "extra": {{"x": 1}}}}'
        """)
        details = ScriptProvisioner({"command": [cmd]}).provision(CONTRACT, threading.Event())
        assert json.loads((tmp_path / "stdin.json").read_text()) == CONTRACT.to_api()
        assert (tmp_path / "env.txt").read_text().strip() == "DC_AGENT_CONTRACT_ID=c-42"
        assert (details.external_id, details.ip_address, details.ssh_port) == ("vm-7", "192.0.2.7", 2222)
        assert details.provisioner == "script" and details.extra == {"x": 1}

    def test_progress_lines_before_the_json_are_allowed(self, tmp_path):
        """When stdout is not one JSON document, its last line is."""
        cmd = script(tmp_path, "prov.sh", """
            echo "cloning template..."
            echo '{"externalId": "vm-8"}'
        """)
        assert ScriptProvisioner({"command": [cmd]}).provision(CONTRACT, threading.Event()).external_id == "vm-8"

    def test_non_zero_exit_fails_with_the_last_stderr_lines(self, tmp_path):
        """A failing script's message carries its last stderr lines, not the first ones."""
        cmd = script(tmp_path, "prov.sh", """
            for i in $(seq 1 30); do echo "line $i" >&2; done
            echo "FATAL: no capacity on node pve1" >&2
            exit 3
        """)
        with pytest.raises(ProvisionError) as info:
            ScriptProvisioner({"command": [cmd]}).provision(CONTRACT, threading.Event())
        message = str(info.value)
        assert "exited with status 3" in message
        assert "FATAL: no capacity on node pve1" in message and "line 30" in message
        assert "line 5 " not in message + " "

    def test_output_that_is_not_json_fails_saying_so(self, tmp_path):
        """Exit 0 with prose on stdout is a failure that says the JSON was not there."""
        cmd = script(tmp_path, "prov.sh", "echo 'VM created, IP is 192.0.2.1'\n")
        with pytest.raises(ProvisionError, match="not the expected JSON"):
            ScriptProvisioner({"command": [cmd]}).provision(CONTRACT, threading.Event())

    def test_json_without_external_id_fails(self, tmp_path):
        """Details must name the instance."""
        cmd = script(tmp_path, "prov.sh", "echo '{\"ipAddress\": \"192.0.2.1\"}'\n")
        with pytest.raises(ProvisionError, match="externalId"):
            ScriptProvisioner({"command": [cmd]}).provision(CONTRACT, threading.Event())

    def test_missing_executable_fails_clearly(self, tmp_path):
        """A command that cannot start is a ProvisionError naming it."""
        with pytest.raises(ProvisionError, match="cannot start provision command"):
            ScriptProvisioner({"command": [str(tmp_path / "nope")]}).provision(CONTRACT, threading.Event())

    def test_argv_is_not_a_shell_string(self, tmp_path):
        """Arguments reach the script verbatim: no shell expansion."""
        cmd = script(tmp_path, "prov.sh", f"""
            printf '%s\\n' "$@" > {tmp_path}/args.txt
            echo '{{"externalId": "vm-9"}}'
        """)
        ScriptProvisioner({"command": [cmd, "$HOME", "a b;c"]}).provision(CONTRACT, threading.Event())
        assert (tmp_path / "args.txt").read_text().splitlines() == ["$HOME", "a b;c"]


class TestKilling:
    def _tree_script(self, tmp_path: Path) -> str:
        return script(tmp_path, "slow.sh", f"""
            sleep 300 &
            echo $! > {tmp_path}/grandchild.pid
            echo $$ > {tmp_path}/child.pid
            echo "working" >&2
            sleep 300
        """)

    def test_timeout_kills_the_whole_process_group(self, tmp_path):
        """After timeout_seconds the script and the grandchild it started are both gone."""
        cmd = self._tree_script(tmp_path)
        driver = ScriptProvisioner({"command": [cmd], "timeout_seconds": 1, "kill_grace_seconds": 0.5})
        started = time.monotonic()
        with pytest.raises(ProvisionError) as info:
            driver.provision(CONTRACT, threading.Event())
        assert "timed out after 1 s" in str(info.value)
        assert time.monotonic() - started < 8
        grandchild = int((tmp_path / "grandchild.pid").read_text())
        child = int((tmp_path / "child.pid").read_text())
        wait_for(lambda: gone(grandchild) and gone(child), timeout=5, what="the process group to die")

    def test_a_script_ignoring_sigterm_is_killed(self, tmp_path):
        """SIGTERM first, then SIGKILL after kill_grace_seconds."""
        cmd = script(tmp_path, "stubborn.sh", f"""
            trap '' TERM
            echo $$ > {tmp_path}/child.pid
            while true; do sleep 0.1; done
        """)
        driver = ScriptProvisioner({"command": [cmd], "timeout_seconds": 1, "kill_grace_seconds": 0.3})
        with pytest.raises(ProvisionError, match="timed out"):
            driver.provision(CONTRACT, threading.Event())
        wait_for(lambda: gone(int((tmp_path / "child.pid").read_text())), timeout=5, what="SIGKILL")

    def test_cancel_event_kills_the_group_and_raises_cancelled(self, tmp_path):
        """Setting the cancel Event stops the script and its children at once."""
        cmd = self._tree_script(tmp_path)
        driver = ScriptProvisioner({"command": [cmd], "kill_grace_seconds": 0.5})
        cancel = threading.Event()
        outcome: dict[str, BaseException] = {}

        def work():
            try:
                driver.provision(CONTRACT, cancel)
            except BaseException as exc:  # noqa: BLE001
                outcome["exc"] = exc

        thread = threading.Thread(target=work)
        thread.start()
        wait_for(lambda: (tmp_path / "grandchild.pid").exists() and (tmp_path / "grandchild.pid").read_text().strip(),
                 what="the script to start")
        cancel.set()
        thread.join(10)
        assert isinstance(outcome.get("exc"), Cancelled)
        wait_for(lambda: gone(int((tmp_path / "grandchild.pid").read_text())), timeout=5, what="the grandchild to die")

    def test_cancel_runs_find_and_terminate_to_clean_up(self, tmp_path):
        """With find and terminate commands, what a killed script made is removed."""
        prov = script(tmp_path, "prov.sh", f"""
            touch {tmp_path}/made
            sleep 300
        """)
        find = script(tmp_path, "find.sh", f"""
            if [ -e {tmp_path}/made ]; then echo '{{"externalId": "vm-x"}}'; else echo null; fi
        """)
        term = script(tmp_path, "term.sh", f"""
            cat > {tmp_path}/terminated.json
            rm -f {tmp_path}/made
        """)
        driver = ScriptProvisioner({"command": [prov], "find_command": [find], "terminate_command": [term],
                                    "timeout_seconds": 1, "kill_grace_seconds": 0.2})
        with pytest.raises(ProvisionError):
            driver.provision(CONTRACT, threading.Event())
        assert json.loads((tmp_path / "terminated.json").read_text()) == {"externalId": "vm-x"}
        assert not (tmp_path / "made").exists()

    @pytest.mark.parametrize("lose_records", [False, True], ids=["recorded", "found-by-environment-mark"])
    def test_orphaned_run_of_a_killed_agent_is_stopped_at_start(self, tmp_path, lose_records):
        """A run left by a SIGKILLed agent process is killed by the next agent's recover_orphans(),
        also when the agent died before recording the run (found by its environment mark)."""
        cmd = self._tree_script(tmp_path)
        state = tmp_path / "state"
        code = textwrap.dedent(f"""
            import threading
            from provisioners.script import ScriptProvisioner
            from provisioners.base import Contract
            ScriptProvisioner({{"command": [{cmd!r}], "state_dir": {str(state)!r}}}).provision(
                Contract(contract_id="c-orphan"), threading.Event())
        """)
        agent = subprocess.Popen([sys.executable, "-c", code], cwd=str(Path(__file__).parents[2]))
        wait_for(lambda: (tmp_path / "grandchild.pid").exists() and (tmp_path / "grandchild.pid").read_text().strip(),
                 what="the script to start")
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        grandchild = int((tmp_path / "grandchild.pid").read_text())
        assert not gone(grandchild), "the script outlives its agent (it runs in its own session)"
        if lose_records:
            for record in (state / "running").glob("*.json"):
                record.unlink()
        stopped = ScriptProvisioner({"command": [cmd], "state_dir": str(state), "kill_grace_seconds": 0.5}).recover_orphans()
        assert stopped == ["c-orphan"]
        wait_for(lambda: gone(grandchild), timeout=5, what="the orphaned group to die")
        assert list((state / "running").glob("*.json")) == []


class TestQueries:
    def test_find_list_terminate(self, tmp_path):
        """find returns details or None; list parses the array; terminate gets the id on stdin."""
        find = script(tmp_path, "find.sh", """
            read -r line
            case "$line" in *c-1*) echo '{"externalId": "vm-1", "ipAddress": "192.0.2.1"}';; *) echo null;; esac
        """)
        lst = script(tmp_path, "list.sh", """echo '[{"externalId": "vm-1", "contractId": "c-1"}, {"externalId": "x", "contractId": null}]'\n""")
        term = script(tmp_path, "term.sh", f"cat > {tmp_path}/term.json; echo $DC_AGENT_EXTERNAL_ID > {tmp_path}/env\n")
        driver = ScriptProvisioner({"command": ["true"], "find_command": [find], "list_command": [lst],
                                    "terminate_command": [term]})
        assert driver.find("c-1").external_id == "vm-1"
        assert driver.find("c-2") is None
        assert [(i.external_id, i.contract_id) for i in driver.list_instances()] == [("vm-1", "c-1"), ("x", None)]
        driver.terminate("vm-1")
        assert json.loads((tmp_path / "term.json").read_text()) == {"externalId": "vm-1"}
        assert (tmp_path / "env").read_text().strip() == "vm-1"

    def test_without_optional_commands(self):
        """No find_command: nothing to adopt; no list_command: nothing listed; terminate says what is missing."""
        driver = ScriptProvisioner({"command": ["true"]})
        assert driver.find("c-1") is None and driver.list_instances() == []
        with pytest.raises(ProvisionError, match="terminate_command"):
            driver.terminate("vm")

    def test_health_checks_the_executables(self, tmp_path):
        """health() is false when a command is not executable."""
        assert ScriptProvisioner({"command": ["true"]}).health().ok
        bad = ScriptProvisioner({"command": [str(tmp_path / "missing.sh")]}).health()
        assert not bad.ok and "missing.sh" in bad.detail


class TestConfig:
    @pytest.mark.parametrize("settings, needle", [
        ({}, "[provisioner.script] command is not set"),
        ({"command": "/bin/provision --now"}, "[provisioner.script] command must be a list of strings"),
        ({"command": [1, 2]}, "[provisioner.script] command must be a non-empty list"),
        ({"command": ["true"], "timeout_seconds": -1}, "[provisioner.script] timeout_seconds"),
        ({"command": ["true"], "terminate_command": "rm -rf /"}, "[provisioner.script] terminate_command"),
        ({"command": ["true"], "comand": ["x"]}, "[provisioner.script] comand is not a known key"),
        ({"command": ["true"], "env": {"A": 1}}, "[provisioner.script] env"),
    ])
    def test_errors_name_the_key(self, settings, needle):
        """A wrong setting raises ConfigError naming the table and key."""
        with pytest.raises(ConfigError) as info:
            ScriptProvisioner(settings)
        assert needle in str(info.value)

    def test_relative_command_is_relative_to_the_config_file(self, tmp_path):
        """`./provision.sh` means next to config.toml, whatever the working directory."""
        driver = ScriptProvisioner({"command": ["./bin/provision.sh"]}, config_path=tmp_path / "config.toml")
        assert driver.command == [str(tmp_path / "bin" / "provision.sh")]

    def test_systemd_variables_do_not_reach_scripts(self, tmp_path, monkeypatch):
        """A script never gets NOTIFY_SOCKET / WATCHDOG_* (it must not notify for the agent)."""
        monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
        monkeypatch.setenv("WATCHDOG_USEC", "1000")
        cmd = script(tmp_path, "prov.sh", f"env > {tmp_path}/env.txt; echo '{{\"externalId\": \"v\"}}'\n")
        ScriptProvisioner({"command": [cmd]}).provision(CONTRACT, threading.Event())
        text = (tmp_path / "env.txt").read_text()
        assert "NOTIFY_SOCKET" not in text and "WATCHDOG_USEC" not in text
