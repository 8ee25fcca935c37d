"""Every endpoint of PROTOCOL.md against a real `dc-pool-api serve`, with its refusals
(401, 403, 404, 409, 410, 422), on PostgreSQL and on SQLite."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey

from pool_api.tables import agent_delegations
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, data
from tests.pool_api.helpers import (
    admin_json,
    cancel,
    contract,
    error,
    hexkey,
    make_contracts,
    new_agent,
    quick_provider,
    signed_request,
)


class TestPools:
    def test_create_list_get_update_delete(self, provider: Provider) -> None:
        """Pools are created (201), listed with counts, shown with agents, renamed, and deleted once empty."""
        pool = provider.create_pool("eu-proxmox", "europe", "proxmox")
        assert re.fullmatch(r"pool_[0-9a-f]{16}", pool["poolId"])
        assert {k: pool[k] for k in ("name", "location", "provisionerType", "agentCount")} == \
               {"name": "eu-proxmox", "location": "europe", "provisionerType": "proxmox", "agentCount": 0}
        agent = new_agent(provider, pool["poolId"], label="node-1")
        agent.heartbeat(version="0.5.2", activeContracts=3)
        [listed] = [p for p in data(provider.request("GET", "/pools")) if p["poolId"] == pool["poolId"]]
        assert (listed["agentCount"], listed["onlineCount"], listed["activeContracts"]) == (1, 1, 3)
        provider.create_offering("eu-small", "DE")
        detail = data(provider.request("GET", f"/pools/{pool['poolId']}"))
        assert detail["offeringCount"] == 1
        [a] = detail["agents"]
        assert (a["agentPubkey"], a["label"], a["online"], a["version"], a["activeContracts"]) == \
               (agent.pubkey, "node-1", True, "0.5.2", 3)
        assert a["lastSeenNs"] > 0
        renamed = data(provider.request("PUT", f"/pools/{pool['poolId']}", {"name": "eu-main", "location": "europe"}))
        assert renamed["name"] == "eu-main" and renamed["agents"]
        assert "agents" in error(provider.request("DELETE", f"/pools/{pool['poolId']}"), 409)
        data(provider.request("DELETE", f"/agents/{agent.pubkey}"))
        assert data(provider.request("DELETE", f"/pools/{pool['poolId']}"))["deleted"] is True
        error(provider.request("GET", f"/pools/{pool['poolId']}"), 404)
        agent.close()

    def test_refusals(self, provider: Provider) -> None:
        """Duplicate names are 409, unknown pools 404, bad enum values 422 naming the field."""
        provider.create_pool("dup", "na", "script")
        assert "name" in error(provider.request("POST", "/pools", {"name": "dup", "location": "na",
                                                                  "provisionerType": "script"}), 409)
        error(provider.request("GET", "/pools/pool_nope"), 404)
        error(provider.request("PUT", "/pools/pool_nope", {"name": "x"}), 404)
        error(provider.request("DELETE", "/pools/pool_nope"), 404)
        assert "location" in error(provider.request("POST", "/pools", {"name": "x", "location": "mars",
                                                                      "provisionerType": "proxmox"}), 422)
        assert "provisionerType" in error(provider.request("POST", "/pools", {"name": "x", "location": "na",
                                                                             "provisionerType": "kvm"}), 422)
        assert "name" in error(provider.request("POST", "/pools", {"location": "na", "provisionerType": "manual"}), 422)


class TestSetupTokens:
    def test_create_list_delete(self, server: PoolServer, provider: Provider) -> None:
        """A token is shown once with its setupCommand; listings show only a prefix; deleted tokens are gone."""
        pool = provider.create_pool("tok", "apac", "proxmox")
        created = data(provider.request("POST", f"/pools/{pool['poolId']}/setup-tokens", {"label": "node-9"}), 201)
        token = created["token"]
        assert re.fullmatch(r"apt_apac_[0-9a-f]{32}", token)
        assert created["poolId"] == pool["poolId"] and created["label"] == "node-9"
        assert f"--token {token}" in created["setupCommand"] and server.url in created["setupCommand"]
        listed = data(provider.request("GET", f"/pools/{pool['poolId']}/setup-tokens"))
        assert [t["tokenId"] for t in listed] == [created["tokenId"]]
        assert token not in json.dumps(listed) and listed[0]["tokenPrefix"].startswith("apt_apac_")
        default = data(provider.request("POST", f"/pools/{pool['poolId']}/setup-tokens"), 201)
        assert default["expiresAtNs"] - default["createdAtNs"] == 24 * 3600 * 10**9
        data(provider.request("DELETE", f"/setup-tokens/{token}"))
        data(provider.request("DELETE", f"/setup-tokens/{default['tokenId']}"))
        error(provider.request("DELETE", f"/setup-tokens/{token}"), 404)
        assert data(provider.request("GET", f"/pools/{pool['poolId']}/setup-tokens")) == []
        response = httpx.post(f"{server.url}/api/v1/agents/setup",
                              json={"token": token, "agentPubkey": hexkey(SigningKey.generate())})
        error(response, 404)

    def test_bounds(self, provider: Provider) -> None:
        """expiresInHours must be a positive bounded integer; unknown pools are 404."""
        pool = provider.create_pool("bounds", "ssa", "manual")
        for bad in (0, -1, 10**30, "24", 1.5):
            assert "expiresInHours" in error(
                provider.request("POST", f"/pools/{pool['poolId']}/setup-tokens", {"expiresInHours": bad}), 422)
        error(provider.request("POST", "/pools/pool_nope/setup-tokens", {}), 404)
        error(provider.request("GET", "/pools/pool_nope/setup-tokens"), 404)


class TestAgentSetup:
    def setup_call(self, server: PoolServer, body: object) -> httpx.Response:
        return httpx.post(f"{server.url}/api/v1/agents/setup", json=body)

    def test_setup_and_reuse(self, server: PoolServer, provider: Provider) -> None:
        """Setup answers the pool; the same token again is 410; a registered key is 409 and spends no token."""
        pool = provider.create_pool("setup", "cis", "proxmox")
        token = provider.create_token(pool["poolId"], label="n1")
        key = hexkey(SigningKey.generate())
        out = data(self.setup_call(server, {"token": token, "agentPubkey": key}))
        assert out["providerPubkey"] == provider.pubkey and out["poolId"] == pool["poolId"]
        assert out["poolName"] == "setup" and out["poolLocation"] == "cis" and out["provisionerType"] == "proxmox"
        assert isinstance(out["permissions"], list) and out["permissions"]
        assert "used" in error(self.setup_call(server, {"token": token, "agentPubkey": hexkey(SigningKey.generate())}), 410)
        second = provider.create_token(pool["poolId"])
        error(self.setup_call(server, {"token": second, "agentPubkey": key}), 409)
        assert len(data(provider.request("GET", f"/pools/{pool['poolId']}/setup-tokens"))) == 1

    @pytest.mark.parametrize("body,field", [
        ({"token": "apt_x_1"}, "agentPubkey"),
        ({"agentPubkey": "ab" * 32}, "token"),
        ({"token": "apt_x_1", "agentPubkey": "xyz"}, "agentPubkey"),
        ({"token": "apt_x_1", "agentPubkey": "ab" * 31}, "agentPubkey"),
        ({"token": 5, "agentPubkey": "ab" * 32}, "token"),
    ])
    def test_bad_bodies_are_422(self, server: PoolServer, body: dict, field: str) -> None:
        """Missing fields, non-hex or short keys and wrong types are 422 naming the field."""
        assert field in error(self.setup_call(server, body), 422)

    def test_unknown_token_is_404(self, server: PoolServer) -> None:
        """A token that never existed is 404."""
        error(self.setup_call(server, {"token": "apt_europe_" + "0" * 32, "agentPubkey": "ab" * 32}), 404)


class TestSignatures:
    def test_refusals(self, server: PoolServer, provider: Provider) -> None:
        """Missing, forged, skewed and replayed signatures are 401; unknown keys 401."""
        path = f"/providers/{provider.pubkey}/pools"
        assert "X-" in error(signed_request(server, "GET", path), 401)
        ok = signed_request(server, "GET", path, key=provider.key, role="provider")
        data(ok)
        replay = httpx.get(server.url + f"/api/v1{path}", headers=dict(ok.request.headers))
        assert "replay" in error(replay, 401)
        forged = dict(ok.request.headers)
        forged["x-nonce"] = str(uuid.uuid4())
        assert "signature" in error(httpx.get(server.url + f"/api/v1{path}", headers=forged), 401).lower()
        old = signed_request(server, "GET", path, key=provider.key, role="provider",
                             timestamp_ns=int(ok.request.headers["x-timestamp"]) - 301 * 10**9)
        assert "skew" in error(old, 401)
        stranger = SigningKey.generate()
        assert "unknown" in error(signed_request(server, "GET", f"/providers/{hexkey(stranger)}/pools", key=stranger,
                                                 role="provider"), 401)
        assert "unknown" in error(signed_request(server, "GET", f"/providers/{provider.pubkey}/contracts/pending-provision",
                                                 key=stranger), 401)
        body = b'{"name":"a","location":"na","provisionerType":"proxmox"}'
        tampered = signed_request(server, "POST", path, body, key=provider.key, role="provider")
        data(tampered)
        resent = httpx.post(server.url + f"/api/v1{path}", content=body.replace(b'"a"', b'"b"'),
                            headers={**tampered.request.headers, "x-nonce": str(uuid.uuid4())})
        error(resent, 401)

    def test_wrong_provider_path_and_wrong_role(self, server: PoolServer, provider: Provider) -> None:
        """A path for another provider is 403 for providers and agents; roles cannot use each other's endpoints."""
        other = quick_provider(server)
        pool = provider.create_pool("roles", "europe", "proxmox")
        agent = new_agent(provider, pool["poolId"])
        error(other.client.get(f"/providers/{provider.pubkey}/pools"), 403)
        error(agent.client.post(f"/providers/{other.pubkey}/heartbeat", json={"version": "1"}), 403)
        error(agent.client.get(f"/providers/{provider.pubkey}/pools"), 403)
        error(provider.request("GET", "/contracts/pending-provision"), 403)
        other.close()
        agent.close()

    def test_revoked_agent_is_403(self, provider: Provider) -> None:
        """After DELETE /agents/{pk} every call of that agent is 403; revoking twice is fine; unknown agents 404."""
        pool = provider.create_pool("revoke", "europe", "proxmox")
        agent = new_agent(provider, pool["poolId"])
        agent.heartbeat()
        revoked = data(provider.request("DELETE", f"/agents/{agent.pubkey}"))
        assert revoked["revoked"] is True
        data(provider.request("DELETE", f"/agents/{agent.pubkey}"))
        assert "revoked" in error(agent.call("POST", "/heartbeat", {"version": "1"}), 403)
        error(agent.call("GET", "/contracts/pending-provision"), 403)
        error(provider.request("DELETE", f"/agents/{'cd' * 32}"), 404)
        agents = data(provider.request("GET", "/agents"))
        assert [a["revokedAtNs"] is not None for a in agents if a["agentPubkey"] == agent.pubkey] == [True]
        agent.close()


