"""Races against real `dc-pool-api serve` processes: requests released together by a barrier, each race
repeated REPEATS times, winners counted and printed (`pytest -s` shows the figures).

- 16 agents lock one contract: exactly one 200, fifteen 409 (PostgreSQL and SQLite);
- 8 setups with one token: exactly one 200, seven 410 (PostgreSQL and SQLite);
- two replicas on one PostgreSQL database: a nonce replayed against the other replica is refused,
  a lock race across replicas has one winner, and agents polling both replicas provision every
  contract exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from nacl.signing import SigningKey

from tests.pool_api.helpers import (
    Agent,
    admin_json,
    contract,
    error,
    hexkey,
    make_contracts,
    new_agent,
    quick_provider,
    wait_for,
)
from tests.support.pool_server import PoolServer, running_pool_api
from tests.support.provider import Provider, data

REPEATS = 5
LOCKERS = 16
SETUPS = 8


def race(calls: list[Callable[[], httpx.Response]], spans: list[tuple[float, float]] | None = None) -> list[httpx.Response]:
    """Run every call in its own thread, all released at once by a barrier; return the responses.
    `spans` (if given) receives each call's (start, end) monotonic times."""
    barrier = threading.Barrier(len(calls))
    results: list[httpx.Response | BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            started = time.monotonic()
            results[i] = calls[i]()
            if spans is not None:
                spans.append((started, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    failures = [r for r in results if not isinstance(r, httpx.Response)]
    assert not failures, failures
    return results  # type: ignore[return-value]


def agents_in_pool(provider: Provider, n: int, servers: list[PoolServer] | None = None) -> tuple[str, list[Agent]]:
    pool = provider.create_pool(f"race-{provider.pubkey[:6]}", "europe", "proxmox")
    agents = [new_agent(provider, pool["poolId"], server=(servers[i % len(servers)] if servers else None))
              for i in range(n)]
    for a in agents:  # warm each client's connection so the race is not a connect race
        a.heartbeat()
    return pool["poolId"], agents


def lock_race(provider: Provider, offering: str, agents: list[Agent], label: str) -> list[str]:
    """REPEATS lock races on fresh contracts; assert one winner each; return the winners' keys."""
    winners = []
    for repeat in range(REPEATS):
        [cid] = make_contracts(provider.server, offering)
        spans: list[tuple[float, float]] = []
        responses = race([lambda a=a: a.lock(cid) for a in agents], spans)
        statuses = Counter(r.status_code for r in responses)
        won = [a for a, r in zip(agents, responses) if r.status_code == 200]
        in_flight = sum(1 for start, _ in spans if start < min(end for _, end in spans))
        print(f"[{label}] lock race {repeat + 1}/{REPEATS}: {len(agents)} lockers -> "
              f"200 x{statuses[200]}, 409 x{statuses[409]}, winner agent #{agents.index(won[0]) if won else None}, "
              f"{in_flight}/{len(agents)} in flight before the first answer came back")
        assert statuses == Counter({200: 1, 409: len(agents) - 1}), statuses
        assert contract(provider.server, cid)["lockAgent"] == won[0].pubkey
        winners.append(won[0].pubkey)
    return winners


@pytest.fixture
def racers(server: PoolServer, provider: Provider) -> Iterator[tuple[Provider, str, list[Agent]]]:
    offering = f"race-{provider.pubkey[:8]}"
    provider.create_offering(offering, "DE")
    _pool, agents = agents_in_pool(provider, LOCKERS)
    yield provider, offering, agents
    for a in agents:
        a.close()


class TestLockRace:
    def test_sixteen_lockers_one_winner(self, server: PoolServer, racers, request: pytest.FixtureRequest) -> None:
        """16 agents lock one contract at once: exactly one 200 and fifteen 409, in each of 5 repeats."""
        provider, offering, agents = racers
        kind = request.node.callspec.params["server"]
        lock_race(provider, offering, agents, kind)


class TestSetupRace:
    def test_eight_setups_one_token(self, server: PoolServer, provider: Provider, request: pytest.FixtureRequest) -> None:
        """8 setups with one token at once: exactly one 200 and seven 410, in each of 5 repeats."""
        kind = request.node.callspec.params["server"]
        pool = provider.create_pool("setup-race", "na", "proxmox")
        clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(SETUPS)]
        for c in clients:
            c.get("/api/v1/health")
        try:
            for repeat in range(REPEATS):
                token = provider.create_token(pool["poolId"])
                keys = [hexkey(SigningKey.generate()) for _ in range(SETUPS)]
                responses = race([lambda c=c, k=k: c.post("/api/v1/agents/setup", json={"token": token, "agentPubkey": k})
                                  for c, k in zip(clients, keys)])
                statuses = Counter(r.status_code for r in responses)
                print(f"[{kind}] setup race {repeat + 1}/{REPEATS}: {SETUPS} setups -> 200 x{statuses[200]}, "
                      f"410 x{statuses[410]}")
                assert statuses == Counter({200: 1, 410: SETUPS - 1}), statuses
                winner = keys[[r.status_code for r in responses].index(200)]
                agents = {a["agentPubkey"] for a in data(provider.request("GET", "/agents"))}
                assert winner in agents and not (set(keys) - {winner}) & agents
        finally:
            for c in clients:
                c.close()


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[PoolServer, PoolServer]]:
    """Two `serve` processes on one PostgreSQL database (started together: both run the migrations)."""
    with running_pool_api(pg_url) as a, running_pool_api(pg_url) as b:
        yield a, b


class TestTwoReplicas:
    def test_replayed_nonce_refused_by_other_replica(self, replicas) -> None:
        """A signed request accepted by replica A is refused as a replay by replica B, and vice versa."""
        a, b = replicas
        provider = quick_provider(a)
        pool = provider.create_pool("replay", "europe", "proxmox")
        agent = new_agent(provider, pool["poolId"])
        for first, second in ((a, b), (b, a)):
            sent = agent.client.post(f"{first.api_url}/providers/{provider.pubkey}/heartbeat",
                                     json={"version": "1", "activeContracts": 0})
            data(sent)
            replay = httpx.post(f"{second.api_url}/providers/{provider.pubkey}/heartbeat", content=sent.request.content,
                                headers=dict(sent.request.headers))
            assert "replay" in error(replay, 401)
            get = provider.client.get(f"{first.api_url}/providers/{provider.pubkey}/pools")
            data(get)
            assert "replay" in error(httpx.get(f"{second.api_url}/providers/{provider.pubkey}/pools",
                                               headers=dict(get.request.headers)), 401)
        print("[two replicas] replayed nonce: refused (401) by the other replica in both directions")
        agent.close()
        provider.close()

    def test_lock_race_across_replicas(self, replicas) -> None:
        """16 agents, half on each replica, lock one contract: one winner in each of 5 repeats."""
        a, b = replicas
        provider = quick_provider(a)
        provider.create_offering("x-race", "DE")
        _pool, agents = agents_in_pool(provider, LOCKERS, servers=[a, b])
        winners = lock_race(provider, "x-race", agents, "two replicas")
        sides = Counter("A" if agents[[x.pubkey for x in agents].index(w)].client.base_url.port == a.port else "B"
                        for w in winners)
        print(f"[two replicas] winners by replica: {dict(sides)}")
        for agent in agents:
            agent.close()

    def test_every_contract_provisioned_once(self, replicas) -> None:
        """Six agents polling two replicas work through 30 contracts: each provisioned by exactly one agent."""
        a, b = replicas
        provider = quick_provider(a)
        provider.create_offering("x-soak", "DE")
        _pool, agents = agents_in_pool(provider, 6, servers=[a, b])
        ids = make_contracts(provider.server, "x-soak", 30)
        successes: Counter[str] = Counter()
        conflicts = Counter()
        guard = threading.Lock()

        def work(agent: Agent) -> None:
            while True:
                pending = [c["contractId"] for c in agent.pending() if not c["lockedByMe"]]
                if not pending:
                    return
                for cid in pending:
                    if agent.lock(cid).status_code != 200:
                        with guard:
                            conflicts["lock"] += 1
                        continue
                    r = agent.provisioned(cid, {"externalId": f"{agent.pubkey[:8]}-{cid}"})
                    if r.status_code == 200 and not r.json()["data"]["repeated"]:
                        with guard:
                            successes[cid] += 1

        race([lambda ag=ag: (work(ag), httpx.Response(200))[1] for ag in agents])
        shown = {c["contractId"]: c for c in admin_json(a, "contract", "list")}
        print(f"[two replicas] 30 contracts, 6 agents on 2 replicas: provisioned once each = "
              f"{sum(1 for c in ids if successes[c] == 1)}/30, lock conflicts = {conflicts['lock']}")
        assert all(successes[c] == 1 for c in ids), successes
        assert all(shown[c]["status"] == "provisioned" for c in ids)
        assert all(shown[c]["instanceDetails"]["externalId"].startswith(shown[c]["provisionedBy"][:8]) for c in ids)
        for agent in agents:
            agent.close()


class TestReplicasTogether:
    def test_start_together_and_sweep_together(self, db_url: str) -> None:
        """Two `serve` processes started at the same moment on an empty database both come up (one runs the
        migrations, the other waits), and their lock sweeps running side by side clear an expired lock
        without a failed job in either log."""
        servers = [PoolServer(db_url, lock_ttl_seconds=1, lock_sweep_seconds=0.2) for _ in range(2)]
        try:
            started = race([lambda s=s: (s.start(), httpx.Response(200))[1] for s in servers])
            assert [r.status_code for r in started] == [200, 200]
            provider = quick_provider(servers[0])
            pool = provider.create_pool("together", "europe", "proxmox")
            provider.create_offering("together", "DE")
            agent = new_agent(provider, pool["poolId"], server=servers[1])
            cids = make_contracts(servers[0], "together", 3)
            for cid in cids:
                data(agent.lock(cid))
            wait_for(lambda: not any(contract(servers[0], cid)["lockAgent"] for cid in cids))
            logs = [s.log_path.read_text() for s in servers]
            assert all("job_failed" not in log and "Traceback" not in log for log in logs), logs
            print(f"[replicas together, {db_url.split(':')[0]}] both started; 3 expired locks cleared by two sweeping replicas")
            agent.close()
            provider.close()
        finally:
            for s in servers:
                s.cleanup()
