#!/usr/bin/env python3
"""Pickup latency: how long an idle pool takes to lock a new contract.

N idle `dc-agent run` processes (script provisioner) poll every P seconds. Contracts are inserted one
at a time; before each, the pool is idle again (every agent's status.json shows nothing in progress and
an empty outbox) and a random pause of 0..P seconds puts the insert at a random point of the agents'
poll cycles. Pickup = the server's `lock_at_ns` of the first lock minus the contract's `created_at_ns`
(both set by the database writers on this machine; the bench reads `lock_at_ns` every 5 ms before the
report clears it). For reference, with N agents polling at independent uniform phases the expected
mean is about P / (N + 1) plus one poll and one lock round trip.

With `--dispatch claim` (the default) the agents long-poll claim and the poll interval should not matter:
pickup is the wake-up (PostgreSQL NOTIFY at the insert's commit, the hub's re-check, one claim try). The
random pause is then 0..`--pause-max` (default 2 s: there is no poll cycle to randomise against);
with `--dispatch poll` (`serve --no-claim`) it is 0..P as before.

    python bench/pickup.py                                        # 8 agents, poll 2 s, 50 contracts
    python bench/pickup.py --poll-interval 30                     # claim: the interval should not matter
    python bench/pickup.py --poll-interval 30 --dispatch poll --contracts 20    # before claim (~6 min)
    python bench/pickup.py --quick                                # 4 agents, poll 0.5 s, 8 contracts
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench import harness as h  # noqa: E402


def lock_time(bench: h.Bench, cid: str, timeout: float) -> tuple[int | None, str]:
    """(lock_at_ns, status) as soon as the contract is locked (or provisioned), polling every 5 ms."""
    from pool_api.tables import contracts as c

    assert bench.engine is not None
    deadline = time.monotonic() + timeout
    query = sa.select(c.c.lock_at_ns, c.c.status).where(c.c.contract_id == cid)
    with bench.engine.connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query).one()
            conn.rollback()
            if row.lock_at_ns is not None or row.status == "provisioned":
                return row.lock_at_ns, row.status
            time.sleep(0.005)
    raise TimeoutError(f"contract {cid} not locked within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--contracts", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--delay", type=float, default=0.3, help="seconds the script sleeps")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--pause-max", type=float, default=None,
                        help="longest random pause before an insert (default: the poll interval with --dispatch "
                             "poll, 2 s with claim)")
    h.add_dispatch_arg(parser)
    args = parser.parse_args()
    if args.quick:
        args.agents, args.contracts, args.poll_interval = 4, 8, 0.5
    pause_max = args.pause_max if args.pause_max is not None else (
        args.poll_interval if args.dispatch == "poll" else min(2.0, args.poll_interval))
    rng = random.Random(args.seed)
    started = time.monotonic()
    pickups: list[float] = []
    missed = 0
    with h.Bench("pickup", keep=args.keep, dispatch=args.dispatch) as bench:
        fleet = bench.fleet(args.agents, script_delay=args.delay, poll_interval_seconds=args.poll_interval,
                            lock_timeout_seconds=300)
        bench.start(fleet)
        if args.dispatch == "claim":
            h.wait_for(lambda: fleet.assert_alive() or all(h.agent_claiming(a) for a in fleet.agents), 60,
                       "every agent to switch to claim", interval=0.1)
        cpu0 = h.cpu_by_component(bench, fleet)
        t_cpu0 = time.monotonic()
        for i in range(args.contracts):
            h.wait_for(lambda: fleet.assert_alive() or all(h.agent_idle(a) for a in fleet.agents), 60,
                       "the pool to be idle", interval=0.05)
            # Not a synchronisation: a random phase, so that inserts fall anywhere in the poll cycles.
            time.sleep(rng.uniform(0, pause_max))
            (cid,), _ = bench.create_contracts(1)
            created = bench.rows([cid], "created_at_ns")[cid].created_at_ns
            locked_ns, status = lock_time(bench, cid, timeout=args.poll_interval * 3 + 60)
            if locked_ns is None:  # provisioned before we saw the lock: the agent's own log has it
                missed += 1
                events = [e for a in fleet.agents for e in h.agent_events(a, {"provisioning"})
                          if e.get("contract_id") == cid]
                locked_ns = h.iso_ns(events[0]["timestamp"]) if events else None
            if locked_ns is not None:
                pickups.append((locked_ns - created) / 1e9)
            bench.wait_provisioned(fleet, [cid], timeout=60)
            if (i + 1) % 10 == 0:
                h.say(f"{i + 1}/{args.contracts}: pickup p50 so far {h.median(pickups) * 1000:.0f} ms, "
                      f"load {h.loadavg()}")
        cpu = h.cpu_delta(cpu0, h.cpu_by_component(bench, fleet))
        cpu_wall = time.monotonic() - t_cpu0
    others = max(0.0, cpu["machine"] - sum(cpu[k] for k in h.CPU_PARTS)) / cpu_wall
    p50, p95 = h.median(pickups), h.percentile(pickups, 95)
    expected = args.poll_interval / (args.agents + 1)
    print()
    h.figure("pickup_p50", round(p50 * 1000, 1), "ms")
    h.figure("pickup_p95", round(p95 * 1000, 1), "ms")
    h.figure("pickup_max", round(max(pickups) * 1000, 1), "ms")
    h.figure("poll_interval", args.poll_interval, "s")
    h.figure("agents", args.agents)
    h.figure("contracts_measured", len(pickups))
    h.figure("dispatch", args.dispatch)
    h.figure("other_cores", round(others, 2))
    line = (f"| {args.dispatch} | {args.agents} | {args.poll_interval:g} s | {len(pickups)} | {p50 * 1000:.1f} ms | "
            f"{p95 * 1000:.1f} ms | {max(pickups) * 1000:.0f} ms | "
            + (f"{expected * 1000:.0f} ms" if args.dispatch == "poll" else "—")
            + f" | {h.LOAD_AT_START} → {h.loadavg()} | {others:.2f} cores |")
    table = ("| dispatch | agents | poll interval | contracts | p50 | p95 | max | P/(N+1) | load average (start → end) "
             "| other processes (CPU) |\n|---|---|---|---|---|---|---|---|---|---|\n" + line)
    print(table)
    body = h.run_header(h.command_line(), started, {
        "Dispatch": "claim (the agents long-poll POST .../contracts/claim)" if args.dispatch == "claim" else
                    "poll (`serve --no-claim`: pending-provision + lock)",
        "Set-up": f"{args.agents} idle agents, poll interval {args.poll_interval:g} s (±10 % jitter), script "
                  f"sleeping {args.delay:g} s, one contract at a time after the pool is idle and a random "
                  f"0–{pause_max:g} s pause; creation = `created_at_ns`, lock = the server's `lock_at_ns`"
                  + (f"; {missed} lock times taken from the agent's log" if missed else ""),
    }) + "\n\n" + table
    run = f"{args.agents} agents, poll {args.poll_interval:g} s, {len(pickups)} contracts, {args.dispatch}" + \
        (" (quick)" if args.quick else "")
    summary = {}
    value = f"{p50 * 1000:.1f} ms (p95 {p95 * 1000:.1f} ms; other processes {others:.2f} cores)"
    if args.dispatch == "claim":
        summary["pickup_p50"] = {"value": value, "run": run}
    if args.poll_interval == 30 and not args.quick:
        summary["pickup_30s" if args.dispatch == "claim" else "pickup_30s_poll"] = {"value": value, "run": run}
    if args.dispatch == "claim":
        h.record(h.results_path(args), "pickup", "3. Pickup latency", body, summary or None, h.SECTION_ORDER)
    else:
        h.record(h.results_path(args), "pickup_poll", "3 (comparison). Pickup latency, poll dispatch", body,
                 summary or None, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
