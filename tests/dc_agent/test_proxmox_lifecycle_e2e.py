"""After provisioning, with the proxmox driver: one `dc-agent run` against a fakepve process (TLS verified
through ca_cert, an API token, template 9000, clones with a guest agent), on pool_api (PostgreSQL) and on
the fake of the live API. Health reported, pause stops the VM and resume starts the same VMID, a password
reset reaches the guest agent (set-user-password) and the tenant, an SSH key rotation writes the new key to
authorized_keys through the guest agent, and once the contract has ended its VM is destroyed.

fakepve is the truth about what the driver did: its VM states, and its record of guest-agent commands
(tests/support/fakepve_server.py writes agent-calls.jsonl, the password as its SHA-256)."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pool_api.tables import contracts as contracts_table
from tests.dc_agent.fleet import Fleet, wait_until
from tests.dc_agent.test_lifecycle_e2e import FAST, NEW_KEY, agent_log_text
from tests.dc_agent.test_live_integration import LiveFleet
from tests.provisioners.test_proxmox_e2e import FakePveProcess
from tests.support.live_api import running_live_api
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider

pytestmark = pytest.mark.slow
TENANT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeepMeKeepMeKeepMeKeepMeKeepMeKeepMe0 tenant@old"


class ProxmoxDriver:
    """Agents whose [provisioner] is the proxmox driver on the fakepve process `pve`."""

    pve: FakePveProcess

    def provisioner_section(self, name: str, written: dict[str, Any]) -> dict[str, Any]:
        info = self.pve.info
        return {"type": "proxmox", "proxmox": {
            "api_url": info["url"], "api_token_id": info["token_id"], "api_token_secret": info["token_secret"],
            "node": info["node"], "template_vmid": info["template_vmid"], "storage": "local-lvm",
            "ca_cert": info["cafile"], "ip_timeout_seconds": 30, "task_timeout_seconds": 60,
            "poll_interval_seconds": 0.1}}


class PoolPveFleet(ProxmoxDriver, Fleet):
    pass


class LivePveFleet(ProxmoxDriver, LiveFleet):
    pass


def start_pve(stack: ExitStack, tmp_path: Path) -> FakePveProcess:
    (tmp_path / "pve").mkdir()
    pve = FakePveProcess(tmp_path / "pve", "--agent-on-clone")
    stack.callback(pve.stop)
    return pve


def vmid_of(external_id: str) -> int:
    node, vmid = external_id.split("/")
    assert node == "pve1", external_id
    return int(vmid)


def vm_status(pve: FakePveProcess, vmid: int) -> str | None:
    """The VM's power state in fakepve; None once it is destroyed."""
    vms = {int(r["vmid"]): r for r in pve.api().cluster.resources.get(type="vm")}
    return vms[vmid]["status"] if vmid in vms else None


def agent_calls(pve: FakePveProcess, vmid: int, command: str) -> list[dict[str, Any]]:
    path = pve.state_dir / "agent-calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["vmid"] == vmid and e["command"] == command]


def key_written(pve: FakePveProcess, vmid: int) -> list[dict[str, Any]]:
    return [w for w in agent_calls(pve, vmid, "file-write")
            if w["file"].endswith("/.ssh/authorized_keys") and NEW_KEY in w["content"].splitlines()]


def next_boot_sshkeys(pve: FakePveProcess, vmid: int) -> list[str]:
    """The cloud-init sshkeys the VM's next boot gets (a running VM's change waits in its pending config)."""
    items = pve.api().nodes(pve.info["node"]).qemu(vmid).pending.get()
    item = next((i for i in items if i.get("key") == "sshkeys"), {})
    return urllib.parse.unquote(str(item.get("pending", item.get("value")) or "")).splitlines()


def check_pause_resume(fleet: Fleet, pve: FakePveProcess, vmid: int, pause: Any, resume: Any) -> None:
    pause()
    wait_until(lambda: vm_status(pve, vmid) == "stopped", 30, f"VM {vmid} to stop", details=fleet.dump_logs)
    resume()
    wait_until(lambda: vm_status(pve, vmid) == "running", 30, f"VM {vmid} to start again", details=fleet.dump_logs)


