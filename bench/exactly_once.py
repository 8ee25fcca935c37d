#!/usr/bin/env python3
"""Exactly-once under faults: many contracts, several agents, and all three faults in one run.

Faults (each can be switched off with --faults):
  kill    every K seconds one agent (preferably one whose script is running) is SIGKILLed and started
          again at once; its orphaned script keeps running until the new process stops it
  outage  when a third of the contracts are provisioned, `dc-pool-api serve` is stopped for S seconds
          (SIGTERM), then started again on the same port and database
  slow    the server's lock TTL is short (2 s; the agents renew every TTL/3) and the script sleeps longer
          than the TTL (3 s), so every contract lives on renewals

Counted at the end, from the database and from the script's own record (`examples/script-provisioner.py
--log`: one line per start/done/terminate, O_APPEND under flock, shared by all agents):
  double provisions   contracts whose provision script succeeded (recorded `done`) twice or more
                      (also: how many of those still had two instances, i.e. no clean-up `terminate`)
  lost contracts      contracts not `provisioned` in the database at the end; also provisioned ones with
                      no successful script run in the record, and provisioned ones whose instance file is
                      gone (removed by a clean-up after another agent reported it)

With `--dispatch claim` (the default) the agents long-poll claim; `--dispatch poll` is pending + lock.
`--replicas 2` starts two `dc-pool-api serve` processes on the one database and spreads the agents over
them round robin (the outage then stops both).

    python bench/exactly_once.py            # 2,000 contracts, 8 agents, max_concurrent 4, kill every 5 s, 60 s outage
    python bench/exactly_once.py --agents 16 --replicas 2   # claim races across two replicas
    python bench/exactly_once.py --quick    # 60 contracts, 4 agents, kill every 3 s, 5 s outage
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402

EVENTS = {
    "stopped a provisioning run left by a previous agent process; the contract will be adopted or provisioned again":
        "orphan runs stopped at restart",
    "adopted an instance made before a restart": "adopted (find) instead of provisioning",
    "lease refused by the server; stopping this contract": "lease refused while provisioning",
    "lease lost after the instance was made; asking the server whether it stays":
        "lease lost after the instance was made (server decides)",
    "lease expired without a successful renewal; stopping this contract, another agent may take it now":
        "lease expired while renewals failed, run stopped",
    "lease lost; provisioning stopped and cleaned up; nothing reported": "lease lost, run stopped",
    "another agent took this contract while the report waited; asking the server whether our instance stays":
        "report too late: another agent had it (server decides)",
    "instance kept: the server records it for this contract, or another agent is still provisioning the contract":
        "late instance kept (recorded for the contract, or contract still open)",
    "report not delivered; kept in the outbox and resent": "reports kept in the outbox for a resend",
    "lease renewal failed; still ours until the lease expires": "renewals failed on the network",
    "provisioning failed; reported": "failures reported",
    "provisioned": "provisioned reports acknowledged",
    "terminated": "instances terminated by reconcile",
    "reconcile: terminated, but the report failed (resent next reconcile)": "instances terminated by reconcile",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--contracts", type=int, default=2000)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--faults", default="kill,outage,slow")
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--lock-ttl", type=int, default=2, help="server lock TTL with the slow fault (seconds)")
    parser.add_argument("--delay", type=float, default=3.0, help="script sleep with the slow fault (seconds)")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--replicas", type=int, default=1, help="dc-pool-api serve processes on the one database")
    h.add_dispatch_arg(parser)
    args = parser.parse_args()
    if args.quick:
        args.agents, args.contracts, args.kill_every, args.outage = 4, 60, 3.0, 5.0
    faults = {f for f in args.faults.split(",") if f}
    unknown = faults - {"kill", "outage", "slow"}
    if unknown:
        parser.error(f"--faults: unknown {sorted(unknown)}")
    ttl = args.lock_ttl if "slow" in faults else 300
    delay = args.delay if "slow" in faults else 0.5
    rng = random.Random(args.seed)
    started = time.monotonic()
    kills, killed_mid_run = 0, 0
    kill_log: list[tuple[h.AgentProc, int]] = []
    outage_at = outage_end = None
    with h.Bench("exactly-once", keep=args.keep, lock_ttl_seconds=ttl, heartbeat_seconds=5, dispatch=args.dispatch,
                 replicas=args.replicas) as bench:
        assert bench.server is not None
        fleet = bench.fleet(args.agents, script_delay=delay, poll_interval_seconds=args.poll_interval,
                            lock_timeout_seconds=ttl, max_concurrent=args.max_concurrent, shutdown_grace_seconds=30)
        bench.start(fleet)
        ids, t0 = bench.create_contracts(args.contracts)
        h.say(f"{len(ids)} contracts, {args.agents} agents × {args.max_concurrent}, faults {sorted(faults)}, "
              f"lock TTL {ttl} s, script {delay:g} s")
        slots = args.agents * args.max_concurrent
        expected = (len(ids) / slots) * (delay + 0.5) + (args.outage if "outage" in faults else 0)
        deadline = time.monotonic() + expected * 4 + 300
        next_kill = time.monotonic() + args.kill_every
        last_report = 0.0
        done = 0
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{done}/{len(ids)} provisioned after {now - started:.0f} s")
            fleet.assert_alive()
            if "kill" in faults and now >= next_kill:
                busy = [a for a in fleet.agents if fleet.running_scripts(a.name)]
                victim = rng.choice(busy or fleet.agents)
                killed_mid_run += bool(busy)
                kill_ns = time.time_ns()
                victim.kill()
                victim.start()
                kill_log.append((victim, kill_ns))
                kills += 1
                next_kill = now + args.kill_every
            if "outage" in faults and outage_at is None and done >= len(ids) // 3:
                for replica in bench.servers:
                    replica.stop()
                outage_at = time.monotonic()
                h.say(f"pool_api stopped at {done}/{len(ids)} provisioned")
            if outage_at is not None and outage_end is None and now - outage_at >= args.outage:
                for replica in bench.servers:
                    replica.start()
                outage_end = time.monotonic()
                h.say(f"pool_api started again after {outage_end - outage_at:.1f} s")
            done = bench.count_provisioned(ids)
            if done == len(ids) and ("outage" not in faults or outage_end is not None):
                break
            if now - last_report > 15:
                h.say(f"{done}/{len(ids)} provisioned, {kills} kills, load {h.loadavg()}")
                last_report = now
            time.sleep(0.25)
        makespan = (time.time_ns() - t0) / 1e9
        h.say(f"all {len(ids)} provisioned after {makespan:.0f} s; letting the outboxes drain")
        h.wait_for(lambda: all(a.outbox_backlog() == 0 for a in fleet.agents), 120, "the outboxes to drain", 0.25)
        bench.stop_fleet(fleet)
        rows = bench.rows(ids, "status", "instance_details", "provisioned_by")
        calls = fleet.script_calls()
        instance_files = {}
        for path in fleet.vms.glob("*.json"):
            data = json.loads(path.read_text())
            instance_files.setdefault(data["contractId"], []).append(data)
        events: Counter[str] = Counter()
        for agent in fleet.agents:
            for event in h.agent_events(agent, set(EVENTS)):
                events[EVENTS[event["event"]]] += 1
        # SIGKILL -> the new process logged "agent started" (after it stopped its predecessor's scripts)
        restart_s = []
        for victim, kill_ns in kill_log:
            starts_after = [h.iso_ns(e["timestamp"]) for e in h.agent_events(victim, {"agent started"})
                            if h.iso_ns(e["timestamp"]) > kill_ns]
            if starts_after:
                restart_s.append((min(starts_after) - kill_ns) / 1e9)
    wanted = set(ids)
    starts = Counter(c["contract"] for c in calls if c["action"] == "provision" and c["phase"] == "start")
    dones = Counter(c["contract"] for c in calls if c["action"] == "provision" and c["phase"] == "done")
    terminated = Counter(c["contract"] for c in calls if c["action"] == "terminate")
    provisioned = [c for c in ids if rows[c].status == "provisioned"]
    doubles = [c for c in ids if dones[c] >= 2]
    doubles_net = [c for c in ids if dones[c] - terminated[c] >= 2]
    lost_db = len(ids) - len(provisioned)
    lost_script = [c for c in provisioned if dones[c] == 0]
    missing_instance = [c for c in provisioned if c not in instance_files]
    wrong_details = [c for c in provisioned
                     if not (rows[c].instance_details or {}).get("externalId", "").startswith(f"demo-{c}@")]
    assert all(c in wanted for c in instance_files), "instance files of unknown contracts"
    print()
    h.figure("double_provisions", len(doubles))
    h.figure("double_instances_left", len(doubles_net))
    h.figure("lost_contracts", lost_db)
    h.figure("provisioned_without_script_success", len(lost_script))
    h.figure("provisioned_without_instance", len(missing_instance))
    h.figure("kills", kills)
    if restart_s:
        h.figure("kill_to_restarted_p50", round(h.median(restart_s), 2), "s")
        h.figure("kill_to_restarted_max", round(max(restart_s), 2), "s")
    h.figure("script_runs_started", sum(starts[c] for c in ids))
    h.figure("makespan", round(makespan, 1), "s")
    h.figure("dispatch", args.dispatch)
    h.figure("replicas", args.replicas)
    rows_md = [
        "| dispatch | replicas | contracts | agents × max_concurrent | faults | kills (mid-run) | outage | double provisions "
        "(two instances left) | lost (DB) | provisioned without a successful run | provisioned without an "
        "instance | wrong details | script runs started | makespan |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.dispatch} | {args.replicas} | {len(ids):,} | {args.agents} × {args.max_concurrent} | {', '.join(sorted(faults))} | {kills} "
        f"({killed_mid_run}) | {(outage_end - outage_at) if outage_at and outage_end else 0:.0f} s | "
        f"{len(doubles)} ({len(doubles_net)}) | {lost_db} | {len(lost_script)} | {len(missing_instance)} | "
        f"{len(wrong_details)} | {sum(starts[c] for c in ids):,} | {makespan:.0f} s |",
    ]
    event_lines = ["| agent log event (all processes, all restarts) | count |", "|---|---|"]
    event_lines += [f"| {name} | {events.get(name, 0)} |" for name in dict.fromkeys(EVENTS.values())]
    if restart_s:
        event_lines.append(f"| SIGKILL → restarted agent logged `agent started` (orphans stopped): p50 / max | "
                           f"{h.median(restart_s):.2f} s / {max(restart_s):.2f} s |")
    print("\n".join(rows_md))
    print("\n".join(event_lines))
    if doubles:
        print("double provisions:", ", ".join(doubles[:20]))
    if missing_instance:
        print("provisioned without an instance:", ", ".join(missing_instance[:20]))
    body = h.run_header(h.command_line(), started, {
        "Dispatch": f"{args.dispatch}, {args.replicas} replica(s) of `dc-pool-api serve` on one PostgreSQL",
        "Set-up": f"{args.agents} agents, max_concurrent {args.max_concurrent}, poll {args.poll_interval:g} s; "
                  f"lock TTL {ttl} s (renewed every {ttl / 3:.2f} s); script {delay:g} s; "
                  + (f"SIGKILL + immediate restart every {args.kill_every:g} s; " if "kill" in faults else "")
                  + (f"pool_api stopped for {args.outage:g} s at a third of the run" if "outage" in faults else ""),
    }) + "\n\n" + "\n".join(rows_md) + "\n\n" + "\n".join(event_lines)
    if doubles:
        body += "\n\nDouble provisions (first 20): " + ", ".join(f"`{c}`" for c in doubles[:20])
    if missing_instance:
        body += "\n\nProvisioned without an instance (first 20): " + ", ".join(f"`{c}`" for c in missing_instance[:20])
    run = f"{len(ids):,} contracts, {args.agents} agents, faults {'+'.join(sorted(faults))}" + \
        (" (quick)" if args.quick else "")
    h.record(h.results_path(args), "exactly_once", "6. Exactly-once under faults", body, {
        "double_provisions": {"value": f"{len(doubles)} (contracts whose script succeeded twice)", "run": run},
        "lost_contracts": {"value": f"{lost_db} (provisioned without an instance: {len(missing_instance)})",
                           "run": run},
    }, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
