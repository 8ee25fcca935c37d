"""The script driver speaking the Rust dc-agent 0.6's protocol (`protocol = "rust"`), against
examples/rust-protocol-script.py run as a real process."""

from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path

import pytest

from provisioners import capabilities, load
from provisioners.base import ConfigError, Contract, ProvisionError, Unsupported
from provisioners.script import ScriptProvisioner
from tests.provisioners.test_script import gone
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
RUST_SCRIPT = REPO / "examples" / "rust-protocol-script.py"
CONTRACT = Contract(contract_id="c-77", offering_id="off-9", requester_ssh_pubkey="ssh-ed25519 AAAA t",
                    cpu_cores=4, memory_mb=8192, storage_gb=80, provisioner_type="script",
                    provisioner_config={"template": 9000}, instance_config={"os": "debian-12"},
                    datacenter_country="DE")
wait_for = functools.partial(wait_until, timeout=10.0, interval=0.02)


def driver(tmp_path: Path, mode: str = "ok", **settings) -> ScriptProvisioner:
    argv = [sys.executable, str(RUST_SCRIPT), "--dir", str(tmp_path / "vms"), "--mode", mode]
    return ScriptProvisioner({"protocol": "rust", "command": argv, "terminate_command": argv,
                              "health_command": argv, **settings})


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "vms" / "calls.log"
    return log.read_text().split() if log.exists() else []


def last_input(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "vms" / "last-input.json").read_text())


class TestProvision:
    def test_request_fields_and_instance_translation(self, tmp_path):
        """stdin carries the Rust ProvisionRequest (snake_case, flattened, with action and external_id);
        the reply's instance becomes our InstanceDetails, Rust-only fields kept in extra."""
        details = driver(tmp_path).provision(CONTRACT, threading.Event())
        assert last_input(tmp_path) == {
            "action": "provision", "contract_id": "c-77", "offering_id": "off-9", "cpu_cores": 4,
            "memory_mb": 8192, "storage_gb": 80, "requester_ssh_pubkey": "ssh-ed25519 AAAA t",
            "instance_config": {"os": "debian-12"}, "post_provision_script": None, "external_id": None}
        assert (details.external_id, details.ssh_port, details.provisioner) == ("rust-c-77", 2222, "script")
        assert details.ip_address.startswith("192.0.2.") and details.ipv6_address is None
        assert details.extra == {"public_ip": "203.0.113.10", "additional_details": {"cores": 4}}

    def test_success_false_is_a_provision_error_with_the_scripts_text(self, tmp_path):
        """`success: false` fails with the `error` text; `retry_possible: false` makes it not retryable."""
        with pytest.raises(ProvisionError) as info:
            driver(tmp_path, "fail").provision(CONTRACT, threading.Event())
        assert "reported failure: provision failed: no capacity left on node pve1" in str(info.value)
        assert info.value.retryable is False

    def test_output_that_is_not_json_fails_saying_so(self, tmp_path):
        """Exit 0 with prose on stdout fails naming the reply the Rust protocol expects."""
        with pytest.raises(ProvisionError, match="not the Rust protocol's JSON reply") as info:
            driver(tmp_path, "bad-json").provision(CONTRACT, threading.Event())
        assert "VM 123 is up" in str(info.value)

    def test_non_zero_exit_fails_with_stderr(self, tmp_path):
        """A non-zero exit fails with the status and the last stderr lines, as in the native protocol."""
        with pytest.raises(ProvisionError, match="exited with status 4: qm clone failed"):
            driver(tmp_path, "exit").provision(CONTRACT, threading.Event())

    def test_timeout_kills_the_whole_process_group(self, tmp_path):
        """After timeout_seconds the script and the child it started are both gone (the Rust agent left them)."""
        with pytest.raises(ProvisionError, match="timed out after 1 s"):
            driver(tmp_path, "hang", timeout_seconds=1, kill_grace_seconds=0.3).provision(CONTRACT, threading.Event())
        child, script = (int(p) for p in (tmp_path / "vms" / "pids").read_text().split())
        wait_for(lambda: gone(child) and gone(script), what="the script's process group to die")


class TestOtherActions:
    def test_terminate_sends_the_external_id_and_checks_success(self, tmp_path):
        """terminate: `{"action": "terminate", "external_id"}`; the instance is gone; success false raises."""
        made = driver(tmp_path).provision(CONTRACT, threading.Event())
        driver(tmp_path).terminate(made.external_id)
        assert last_input(tmp_path) == {"action": "terminate", "external_id": "rust-c-77"}
        assert not list((tmp_path / "vms").glob("*.instance"))
        with pytest.raises(ProvisionError, match="terminate failed"):
            driver(tmp_path, "fail").terminate(made.external_id)

    def test_list_and_find_have_no_rust_action(self, tmp_path):
        """The Rust protocol cannot list or look up by contract: nothing listed, nothing found, no script run."""
        rust = driver(tmp_path)
        assert rust.list_instances() == [] and rust.find("c-77") is None
        assert calls(tmp_path) == []

    def test_native_find_and_list_commands_work_beside_it(self, tmp_path):
        """A native list_command/find_command may be added: they speak the native protocol."""
        lister = tmp_path / "list.sh"
        lister.write_text('#!/bin/sh\necho \'[{"externalId": "rust-c-77", "contractId": "c-77"}]\'\n')
        lister.chmod(0o755)
        rust = driver(tmp_path, list_command=[str(lister)])
        assert [(i.external_id, i.contract_id) for i in rust.list_instances()] == [("rust-c-77", "c-77")]

    def test_health_check_action(self, tmp_path):
        """check_instance sends `health_check`; healthy with uptime, unhealthy with the reason, failure unknown."""
        rust = driver(tmp_path)
        made = rust.provision(CONTRACT, threading.Event())
        healthy = rust.check_instance(made.external_id)
        assert last_input(tmp_path) == {"action": "health_check", "external_id": "rust-c-77"}
        assert (healthy.status, healthy.detail) == ("healthy", "up 42 s") and healthy.latency_ms is not None
        rust.terminate(made.external_id)
        assert (rust.check_instance(made.external_id).status, rust.check_instance(made.external_id).detail) == \
            ("unhealthy", "no such VM")
        broken = driver(tmp_path, "fail").check_instance(made.external_id)
        assert broken.status == "unknown" and "no capacity" in broken.detail

    def test_lifecycle_without_a_rust_action_is_unsupported(self, tmp_path):
        """stop/start/password/keys have no Rust action: Unsupported naming the native setting; the Rust
        agent's fallback of destroying the VM on stop is not copied."""
        rust = driver(tmp_path)
        with pytest.raises(Unsupported, match="stop_command"):
            rust.stop("rust-c-77")
        with pytest.raises(Unsupported, match="reset_password_command"):
            rust.set_password("rust-c-77", "pw")
        assert capabilities(rust) == ["provision", "health"]
        assert calls(tmp_path) == []


class TestConfig:
    def test_protocol_must_be_known(self):
        """A wrong protocol names the key and both choices."""
        with pytest.raises(ConfigError, match='protocol = .rsut. is not known; use "native"'):
            ScriptProvisioner({"command": ["true"], "protocol": "rsut"})

    def test_built_through_the_driver_registry(self, tmp_path):
        """provisioners.load builds it from a [provisioner.script] table, as the agent does."""
        built = load("script", {"protocol": "rust", "command": [str(RUST_SCRIPT)], "timeout_seconds": 300},
                     config_path=tmp_path / "config.toml")
        assert isinstance(built, ScriptProvisioner) and built.rust and built.health().ok
        assert "Rust protocol" in built.health().detail
