#!/usr/bin/env python3
"""Agent footprint: RSS and CPU of an idle `dc-agent run`, and the start-up cost of `dc-agent --help`.

One agent (script provisioner, production defaults: poll every 30 s, heartbeat as the server says, 30 s;
reconcile every 300 s, the first one 15–30 s after start) against a real `dc-pool-api serve` with
nothing to do. Once it has polled once, its CPU time (utime + stime from /proc/PID/stat, and separately
the children it waited for: the reconcile's `list` script) is read, again after the idle window, and
VmRSS / VmHWM from /proc/PID/status at the end.

`dc-agent --help` wall time (the console script of the venv) is compared with `python -c pass` (the same
interpreter): medians of alternating runs.

    python bench/footprint.py            # 60 s idle, 21 runs each
    python bench/footprint.py --quick    # 5 s idle, 5 runs each
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402


def wall(argv: list[str]) -> float:
    t = time.perf_counter()
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, cwd=h.REPO)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{argv} exited {res.returncode}: {res.stderr.decode()[-500:]}")
    return elapsed


def top_imports(argv_python: str, n: int = 6) -> list[tuple[str, int]]:
    """The slowest imports (cumulative µs) of `dc_agent.cli` and typer's help rendering, from -X importtime."""
    code = "import sys; sys.argv=['dc-agent','--help']; from dc_agent.cli import main; main()"
    res = subprocess.run([argv_python, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=h.REPO)
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, raw = line.split(":", 1)[1].split("|")
        if len(raw) - len(raw.lstrip()) in (1, 3):  # two levels: `dc_agent.cli` and what it imports
            rows.append((raw.strip(), int(cumulative.strip())))
    return sorted(rows, key=lambda r: -r[1])[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    parser.add_argument("--runs", type=int, default=21, help="runs of each command for the start-up medians")
    args = parser.parse_args()
    if args.quick:
        args.idle, args.runs = 5.0, 5
    started = time.monotonic()
    python = sys.executable
    dc_agent = h.dc_agent_command()
    with h.Bench("footprint", keep=args.keep) as bench:
        fleet = bench.fleet(1, script_delay=1.0, poll_interval_seconds=30, reconcile_interval_seconds=300,
                            max_concurrent=2)
        bench.start(fleet)
        agent = fleet.agents[0]
        assert agent.proc is not None
        pid = agent.proc.pid
        cpu0, child0 = h.proc_cpu_seconds(pid)
        t0 = time.monotonic()
        # The idle window is the measurement itself (not a synchronisation): check the agent stays up.
        while time.monotonic() - t0 < args.idle:
            fleet.assert_alive()
            time.sleep(min(1.0, max(0.0, args.idle - (time.monotonic() - t0))))
        cpu1, child1 = h.proc_cpu_seconds(pid)
        window = time.monotonic() - t0
        rss = h.proc_status_kib(pid, "VmRSS")
        hwm = h.proc_status_kib(pid, "VmHWM")
        threads = h.proc_status_kib(pid, "Threads")
        status = agent.status_file()
        counters = status.get("counters", {})
        since_start = (time.time_ns() - status.get("startedNs", time.time_ns())) / 1e9
    help_times, pass_times = [], []
    for _ in range(args.runs):  # alternate, so that machine noise hits both alike
        help_times.append(wall([*dc_agent, "--help"]))
        pass_times.append(wall([python, "-c", "pass"]))
    help_med, pass_med = h.median(help_times), h.median(pass_times)
    imports = top_imports(python)
    cpu = cpu1 - cpu0
    print()
    h.figure("idle_rss", round(rss / 1024, 1), "MiB")
    h.figure("idle_rss_peak", round(hwm / 1024, 1), "MiB")
    h.figure("idle_cpu_seconds", round(cpu, 3), f"s over {window:.0f} s")
    h.figure("idle_cpu_children_seconds", round(child1 - child0, 3), "s")
    h.figure("help_median", round(help_med * 1000, 1), "ms")
    h.figure("python_pass_median", round(pass_med * 1000, 1), "ms")
    h.figure("help_ratio", round(help_med / pass_med, 2))
    table = "\n".join([
        "| idle window | RSS at the end | peak RSS | threads | CPU (agent) | CPU (children) | CPU share | "
        "polls / heartbeats / reconciles |",
        "|---|---|---|---|---|---|---|---|",
        f"| {window:.0f} s (agent up {since_start:.0f} s) | {rss / 1024:.1f} MiB | {hwm / 1024:.1f} MiB | {threads} | "
        f"{cpu:.2f} s | {child1 - child0:.2f} s | {100 * cpu / window:.2f} % of one core | "
        f"{counters.get('polls', 0)} / {counters.get('heartbeats', 0)} / {counters.get('reconciles', 0)} |",
        "",
        f"| command ({args.runs} runs each, median) | wall time |",
        "|---|---|",
        f"| `dc-agent --help` | {help_med * 1000:.0f} ms (min {min(help_times) * 1000:.0f} ms) |",
        f"| `python -c pass` | {pass_med * 1000:.0f} ms (min {min(pass_times) * 1000:.0f} ms) |",
        f"| ratio | {help_med / pass_med:.2f} |",
    ])
    print(table)
    imports_line = ", ".join(f"`{name}` {us / 1000:.0f} ms" for name, us in imports)
    print("slowest imports of `dc-agent --help`:", imports_line)
    body = h.run_header(h.command_line(), started, {
        "Set-up": "one `dc-agent run` (script provisioner, poll 30 s, heartbeat 30 s, reconcile 300 s) with no "
                  "contracts, against `dc-pool-api serve` on PostgreSQL; CPU from /proc/PID/stat after its first poll",
        "Slowest imports of `dc-agent --help` (`-X importtime`, cumulative)": imports_line,
    }) + "\n\n" + table
    run = f"{window:.0f} s idle, {args.runs} runs" + (" (quick)" if args.quick else "")
    h.record(h.results_path(args), "footprint", "5. Agent footprint", body, {
        "idle_rss": {"value": f"{rss / 1024:.1f} MiB (CPU {cpu:.2f} s over {window:.0f} s)", "run": run},
        "help_ratio": {"value": f"{help_med / pass_med:.2f} ({help_med * 1000:.0f} ms / {pass_med * 1000:.0f} ms)",
                       "run": run},
    }, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
