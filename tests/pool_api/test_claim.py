"""Claim and long-poll against a real `dc-pool-api serve` (PostgreSQL and SQLite): what a claim locks and
returns, concurrent claimers, waiting claims woken by a new contract or a released lock, the routing rules
(capacity, health, sticky, fallback pools) and GET /metrics. No timing asserts: every wait has a generous
deadline and the tests assert on what came back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pool_api.db import now_ns
from pool_api.tables import agent_delegations, contracts
from tests.pool_api.dispatch_helpers import (
    LEASE_FIELDS,
    Background,
    claim,
    claim_ids,
    claim_until_empty,
    metrics_text,
    set_columns,
    waiting,
)
from tests.pool_api.helpers import Agent, contract, error, make_contracts, new_agent, quick_provider, wait_for
from tests.support.pool_server import PoolServer, running_pool_api
from tests.support.provider import Provider, data

HOUR_NS = 3600 * 10**9


@pytest.fixture
def pool(server: PoolServer, provider: Provider) -> Iterator[tuple[str, str, list[Agent]]]:
    """(pool id, offering id, two agents that sent a heartbeat) of a fresh provider."""
    pool_id = provider.create_pool("claims", "europe", "proxmox")["poolId"]
    offering = f"claim-{provider.pubkey[:8]}"
    provider.create_offering(offering, "DE")
    agents = [new_agent(provider, pool_id, label=f"node-{i}") for i in range(2)]
    for agent in agents:
        agent.heartbeat(capacity={"maxConcurrent": 4, "freeSlots": 4})
    yield pool_id, offering, agents
    for agent in agents:
        agent.close()


class TestClaim:
    def test_at_most_max_each_locked_for_the_caller(self, server: PoolServer, pool) -> None:
        """5 contracts, claims of max 3: 3 then 2 then none; each claimed contract is locked by the claimer."""
        _pool, offering, (a, _b) = pool
        ids = make_contracts(server, offering, 5)
        first = claim(a, 3)
        assert [item["contractId"] for item in first] == ids[:3]  # oldest first
        rest = claim_ids(a, 3, exclude=ids[:3])
        assert rest == ids[3:]
        assert claim_ids(a, 3, exclude=ids) == []
        for cid in ids:
            row = contract(server, cid)
            assert row["lockAgent"] == a.pubkey and row["lockExpiresNs"] > now_ns()

    def test_item_is_a_pending_item_plus_its_lease(self, server: PoolServer, pool) -> None:
        """A claimed item has exactly the pending-provision fields plus acquired, expiresAtNs, lockedAtNs,
        firstLockedAtNs; a contract's first lock ever has firstLockedAtNs == lockedAtNs."""
        _pool, offering, (a, _b) = pool
        [cid] = make_contracts(server, offering)
        [pending] = [item for item in a.pending() if item["contractId"] == cid]
        [item] = claim(a, 1)
        assert set(item) == set(pending) | LEASE_FIELDS
        assert item["acquired"] is True and item["lockedByMe"] is True and item["contractId"] == cid
        assert item["firstLockedAtNs"] == item["lockedAtNs"] and item["expiresAtNs"] > item["lockedAtNs"]
        assert {k: item[k] for k in pending if k not in ("lockedByMe", "lockExpiresNs")} == \
               {k: v for k, v in pending.items() if k not in ("lockedByMe", "lockExpiresNs")}
        assert item["lockExpiresNs"] == item["expiresAtNs"] == contract(server, cid)["lockExpiresNs"]

    def test_held_contracts_come_back_first_and_are_renewed(self, server: PoolServer, pool) -> None:
        """A claim returns the contracts the caller already holds first (a restarted agent gets its work back),
        with a later expiry; `exclude` leaves them out; the other agent gets none of them."""
        _pool, offering, (a, b) = pool
        ids = make_contracts(server, offering, 4)
        held = claim(a, 2)
        again = claim(a, 2)
        assert [i["contractId"] for i in again] == [i["contractId"] for i in held] == ids[:2]
        assert all(n["expiresAtNs"] > o["expiresAtNs"] for n, o in zip(again, held))
        assert all(i["firstLockedAtNs"] < i["lockedAtNs"] for i in again)  # not a first lock any more
        assert claim_ids(b, 4) == ids[2:]
        assert claim_ids(a, 4, exclude=ids[:2]) == []

    def test_bad_bodies_are_422_naming_the_field(self, server: PoolServer, pool) -> None:
        _pool, _offering, (a, _b) = pool
        path = f"/providers/{a.provider.pubkey}/contracts/claim"
        for body, field in (({"max": 0}, "max"), ({"max": 33}, "max"), ({}, "max"),
                            ({"max": 1, "waitSeconds": 61}, "waitSeconds"), ({"max": 1, "waitSeconds": -1}, "waitSeconds"),
                            ({"max": 1, "freeSlots": -1}, "freeSlots"), ({"max": 1, "exclude": ["x"] * 201}, "exclude")):
            assert field in error(a.client.post(path, json=body), 422), body

    def test_setup_and_heartbeat_advertise_claim(self, server: PoolServer, provider: Provider) -> None:
        pool_id = provider.create_pool("advertise", "na", "script")["poolId"]
        agent = new_agent(provider, pool_id)
        assert agent.setup["claim"] is True
        beat = agent.heartbeat()
        assert beat["claim"] is True and beat["poolId"] == pool_id and beat["poolName"] == "advertise"
        assert beat["nextHeartbeatSeconds"] == 30
        agent.close()


