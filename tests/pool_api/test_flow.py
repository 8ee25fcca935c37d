"""The main path end to end against a real server: pool, token, setup, heartbeat, offering,
pending-provision, lock, provisioned (and its idempotent repeat), admin view."""

from __future__ import annotations

import json

from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, agent_client, data, make_agent


class TestMainPath:
    def test_setup_to_provisioned(self, server: PoolServer) -> None:
        """A pool's agent finds a routed contract, locks it, reports it provisioned; a repeat changes nothing."""
        provider = Provider.register(server, name="acme")
        pool = provider.create_pool("eu-proxmox", "europe", "proxmox")
        offering = provider.create_offering("vps-eu", "DE", cpuCores=2, memoryMb=2048, storageGb=20, price=5.0)
        assert offering["resolvedPool"]["poolId"] == pool["poolId"]
        key, setup = make_agent(provider, pool["poolId"], label="node-1")
        assert setup["providerPubkey"] == provider.pubkey and setup["poolId"] == pool["poolId"]
        assert setup["poolName"] == "eu-proxmox" and setup["poolLocation"] == "europe"
        with agent_client(server, key) as agent:
            base = f"/providers/{provider.pubkey}"
            hb = data(agent.post(f"{base}/heartbeat", json={"version": "0.1.0", "provisionerType": "proxmox",
                                                             "activeContracts": 0}))
            assert hb == {"acknowledged": True, "nextHeartbeatSeconds": 30, "poolId": pool["poolId"],
                          "poolName": "eu-proxmox", "claim": True}
            [cid] = provider.create_contract("vps-eu")
            pending = data(agent.get(f"{base}/contracts/pending-provision"))
            assert [c["contractId"] for c in pending] == [cid]
            assert pending[0]["lockedByMe"] is False and pending[0]["provisionerType"] == "proxmox"
            lock = data(agent.post(f"{base}/contracts/{cid}/lock"))
            assert lock["acquired"] is True and lock["expiresAtNs"] > 0
            assert data(agent.get(f"{base}/contracts/pending-provision"))[0]["lockedByMe"] is True
            details = {"externalId": "101", "ipAddress": "192.0.2.10", "sshPort": 22, "provisioner": "proxmox"}
            first = data(agent.post(f"{base}/contracts/{cid}/provisioned", json={"instanceDetails": details}))
            again = data(agent.post(f"{base}/contracts/{cid}/provisioned", json={"instanceDetails": details}))
            assert first["provisionedAtNs"] == again["provisionedAtNs"] and again["repeated"] is True
        shown = json.loads(server.admin("contract", "show", cid, "--json"))
        assert shown["status"] == "provisioned" and shown["lockAgent"] is None
        assert shown["instanceDetails"] == details and shown["provisionedBy"] == key.verify_key.encode().hex()


class TestServerProcess:
    def test_restart_keeps_port_and_data(self, fresh_server) -> None:
        """PoolServer.restart() stops (SIGTERM) and starts serve again on the same port and database."""
        server = fresh_server()
        provider = Provider.register(server)
        pool = provider.create_pool("kept", "latam", "proxmox")
        url = server.url
        server.restart()
        assert server.url == url
        assert [p["poolId"] for p in data(provider.request("GET", "/pools"))] == [pool["poolId"]]
        assert "Application startup complete" in server.log_path.read_text()
        provider.close()

    def test_serve_options_from_flags_and_environment(self, fresh_server) -> None:
        """--lock-ttl-seconds sets the lease; DC_POOL_API_HEARTBEAT_SECONDS and DC_POOL_API_PUBLIC_URL reach
        nextHeartbeatSeconds and the token's setupCommand."""
        server = fresh_server(lock_ttl_seconds=42, env={"DC_POOL_API_HEARTBEAT_SECONDS": "7",
                                                        "DC_POOL_API_PUBLIC_URL": "https://pool.example/"})
        provider = Provider.register(server)
        pool = provider.create_pool("opts", "mena", "script")
        created = data(provider.request("POST", f"/pools/{pool['poolId']}/setup-tokens", {"label": "n"}))
        assert created["setupCommand"] == f"dc-agent setup --token {created['token']} --api-url https://pool.example"
        key, _setup = make_agent(provider, pool["poolId"])
        provider.create_offering(f"opts-{provider.pubkey[:8]}", "AE", provisioner_type="script")
        [cid] = provider.create_contract(f"opts-{provider.pubkey[:8]}")
        with agent_client(server, key) as agent:
            hb = data(agent.post(f"/providers/{provider.pubkey}/heartbeat", json={"version": "1"}))
            assert hb["nextHeartbeatSeconds"] == 7
            lock = data(agent.post(f"/providers/{provider.pubkey}/contracts/{cid}/lock"))
            assert lock["expiresAtNs"] - lock["lockedAtNs"] == 42 * 10**9
        provider.close()
