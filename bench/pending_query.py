#!/usr/bin/env python3
"""pending-provision latency on a large database, with the query plan.

After `dc-pool-api serve` applied the migrations, the bench bulk-inserts (SQLAlchemy, pool_api/tables.py)
offerings and contracts of several providers: mixed statuses and payment states, countries of every
region, offerings pinned to pools or routed by region and provisioner type, locks held by other agents
(some expired), creation times over 30 days. A real agent (set up with a token) then calls
GET /providers/{pk}/contracts/pending-provision through the real HTTP server, signed, sequentially;
p50/p95 of the wall time of each request (client side, one keep-alive connection). For reference the
same client times the unsigned /health (SELECT 1) and the signed heartbeat (one small write).

The plan is `EXPLAIN (ANALYZE, BUFFERS)` of the exact statement the endpoint runs (captured from
`pool_api.contracts.pending_provision` through SQLAlchemy's cursor events, same parameters), after
ANALYZE of the loaded tables; the index names it uses are listed.

    python bench/pending_query.py            # 1,000 offerings × 10,000 contracts, 300 requests
    python bench/pending_query.py --quick    # 20 offerings × 200 contracts, 30 requests
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from bench import harness as h  # noqa: E402

COUNTRIES = ["DE", "FR", "NL", "PL", "SE", "GB", "US", "CA", "MX", "BR", "AR", "JP", "SG", "AU", "IN",
             "AE", "TR", "EG", "ZA", "NG", "KE", "RU", "KZ", "UA", "XX", ""]
STATUSES = [("requested", 10), ("accepted", 25), ("provisioning", 5), ("provisioned", 40), ("cancelled", 10),
            ("terminated", 10)]
PAYMENTS = [("succeeded", 85), ("pending", 10), ("failed", 4), ("refunded", 1)]
OUR_POOLS = [("eu-proxmox", "europe", "proxmox"), ("na-proxmox", "na", "proxmox"), ("apac-script", "apac", "script"),
             ("eu-manual", "europe", "manual"), ("latam-proxmox", "latam", "proxmox")]


def weighted(rng: random.Random, choices: list[tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def load(bench: h.Bench, n_offerings: int, n_contracts: int, seed: int) -> dict[str, int]:
    """Bulk-insert the data set; returns counts by kind."""
    from pool_api.routing import country_to_region
    from pool_api.tables import agent_pools, contracts, offerings, providers

    assert bench.engine is not None and bench.provider is not None
    rng = random.Random(seed)
    now = time.time_ns()
    ours = bench.provider.pubkey
    our_pools = [bench.pool_id] + [bench.provider.create_pool(n, loc, t)["poolId"] for n, loc, t in OUR_POOLS]
    others = [SigningKey.generate().verify_key.encode().hex() for _ in range(4)]
    other_pools: dict[str, list[str]] = {}
    pool_rows = []
    for i, pk in enumerate(others):
        other_pools[pk] = []
        for name, loc, ptype in [("bench-script", "europe", "script"), *OUR_POOLS]:
            pid = f"pool_other{i}_{name}"
            other_pools[pk].append(pid)
            pool_rows.append(dict(pool_id=pid, provider_pubkey=pk, name=name, location=loc, provisioner_type=ptype,
                                  created_at_ns=now))
    offering_rows = []
    for i in range(n_offerings):
        provider = ours if rng.random() < 0.4 else rng.choice(others)
        pools = our_pools if provider == ours else other_pools[provider]
        country = rng.choice(COUNTRIES)
        offering_rows.append(dict(
            offering_id=f"off-{i:05d}", provider_pubkey=provider, name=f"offering {i}", product_type="compute",
            datacenter_country=country, region=country_to_region(country),
            provisioner_type=rng.choice([None, "proxmox", "script", "manual"]), provisioner_config=None,
            agent_pool_id=rng.choice(pools) if rng.random() < 0.3 else None, price=round(rng.uniform(1, 90), 2),
            cpu_cores=rng.choice([1, 2, 4, 8]), memory_mb=rng.choice([1024, 2048, 8192]),
            storage_gb=rng.choice([10, 40, 200]), created_at_ns=now - rng.randrange(60 * 86400) * 10**9))
    contract_rows = []
    for i in range(n_contracts):
        off = rng.choice(offering_rows)
        status = weighted(rng, STATUSES)
        created = now - rng.randrange(30 * 86400 * 1000) * 10**6 - i
        row = dict(contract_id=f"c{i:06d}{rng.getrandbits(40):010x}", provider_pubkey=off["provider_pubkey"],
                   offering_id=off["offering_id"], requester_ssh_pubkey="ssh-ed25519 AAAAC3Nza bench",
                   instance_config=None, status=status, payment_status=weighted(rng, PAYMENTS),
                   created_at_ns=created, updated_at_ns=created, lock_agent=None, lock_at_ns=None,
                   lock_expires_ns=None, provisioned_by=None, provisioned_at_ns=None, instance_details=None,
                   failure_count=0, last_error=None, last_failed_by=None, last_failed_at_ns=None,
                   cancelled_at_ns=None, terminated_at_ns=None, terminated_by=None)
        if status in ("accepted", "provisioning") and rng.random() < 0.15:
            expired = rng.random() < 0.5
            row.update(lock_agent=f"{rng.getrandbits(256):064x}", lock_at_ns=now - 400 * 10**9,
                       lock_expires_ns=now + (-100 if expired else 3600) * 10**9)
        if status in ("provisioned", "cancelled", "terminated"):
            row.update(provisioned_by=f"{rng.getrandbits(256):064x}", provisioned_at_ns=created + 60 * 10**9,
                       instance_details={"externalId": f"vm-{i}", "ipAddress": "192.0.2.1", "sshPort": 22})
        if rng.random() < 0.05:
            row.update(failure_count=rng.randint(1, 3), last_error="no capacity", last_failed_at_ns=created)
        contract_rows.append(row)
    with bench.engine.begin() as conn:
        conn.execute(sa.insert(providers), [dict(pubkey=pk, name=f"other {i}", created_at_ns=now)
                                            for i, pk in enumerate(others)])
        conn.execute(sa.insert(agent_pools), pool_rows)
        conn.execute(sa.insert(offerings), offering_rows)
        for start in range(0, len(contract_rows), 2000):
            conn.execute(sa.insert(contracts), contract_rows[start:start + 2000])
    with bench.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    statuses = Counter(r["status"] for r in contract_rows)
    return {"offerings": len(offering_rows), "contracts": len(contract_rows),
            "our_offerings": sum(1 for o in offering_rows if o["provider_pubkey"] == ours),
            "providers": 1 + len(others), "pools": len(our_pools) + len(pool_rows), **statuses}


def capture_and_explain(bench: h.Bench, caller) -> tuple[str, list[str], float, int]:  # noqa: ANN001
    """(plan text, indexes used, in-process median ms of pending_provision(), rows) for `caller`."""
    from pool_api import contracts

    assert bench.engine is not None
    captured: list[tuple[str, object]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        if "ORDER BY" in statement and "FROM contracts" in statement:
            captured.append((statement, parameters))

    sa.event.listen(bench.engine, "before_cursor_execute", grab)
    try:
        with bench.engine.connect() as conn:
            rows = len(contracts.pending_provision(conn, caller))
            conn.rollback()
    finally:
        sa.event.remove(bench.engine, "before_cursor_execute", grab)
    statement, params = captured[-1]
    with bench.engine.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params))
        conn.rollback()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            contracts.pending_provision(conn, caller)
            conn.rollback()
            times.append((time.perf_counter() - t) * 1000)
    indexes = sorted(set(re.findall(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) "
                                    r"(\S+)", plan)))
    return plan, indexes, h.median(times), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--offerings", type=int, default=1000)
    parser.add_argument("--contracts", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.offerings, args.contracts, args.requests = 20, 200, 30
    started = time.monotonic()
    from pool_api.auth import Caller
    from tests.support.provider import agent_client, data, make_agent

    with h.Bench("pending", keep=args.keep) as bench:
        assert bench.provider is not None and bench.server is not None
        key, setup = make_agent(bench.provider, bench.pool_id, label="bench-agent")
        t = time.monotonic()
        counts = load(bench, args.offerings, args.contracts, args.seed)
        h.say(f"loaded {counts} in {time.monotonic() - t:.1f} s")
        pubkey = key.verify_key.encode().hex()
        caller = Caller(role="agent", pubkey=pubkey, provider_pubkey=bench.provider.pubkey, pool_id=bench.pool_id)
        plan, indexes, inproc_ms, n_rows = capture_and_explain(bench, caller)
        execution = re.search(r"Execution Time: ([\d.]+) ms", plan)
        client = agent_client(bench.server, key)
        path = f"/providers/{bench.provider.pubkey}/contracts/pending-provision"
        hb_path = f"/providers/{bench.provider.pubkey}/heartbeat"
        hb_body = {"version": "bench", "provisionerType": "script", "activeContracts": 0}
        try:
            for _ in range(5):  # warm-up: connections, caches
                data(client.get(path))
            times, sizes = [], []
            for _ in range(args.requests):
                t = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - t) * 1000)
                sizes.append(len(response.content))
                returned = len(data(response))
            health, heartbeat = [], []
            for _ in range(max(10, args.requests // 3)):
                t = time.perf_counter()
                assert client.get("/health").status_code == 200
                health.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                data(client.post(hb_path, json=hb_body))
                heartbeat.append((time.perf_counter() - t) * 1000)
        finally:
            client.close()
    p50, p95 = h.median(times), h.percentile(times, 95)
    print(plan)
    print()
    h.figure("pending_p50", round(p50, 2), "ms")
    h.figure("pending_p95", round(p95, 2), "ms")
    h.figure("pending_rows_returned", returned)
    h.figure("pending_response_bytes", int(h.median(sizes)))
    h.figure("pending_sql_execution", float(execution.group(1)) if execution else "?", "ms")
    h.figure("pending_inprocess_p50", round(inproc_ms, 2), "ms")
    h.figure("health_p50", round(h.median(health), 2), "ms")
    h.figure("heartbeat_p50", round(h.median(heartbeat), 2), "ms")
    h.figure("indexes_used", ",".join(indexes) or "none")
    assert n_rows == returned, (n_rows, returned)
    table = "\n".join([
        "| offerings | contracts | requests | rows returned | p50 | p95 | SQL execution (EXPLAIN ANALYZE) | "
        "pending_provision() in-process p50 | /health p50 | signed heartbeat p50 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {counts['offerings']:,} | {counts['contracts']:,} | {args.requests} | {returned} | {p50:.1f} ms | "
        f"{p95:.1f} ms | {execution.group(1) if execution else '?'} ms | {inproc_ms:.1f} ms | "
        f"{h.median(health):.1f} ms | {h.median(heartbeat):.1f} ms |",
    ])
    print(table)
    mix = ", ".join(f"{k} {counts.get(k, 0)}" for k, _ in STATUSES)
    body = h.run_header(h.command_line(), started, {
        "Data": f"{counts['providers']} providers, {counts['pools']} pools, {counts['offerings']:,} offerings "
                f"({counts['our_offerings']} of the agent's provider; 30 % pinned to a pool, the rest routed by "
                f"country/region and provisioner type), {counts['contracts']:,} contracts ({mix}; payment 85 % "
                "succeeded; 15 % of the open ones locked by other agents, half of those expired)",
        "Client": "one signed agent (`make_agent`: token + POST /agents/setup), sequential requests on one "
                  "keep-alive httpx connection, after 5 warm-up requests; response "
                  f"{int(h.median(sizes)):,} bytes",
        "Indexes used": ", ".join(f"`{i}`" for i in indexes) or "none",
    }) + "\n\n" + table + "\n\nQuery plan (`EXPLAIN (ANALYZE, BUFFERS)` of the endpoint's statement):\n\n```text\n" + \
        plan + "\n```"
    run = f"{counts['offerings']:,} offerings × {counts['contracts']:,} contracts, {returned} rows returned" + \
        (" (quick)" if args.quick else "")
    h.record(h.results_path(args), "pending_query", "4. pending-provision latency", body,
             {"pending_p50": {"value": f"{p50:.1f} ms (p95 {p95:.1f} ms; SQL "
                                       f"{execution.group(1) if execution else '?'} ms)", "run": run}},
             h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
