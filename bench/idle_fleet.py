#!/usr/bin/env python3
"""An idle fleet: 1,000 simulated agents long-polling one `dc-pool-api serve`, its CPU and memory while they
wait, and the pickup of contracts created meanwhile.

The agents are light async clients in this one process (not 1,000 processes): raw HTTP/1.1 on asyncio
streams, one keep-alive connection for the claims and one for the heartbeats of each agent; each agent has its
own Ed25519 key and signs every request with `dc_agent.signing.sign_headers`, as `dc-agent run` does, and
behaves as
an idle agent with one free slot and claim dispatch does:

  claim      POST .../contracts/claim {max 1, waitSeconds W, freeSlots 1} in a loop (W = 25 s, the agent's
             default: min(25, request timeout 30 - 5)); a claim that got a contract reports it
             provisioned at once (POST .../provisioned) and claims again
  heartbeat  POST .../heartbeat every `nextHeartbeatSeconds` of the server's answer (30 s by default)

Their first claim and heartbeat are spread over the first W and interval seconds (agents start at different
times). The agents are registered through pool_api's own functions in-process (`tokens.create_token`
+ `agents.setup`, the code behind `POST /agents/setup`, in batches of 100 per transaction): no
1,000 HTTP setups. After a warm-up of max(W, heartbeat interval) seconds the window starts:

  replica CPU   utime + stime of the serve process over the window (/proc/PID/stat), % of one core
  memory        VmRSS at the end of the window and VmHWM (/proc/PID/status), threads, open file descriptors
  pickup        for `--contracts` contracts created one at a time at random moments of the window: the
                claim answer's lockedAtNs minus the contract's createdAtNs (both the server's clock)
  waiting       the `dc_pool_claims_waiting` gauge of /metrics at the end (how many claims were parked)

RLIMIT_NOFILE of this process (and so of the server it starts) is raised first. Loopback only.

    python bench/idle_fleet.py            # 1,000 agents, 60 s window, 20 contracts (~2.5 min)
    python bench/idle_fleet.py --quick    # 50 agents, claim wait 3 s, heartbeat 5 s, 8 s window, 3 contracts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402

IDLE_REUSE_SECONDS = 4.0
DETAILS = {"externalId": "idle-fleet", "ipAddress": "192.0.2.1", "sshPort": 22}


def register(bench: h.Bench, keys: list, batch: int = 100) -> None:
    """One delegation per key in the bench pool, through pool_api's own token + setup functions."""
    import sqlalchemy as sa

    from pool_api import agents, tokens
    from pool_api.tables import agent_pools

    assert bench.engine is not None
    for start in range(0, len(keys), batch):
        with bench.engine.begin() as conn:
            pool = conn.execute(sa.select(agent_pools).where(agent_pools.c.pool_id == bench.pool_id)).one()
            for i, key in enumerate(keys[start:start + batch], start):
                token, _ = tokens.create_token(conn, pool, f"sim{i:04d}", 1)
                agents.setup(conn, token, key.verify_key.encode().hex())


