#!/usr/bin/env python3
"""Where the CPU of one provisioning cycle goes: py-spy on `dc-pool-api serve` and on some agents during a
makespan-style run (N agents, M contracts, the sh script), aggregated into the top functions and packages.

py-spy (`pip install py-spy`; attaching to another process needs root or ptrace rights) samples each
process at `--rate` Hz without the idle threads (`py-spy record --format raw --nolineno`). From the
collapsed stacks this prints, per process kind (server, agents):

  self     samples whose innermost frame is the function (where the CPU is spent)
  total    samples with the function anywhere on the stack (what it costs including its callees)
  package  self samples by top-level package (h11, sqlalchemy, psycopg, nacl, structlog, json, asyncio, ...)

Shares are of all non-idle samples of that kind. The raw files stay in the temporary directory with
`--keep` (`py-spy record -o out.svg --pid N` makes a flame graph of one process by hand).

    python bench/profile_cycle.py                    # 20 agents, 400 contracts, 1 s sh script, claim
    python bench/profile_cycle.py --dispatch poll    # the same with pending + lock
    python bench/profile_cycle.py --quick            # 4 agents, 20 contracts
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402

OURS = ("pool_api", "dc_agent", "dc_common", "provisioners")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


def py_spy() -> str | None:
    for candidate in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def start_recorder(exe: str, pid: int, out: Path, rate: int, extra: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--nolineno", "--rate", str(rate),
                             *extra, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_recorder(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace")


def package_of(path: str) -> str:
    """`sqlalchemy/engine/base.py` -> sqlalchemy; our own modules keep two levels (pool_api/auth.py)."""
    path = path.replace("\\", "/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "?"
    if parts[0] in ("pool_api", "dc_agent", "dc_common", "provisioners") and len(parts) > 1:
        return f"{parts[0]}/{parts[1].removesuffix('.py')}"
    return parts[0].removesuffix(".py")


def read_stacks(paths: list[Path]) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def summarise(stacks: Counter[tuple[str, ...]], top: int) -> tuple[int, list, list, list]:
    total = sum(stacks.values())
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    for frames, n in stacks.items():
        leaf = frames[-1]
        self_c[leaf] += n
        m = FRAME.match(leaf)
        pkg[package_of(m["file"]) if m else leaf] += n
        for frame in set(frames):
            m = FRAME.match(frame)
            if m and package_of(m["file"]).split("/")[0] in OURS and not frame.startswith(("main ", "run ", "serve ")):
                incl[frame] += n
    return total, self_c.most_common(top), incl.most_common(top * 2), pkg.most_common(top)


def table(rows: list, total: int, head: str) -> list[str]:
    lines = [f"| {head} | samples | share |", "|---|---|---|"]
    for name, n in rows:
        lines.append(f"| `{name}` | {n} | {100 * n / max(1, total):.1f} % |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    h.add_dispatch_arg(parser)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--contracts", type=int, default=400)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--profile-agents", type=int, default=3, help="how many agents py-spy samples")
    parser.add_argument("--rate", type=int, default=250, help="samples per second and process")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--py-spy-args", default="--gil",
                        help="extra py-spy record options (default --gil: only samples holding the GIL, i.e. "
                             "Python code running, not threads waiting in C on a socket or a lock)")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.contracts, args.profile_agents, args.top = 4, 20, 1, 8
    exe = py_spy()
    if exe is None:
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    extra = args.py_spy_args.split()
    started = time.monotonic()
    with h.Bench("profile", keep=args.keep, dispatch=args.dispatch) as bench:
        assert bench.server is not None and bench.server.proc is not None
        fleet = bench.fleet(args.agents, script_delay=args.delay, poll_interval_seconds=0.5,
                            lock_timeout_seconds=300, max_concurrent=args.max_concurrent)
        sh = str(h.REPO / "bench" / "sh-provisioner.sh")
        for agent in fleet.agents:
            h.set_script_options(agent, command=[sh, "provision", str(fleet.vms), str(fleet.calls), str(args.delay)],
                                 find_command=[sh, "find", str(fleet.vms), str(fleet.calls), str(args.delay)])
        bench.start(fleet)
        if args.dispatch == "claim":
            h.wait_for(lambda: fleet.assert_alive() or all(h.agent_claiming(a) for a in fleet.agents), 60,
                       "every agent to switch to claim", interval=0.1)
        out = bench.base / "py-spy"
        out.mkdir()
        recorders = {"server": [(start_recorder(exe, bench.server.proc.pid, out / "server.raw", args.rate, extra),
                                 out / "server.raw")]}
        recorders["agents"] = []
        for agent in fleet.agents[:args.profile_agents]:
            assert agent.proc is not None
            path = out / f"{agent.name}.raw"
            recorders["agents"].append((start_recorder(exe, agent.proc.pid, path, args.rate, extra), path))
        time.sleep(1.0)  # not a synchronisation: py-spy attaches and starts sampling
        load0 = h.loadavg()
        cpu0 = h.cpu_by_component(bench, fleet)
        ids, t0 = bench.create_contracts(args.contracts)
        bench.wait_provisioned(fleet, ids, timeout=max(120.0, args.contracts * args.delay * 2))
        cpu = h.cpu_delta(cpu0, h.cpu_by_component(bench, fleet))
        wall = (time.time_ns() - t0) / 1e9
        errors = {name: [stop_recorder(proc) for proc, _ in recs] for name, recs in recorders.items()}
        kinds = {name: read_stacks([path for _, path in recs]) for name, recs in recorders.items()}
    others = max(0.0, cpu["machine"] - sum(cpu[k] for k in h.CPU_PARTS))
    print()
    h.figure("dispatch", args.dispatch)
    sections = []
    for name, stacks in kinds.items():
        total, self_rows, incl_rows, pkg_rows = summarise(stacks, args.top)
        if not total:
            print(f"no samples for {name}: {' '.join(errors[name])[-500:]}", file=sys.stderr)
            continue
        h.figure(f"samples_{name}", total)
        top_name, top_n = self_rows[0]
        h.figure(f"top_self_{name}", f"{100 * top_n / total:.1f}%", top_name.replace(" ", "_"))
        block = [f"**{name}** ({total} samples at {args.rate} Hz"
                 + (f" from {args.profile_agents} of {args.agents} agents" if name == "agents" else "") + ")", ""]
        block += table(pkg_rows, total, "package (self)") + [""]
        block += table(self_rows, total, "function (self)") + [""]
        block += table(incl_rows, total, "our function (total, incl. callees)")[:args.top + 2]
        sections.append("\n".join(block))
    per = {k: 1000 * cpu[k] / args.contracts for k in h.CPU_PARTS}
    own = per["agents"] + per["server"] + per["postgres"]
    cpu_line = (f"CPU per contract during the profiled run (py-spy's own sampling slows the sampled processes a "
                f"little): agents {per['agents']:.1f} ms, server {per['server']:.1f} ms, PostgreSQL "
                f"{per['postgres']:.1f} ms (together {own:.1f} ms), scripts {per['scripts']:.1f} ms; other processes "
                f"{others / wall:.2f} cores; load {load0} → {h.loadavg()}; makespan {wall:.1f} s")
    print(cpu_line)
    print()
    print("\n\n".join(sections))
    body = h.run_header(h.command_line(), started, {
        "Set-up": f"{args.agents} agents × max_concurrent {args.max_concurrent}, {args.contracts} contracts, "
                  f"`bench/sh-provisioner.sh` sleeping {args.delay:g} s, {args.dispatch} dispatch; `py-spy record "
                  f"--format raw --nolineno --rate {args.rate} {args.py_spy_args}` on the server and "
                  f"{args.profile_agents} agents from the insert to the last report",
    }) + "\n\n" + cpu_line + "\n\n" + "\n\n".join(sections)
    h.record(h.results_path(args), "profile" if args.dispatch == "claim" else "profile_poll",
             "Profile of one cycle (py-spy)" + (" (poll dispatch)" if args.dispatch == "poll" else ""), body, None,
             h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