def test_proxmox_lifecycle_on_pool_api(pg_url, tmp_path):
    with ExitStack() as stack:
        pve = start_pve(stack, tmp_path)
        server = stack.enter_context(running_pool_api(pg_url, heartbeat_seconds=2, lock_sweep_seconds=1))
        provider = Provider.register(server)
        stack.callback(provider.close)
        pool = provider.create_pool("eu-pve", "europe", "proxmox")
        provider.create_offering("vps-life", "DE", provisioner_type="proxmox", pool_id=pool["poolId"],
                                 cpu_cores=1, memory_mb=1024, storage_gb=10)
        fleet = PoolPveFleet(tmp_path, server, provider, pool["poolId"], agent_options=FAST)
        fleet.pve = pve
        fleet.add_agents(1)
        fleet.start_all()
        stack.callback(fleet.stop_all)

        cid = provider.create_contract("vps-life", 1, "--ssh-pubkey", TENANT_KEY)[0]
        rows = fleet.wait_provisioned([cid], timeout=60)
        external = rows[cid]["instanceDetails"]["externalId"]
        vmid = vmid_of(external)
        assert vm_status(pve, vmid) == "running" and next_boot_sshkeys(pve, vmid) == [TENANT_KEY]

        def show() -> dict[str, Any]:
            return json.loads(server.admin("contract", "show", cid, "--json"))

        health = wait_until(lambda: (show().get("health") or {}).get("status"), 30, "a health report")
        assert health == "healthy"

        check_pause_resume(fleet, pve, vmid, lambda: server.admin("contract", "pause", cid),
                           lambda: server.admin("contract", "resume", cid))
        assert show()["instanceDetails"]["externalId"] == external  # the same VM, never re-made

        key_file = tmp_path / "tenant.key"
        server.admin("contract", "reset-password", cid, "--key-file", str(key_file))
        (set_password,) = wait_until(lambda: agent_calls(pve, vmid, "set-user-password"), 30,
                                     "the guest agent's set-user-password", details=fleet.dump_logs)

        def credentials() -> str | None:
            try:
                return server.admin("contract", "credentials", cid, "--key-file", str(key_file)).strip()
            except RuntimeError:
                return None
        password = wait_until(credentials, 30, "the sealed password to arrive")
        assert set_password["passwordSha256"] == hashlib.sha256(password.encode()).hexdigest()
        assert password not in agent_log_text(fleet) and password not in pve.log_path.read_text()

        server.admin("contract", "rotate-ssh-key", cid, "--key", NEW_KEY)
        wait_until(lambda: key_written(pve, vmid), 30, "authorized_keys written with the new key",
                   details=fleet.dump_logs)
        assert next_boot_sshkeys(pve, vmid) == [NEW_KEY]  # cloud-init's copy too: the old key replaced
        wait_until(lambda: not show().get("pendingSshKeyRotation"), 30, "the rotation to be acknowledged")

        engine = sa.create_engine(pg_url)  # the contract's end passes (the marketplace's clock, moved on)
        stack.callback(engine.dispose)
        with engine.begin() as conn:
            conn.execute(sa.update(contracts_table).where(contracts_table.c.contract_id == cid).values(ends_at_ns=1))
        wait_until(lambda: vm_status(pve, vmid) is None, 30, f"VM {vmid} to be destroyed", details=fleet.dump_logs)
        wait_until(lambda: show()["status"] == "terminated", 30, "the ended contract to be terminated")
        fleet.assert_alive()
        assert all(code == 0 for code in fleet.stop_all().values())


def test_proxmox_lifecycle_on_the_live_api(tmp_path):
    with ExitStack() as stack:
        pve = start_pve(stack, tmp_path)
        server = stack.enter_context(running_live_api(tmp_path / "api"))
        provider, pool_id = server.create_pool(provisioner_type="proxmox", name="live-pve")
        offering = server.create_offering(provider, pool_id=pool_id, cpu_cores=1, memory_amount="1 GB",
                                          storage_capacity="10 GB", provisioner_type="proxmox")
        fleet = LivePveFleet(tmp_path, server, provider, pool_id, agent_options=FAST)
        fleet.pve = pve
        fleet.add_agents(1)
        fleet.start_all()
        stack.callback(fleet.stop_all)

        cid = server.create_contracts(provider, offering, 1, requester_ssh_pubkey=TENANT_KEY)[0]
        rows = fleet.wait_provisioned([cid], timeout=60)
        external = rows[cid]["instanceDetails"]["externalId"]
        vmid = vmid_of(external)
        assert vm_status(pve, vmid) == "running" and next_boot_sshkeys(pve, vmid) == [TENANT_KEY]
        wait_until(lambda: server.contract(cid)["health_checks"], 30, "a health report")
        assert server.contract(cid)["health_checks"][-1]["status"] == "healthy"

        check_pause_resume(fleet, pve, vmid, lambda: server.set_status(cid, "paused", pause_reason="stripe_dispute:dp"),
                           lambda: server.set_status(cid, "active"))  # the live API has no resume: active again
        assert fleet.contracts()[cid]["instanceDetails"]["externalId"] == external

        server.request_password_reset(cid)
        (set_password,) = wait_until(lambda: agent_calls(pve, vmid, "set-user-password"), 30,
                                     "the guest agent's set-user-password", details=fleet.dump_logs)

        def reported_password() -> str | None:
            entries = [h for h in server.contract(cid)["history"] if h["kind"] == "password"]
            return entries[-1]["new_password"] if entries else None
        password = wait_until(reported_password, 30, "the password report")
        assert set_password["passwordSha256"] == hashlib.sha256(password.encode()).hexdigest()
        assert password not in agent_log_text(fleet)

        server.request_ssh_key_rotation(cid, NEW_KEY)
        wait_until(lambda: key_written(pve, vmid), 30, "authorized_keys written with the new key",
                   details=fleet.dump_logs)
        assert next_boot_sshkeys(pve, vmid) == [NEW_KEY]
        wait_until(lambda: any(h["kind"] == "ssh_key_rotation" for h in server.contract(cid)["history"]), 30,
                   "the rotation report")

        server.update_contract(cid, end_timestamp_ns=1)  # ended long ago: reconcile says expired
        wait_until(lambda: vm_status(pve, vmid) is None, 30, f"VM {vmid} to be destroyed", details=fleet.dump_logs)
        # the agent logs "terminated" right after the driver destroyed the VM: wait for the line
        wait_until(lambda: any(e.get("event") == "terminated" and e.get("reason") == "expired"
                               for a in fleet.agents for e in a.log_events()), 30, "the terminated log line")
        events = [e for a in fleet.agents for e in a.log_events()]
        assert not [e for e in events if e.get("level") == "error"], [e for e in events if e.get("level") == "error"]
        assert all(code == 0 for code in fleet.stop_all().values())