class Connection:
    """One keep-alive HTTP/1.1 connection to the server, raw asyncio streams (an httpx pool of 1,000+
    connections spends its CPU scanning the pool on every request, which this process cannot afford)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.idle_since = 0.0

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes,
                      timeout: float) -> tuple[int, bytes]:
        if self.writer is not None and time.monotonic() - self.idle_since > IDLE_REUSE_SECONDS:
            self.close()  # uvicorn closes keep-alive connections idle for 5 s (httpx reconnects, so do we)
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)
        assert self.reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        try:
            answer = await asyncio.wait_for(self._response(), timeout)
        except BaseException:
            self.close()
            raise
        self.idle_since = time.monotonic()
        return answer

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Fleet:
    """The simulated agents and what they saw."""

    def __init__(self, server_url: str, provider_pubkey: str, claim_wait: float) -> None:
        from urllib.parse import urlsplit

        url = urlsplit(server_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.pk = provider_pubkey
        self.claim_wait = claim_wait
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.pickups: list[float] = []
        self.stop = asyncio.Event()

    async def call(self, conn: Connection, key, method: str, path: str, body: dict | None) -> dict | None:  # noqa: ANN001
        from dc_agent.signing import sign_headers

        full = f"/api/v1/providers/{self.pk}{path}"
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = sign_headers(key, "agent", method, full, content)
        headers["Content-Type"] = "application/json"
        try:
            status, raw = await conn.request(method, full, headers, content, self.claim_wait + 30)
        except Exception as exc:  # noqa: BLE001 - counted and shown, the agent carries on like a real one
            self.errors[type(exc).__name__] += 1
            return None
        if status != 200:
            self.errors[f"HTTP {status} {path.split('/')[-1]}"] += 1
            return None
        return json.loads(raw).get("data")

    async def claimer(self, key) -> None:  # noqa: ANN001
        conn = Connection(self.host, self.port)
        await asyncio.sleep(random.uniform(0, self.claim_wait))
        while not self.stop.is_set():
            data = await self.call(conn, key, "POST", "/contracts/claim",
                                   {"max": 1, "waitSeconds": self.claim_wait, "freeSlots": 1})
            if data is None:
                await asyncio.sleep(1.0)  # as the agent: a failed claim waits before the next
                continue
            got = data.get("contracts") or []
            self.counts["claims claimed" if got else "claims empty"] += 1
            for item in got:
                self.pickups.append((item["lockedAtNs"] - item["createdAtNs"]) / 1e9)
                await self.call(conn, key, "POST", f"/contracts/{item['contractId']}/provisioned",
                                {"instanceDetails": DETAILS})
                self.counts["provisioned"] += 1

    async def heartbeater(self, key, first_within: float) -> None:  # noqa: ANN001
        conn = Connection(self.host, self.port)  # the agent's heartbeat runs beside its long poll
        await asyncio.sleep(random.uniform(0, first_within))
        body = {"version": "idle-fleet", "provisionerType": "script", "activeContracts": 0,
                "capacity": {"maxConcurrent": 1, "freeSlots": 1}}
        while not self.stop.is_set():
            data = await self.call(conn, key, "POST", "/heartbeat", body)
            self.counts["heartbeats"] += 1
            interval = float((data or {}).get("nextHeartbeatSeconds") or 30)
            try:
                await asyncio.wait_for(self.stop.wait(), interval)
            except asyncio.TimeoutError:
                pass


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def waiting_gauge(server_url: str) -> float | None:
    import httpx

    try:
        text = httpx.get(f"{server_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = re.search(r"^dc_pool_claims_waiting\S* (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def run(bench: h.Bench, keys: list, args: argparse.Namespace, heartbeat: float) -> dict:
    assert bench.server is not None and bench.server.proc is not None and bench.provider is not None
    pid = bench.server.proc.pid
    fleet = Fleet(bench.server.url, bench.provider.pubkey, args.claim_wait)
    tasks = [asyncio.create_task(fleet.claimer(k)) for k in keys]
    tasks += [asyncio.create_task(fleet.heartbeater(k, heartbeat)) for k in keys]
    warmup = max(args.claim_wait, heartbeat) + 2
    h.say(f"{len(keys)} agents claiming (wait {args.claim_wait:g} s) and heartbeating (every {heartbeat:g} s); "
          f"warm-up {warmup:.0f} s")
    await asyncio.sleep(warmup)  # the measurement's warm-up (every agent sent its first claim and heartbeat)
    loop = asyncio.get_running_loop()
    cpu0 = h.cpu_by_component(bench, None)
    own0 = sum(h.proc_cpu_seconds(os.getpid()))
    t0 = time.monotonic()
    counts0 = Counter(fleet.counts)
    load0 = h.loadavg()
    moments = sorted(random.uniform(0.1, 0.95) * args.window for _ in range(args.contracts))
    for at in moments:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        await loop.run_in_executor(None, bench.create_contracts, 1)
    await asyncio.sleep(max(0.0, t0 + args.window - time.monotonic()))
    window = time.monotonic() - t0
    cpu = h.cpu_delta(cpu0, h.cpu_by_component(bench, None))
    own = sum(h.proc_cpu_seconds(os.getpid())) - own0
    rss, hwm = h.proc_status_kib(pid, "VmRSS"), h.proc_status_kib(pid, "VmHWM")
    threads, fds = h.proc_status_kib(pid, "Threads"), fd_count(pid)
    waiting = await loop.run_in_executor(None, waiting_gauge, bench.server.url)
    counts = {k: fleet.counts[k] - counts0.get(k, 0) for k in fleet.counts}
    load1 = h.loadavg()
    fleet.stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    others = max(0.0, cpu["machine"] - cpu["server"] - cpu["postgres"] - own)
    return {"window": window, "server_cpu": cpu["server"], "pg_cpu": cpu["postgres"], "client_cpu": own,
            "others": others, "rss": rss, "hwm": hwm, "threads": threads, "fds": fds, "waiting": waiting,
            "counts": counts, "pickups": list(fleet.pickups), "errors": dict(fleet.errors), "load": (load0, load1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of measurement after the warm-up")
    parser.add_argument("--contracts", type=int, default=20, help="contracts created one at a time in the window")
    parser.add_argument("--claim-wait", type=float, default=25.0, help="waitSeconds of each claim (the agent's 25)")
    parser.add_argument("--heartbeat-seconds", type=int, default=30, help="the server's nextHeartbeatSeconds")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.quick:
        args.agents, args.window, args.contracts, args.claim_wait, args.heartbeat_seconds = 50, 8.0, 3, 3.0, 5
    random.seed(args.seed)
    nofile = h.raise_fd_limit(max(65536, args.agents * 4))
    started = time.monotonic()
    from nacl.signing import SigningKey

    with h.Bench("idle-fleet", keep=args.keep, heartbeat_seconds=args.heartbeat_seconds,
                 lock_sweep_seconds=60) as bench:
        keys = [SigningKey.generate() for _ in range(args.agents)]
        t = time.monotonic()
        register(bench, keys)
        h.say(f"{args.agents} agents registered in {time.monotonic() - t:.1f} s; RLIMIT_NOFILE {nofile}")
        result = asyncio.run(run(bench, keys, args, float(args.heartbeat_seconds)))
    r = result
    window = r["window"]
    share = 100 * r["server_cpu"] / window
    pickups = sorted(r["pickups"])
    p50 = h.median(pickups) if pickups else float("nan")
    p95 = h.percentile(pickups, 95) if pickups else float("nan")
    requests = sum(r["counts"].get(k, 0) for k in ("claims empty", "claims claimed", "heartbeats", "provisioned"))
    print()
    h.figure("agents", args.agents)
    h.figure("server_cpu_share", round(share, 2), "% of one core")
    h.figure("server_rss", round(r["rss"] / 1024, 1), "MiB")
    h.figure("server_rss_peak", round(r["hwm"] / 1024, 1), "MiB")
    h.figure("postgres_cpu_share", round(100 * r["pg_cpu"] / window, 2), "% of one core")
    h.figure("pickup_p50", round(p50 * 1000, 1), "ms")
    h.figure("pickup_p95", round(p95 * 1000, 1), "ms")
    h.figure("contracts_picked_up", len(pickups))
    h.figure("requests_per_second", round(requests / window, 1))
    h.figure("server_cpu_per_request", round(1000 * r["server_cpu"] / max(1, requests), 2), "ms")
    h.figure("waiting_claims", r["waiting"] if r["waiting"] is not None else "?")
    h.figure("errors", sum(r["errors"].values()))
    table = "\n".join([
        "| agents | window | pool_api CPU | pool_api RSS (peak) | threads / fds | PostgreSQL CPU | requests/s "
        "(claims answered, heartbeats) | server CPU per request | waiting claims | pickup p50 / p95 (n) | errors "
        "| this client's CPU | other processes | load average (start → end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.agents:,} | {window:.0f} s | {share:.1f} % of a core | {r['rss'] / 1024:.1f} MiB "
        f"({r['hwm'] / 1024:.1f}) | {r['threads']} / {r['fds']} | {100 * r['pg_cpu'] / window:.1f} % | "
        f"{requests / window:.1f} ({(r['counts'].get('claims empty', 0) + r['counts'].get('claims claimed', 0)) / window:.1f}, "
        f"{r['counts'].get('heartbeats', 0) / window:.1f}) | {1000 * r['server_cpu'] / max(1, requests):.2f} ms | "
        f"{r['waiting'] if r['waiting'] is not None else '?'} | {p50 * 1000:.1f} ms / {p95 * 1000:.1f} ms "
        f"({len(pickups)}) | {sum(r['errors'].values())} | {100 * r['client_cpu'] / window:.0f} % | "
        f"{r['others'] / window:.2f} cores | {r['load'][0]} → {r['load'][1]} |",
    ])
    print(table)
    if r["errors"]:
        print("errors:", ", ".join(f"{k} × {v}" for k, v in sorted(r["errors"].items())))
    body = h.run_header(h.command_line(), started, {
        "Set-up": f"{args.agents:,} simulated agents in one asyncio process (raw HTTP/1.1, two keep-alive "
                  f"connections and a key each, every request signed with dc_agent.signing), registered in-process with "
                  f"pool_api.tokens.create_token + pool_api.agents.setup; claims with waitSeconds "
                  f"{args.claim_wait:g}, heartbeats every {args.heartbeat_seconds} s (the server's answer), "
                  f"{args.contracts} contracts created one at a time in the {args.window:g} s window after a "
                  f"{max(args.claim_wait, args.heartbeat_seconds) + 2:.0f} s warm-up; one `dc-pool-api serve` on "
                  f"PostgreSQL; RLIMIT_NOFILE {nofile}",
    }) + "\n\n" + table + ("\n\nErrors: " + ", ".join(f"{k} × {v}" for k, v in sorted(r["errors"].items()))
                           if r["errors"] else "")
    run_label = f"{args.agents:,} agents, {window:.0f} s" + (" (quick)" if args.quick else "")
    h.record(h.results_path(args), "idle_fleet", "Idle fleet: 1,000 long-polling agents on one replica", body, {
        "idle_fleet": {"value": f"{share:.1f} % of a core, {r['rss'] / 1024:.0f} MiB RSS; pickup p50 "
                                f"{p50 * 1000:.0f} ms (load {r['load'][0].split()[0]})", "run": run_label},
    }, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