class TestConcurrentClaims:
    def test_claimers_never_get_the_same_contract(self, server: PoolServer, provider: Provider) -> None:
        """12 agents claim 60 contracts at once (max 4 a claim, until none is left): every contract goes to
        exactly one agent, and each agent's claims hold what it was given."""
        pool_id = provider.create_pool("crowd", "europe", "proxmox")["poolId"]
        offering = f"crowd-{provider.pubkey[:8]}"
        provider.create_offering(offering, "DE")
        agents = [new_agent(provider, pool_id) for _ in range(12)]
        for agent in agents:
            agent.heartbeat()
        ids = make_contracts(server, offering, 60)
        got, _ = claim_until_empty(agents, 4)
        owners = Counter(cid for items in got.values() for cid in items)
        print(f"[{server.database_url.split(':')[0]}] 12 claimers, 60 contracts: claimed once = "
              f"{sum(1 for c in ids if owners[c] == 1)}, twice or more = {sum(1 for c in ids if owners[c] > 1)}, "
              f"per agent {sorted(len(v) for v in got.values())}")
        assert sorted(owners) == sorted(ids) and set(owners.values()) == {1}
        for agent in agents:
            assert all(contract(server, cid)["lockAgent"] == agent.pubkey for cid in got[agent.pubkey])
            agent.close()


class TestLongPoll:
    def test_returns_the_contract_that_arrives(self, server: PoolServer, pool) -> None:
        """A claim waiting 60 s answers with the contract created while it waits."""
        _pool, offering, (a, _b) = pool
        poll = Background(lambda: claim_ids(a, 2, wait=60))
        wait_for(lambda: waiting(server, a), what="the claim to wait")
        [cid] = make_contracts(server, offering)
        assert poll.result() == [cid]
        assert contract(server, cid)["lockAgent"] == a.pubkey

    def test_returns_the_contract_another_agent_releases(self, server: PoolServer, pool) -> None:
        _pool, offering, (a, b) = pool
        [cid] = make_contracts(server, offering)
        assert claim_ids(b, 1) == [cid]
        poll = Background(lambda: claim_ids(a, 1, wait=60))
        wait_for(lambda: waiting(server, a), what="the claim to wait")
        assert data(b.unlock(cid))["released"] is True
        assert poll.result() == [cid]

    def test_a_client_that_goes_away_stops_waiting(self, server: PoolServer, pool) -> None:
        """The server notices a waiting claim's client disconnect: the claim is counted as `disconnected` and no
        longer waits (dc_pool_claims_waiting back to 0)."""
        _pool, _offering, (a, _b) = pool

        def counts() -> tuple[float, float]:
            samples = {(s.name, s.labels.get("result")): s.value
                       for f in text_string_to_metric_families(metrics_text(server)) for s in f.samples}
            return samples[("dc_pool_claims_total", "disconnected")], samples[("dc_pool_claims_waiting", None)]

        before, _ = counts()
        poll = Background(lambda: claim(a, 1, wait=60, timeout=3))
        wait_for(lambda: waiting(server, a), what="the claim to wait")
        with pytest.raises(httpx.ReadTimeout):
            poll.result()  # the client gives up after 3 s and closes its connection
        assert wait_for(lambda: counts() == (before + 1, 0), what="the server to see the disconnect")

    def test_a_stopping_server_answers_waiting_claims(self, sqlite_url: str) -> None:
        """SIGTERM: a claim waiting 60 s gets its answer, an empty list, instead of a dropped connection."""
        with running_pool_api(sqlite_url) as solo:
            provider = quick_provider(solo)
            agent = new_agent(provider, provider.create_pool("stop", "europe", "proxmox")["poolId"])
            poll = Background(lambda: claim_ids(agent, 1, wait=60))
            wait_for(lambda: waiting(solo, agent), what="the claim to wait")
            solo.stop()
            assert poll.result() == []
            assert "Traceback" not in solo.log_path.read_text()
            agent.close()
            provider.close()

    def test_empty_at_the_deadline(self, server: PoolServer, pool) -> None:
        """With nothing to claim, a claim waiting 1 s answers an empty list (and took nothing meanwhile)."""
        _pool, offering, (a, _b) = pool
        assert claim_ids(a, 3, wait=1) == []
        assert not waiting(server, a)


