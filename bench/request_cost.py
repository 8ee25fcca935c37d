#!/usr/bin/env python3
"""Server CPU per request, by kind: what one agent call costs `dc-pool-api serve` and PostgreSQL.

One signed agent (set up with a token) sends N requests of each kind, one at a time, on one keep-alive
connection, to an otherwise idle server; CPU of the server process and of PostgreSQL (postmaster and
backends) from /proc before and after each batch, divided by N. Kinds:

  health          GET /health, unsigned (the HTTP stack and one SELECT 1)
  heartbeat       POST .../heartbeat, signed (the signature check, the nonce, one UPDATE)
  claim-empty     POST .../contracts/claim {max 1, waitSeconds 0} with nothing to claim
  claim-hit       the same with contracts waiting: locks one (what an agent's claim costs per contract)
  provisioned     POST .../contracts/{id}/provisioned for the contract just claimed
  pending         GET .../contracts/pending-provision, nothing pending (poll dispatch, per poll)
  lock            POST .../contracts/{id}/lock of a free contract (poll dispatch, per contract)

claim-hit + provisioned is the server's floor per contract with claim; pending + lock + provisioned with
poll. The client's own CPU is not counted. Figures are medians of `--rounds` rounds.

    python bench/request_cost.py            # 300 requests per kind, 3 rounds
    python bench/request_cost.py --quick    # 30 requests per kind, 1 round
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey  # noqa: E402

from bench import harness as h  # noqa: E402

KINDS = ("health", "heartbeat", "claim-empty", "claim-hit", "provisioned", "pending", "lock")


def server_pg_cpu(bench: h.Bench) -> tuple[float, float]:
    c = h.cpu_by_component(bench, None)
    return c["server"], c["postgres"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--requests", type=int, default=300, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 30, 1
    n = args.requests
    started = time.monotonic()
    from tests.support.provider import agent_client, data

    results: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    wall: dict[str, list[float]] = {k: [] for k in KINDS}
    with h.Bench("request-cost", keep=args.keep) as bench:
        assert bench.provider is not None and bench.server is not None
        key = SigningKey.generate()
        token = bench.provider.create_token(bench.pool_id, label="cost")
        import httpx

        data(httpx.post(f"{bench.server.api_url}/agents/setup",
                        json={"token": token, "agentPubkey": key.verify_key.encode().hex()}, timeout=30))
        pk = bench.provider.pubkey
        health = httpx.Client(base_url=bench.server.api_url, timeout=30)
        with agent_client(bench.server, key) as agent:
            beat = {"version": "bench", "provisionerType": "script", "activeContracts": 0,
                    "capacity": {"maxConcurrent": 1, "freeSlots": 1}}
            for _ in range(20):  # warm-up: connections, statement caches
                data(agent.post(f"/providers/{pk}/heartbeat", json=beat))
                data(agent.post(f"/providers/{pk}/contracts/claim", json={"max": 1, "waitSeconds": 0}))
                health.get("/health")

            def batch(kind: str, call) -> None:  # noqa: ANN001
                s0, p0 = server_pg_cpu(bench)
                t0 = time.perf_counter()
                for i in range(n):
                    call(i)
                wall[kind].append((time.perf_counter() - t0) / n)
                s1, p1 = server_pg_cpu(bench)
                results[kind].append(((s1 - s0) / n, (p1 - p0) / n))

            for r in range(args.rounds):
                batch("health", lambda i: health.get("/health").raise_for_status())
                batch("heartbeat", lambda i: data(agent.post(f"/providers/{pk}/heartbeat", json=beat)))
                batch("claim-empty", lambda i: data(agent.post(f"/providers/{pk}/contracts/claim",
                                                               json={"max": 1, "waitSeconds": 0, "freeSlots": 1})))
                batch("pending", lambda i: data(agent.get(f"/providers/{pk}/contracts/pending-provision")))
                claimed: list[str] = []
                bench.create_contracts(n)

                def claim_one(i: int) -> None:
                    got = data(agent.post(f"/providers/{pk}/contracts/claim",
                                          json={"max": 1, "waitSeconds": 0, "freeSlots": 1}))["contracts"]
                    assert len(got) == 1, got
                    claimed.append(got[0]["contractId"])

                batch("claim-hit", claim_one)
                details = {"externalId": "vm-1", "ipAddress": "192.0.2.1", "sshPort": 22}
                batch("provisioned", lambda i: data(agent.post(f"/providers/{pk}/contracts/{claimed[i]}/provisioned",
                                                               json={"instanceDetails": details})))
                ids, _ = bench.create_contracts(n)
                batch("lock", lambda i: data(agent.post(f"/providers/{pk}/contracts/{ids[i]}/lock")))
                for cid in ids:  # leave nothing locked for the next round
                    data(agent.post(f"/providers/{pk}/contracts/{cid}/provisioned", json={"instanceDetails": details}))
                h.say(f"round {r + 1}/{args.rounds} done, load {h.loadavg()}")
        health.close()
    print()
    rows = ["| request | server CPU | PostgreSQL CPU | together | wall time (client) |", "|---|---|---|---|---|"]
    per: dict[str, float] = {}
    for kind in KINDS:
        server = h.median(v[0] for v in results[kind]) * 1000
        pg = h.median(v[1] for v in results[kind]) * 1000
        per[kind] = server + pg
        h.figure(f"server_cpu[{kind}]", round(server, 2), "ms")
        h.figure(f"postgres_cpu[{kind}]", round(pg, 2), "ms")
        rows.append(f"| {kind} | {server:.2f} ms | {pg:.2f} ms | {server + pg:.2f} ms | "
                    f"{h.median(wall[kind]) * 1000:.2f} ms |")
    claim_floor = per["claim-hit"] + per["provisioned"]
    poll_floor = per["pending"] + per["lock"] + per["provisioned"]
    h.figure("claim_contract_floor", round(claim_floor, 2), "ms")
    h.figure("poll_contract_floor", round(poll_floor, 2), "ms")
    rows.append(f"| **per contract, claim** (claim-hit + provisioned) | | | {claim_floor:.2f} ms | |")
    rows.append(f"| **per contract, poll** (pending + lock + provisioned) | | | {poll_floor:.2f} ms | |")
    print("\n".join(rows))
    body = h.run_header(h.command_line(), started, {
        "Set-up": f"one signed agent, {n} sequential requests per kind on one keep-alive connection, "
                  f"median of {args.rounds} rounds; server and PostgreSQL CPU from /proc",
    }) + "\n\n" + "\n".join(rows)
    h.record(h.results_path(args), "request_cost", "Server CPU per request", body, None, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
