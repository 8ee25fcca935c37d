#!/usr/bin/env python3
"""Makespan and lock conflicts: N `dc-agent run` processes in one pool share M contracts.

Each agent runs the example script provisioner (`examples/script-provisioner.py provision --delay D`,
plus its find command), on a real `dc-pool-api serve` with PostgreSQL. The agents are started, poll
once (idle), then M paid contracts are inserted in one transaction. Makespan = last `provisioned_at_ns`
(the server's commit of the last report) minus the insert's commit. Ideal = ceil(M / (N × max_concurrent))
× D. Repeated for each max_concurrent (the same agents, restarted with the new setting).

409s per provisioned contract come from the agents' own `lock_conflicts` counters (status.json, the
source of `dc-agent status --json`), read after each agent stopped.

Where the time goes is measured per contract from the agent's log and the script's own record:
  pickup      contract inserted → the agent logged `provisioning` (its lock answered 200)
  start       `provisioning` → the script recorded `start` (find command, then the provision script's start-up)
  script      `start` → `done` (the 1 s sleep and the script's own work)
  report      `done` → the agent logged `provisioned` (script exit, JSON parse, outbox fsync, POST provisioned)
  next        an agent's `provisioned` → its next `provisioning` (poll pending-provision + lock)

`--dispatch claim` (the default) lets the server advertise claim, so the agents long-poll
`POST .../contracts/claim`; `--dispatch poll` starts `serve --no-claim`: the agents poll pending-provision and
lock one by one (dispatch before claim existed), for the before/after comparison.

    python bench/makespan.py                 # 20 agents, 400 contracts, 1 s, max_concurrent 1, 2, 4
    python bench/makespan.py --script sh --max-concurrent 1,4       # CPU per contract, ratios, 409s at 4 slots
    python bench/makespan.py --quick         # 4 agents, 20 contracts, max_concurrent 1, 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402


def breakdown(fleet: h.Fleet, ids: list[str], t0_ns: int) -> dict[str, list[float]]:
    """Per-contract stage durations (seconds) from the agents' logs and the script's record."""
    wanted = set(ids)
    locked: dict[str, tuple[str, int]] = {}
    acked: dict[str, tuple[str, int]] = {}
    per_agent: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for agent in fleet.agents:
        for event in h.agent_events(agent, {"provisioning", "provisioned"}):
            cid = event.get("contract_id")
            if cid not in wanted:
                continue
            ts = h.iso_ns(event["timestamp"])
            if event["event"] == "provisioning":
                locked[cid] = (agent.name, ts)
            else:
                acked[cid] = (agent.name, ts)
            per_agent[agent.name].append((ts, event["event"], cid))
    start: dict[str, int] = {}
    done: dict[str, int] = {}
    for call in fleet.script_calls():
        if call["action"] != "provision" or call["contract"] not in wanted:
            continue
        if call["phase"] == "start":
            start[call["contract"]] = int(call["ts"])
        elif call["phase"] == "done":
            done[call["contract"]] = int(call["ts"])
    stages: dict[str, list[float]] = defaultdict(list)
    for cid in ids:
        if cid in locked:
            stages["pickup (first contract of each agent)"]  # keep the key order
        if cid in locked and cid in start:
            stages["lock → script start (find + spawn)"].append((start[cid] - locked[cid][1]) / 1e9)
        if cid in start and cid in done:
            stages["script start → done"].append((done[cid] - start[cid]) / 1e9)
        if cid in done and cid in acked:
            stages["script done → report acknowledged"].append((acked[cid][1] - done[cid]) / 1e9)
    for name, events in per_agent.items():
        events.sort()
        firsts = [e for e in events if e[1] == "provisioning"]
        if firsts:
            stages["pickup (first contract of each agent)"].append((firsts[0][0] - t0_ns) / 1e9)
        for prev, nxt in zip(events, events[1:]):
            if prev[1] == "provisioned" and nxt[1] == "provisioning":
                stages["report acknowledged → next lock (poll + lock)"].append((nxt[0] - prev[0]) / 1e9)
    return stages


def find_wall_ms(fleet: h.Fleet, runs: int = 11) -> float:
    """Median wall time of the example's `find` run alone (a Python start-up + reading one file)."""
    import json
    import subprocess

    argv = fleet.script_settings("probe")["find_command"]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, input=json.dumps({"contractId": "probe"}).encode(), capture_output=True, timeout=60,
                       check=True)
        times.append((time.perf_counter() - t) * 1000)
    return h.median(times)


