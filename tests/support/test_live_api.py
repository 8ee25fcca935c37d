"""The live-API fake behaves like the real server where our agent depends on it (docs/decent-cloud-dialect.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_api_server import LiveApiServer, running_live_api
from tests.support.live_api_signing import AgentKey, signed_request
from tests.support.wait import wait_until

DETAILS = '{"external_id": "vm-1", "ip_address": "192.0.2.10", "ipv6_address": null, "ssh_port": 22, ' \
          '"root_password": "pw-1", "additional_details": null}'


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApiServer]:
    with running_live_api(tmp_path_factory.mktemp("live-api")) as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


@dataclass
class World:
    """One provider with one pool, a registered agent, an offering in the pool."""

    api: LiveApiServer
    http: httpx.Client
    provider: str
    pool: str
    agent: AgentKey
    offering: str

    def call(self, method: str, path: str, payload: Any = None, *, key: AgentKey | None = None,
             **kwargs: Any) -> httpx.Response:
        return signed_request(self.http, key or self.agent, method, self.api.api_url + path, payload, **kwargs)

    def ok(self, method: str, path: str, payload: Any = None, *, key: AgentKey | None = None) -> dict[str, Any]:
        response = self.call(method, path, payload, key=key)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def new_agent(self) -> AgentKey:
        key = AgentKey()
        token = self.api.setup_token(self.pool)
        body = self.http.post(f"{self.api.api_url}/agents/setup", json={"token": token, "agentPubkey": key.pubkey_hex})
        assert body.json()["success"] is True, body.text
        return key

    def contracts(self, n: int = 1, **fields: Any) -> list[str]:
        return self.api.create_contracts(self.provider, self.offering, n, **fields)


def make_world(api: LiveApiServer, http: httpx.Client, **pool_options: Any) -> World:
    provider, pool = api.create_pool(**pool_options)
    offering = api.create_offering(provider, pool_id=pool)
    world = World(api, http, provider, pool, AgentKey(), offering)
    world.agent = world.new_agent()
    return world


@pytest.fixture
def world(api: LiveApiServer, http: httpx.Client) -> World:
    return make_world(api, http)


class TestAuth:
    def test_only_ed25519ph_with_the_decent_cloud_context_is_accepted(self, world: World) -> None:
        """Plain Ed25519, Ed25519ph without context and with another context are 401 plain text."""
        path = f"/providers/{world.provider}/heartbeat"
        for scheme in ("plain", "ph-nocontext", "ph-wrongcontext"):
            response = world.call("POST", path, {"activeContracts": 0}, scheme=scheme)
            assert response.status_code == 401, scheme
            assert response.headers["content-type"].startswith("text/plain")
            assert response.text.startswith("Invalid signature: Signature verification failed")
        assert world.ok("POST", path, {"activeContracts": 0})["success"] is True

    def test_header_timestamp_nonce_and_delegation_refusals(self, world: World) -> None:
        """Missing header and stale clock are 401, a bad nonce 400, an unknown or revoked agent 401."""
        url = f"{world.api.api_url}/providers/{world.provider}/contracts/pending-provision"
        missing = world.http.get(url)
        assert (missing.status_code, missing.text) == (401, "Missing required header: X-Agent-Pubkey")
        stale = world.call("GET", url[len(world.api.api_url):], timestamp_ns=time.time_ns() - 6 * 60 * 10**9)
        assert (stale.status_code, stale.text) == (401, "Request timestamp expired (max 5 minutes)")
        headers = world.agent.headers("GET", "/api/v1" + url[len(world.api.api_url):], nonce="not-a-uuid")
        bad_nonce = world.http.get(url, headers=headers)
        assert bad_nonce.status_code == 400 and bad_nonce.text.startswith("Invalid format: Invalid nonce format")
        stranger = world.call("GET", url[len(world.api.api_url):], key=AgentKey())
        assert stranger.status_code == 401 and "No active delegation found" in stranger.text
        assert world.api.revoke_agent(world.agent.pubkey_hex)
        revoked = world.call("GET", url[len(world.api.api_url):])
        assert revoked.status_code == 401 and "No active delegation found" in revoked.text

    def test_other_providers_path_is_a_200_refusal(self, world: World, api: LiveApiServer, http: httpx.Client) -> None:
        """The path's provider must be the agent's provider; a mismatch is 200 success:false."""
        other = make_world(api, http)
        body = world.ok("GET", f"/providers/{other.provider}/contracts/pending-provision")
        assert body == {"success": False, "error": "Unauthorized: can only access your delegated provider's contracts"}

    def test_body_needs_a_json_content_type_and_the_right_shape(self, world: World) -> None:
        """No Content-Type is 415 (after auth), a missing required field 400, both plain text."""
        path = f"/providers/{world.provider}/heartbeat"
        no_type = world.call("POST", path, {"activeContracts": 0}, content_type=None)
        assert no_type.status_code == 415 and "Content-Type" in no_type.text
        missing = world.call("POST", path, {"version": "1"})
        assert missing.status_code == 400 and missing.text.startswith("parse request payload error:")
        arrays = world.call("POST", path, {"activeContracts": 0, "resources": {
            "cpuCores": 4, "cpuThreads": 8, "memoryTotalMb": 1024, "memoryAvailableMb": 512}})
        assert arrays.status_code == 400, "Vec fields are required on the wire"
        unsigned_415 = world.call("POST", path, {"activeContracts": 0}, content_type=None, scheme="plain")
        assert unsigned_415.status_code == 401, "auth is checked before the body"


class TestSetupAndHeartbeat:
    def test_setup_consumes_the_token_once(self, api: LiveApiServer, http: httpx.Client) -> None:
        """A token registers one agent; the second use is refused with 200 success:false."""
        provider, pool = api.create_pool(location="na", provisioner_type="proxmox", name="us-1")
        token = api.setup_token(pool)
        first = http.post(f"{api.api_url}/agents/setup", json={"token": token, "agentPubkey": AgentKey().pubkey_hex})
        assert first.json()["data"] == {
            "providerPubkey": provider, "poolId": pool, "poolName": "us-1", "poolLocation": "na",
            "provisionerType": "proxmox",
            "permissions": ["provision", "health_check", "heartbeat", "fetch_contracts", "dns_manage"]}
        again = http.post(f"{api.api_url}/agents/setup", json={"token": token, "agentPubkey": AgentKey().pubkey_hex})
        assert again.json() == {"success": False, "error": "Setup token already used"}
        unknown = http.post(f"{api.api_url}/agents/setup", json={"token": "nope", "agentPubkey": AgentKey().pubkey_hex})
        assert unknown.json() == {"success": False, "error": "Invalid setup token"}

    def test_heartbeat_answer_and_recorded_body(self, world: World) -> None:
        """The answer carries pool and upgrade version; the fake keeps the last body per agent."""
        world.api.set_upgrade(world.pool, "0.7.1")
        sent = {"version": "0.1.0", "provisionerType": "script", "activeContracts": 3}
        data = world.ok("POST", f"/providers/{world.provider}/heartbeat", sent)["data"]
        assert data == {"acknowledged": True, "nextHeartbeatSeconds": 60, "poolId": world.pool,
                        "poolName": "pool-1", "upgradeToVersion": "0.7.1"}
        [agent] = [a for a in world.api.agents() if a["agent_pubkey"] == world.agent.pubkey_hex]
        assert agent["last_heartbeat"] == sent and agent["heartbeats"] == 1


class TestLocks:
    def test_lock_answers_relock_extends_and_pending_hides_own_lock(self, world: World) -> None:
        """acquired true/false shapes, holder re-lock extends, own lock hides the contract, unlock."""
        cid, other_cid = world.contracts(2)
        rival = world.new_agent()
        lock_path = f"/providers/{world.provider}/contracts/{cid}/lock"
        first = world.ok("POST", lock_path)
        assert first["success"] is True and first["data"]["acquired"] is True and "error" not in first
        refused = world.ok("POST", lock_path, key=rival)
        assert refused["success"] is True and refused["data"]["acquired"] is False
        assert refused["error"] == "Contract already locked by another agent"
        again = world.ok("POST", lock_path)
        assert again["data"]["acquired"] is True
        assert again["data"]["expiresAtNs"] > first["data"]["expiresAtNs"]
        assert world.api.contract(cid)["lock_expires_ns"] > first["data"]["expiresAtNs"]
        pending = world.ok("GET", f"/providers/{world.provider}/contracts/pending-provision")["data"]
        assert [item["contract_id"] for item in pending] == [other_cid]
        assert set(pending[0]) >= {"contract_id", "offering_id", "requester_ssh_pubkey", "cpu_cores",
                                   "memory_amount", "storage_capacity"}
        assert world.ok("DELETE", lock_path, key=rival) == {"success": True, "data": False,
                                                             "error": "Lock not held by this agent"}
        assert world.ok("DELETE", lock_path) == {"success": True, "data": True}
        assert world.ok("POST", lock_path, key=rival)["data"]["acquired"] is True
        kinds = [(h["kind"], h["agent_pubkey"]) for h in world.api.contract(cid)["history"]]
        assert kinds == [("lock", world.agent.pubkey_hex), ("lock", rival.pubkey_hex), ("lock", world.agent.pubkey_hex),
                         ("unlock", rival.pubkey_hex), ("unlock", world.agent.pubkey_hex), ("lock", rival.pubkey_hex)]

    def test_expired_lock_is_taken_over_and_unlockable_contracts_refused(self, world: World) -> None:
        """Past its expiry anyone may lock; a cancelled or unknown contract is a 200 refusal."""
        cid, cancelled = world.contracts(2)
        world.api.set_status(cancelled, "cancelled")
        rival = world.new_agent()
        world.ok("POST", f"/providers/{world.provider}/contracts/{cid}/lock")
        world.api.update_contract(cid, lock_expires_ns=time.time_ns() - 1)
        assert world.ok("POST", f"/providers/{world.provider}/contracts/{cid}/lock", key=rival)["data"]["acquired"]
        body = world.ok("POST", f"/providers/{world.provider}/contracts/{cancelled}/lock")
        assert body == {"success": False,
                        "error": f"Contract {cancelled} is not in lockable status (status: cancelled)"}
        missing = world.ok("POST", f"/providers/{world.provider}/contracts/{'ab' * 32}/lock")
        assert missing == {"success": False, "error": f"Contract not found: {'ab' * 32}"}


class TestProvisioning:
    def put(self, world: World, cid: str, status: str, details: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"status": status}
        if details is not None:
            payload["instanceDetails"] = details
        return world.ok("PUT", f"/provider/rental-requests/{cid}/provisioning", payload)

    def test_state_machine_and_history(self, world: World) -> None:
        """accepted->provisioned refused, provisioning first, repeats refused, auto-activation to active."""
        [cid] = world.contracts()
        early = self.put(world, cid, "provisioned", DETAILS)
        assert early["success"] is False and early["error"].startswith("Invalid status transition: accepted -> provisioned")
        assert self.put(world, cid, "provisioning", "") == {"success": True, "data": "Provisioning status updated"}
        assert self.put(world, cid, "provisioning")["error"].startswith(
            "Invalid status transition: provisioning -> provisioning")
        assert self.put(world, cid, "provisioned", "  ")["error"] == \
            "Instance details are required when marking a contract as provisioned"
        assert self.put(world, cid, "provisioned", DETAILS)["success"] is True
        stored = world.api.contract(cid)
        assert stored["status"] == "active" and stored["provisioning_instance_details"] == DETAILS
        assert stored["root_password"] == "pw-1"
        assert self.put(world, cid, "provisioned", DETAILS)["error"].startswith(
            "Invalid status transition: active -> provisioned")
        history = [(h["status"], h["success"], h["agent_pubkey"]) for h in stored["history"] if h["kind"] == "status"]
        me = world.agent.pubkey_hex
        assert history == [("provisioned", False, me), ("provisioning", True, me), ("provisioning", False, me),
                           ("provisioned", False, me), ("provisioned", True, me)]

    def test_without_auto_accept_the_contract_stays_provisioned(self, api: LiveApiServer, http: httpx.Client) -> None:
        """A provider with auto_accept_rentals off keeps the contract at provisioned."""
        world = make_world(api, http, auto_accept=False)
        [cid] = world.contracts()
        self.put(world, cid, "provisioning")
        self.put(world, cid, "provisioned", DETAILS)
        assert api.contract(cid)["status"] == "provisioned"

    def test_provisioning_failed_is_terminal_and_idempotent(self, world: World) -> None:
        """provisioning_failed closes and refunds; repeating it is a no-op success; no lock afterwards."""
        [cid] = world.contracts()
        expected = {"success": True, "data": "Provisioning failed — contract closed and refund initiated"}
        assert self.put(world, cid, "provisioning_failed", "disk full") == expected
        stored = world.api.contract(cid)
        assert (stored["status"], stored["refunded"], stored["provisioning_failure_reason"]) == \
            ("provisioningfailed", 1, "disk full")
        assert self.put(world, cid, "provisioning_failed", "again") == expected
        assert world.api.contract(cid)["provisioning_failure_reason"] == "disk full"
        lock = world.ok("POST", f"/providers/{world.provider}/contracts/{cid}/lock")
        assert lock["success"] is False and "not in lockable status" in lock["error"]


class TestReconcileAndLifecycle:
    def test_reconcile_answer_shape(self, world: World, api: LiveApiServer, http: httpx.Client) -> None:
        """keep/terminate/pause/unknown with their fields; terminated only for cancelled contracts."""
        active, cancelled, expired, paused = world.contracts(4)
        api.set_status(active, "active")
        api.set_status(cancelled, "cancelled")
        api.update_contract(expired, status="active", end_timestamp_ns=time.time_ns() - 10**9)
        api.set_status(paused, "paused", pause_reason="stripe_dispute:du_1")
        [foreign] = make_world(api, http).contracts()
        running = [{"externalId": f"vm-{i}", "contractId": c}
                   for i, c in enumerate((active, cancelled, expired, paused, foreign, "zz", "ab" * 32))]
        running.append({"externalId": "vm-orphan"})
        data = world.ok("POST", f"/providers/{world.provider}/reconcile", {"runningInstances": running})["data"]
        ends_at = api.contract(active)["end_timestamp_ns"]
        assert data["keep"] == [{"externalId": "vm-0", "contractId": active, "endsAt": ends_at}]
        assert data["terminate"] == [{"externalId": "vm-1", "contractId": cancelled, "reason": "cancelled"},
                                     {"externalId": "vm-2", "contractId": expired, "reason": "expired"}]
        assert data["pause"] == [{"externalId": "vm-3", "contractId": paused, "reason": "stripe_dispute:du_1"}]
        assert [(u["externalId"], u["message"].split(":")[0]) for u in data["unknown"]] == [
            ("vm-4", "Contract belongs to different provider"), ("vm-5", "Invalid contract id hex"),
            ("vm-6", "No contract found with ID"), ("vm-orphan", "No contract ID associated with this instance")]
        term = f"/providers/{world.provider}/contracts/{{}}/terminated"
        assert world.ok("PUT", term.format(cancelled)) == {"success": True, "data": True}
        refused = world.ok("PUT", term.format(expired))
        assert refused == {"success": False,
                           "error": f"Contract not found or not in cancelled status (ID: {expired})"}

    def test_password_reset_ssh_rotation_and_health(self, world: World) -> None:
        """Pending lists are snake_case; the reports clear them; health answers camelCase."""
        [cid] = world.contracts()
        world.ok("PUT", f"/provider/rental-requests/{cid}/provisioning", {"status": "provisioning"})
        world.ok("PUT", f"/provider/rental-requests/{cid}/provisioning", {"status": "provisioned",
                                                                         "instanceDetails": DETAILS})
        world.api.request_password_reset(cid)
        world.api.request_ssh_key_rotation(cid, "ssh-ed25519 NEWKEY tenant@new")
        resets = world.ok("GET", f"/providers/{world.provider}/contracts/pending-password-reset")["data"]
        assert [r["contract_id"] for r in resets] == [cid] and resets[0]["status"] == "active"
        rotations = world.ok("GET", f"/providers/{world.provider}/contracts/pending-ssh-key-rotation")["data"]
        assert rotations == [{"contract_id": cid, "requester_ssh_pubkey": "ssh-ed25519 NEWKEY tenant@new"}]
        assert world.ok("PUT", f"/provider/rental-requests/{cid}/password", {"newPassword": "pw-2"}) == \
            {"success": True, "data": "Password updated successfully"}
        assert world.ok("PUT", f"/provider/rental-requests/{cid}/ssh-key-rotation")["success"] is True
        assert world.ok("GET", f"/providers/{world.provider}/contracts/pending-password-reset")["data"] == []
        assert world.ok("GET", f"/providers/{world.provider}/contracts/pending-ssh-key-rotation")["data"] == []
        stored = world.api.contract(cid)
        assert stored["root_password"] == "pw-2" and stored["requester_ssh_pubkey"] == "ssh-ed25519 NEWKEY tenant@new"
        health = world.ok("POST", f"/contracts/{cid}/health", {"checkedAt": 123, "status": "healthy", "latencyMs": 7})
        assert set(health["data"]) == {"id", "contractId", "checkedAt", "status", "latencyMs", "createdAt"}
        bad = world.ok("POST", f"/contracts/{cid}/health", {"checkedAt": 1, "status": "fine"})
        assert bad["success"] is False and bad["error"].startswith("Invalid health status 'fine'")


class TestFaultsAndRestart:
    def test_injected_faults(self, world: World) -> None:
        """An HTML 502 or a refusal has no effect; a malformed answer replaces one that took effect."""
        [cid] = world.contracts()
        lock_path = f"/providers/{world.provider}/contracts/{cid}/lock"
        world.api.inject("lock", "html502")
        gateway = world.call("POST", lock_path)
        assert gateway.status_code == 502 and "<html>" in gateway.text
        assert world.api.contract(cid)["lock_agent"] is None
        world.api.inject("pending_provision", "refuse", message="database is down")
        assert world.ok("GET", f"/providers/{world.provider}/contracts/pending-provision") == \
            {"success": False, "error": "database is down"}
        world.api.inject("lock", "malformed")
        broken = world.ok("POST", lock_path)
        assert broken["success"] is True and isinstance(broken["data"], list)
        assert world.api.contract(cid)["lock_agent"] == world.agent.pubkey_hex
        assert world.ok("POST", lock_path)["data"]["acquired"] is True, "faults are used up"

    def test_restart_keeps_state_and_the_configured_ttl_expires(self, tmp_path: Path, http: httpx.Client) -> None:
        """Stop/start on the same port and file keeps agents, contracts and locks; a 1 s lock lapses."""
        with running_live_api(tmp_path, lock_ttl_seconds=1.0) as api:
            world = make_world(api, http)
            [cid] = world.contracts()
            rival = world.new_agent()
            before = time.time_ns()
            lock = world.ok("POST", f"/providers/{world.provider}/contracts/{cid}/lock")["data"]
            assert before + 10**9 <= lock["expiresAtNs"] <= time.time_ns() + 10**9
            port = api.port
            api.stop()
            with pytest.raises(httpx.ConnectError):
                http.get(f"{api.url}/_fake/health")
            api.start()
            assert api.port == port and api.contract(cid)["lock_agent"] == world.agent.pubkey_hex
            wait_until(lambda: world.ok("POST", f"/providers/{world.provider}/contracts/{cid}/lock",
                                        key=rival)["data"]["acquired"], timeout=15, what="the 1 s lock to lapse")
            assert api.contract(cid)["lock_agent"] == rival.pubkey_hex