class TestOfferings:
    def test_routing_on_every_continent(self, provider: Provider) -> None:
        """Offerings resolve to the pool of their country's region; explicit pools win; unknown countries say why."""
        pools = {loc: provider.create_pool(f"{loc}-pve", loc, "proxmox")["poolId"]
                 for loc in ("europe", "na", "latam", "apac", "mena", "ssa", "cis")}
        script = provider.create_pool("eu-script", "europe", "script")["poolId"]
        cases = {"DE": "europe", "gb": "europe", "UK": "europe", "US": "na", "MX": "na", "JM": "na", "CR": "na",
                 "BR": "latam", "AR": "latam", "JP": "apac", "AU": "apac", "IN": "apac", "SG": "apac", "EG": "mena",
                 "AE": "mena", "TR": "mena", "NG": "ssa", "ZA": "ssa", "KE": "ssa", "RU": "cis", "KZ": "cis"}
        for country, region in cases.items():
            o = provider.create_offering(f"o-{country}", country, cpuCores=1)
            assert o["resolvedPool"]["poolId"] == pools[region], (country, o)
            assert o["resolvedPool"]["match"] == "auto" and o["region"] == region and o["routingNote"] is None
        s = provider.create_offering("o-script", "FR", provisioner_type="script")
        assert s["resolvedPool"]["poolId"] == script
        explicit = provider.create_offering("o-explicit", "DE", pool_id=pools["na"])
        assert explicit["resolvedPool"]["poolId"] == pools["na"] and explicit["resolvedPool"]["match"] == "explicit"
        for country in ("ZZ", ""):
            o = provider.create_offering(f"o-unknown{country}", country)
            assert o["resolvedPool"] is None and o["region"] is None and o["routingNote"]
        manual = provider.create_offering("o-manual", "DE", provisioner_type="manual")
        assert manual["resolvedPool"] is None and "manual" in manual["routingNote"]
        listed = {o["offeringId"]: o for o in data(provider.request("GET", "/offerings"))}
        assert listed["o-DE"]["resolvedPool"]["poolId"] == pools["europe"] and listed["o-unknownZZ"]["resolvedPool"] is None
        one = data(provider.request("GET", "/offerings/o-US"))
        assert one["offeringId"] == "o-US"
        moved = data(provider.request("PUT", "/offerings/o-US", {"name": "moved", "datacenterCountry": "BR"}))
        assert moved["resolvedPool"]["poolId"] == pools["latam"]

    def test_fields_and_refusals(self, server: PoolServer, provider: Provider) -> None:
        """Fields round-trip in camelCase; duplicates 409; foreign pools, bad enums, huge numbers 422."""
        o = provider.create_offering("full", "DE", provisioner_type="proxmox", cpuCores=4, memoryMb=8192,
                                     storageGb=80, price=12.5, productType="compute",
                                     provisionerConfig={"templateVmid": 9000})
        assert (o["cpuCores"], o["memoryMb"], o["storageGb"], o["price"], o["productType"]) == (4, 8192, 80, 12.5, "compute")
        assert o["provisionerConfig"] == {"templateVmid": 9000} and o["datacenterCountry"] == "DE"
        error(provider.request("POST", "/offerings", {"offeringId": "full", "name": "x", "datacenterCountry": "DE"}), 409)
        other = quick_provider(server)
        foreign = other.create_pool("foreign", "europe", "proxmox")
        assert "agentPoolId" in error(provider.request("POST", "/offerings", {
            "name": "x", "datacenterCountry": "DE", "agentPoolId": foreign["poolId"]}), 422)
        for field, value in (("cpuCores", 10**30), ("memoryMb", 10**30), ("storageGb", -1), ("price", -5),
                             ("provisionerType", "kvm"), ("cpuCores", "4"), ("price", "cheap"), ("name", ""),
                             ("datacenterCountry", 49), ("provisionerConfig", [1, 2])):
            body = {"name": "x", "datacenterCountry": "DE", field: value}
            assert field in error(provider.request("POST", "/offerings", body), 422), (field, value)
        error(provider.request("GET", "/offerings/nope"), 404)
        error(other.request("GET", "/offerings/full"), 404)
        other.close()


