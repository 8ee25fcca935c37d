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

`--compare DIR` also starts a second `dc-pool-api serve` on the same database from another copy of the code
(`PYTHONPATH=DIR`, e.g. `git archive <commit> | tar -x -C DIR`) and runs the rounds alternately against
both, so that a change is measured against its parent under the same load.

    python bench/request_cost.py            # 300 requests per kind, 3 rounds
    python bench/request_cost.py --compare /tmp/base     # this checkout against the code in /tmp/base
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--requests", type=int, default=300, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, default=None,
                        help="a directory with another copy of the code to run a second server from")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 30, 1
    n = args.requests
    started = time.monotonic()
    from tests.support.provider import agent_client, data

    labels = ["this checkout"] + ([str(args.compare)] if args.compare else [])
    results = {label: {k: [] for k in KINDS} for label in labels}
    wall = {label: {k: [] for k in KINDS} for label in labels}
    with h.Bench("request-cost", keep=args.keep) as bench:
        assert bench.provider is not None and bench.server is not None and bench.cluster is not None
        servers = {labels[0]: bench.server}
        if args.compare:
            other = h.PoolServer(bench.server.database_url, log_dir=bench.base / "server-compare",
                                 env={"PYTHONPATH": str(args.compare.resolve())}, **bench.serve_options)
            (bench.base / "server-compare").mkdir(exist_ok=True)
            bench.servers.append(other)  # stopped with the bench
            other.start()
            servers[labels[1]] = other
        key = SigningKey.generate()
        token = bench.provider.create_token(bench.pool_id, label="cost")
        import httpx

        data(httpx.post(f"{bench.server.api_url}/agents/setup",
                        json={"token": token, "agentPubkey": key.verify_key.encode().hex()}, timeout=30))
        pk = bench.provider.pubkey
        beat = {"version": "bench", "provisionerType": "script", "activeContracts": 0,
                "capacity": {"maxConcurrent": 1, "freeSlots": 1}}
        details = {"externalId": "vm-1", "ipAddress": "192.0.2.1", "sshPort": 22}
        clients = {label: (agent_client(server, key), httpx.Client(base_url=server.api_url, timeout=30))
                   for label, server in servers.items()}

        def server_pg_cpu(server: h.PoolServer) -> tuple[float, float]:
            assert server.proc is not None
            return sum(h.proc_cpu_seconds(server.proc.pid)), h.cpu_by_component(bench, None)["postgres"]

        for label, (agent, health) in clients.items():
            for _ in range(20):  # warm-up: connections, statement caches
                data(agent.post(f"/providers/{pk}/heartbeat", json=beat))
                data(agent.post(f"/providers/{pk}/contracts/claim", json={"max": 1, "waitSeconds": 0}))
                health.get("/health")
        for r in range(args.rounds):
            order = list(clients.items())
            if r % 2:
                order.reverse()  # which server goes first alternates too (the first of a pair measured slower)
            for label, (agent, health) in order:
                server = servers[label]

                def batch(kind: str, call) -> None:  # noqa: ANN001
                    s0, p0 = server_pg_cpu(server)
                    t0 = time.perf_counter()
                    for i in range(n):
                        call(i)
                    wall[label][kind].append((time.perf_counter() - t0) / n)
                    s1, p1 = server_pg_cpu(server)
                    results[label][kind].append(((s1 - s0) / n, (p1 - p0) / n))

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
                batch("provisioned", lambda i: data(agent.post(f"/providers/{pk}/contracts/{claimed[i]}/provisioned",
                                                               json={"instanceDetails": details})))
                ids, _ = bench.create_contracts(n)
                batch("lock", lambda i: data(agent.post(f"/providers/{pk}/contracts/{ids[i]}/lock")))
                for cid in ids:  # leave nothing locked for the next round
                    data(agent.post(f"/providers/{pk}/contracts/{cid}/provisioned", json={"instanceDetails": details}))
            h.say(f"round {r + 1}/{args.rounds} done, load {h.loadavg()}")
        for agent, health in clients.values():
            agent.close()
            health.close()
    print()
    head = "| request | " + " | ".join(f"server CPU ({label}) | PostgreSQL CPU ({label}) | together ({label})"
                                     for label in labels) + " | wall time (client, this checkout) |"
    rows = [head, "|---|" + "---|---|---|" * len(labels) + "---|"]
    per: dict[str, dict[str, float]] = {label: {} for label in labels}
    for kind in KINDS:
        cells = []
        for j, label in enumerate(labels):
            server = h.median(v[0] for v in results[label][kind]) * 1000
            pg = h.median(v[1] for v in results[label][kind]) * 1000
            per[label][kind] = server + pg
            suffix = "" if j == 0 else "_compare"
            h.figure(f"server_cpu{suffix}[{kind}]", round(server, 2), "ms")
            h.figure(f"postgres_cpu{suffix}[{kind}]", round(pg, 2), "ms")
            cells.append(f"{server:.2f} ms | {pg:.2f} ms | {server + pg:.2f} ms")
        rows.append(f"| {kind} | " + " | ".join(cells) + f" | {h.median(wall[labels[0]][kind]) * 1000:.2f} ms |")
    for j, label in enumerate(labels):
        suffix = "" if j == 0 else "_compare"
        h.figure(f"claim_contract_floor{suffix}", round(per[label]["claim-hit"] + per[label]["provisioned"], 2), "ms")
        h.figure(f"poll_contract_floor{suffix}", round(per[label]["pending"] + per[label]["lock"]
                                                       + per[label]["provisioned"], 2), "ms")
    rows.append("| **per contract, claim** (claim-hit + provisioned) | " + " | ".join(
        f"| | {per[label]['claim-hit'] + per[label]['provisioned']:.2f} ms" for label in labels) + " | |")
    rows.append("| **per contract, poll** (pending + lock + provisioned) | " + " | ".join(
        f"| | {per[label]['pending'] + per[label]['lock'] + per[label]['provisioned']:.2f} ms" for label in labels)
        + " | |")
    print("\n".join(rows))
    body = h.run_header(h.command_line(), started, {
        "Set-up": f"one signed agent, {n} sequential requests per kind on one keep-alive connection, "
                  f"median of {args.rounds} rounds; server and PostgreSQL CPU from /proc"
                  + (f"; rounds alternate with a second server running the code in `{args.compare}`"
                     if args.compare else ""),
    }) + "\n\n" + "\n".join(rows)
    h.record(h.results_path(args), "request_cost", "Server CPU per request", body, None, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
