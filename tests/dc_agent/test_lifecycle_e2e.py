"""After provisioning, with real processes on both dialects: health every interval, pause/resume (stopped and
started, same instance and disk), password reset (sealed for the tenant on pool_api; the agent log never
holds it), SSH key rotation, and expiry. The script driver is examples/script-provisioner.py with every
lifecycle command; its instance record is the truth about what the driver did."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.dc_agent.fleet import Fleet, wait_until
from tests.dc_agent.test_live_integration import LiveFleet
from tests.support.live_api import running_live_api
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider

pytestmark = pytest.mark.slow


def _openssh_ed25519(seed: bytes) -> str:
    """An OpenSSH public key line for an Ed25519 key (the wire format: length-prefixed type and key)."""
    import base64
    import struct

    from nacl.signing import SigningKey

    raw = SigningKey(seed).verify_key.encode()
    blob = b"".join(struct.pack(">I", len(part)) + part for part in (b"ssh-ed25519", raw))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} tenant@new"


NEW_KEY = _openssh_ed25519(b"\x07" * 32)
FAST = {"health_interval_seconds": 1, "actions_interval_seconds": 0.5, "reconcile_interval_seconds": 1,
        "poll_interval_seconds": 0.5, "max_concurrent": 2}


def lifecycle_script(fleet: Fleet, name: str) -> dict[str, Any]:
    settings = Fleet.script_settings(fleet, name)
    base = settings["command"][:2]
    for key, action in (("health_command", "health"), ("stop_command", "stop"), ("start_command", "start"),
                        ("reset_password_command", "reset_password"), ("rotate_ssh_key_command", "rotate_ssh_key")):
        settings[key] = [*base, action, "--dir", str(fleet.vms), "--log", str(fleet.calls)]
    return settings


class PoolFleet(Fleet):
    def script_settings(self, name: str) -> dict[str, Any]:
        return lifecycle_script(self, name)


class LiveLifecycleFleet(LiveFleet):
    def script_settings(self, name: str) -> dict[str, Any]:
        return lifecycle_script(self, name)


def record_of(fleet: Fleet, cid: str) -> dict[str, Any]:
    path = fleet.vms / f"{hashlib.sha256(cid.encode()).hexdigest()[:16]}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def agent_log_text(fleet: Fleet) -> str:
    return "".join(a.log_path.read_text(errors="replace") for a in fleet.agents)


def test_lifecycle_on_pool_api(pg_url, tmp_path):
    with running_pool_api(pg_url, heartbeat_seconds=2, lock_sweep_seconds=1) as server:
        provider = Provider.register(server)
        try:
            pool = provider.create_pool("eu-life", "europe", "script")
            provider.create_offering("off-life", "DE", provisioner_type="script", pool_id=pool["poolId"],
                                     cpu_cores=1, memory_mb=512, storage_gb=5)
            fleet = PoolFleet(tmp_path, server, provider, pool["poolId"], script_delay=0.2, agent_options=FAST)
            fleet.add_agents(1)
            fleet.start_all()
            try:
                cid = provider.create_contract("off-life", 1)[0]
                ended = provider.create_contract("off-life", 1, "--duration-hours", "0.0006")[0]  # ~2 s
                fleet.wait_provisioned([cid], timeout=60)
                external = record_of(fleet, cid)["details"]["externalId"]

                def show() -> dict[str, Any]:
                    return json.loads(server.admin("contract", "show", cid, "--json"))

                health = wait_until(lambda: (show().get("health") or {}).get("status"), 30, "a health report")
                assert health == "healthy"

                server.admin("contract", "pause", cid)
                wait_until(lambda: record_of(fleet, cid).get("state") == "stopped", 30, "the instance to stop")
                server.admin("contract", "resume", cid)
                wait_until(lambda: record_of(fleet, cid).get("state") == "running", 30, "the instance to start")
                assert record_of(fleet, cid)["details"]["externalId"] == external  # the same instance, never re-made

                key_file = tmp_path / "tenant.key"
                server.admin("contract", "reset-password", cid, "--key-file", str(key_file))
                wait_until(lambda: record_of(fleet, cid).get("passwords"), 30, "the password to be set")

                def credentials() -> str | None:
                    try:
                        return server.admin("contract", "credentials", cid, "--key-file", str(key_file)).strip()
                    except RuntimeError:
                        return None
                password = wait_until(credentials, 30, "the sealed password to arrive")
                assert hashlib.sha256(password.encode()).hexdigest() in record_of(fleet, cid)["passwords"].values()
                assert password not in agent_log_text(fleet)

                server.admin("contract", "rotate-ssh-key", cid, "--key", NEW_KEY)
                wait_until(lambda: NEW_KEY in record_of(fleet, cid).get("sshKeys", []), 30, "the key rotation")
                wait_until(lambda: not json.loads(server.admin("contract", "show", cid, "--json")).get(
                    "pendingSshKeyRotation"), 30, "the rotation to be acknowledged")

                # the contract that ended: its instance removed, reported terminated
                wait_until(lambda: json.loads(server.admin("contract", "show", ended, "--json"))["status"]
                           == "terminated", 60, "the ended contract to be terminated", details=fleet.dump_logs)
                assert not record_of(fleet, ended)
            finally:
                fleet.stop_all()
        finally:
            provider.close()


def test_lifecycle_on_the_live_api(tmp_path):
    with running_live_api(tmp_path / "api") as server:
        provider, pool_id = server.create_pool(provisioner_type="script", name="live-life")
        offering = server.create_offering(provider, pool_id=pool_id, cpu_cores=1, memory_amount="1 GB")
        fleet = LiveLifecycleFleet(tmp_path, server, provider, pool_id, script_delay=0.2, agent_options=FAST)
        fleet.add_agents(1)
        fleet.start_all()
        try:
            cid = server.create_contracts(provider, offering, 1)[0]
            fleet.wait_provisioned([cid], timeout=60)
            external = record_of(fleet, cid)["details"]["externalId"]
            wait_until(lambda: server.contract(cid)["health_checks"], 30, "a health report")
            assert server.contract(cid)["health_checks"][-1]["status"] == "healthy"

            server.set_status(cid, "paused", pause_reason="stripe_dispute:dp_test")
            wait_until(lambda: record_of(fleet, cid).get("state") == "stopped", 30, "the instance to stop")
            server.set_status(cid, "active")  # the live API has no resume call: the contract is active again
            wait_until(lambda: record_of(fleet, cid).get("state") == "running", 30, "the instance to start")
            assert record_of(fleet, cid)["details"]["externalId"] == external

            server.request_password_reset(cid)

            def reported_password() -> str | None:
                entries = [h for h in server.contract(cid)["history"] if h["kind"] == "password"]
                return entries[-1]["new_password"] if entries else None
            password = wait_until(reported_password, 30, "the password report")
            assert hashlib.sha256(password.encode()).hexdigest() in record_of(fleet, cid)["passwords"].values()
            assert password not in agent_log_text(fleet)

            server.request_ssh_key_rotation(cid, NEW_KEY)
            wait_until(lambda: NEW_KEY in record_of(fleet, cid).get("sshKeys", []), 30, "the key rotation")
            wait_until(lambda: any(h["kind"] == "ssh_key_rotation" for h in server.contract(cid)["history"]), 30,
                       "the rotation report")

            server.update_contract(cid, end_timestamp_ns=1)  # ended long ago: reconcile says expired
            wait_until(lambda: not record_of(fleet, cid), 30, "the expired contract's instance to be removed",
                       details=fleet.dump_logs)
            # the agent logs "terminated" right after the driver removed the instance: wait for the line
            wait_until(lambda: any(e.get("event") == "terminated" and e.get("reason") == "expired"
                                   for a in fleet.agents for e in a.log_events()), 30, "the terminated log line")
            events = [e for a in fleet.agents for e in a.log_events()]
            assert not [e for e in events if e.get("level") == "error"], [e for e in events if e.get("level") == "error"]
        finally:
            fleet.stop_all()