class TestCapacity:
    def test_the_agent_with_most_free_slots_gets_the_contract(self, server: PoolServer, pool) -> None:
        """Two agents of a pool wait; the one with 4 free slots gets the arriving contract, the one with 1 the
        next."""
        _pool, offering, (roomy, busy) = pool
        polls = {name: Background(lambda agent=agent, free=free: claim_ids(agent, 1, wait=60, freeSlots=free))
                 for name, agent, free in (("roomy", roomy, 4), ("busy", busy, 1))}
        wait_for(lambda: waiting(server, roomy) and waiting(server, busy), what="both claims to wait")
        [first] = make_contracts(server, offering)
        assert polls["roomy"].result() == [first]
        assert not polls["busy"].done()
        [second] = make_contracts(server, offering)
        assert polls["busy"].result() == [second]


class TestHealth:
    def test_an_agent_failing_three_times_is_passed_over(self, server: PoolServer, provider: Provider, pool) -> None:
        """After 3 failed provisions in a row an agent gets nothing new from claim or pending-provision while a
        healthy agent of its pool is online; it works again once none is, and a provisioned report resets it."""
        pool_id, offering, (sick, healthy) = pool
        [cid] = make_contracts(server, offering)
        for attempt in range(3):
            assert claim_ids(sick, 1) == [cid]
            data(sick.failed(cid, f"clone failed ({attempt})"))
        detail = {a["agentPubkey"]: a for a in data(provider.request("GET", f"/pools/{pool_id}"))["agents"]}
        assert detail[sick.pubkey]["consecutiveFailures"] == 3 and detail[sick.pubkey]["passedOver"] is True
        assert detail[healthy.pubkey]["passedOver"] is False
        assert claim_ids(sick, 4) == [] and sick.pending_ids() == []
        assert cid in healthy.pending_ids() and claim_ids(healthy, 4) == [cid]
        set_columns(server, agent_delegations, agent_delegations.c.agent_pubkey == healthy.pubkey,
                    last_seen_ns=now_ns() - HOUR_NS)  # the healthy agent went offline
        [late] = make_contracts(server, offering)
        assert claim_ids(sick, 1) == [late]
        data(sick.provisioned(late))
        detail = {a["agentPubkey"]: a for a in data(provider.request("GET", f"/pools/{pool_id}"))["agents"]}
        assert detail[sick.pubkey]["consecutiveFailures"] == 0 and detail[sick.pubkey]["passedOver"] is False


class TestSticky:
    def test_a_lapsed_lock_stays_with_its_online_agent(self, server: PoolServer, pool) -> None:
        """A contract whose lock lapsed goes back to the agent that held it while that agent is online; another
        agent claims it once the holder releases it, or once the holder is offline."""
        _pool, offering, (holder, other) = pool
        ids = make_contracts(server, offering, 2)
        assert claim_ids(holder, 2) == ids
        lapse = dict(lock_expires_ns=now_ns() - 1, sticky_until_ns=now_ns() + HOUR_NS)
        set_columns(server, contracts, contracts.c.contract_id.in_(ids), **lapse)
        assert claim_ids(other, 2) == []
        assert set(ids) <= set(other.pending_ids())  # pending-provision keeps PROTOCOL's rule
        assert claim_ids(holder, 2) == ids  # renewed by their agent
        data(holder.unlock(ids[0]))
        set_columns(server, contracts, contracts.c.contract_id == ids[1], **lapse)
        assert claim_ids(other, 2) == [ids[0]]
        set_columns(server, agent_delegations, agent_delegations.c.agent_pubkey == holder.pubkey,
                    last_seen_ns=now_ns() - HOUR_NS)
        assert claim_ids(other, 2, exclude=[ids[0]]) == [ids[1]]