def run_once(bench: h.Bench, fleet: h.Fleet, n_contracts: int, delay: float, mc: int) -> dict:
    for agent in fleet.agents:
        h.set_agent_options(agent, max_concurrent=mc)
    h.say(f"max_concurrent {mc}: starting {len(fleet.agents)} agents")
    bench.start(fleet)
    if bench.dispatch == "claim":  # every agent's heartbeat answered claim: true and it long-polls now
        h.wait_for(lambda: fleet.assert_alive() or all(h.agent_claiming(a) for a in fleet.agents), 60,
                   "every agent to switch to claim", interval=0.1)
    load0 = h.loadavg()
    cpu0 = h.cpu_by_component(bench, fleet)
    ids, t0 = bench.create_contracts(n_contracts)
    ideal = math.ceil(n_contracts / (len(fleet.agents) * mc)) * delay
    h.say(f"{n_contracts} contracts inserted; ideal makespan {ideal:.1f} s")
    bench.wait_provisioned(fleet, ids, timeout=max(120.0, ideal * 10))
    cpu = h.cpu_delta(cpu0, h.cpu_by_component(bench, fleet))
    wall = (time.time_ns() - t0) / 1e9
    rows = bench.rows(ids, "provisioned_at_ns", "provisioned_by", "created_at_ns")
    makespan = (max(r.provisioned_at_ns for r in rows.values()) - t0) / 1e9
    # stop them (the final status.json is written at exit) and read their own counters
    bench.stop_fleet(fleet)
    counters: Counter[str] = Counter()
    for agent in fleet.agents:
        counters.update(agent.counters())
    calls = [c for c in fleet.script_calls() if c["action"] == "provision" and c["contract"] in set(ids)]
    done = Counter(c["contract"] for c in calls if c["phase"] == "done")
    per_agent = Counter(r.provisioned_by for r in rows.values())
    stages = breakdown(fleet, ids, t0)
    return {
        "mc": mc, "makespan": makespan, "ideal": ideal, "ratio": makespan / ideal,
        "conflicts": counters.get("lock_conflicts", 0), "provisioned": counters.get("provisioned", 0),
        "polls": counters.get("polls", 0), "locks": counters.get("locks_acquired", 0),
        "doubles": sum(1 for c in ids if done[c] > 1), "per_agent_min": min(per_agent.values()),
        "per_agent_max": max(per_agent.values()), "agents_used": len(per_agent), "stages": stages,
        "cpu": cpu, "cpu_wall": wall, "load": (load0, h.loadavg()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--contracts", type=int, default=400)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the script sleeps")
    parser.add_argument("--max-concurrent", default="1,2,4", help="comma-separated values, one run each")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    h.add_dispatch_arg(parser)
    parser.add_argument("--script", choices=["example", "sh"], default="example",
                        help="example: examples/script-provisioner.py (Python, the default); sh: "
                             "bench/sh-provisioner.sh, the same record without a Python start-up per call")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.contracts, args.max_concurrent = 4, 20, "1,2"
    levels = [int(v) for v in args.max_concurrent.split(",")]
    started = time.monotonic()
    results = []
    with h.Bench("makespan", keep=args.keep, dispatch=args.dispatch) as bench:
        fleet = bench.fleet(args.agents, script_delay=args.delay, poll_interval_seconds=args.poll_interval,
                            lock_timeout_seconds=300)
        if args.script == "sh":
            sh = str(h.REPO / "bench" / "sh-provisioner.sh")
            for agent in fleet.agents:
                h.set_script_options(agent, command=[sh, "provision", str(fleet.vms), str(fleet.calls), str(args.delay)],
                                     find_command=[sh, "find", str(fleet.vms), str(fleet.calls), str(args.delay)])
        for mc in levels:
            results.append(run_once(bench, fleet, args.contracts, args.delay, mc))
            r = results[-1]
            h.say(f"max_concurrent {mc}: makespan {r['makespan']:.2f} s, ideal {r['ideal']:.1f} s, "
                  f"ratio {r['ratio']:.3f}, 409s {r['conflicts']} ({r['conflicts'] / max(1, r['provisioned']):.3f}"
                  f"/contract), per agent {r['per_agent_min']}–{r['per_agent_max']}, load {h.loadavg()}, other "
                  f"processes {max(0.0, r['cpu']['machine'] - sum(r['cpu'][k] for k in h.CPU_PARTS)) / r['cpu_wall']:.2f}"
                  " cores")
        find_ms = find_wall_ms(fleet) if args.script == "example" else float("nan")
    print()
    h.figure("dispatch", args.dispatch)
    if args.script == "example":
        h.figure("find_command_alone", round(find_ms, 1), "ms")
    table = ["| max_concurrent | makespan | ideal | ratio | 409s | 409 / contract | polls | contracts per agent | "
             "double runs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        per = r["conflicts"] / max(1, r["provisioned"])
        h.figure(f"makespan_mc{r['mc']}", round(r["makespan"], 2), "s")
        h.figure(f"ideal_mc{r['mc']}", round(r["ideal"], 2), "s")
        h.figure(f"makespan_ratio_mc{r['mc']}", round(r["ratio"], 3))
        h.figure(f"conflicts_per_contract_mc{r['mc']}", round(per, 3))
        table.append(f"| {r['mc']} | {r['makespan']:.2f} s | {r['ideal']:.1f} s | {r['ratio']:.3f} | "
                     f"{r['conflicts']} | {per:.3f} | {r['polls']} | {r['per_agent_min']}–{r['per_agent_max']} | "
                     f"{r['doubles']} |")
    stage_lines = ["| stage (max_concurrent " + str(results[0]["mc"]) + ") | n | p50 | p95 | max |",
                   "|---|---|---|---|---|"]
    for name, values in results[0]["stages"].items():
        if not values:
            continue
        stage_lines.append(f"| {name} | {len(values)} | {h.median(values) * 1000:.0f} ms | "
                           f"{h.percentile(values, 95) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |")
    for name, values in results[0]["stages"].items():
        if values:
            key = name.split(" (")[0].replace(" → ", "_to_").replace(" ", "_")
            h.figure(f"stage_p50[{key}]", round(h.median(values) * 1000), "ms")
    cpu_lines = ["| max_concurrent | CPU used by the benchmark's processes | agents | scripts (find + provision) | "
                 "dc-pool-api | PostgreSQL | per contract | agents + server + PostgreSQL per contract | "
                 "other processes of the machine | load average at start → end |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
    parts = h.CPU_PARTS
    for r in results:
        c, n = r["cpu"], args.contracts
        total = sum(c[k] for k in parts)
        own = c["agents"] + c["server"] + c["postgres"]
        others = max(0.0, c["machine"] - total)
        cpu_lines.append(f"| {r['mc']} | {total:.1f} s in {r['cpu_wall']:.1f} s ({total / r['cpu_wall']:.2f} cores) | "
                         + " | ".join(f"{c[k]:.1f} s ({1000 * c[k] / n:.1f} ms/contract)" for k in parts)
                         + f" | {1000 * total / n:.1f} ms | {1000 * own / n:.1f} ms | {others:.1f} s "
                           f"({others / r['cpu_wall']:.2f} cores) | {r['load'][0]} → {r['load'][1]} |")
        h.figure(f"other_cores_mc{r['mc']}", round(others / r["cpu_wall"], 2))
        h.figure(f"cpu_per_contract_mc{r['mc']}", round(1000 * total / n, 1), "ms")
        h.figure(f"cpu_own_per_contract_mc{r['mc']}", round(1000 * own / n, 1), "ms")
        for k in parts:
            h.figure(f"cpu_{k}_per_contract_mc{r['mc']}", round(1000 * c[k] / n, 1), "ms")
    print("\n".join(table))
    print()
    print("\n".join(stage_lines))
    print()
    print("\n".join(cpu_lines))
    first = results[0]
    summary: dict = {}
    if first["mc"] == 1 and args.script == "example" and args.dispatch == "claim":
        run = f"{args.agents} agents, {args.contracts} contracts{' (quick)' if args.quick else ''}"
        summary = {"makespan_ratio": {"value": f"{first['ratio']:.3f} ({first['makespan']:.2f} s / "
                                               f"{first['ideal']:.0f} s)", "run": run},
                   "conflicts_per_contract": {"value": f"{first['conflicts'] / max(1, first['provisioned']):.3f}",
                                              "run": run}}
    by_mc = {r["mc"]: r for r in results}
    if args.script == "sh" and args.dispatch == "claim":
        run = f"{args.agents} agents, {args.contracts} contracts, sh script{' (quick)' if args.quick else ''}"
        if 1 in by_mc:
            r = by_mc[1]
            own = 1000 * (r["cpu"]["agents"] + r["cpu"]["server"] + r["cpu"]["postgres"]) / args.contracts
            summary["cpu_per_contract_sh"] = {
                "value": f"{own:.1f} ms (agents {1000 * r['cpu']['agents'] / args.contracts:.1f}, server "
                         f"{1000 * r['cpu']['server'] / args.contracts:.1f}, PostgreSQL "
                         f"{1000 * r['cpu']['postgres'] / args.contracts:.1f}; load {r['load'][0].split()[0]})",
                "run": run + ", max_concurrent 1"}
        ratios = [f"{by_mc[mc]['ratio']:.3f} (mc {mc})" for mc in (1, 4) if mc in by_mc]
        if ratios:
            summary["makespan_ratio_sh"] = {"value": " / ".join(ratios), "run": run}
        if 4 in by_mc:
            r = by_mc[4]
            summary["conflicts_mc4"] = {"value": f"{r['conflicts'] / max(1, r['provisioned']):.3f} "
                                                 f"({r['conflicts']} 409s)", "run": run + ", max_concurrent 4"}
    body = h.run_header(h.command_line(), started, {
        "Dispatch": "claim (the agents long-poll POST .../contracts/claim)" if args.dispatch == "claim" else
                    "poll (`serve --no-claim`: pending-provision + lock)",
        "Set-up": f"{args.agents} `dc-agent run` processes in one pool, {args.contracts} contracts per run, "
                  + ("`examples/script-provisioner.py`" if args.script == "example" else "`bench/sh-provisioner.sh`")
                  + f" sleeping {args.delay:g} s (with find), poll interval "
                            f"{args.poll_interval:g} s, lock TTL 300 s, PostgreSQL",
    }) + "\n\n" + "\n".join(table) + "\n\nWhere the time of one contract goes (medians over all contracts of the " \
        "first run; from the agents' logs and the script's record):\n\n" + "\n".join(stage_lines) + \
        (f"\n\nThe example's `find` command run alone (idle pool, median of 11): {find_ms:.0f} ms."
         if args.script == "example" else "") + "\n\n" + \
        "CPU time by component from the insert to the last report (/proc: the agents, the scripts they " \
        "waited for, the server, the PostgreSQL postmaster and backends; the machine's total from /proc/stat, " \
        "so 'other processes' is what competed with the benchmark; the machine has " + str(os.cpu_count()) + \
        " cores):\n\n" + "\n".join(cpu_lines)
    poll = args.dispatch == "poll"
    if args.script == "example":
        h.record(h.results_path(args), "makespan_poll" if poll else "makespan",
                 "1–2. Makespan and 409s per contract" + (" (poll dispatch, for comparison)" if poll else ""),
                 body, summary, h.SECTION_ORDER)
    else:
        h.record(h.results_path(args), "makespan_sh_poll" if poll else "makespan_sh",
                 "1–2 (diagnostic). Makespan with a POSIX-sh script" + (" (poll dispatch, for comparison)"
                                                                        if poll else ""),
                 body, summary, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