class TestProvisioning:
    @pytest.fixture
    def world(self, server: PoolServer, provider: Provider):
        eu = provider.create_pool("w-eu", "europe", "proxmox")
        na = provider.create_pool("w-na", "na", "proxmox")
        # offering ids are global: make them unique per test's provider
        provider.de, provider.us = f"w-de-{provider.pubkey[:8]}", f"w-us-{provider.pubkey[:8]}"
        provider.create_offering(provider.de, "DE", cpuCores=2, memoryMb=1024, storageGb=10)
        provider.create_offering(provider.us, "US")
        a, b, us = new_agent(provider, eu["poolId"]), new_agent(provider, eu["poolId"]), new_agent(provider, na["poolId"])
        yield provider, a, b, us
        for agent in (a, b, us):
            agent.close()

    def test_pending_filters_by_pool_payment_and_lock(self, server: PoolServer, world) -> None:
        """Each pool's agents see their region's paid contracts, oldest first, minus those others hold."""
        provider, a, b, us = world
        de = make_contracts(provider.server, provider.de, 3)
        [us_c] = make_contracts(provider.server, provider.us)
        make_contracts(server, provider.de, 1, payment_status="pending")
        make_contracts(server, provider.de, 1, status="requested")
        assert a.pending_ids() == de and us.pending_ids() == [us_c]
        first = a.pending()[0]
        assert (first["cpuCores"], first["memoryMb"], first["storageGb"], first["datacenterCountry"]) == (2, 1024, 10, "DE")
        assert first["provisionerConfig"] is None and first["provisionerType"] == "proxmox"
        data(a.lock(de[0]))
        assert b.pending_ids() == de[1:]
        assert [c["lockedByMe"] for c in a.pending()] == [True, False, False]
        data(a.provisioned(de[0]))
        assert a.pending_ids() == de[1:]

    def test_lock_says_whether_it_is_the_first_lock_ever(self, server: PoolServer, world) -> None:
        """firstLockedAtNs equals lockedAtNs only on the first lock of a contract; renewals and later
        agents see the first one (an agent then checks for an instance left by an earlier attempt)."""
        provider, a, b, _ = world
        [cid] = make_contracts(provider.server, provider.de, 1)
        first = data(a.lock(cid))
        assert first["firstLockedAtNs"] == first["lockedAtNs"]
        renewed = data(a.lock(cid))
        assert renewed["firstLockedAtNs"] == first["lockedAtNs"] != renewed["lockedAtNs"]
        data(a.unlock(cid))
        later = data(b.lock(cid))
        assert later["firstLockedAtNs"] == first["lockedAtNs"] != later["lockedAtNs"]
        assert contract(server, cid)["firstLockedAtNs"] == first["lockedAtNs"]

    def test_lock_refusals(self, server: PoolServer, world) -> None:
        """Other pool 403, unknown or other provider's contract 404, held 409, provisioned 409, cancelled 409."""
        provider, a, b, us = world
        [cid] = make_contracts(provider.server, provider.de)
        assert "pool" in error(us.lock(cid), 403)
        error(a.lock("nope"), 404)
        other = quick_provider(server)
        other_pool = other.create_pool("o", "europe", "proxmox")
        other.create_offering(f"o-de-{other.pubkey[:8]}", "DE")
        [foreign] = make_contracts(other.server, f"o-de-{other.pubkey[:8]}")
        error(a.lock(foreign), 404)
        first = data(a.lock(cid))
        assert "another agent" in error(b.lock(cid), 409)
        renewed = data(a.lock(cid))
        assert renewed["expiresAtNs"] >= first["expiresAtNs"]
        data(a.provisioned(cid))
        assert "provisioned" in error(b.lock(cid), 409)
        assert "provisioned" in error(a.lock(cid), 409)
        [cancelled] = make_contracts(provider.server, provider.de)
        cancel(server, cancelled)
        assert "cancelled" in error(a.lock(cancelled), 409)
        [unpaid] = make_contracts(server, provider.de, 1, payment_status="pending")
        error(a.lock(unpaid), 409)
        assert other_pool
        other.close()

    def test_release(self, world) -> None:
        """Only the holder releases (403 otherwise); releasing a free lock is 200 released=false."""
        provider, a, b, _ = world
        [cid] = make_contracts(provider.server, provider.de)
        data(a.lock(cid))
        assert "lock holder" in error(b.unlock(cid), 403)
        assert data(a.unlock(cid))["released"] is True
        assert data(a.unlock(cid))["released"] is False
        data(b.lock(cid))

    def test_provisioned_rules(self, server: PoolServer, world) -> None:
        """Only the holder reports; a repeat is 200 without change; another report or agent is 409."""
        provider, a, b, _ = world
        [cid] = make_contracts(provider.server, provider.de)
        assert "lock holder" in error(a.provisioned(cid), 403)
        data(a.lock(cid))
        error(b.provisioned(cid), 403)
        details = {"externalId": "101", "ipAddress": "192.0.2.1", "ipv6Address": None, "sshPort": 22,
                   "provisioner": "proxmox", "node": "pve1", "extra": {"vmid": 101}}
        done = data(a.provisioned(cid, details))
        assert done["status"] == "provisioned" and done["repeated"] is False
        before = contract(server, cid)
        again = data(a.provisioned(cid, details))
        assert again["repeated"] is True and again["provisionedAtNs"] == done["provisionedAtNs"]
        assert contract(server, cid) == before
        assert before["instanceDetails"] == details and before["lockAgent"] is None
        assert "different" in error(a.provisioned(cid, {**details, "externalId": "102"}), 409)
        assert "another agent" in error(b.provisioned(cid, details), 409)
        assert "bodies" and "instanceDetails" in error(a.call("POST", f"/contracts/{cid}/provisioned", {}), 422)

    def test_failed_rules(self, server: PoolServer, world) -> None:
        """failed clears the lock, counts, keeps the contract open; a repeat counts nothing; non-holders 403."""
        provider, a, b, _ = world
        [cid] = make_contracts(provider.server, provider.de)
        error(a.failed(cid), 403)
        data(a.lock(cid))
        error(b.failed(cid), 403)
        out = data(a.failed(cid, "clone timed out"))
        assert (out["status"], out["failureCount"], out["repeated"]) == ("accepted", 1, False)
        assert data(a.failed(cid, "clone timed out"))["repeated"] is True
        shown = contract(server, cid)
        assert (shown["failureCount"], shown["lastError"], shown["lockAgent"]) == (1, "clone timed out", None)
        assert cid in b.pending_ids()
        data(b.lock(cid))
        data(b.provisioned(cid))
        assert data(a.failed(cid, "clone timed out"))["repeated"] is True
        assert "provisioned" in error(a.failed(cid, "something else"), 409)
        assert "errorMessage" in error(a.call("POST", f"/contracts/{cid}/failed", {"errorMessage": 5}), 422)

    def test_reconcile_and_terminated(self, server: PoolServer, world) -> None:
        """Reconcile keeps each contract's recorded instance and open attempts, terminates cancelled and
        duplicate instances, and reports unknown ones."""
        provider, a, b, _ = world
        kept, cancelled, orphan, mine_locked, b_locked, free = make_contracts(provider.server, provider.de, 6)
        [requested] = make_contracts(provider.server, provider.de, 1, status="requested")
        for cid in (kept, cancelled):
            data(a.lock(cid))
            data(a.provisioned(cid, {"externalId": f"vm-{cid}"}))
        data(b.lock(orphan))
        data(b.provisioned(orphan, {"externalId": "b-vm"}))
        data(a.lock(mine_locked))
        data(b.lock(b_locked))
        server.admin("contract", "cancel", cancelled)
        running = [{"externalId": f"vm-{kept}", "contractId": kept},
                   {"externalId": f"vm-{cancelled}", "contractId": cancelled},
                   {"externalId": "dup", "contractId": kept},
                   {"externalId": "a-orphan", "contractId": orphan},
                   {"externalId": "b-vm", "contractId": orphan},
                   {"externalId": "in-progress", "contractId": mine_locked},
                   {"externalId": "b-making", "contractId": b_locked},
                   {"externalId": "abandoned", "contractId": free},
                   {"externalId": "too-early", "contractId": requested},
                   {"externalId": "stray", "contractId": None},
                   {"externalId": "ghost", "contractId": "no-such-contract"}]
        out = data(a.call("POST", "/reconcile", {"runningInstances": running}))
        # b-vm is the instance the server recorded for `orphan` (b reported it; a sees it in a shared
        # cluster): it stays. b-making is b's attempt in progress, abandoned one the next taker adopts.
        assert out["keep"] == [{"externalId": f"vm-{kept}", "contractId": kept},
                               {"externalId": "b-vm", "contractId": orphan},
                               {"externalId": "in-progress", "contractId": mine_locked},
                               {"externalId": "b-making", "contractId": b_locked},
                               {"externalId": "abandoned", "contractId": free}]
        assert {(t["externalId"], t["reason"]) for t in out["terminate"]} == {
            (f"vm-{cancelled}", "cancelled"), ("dup", "duplicate-instance"), ("a-orphan", "duplicate-instance"),
            ("too-early", "contract-requested")}
        assert [u["externalId"] for u in out["unknown"]] == ["stray", "ghost"]
        assert "cancelled" in error(a.call("PUT", f"/contracts/{kept}/terminated"), 409)
        done = data(a.call("PUT", f"/contracts/{cancelled}/terminated"))
        assert done["status"] == "terminated" and done["repeated"] is False
        assert data(a.call("PUT", f"/contracts/{cancelled}/terminated"))["repeated"] is True
        assert contract(server, cancelled)["status"] == "terminated"
        assert "runningInstances" in error(a.call("POST", "/reconcile", {"runningInstances": [{"contractId": "x"}]}), 422)

    def test_legacy_agent_without_pool_sees_all(self, server: PoolServer, world) -> None:
        """An agent whose delegation has no pool (legacy) sees and may lock every contract of its provider."""
        provider, a, _, _ = world
        de = make_contracts(provider.server, provider.de)
        us_c = make_contracts(provider.server, provider.us)
        legacy = new_agent(provider, provider.create_pool("w-legacy", "apac", "proxmox")["poolId"])
        engine = sa.create_engine(server.database_url)
        with engine.begin() as conn:
            conn.execute(sa.update(agent_delegations).where(agent_delegations.c.agent_pubkey == legacy.pubkey)
                         .values(pool_id=None))
        engine.dispose()
        assert set(de + us_c) <= set(legacy.pending_ids())
        assert legacy.heartbeat()["poolId"] is None
        data(legacy.lock(us_c[0]))
        legacy.close()


class TestMisc:
    def test_health_and_unknown_routes(self, server: PoolServer) -> None:
        """Health answers 200 in the envelope; unknown paths 404 and wrong methods 405, also in the envelope."""
        assert data(httpx.get(f"{server.url}/api/v1/health"))["status"] == "ok"
        error(httpx.get(f"{server.url}/api/v1/nope"), 404)
        error(httpx.delete(f"{server.url}/api/v1/health"), 405)

    def test_admin_contract_list(self, server: PoolServer, provider: Provider) -> None:
        """contract list --json shows created contracts with their status; provider GET /contracts too."""
        offering = f"adm-{provider.pubkey[:8]}"
        provider.create_offering(offering, "DE")
        ids = make_contracts(provider.server, offering, 2)
        listed = {c["contractId"]: c for c in admin_json(server, "contract", "list", "--status", "accepted")}
        assert set(ids) <= set(listed) and listed[ids[0]]["offeringId"] == offering
        mine = data(provider.request("GET", "/contracts"))
        assert [c["contractId"] for c in mine if c["offeringId"] == offering] == ids
