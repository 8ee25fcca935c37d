"""Claims on two `dc-pool-api serve` replicas sharing one PostgreSQL database.

The replicas re-check on their own only every 300 s, so a waiting claim that answers with a contract
within its 60 s was woken by a PostgreSQL notification: from the other replica (a lock released there)
or from another process (`dc-pool-api contract create`). Claimers on both replicas never share a contract.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.pool_api.dispatch_helpers import Background, claim_ids, claim_until_empty, waiting
from tests.pool_api.helpers import contract, make_contracts, new_agent, quick_provider, wait_for
from tests.support.pool_server import PoolServer, running_pool_api
from tests.support.provider import Provider, data


def assert_quiet_logs(*servers: PoolServer) -> None:
    """No traceback, failed wake-up round or lost LISTEN connection in the replicas' logs."""
    for server in servers:
        log = server.log_path.read_text()
        assert not any(bad in log for bad in ("Traceback", "claim_round_failed", "listen_failed")), log[-3000:]


@pytest.fixture(scope="module")
def replicas(pg_cluster) -> Iterator[tuple[PoolServer, PoolServer]]:  # noqa: ANN001 - session fixture
    url = pg_cluster.create_database()
    try:
        with running_pool_api(url, claim_recheck_seconds=300) as a, running_pool_api(url, claim_recheck_seconds=300) as b:
            yield a, b
    finally:
        pg_cluster.drop_database(url)


@pytest.fixture
def world(replicas) -> Iterator[tuple[Provider, str, str]]:
    a, _b = replicas
    provider = quick_provider(a)
    pool_id = provider.create_pool("replicated", "europe", "proxmox")["poolId"]
    offering = f"rep-{provider.pubkey[:8]}"
    provider.create_offering(offering, "DE")
    yield provider, pool_id, offering
    provider.close()


class TestWakeAcrossReplicas:
    def test_waiting_claim_woken_through_the_other_replica(self, replicas, world) -> None:
        """A claim waiting on replica A gets the contract an agent on replica B releases, then the contract
        `dc-pool-api contract create` (another process) makes."""
        a, b = replicas
        provider, pool_id, offering = world
        waiter = new_agent(provider, pool_id, server=a)
        holder = new_agent(provider, pool_id, server=b)
        waiter.heartbeat()
        holder.heartbeat()
        [cid] = make_contracts(a, offering)
        assert claim_ids(holder, 1) == [cid]
        poll = Background(lambda: claim_ids(waiter, 1, wait=60))
        wait_for(lambda: waiting(a, waiter), what="the claim on replica A to wait")
        assert data(holder.unlock(cid))["released"] is True  # through replica B
        assert poll.result() == [cid]
        poll = Background(lambda: claim_ids(waiter, 1, wait=60, exclude=[cid]))
        wait_for(lambda: waiting(a, waiter), what="the claim on replica A to wait again")
        [created] = provider.create_contract(offering)  # the admin CLI, a third process
        assert poll.result() == [created]
        waiter.close()
        holder.close()
        assert_quiet_logs(a, b)


class TestClaimRaceAcrossReplicas:
    def test_claimers_on_both_replicas_never_share(self, replicas, world) -> None:
        """8 agents, half on each replica, claim 40 contracts (some waiting for them): each goes to one agent."""
        a, b = replicas
        provider, pool_id, offering = world
        agents = [new_agent(provider, pool_id, server=(a, b)[i % 2]) for i in range(8)]
        for agent in agents:
            agent.heartbeat()
        got, ids = claim_until_empty(agents, 3, wait=3,  # the claims wait for the contracts made once they started
                                     then=lambda: make_contracts(a, offering, 20) + make_contracts(a, offering, 20))
        owners = Counter(cid for items in got.values() for cid in items)
        print(f"[two replicas] 8 claimers, 40 contracts: claimed once = {sum(1 for c in ids if owners[c] == 1)}, "
              f"more = {sum(1 for c in ids if owners[c] > 1)}, per agent {sorted(len(v) for v in got.values())}")
        assert sorted(owners) == sorted(ids) and set(owners.values()) == {1}
        for agent in agents:
            assert all(contract(a, cid)["lockAgent"] == agent.pubkey for cid in got[agent.pubkey])
            agent.close()
        assert_quiet_logs(a, b)