class TestFallback:
    def test_fallback_pool_takes_over_after_the_delay(self, server: PoolServer, provider: Provider) -> None:
        """Pool A falls back to B after 300 s: B's agent gets nothing while A's agent is online, nor right after
        it was revoked; once A's delay is 1 s B's agent sees, claims and provisions A's contract."""
        a_pool = provider.create_pool("primary", "europe", "proxmox")["poolId"]
        b_pool = provider.create_pool("backup", "na", "proxmox")["poolId"]
        offering = f"fb-{provider.pubkey[:8]}"
        provider.create_offering(offering, "DE")
        a_agent, b_agent = new_agent(provider, a_pool), new_agent(provider, b_pool)
        a_agent.heartbeat()
        b_agent.heartbeat()
        updated = data(provider.request("PUT", f"/pools/{a_pool}", {"fallbackPoolId": b_pool}))
        assert (updated["fallbackPoolId"], updated["fallbackAfterSeconds"]) == (b_pool, 300)
        [cid] = make_contracts(server, offering)
        assert claim_ids(b_agent, 1) == [] and cid not in b_agent.pending_ids()
        data(provider.request("DELETE", f"/agents/{a_agent.pubkey}"))
        assert claim_ids(b_agent, 1) == [] and cid not in b_agent.pending_ids()
        detail = data(provider.request("GET", f"/pools/{a_pool}"))
        assert detail["fallback"]["downSinceNs"] is not None and detail["fallback"]["takenOverBy"] == []
        data(provider.request("PUT", f"/pools/{a_pool}", {"fallbackAfterSeconds": 1}))
        assert wait_for(lambda: cid in b_agent.pending_ids(), what="the fallback pool to see the contract")
        assert claim_ids(b_agent, 1) == [cid]
        data(b_agent.provisioned(cid))
        assert contract(server, cid)["provisionedBy"] == b_agent.pubkey
        assert data(provider.request("GET", f"/pools/{a_pool}"))["fallback"]["takenOverBy"] == [b_pool]
        assert data(provider.request("GET", f"/pools/{b_pool}"))["fallback"]["takingOverFor"] == [a_pool]
        b_agent.close()
        a_agent.close()

    def test_fallback_rules(self, server: PoolServer, provider: Provider) -> None:
        """Same provider only, no pool of its own, no cycle; deleting the fallback pool clears the reference;
        null removes a fallback."""
        a = provider.create_pool("a", "europe", "proxmox")["poolId"]
        created = data(provider.request("POST", "/pools", {"name": "b", "location": "na", "provisionerType": "proxmox",
                                                            "fallbackPoolId": a, "fallbackAfterSeconds": 60}))
        b = created["poolId"]
        assert (created["fallbackPoolId"], created["fallbackAfterSeconds"]) == (a, 60)
        c = provider.create_pool("c", "apac", "proxmox")["poolId"]
        data(provider.request("PUT", f"/pools/{c}", {"fallbackPoolId": b}))
        assert "cycle" in error(provider.request("PUT", f"/pools/{a}", {"fallbackPoolId": c}), 422)
        assert "itself" in error(provider.request("PUT", f"/pools/{a}", {"fallbackPoolId": a}), 422)
        other = quick_provider(server)
        foreign = other.create_pool("foreign", "europe", "proxmox")["poolId"]
        assert "no pool" in error(provider.request("PUT", f"/pools/{a}", {"fallbackPoolId": foreign}), 422)
        assert "fallbackAfterSeconds" in error(provider.request("PUT", f"/pools/{a}", {"fallbackAfterSeconds": -1}), 422)
        data(provider.request("DELETE", f"/pools/{b}"))
        assert data(provider.request("GET", f"/pools/{c}"))["fallbackPoolId"] is None
        data(provider.request("PUT", f"/pools/{a}", {"fallbackPoolId": c}))
        assert data(provider.request("PUT", f"/pools/{a}", {"fallbackPoolId": None}))["fallbackPoolId"] is None
        other.close()


class TestMetrics:
    def test_series_from_the_database_and_the_process(self, server: PoolServer, pool) -> None:
        """GET /metrics parses as Prometheus text and has the pool's pending, locked and online gauges (from the
        database) and the claim, conflict and provision counters and the provisioning histogram."""
        pool_id, offering, (a, b) = pool
        ids = make_contracts(server, offering, 3)
        [done] = claim_ids(a, 1)
        data(a.provisioned(done))
        [broken] = claim_ids(a, 1)
        data(a.failed(broken, "no space"))
        [held] = claim_ids(a, 1)
        assert b.lock(held).status_code == 409
        families = {f.name: f for f in text_string_to_metric_families(metrics_text(server))}
        mine = {(s.name, s.labels.get("outcome", s.labels.get("result", ""))): s.value
                for f in families.values() for s in f.samples if s.labels.get("pool") in (pool_id, None)}
        assert mine[("dc_pool_pending_contracts", "")] == 1  # one never claimed; `held` is locked
        assert mine[("dc_pool_locked_contracts", "")] == 1
        assert mine[("dc_pool_agents_online", "")] == 2
        assert mine[("dc_pool_provisions_total", "provisioned")] == 1
        assert mine[("dc_pool_provisions_total", "failed")] == 1
        assert mine[("dc_pool_provisioning_seconds_count", "")] == 1
        assert mine[("dc_pool_claims_total", "claimed")] >= 3
        assert mine[("dc_pool_lock_conflicts_total", "")] >= 1
        assert ("dc_pool_claims_waiting", "") in mine
        assert {done, broken, held} < set(ids)
