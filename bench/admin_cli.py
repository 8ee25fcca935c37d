#!/usr/bin/env python3
"""Admin CLI start-up: wall time of `dc-pool-api provider add` and `dc-pool-api contract list` on SQLite.

On a fresh SQLite file (in a temporary directory) the first call applies the migrations; every later
call finds the schema at head with one SELECT of alembic_version and skips them (pool_api.db.
migrate_if_needed). For comparison, the same `provider add` with the migration step forced on every call
(what the CLI did before: Alembic imported and `upgrade head` run each time), started the same way.
Runs alternate between the variants so that machine noise hits both alike; medians are printed, of the
wall time and of the CPU time (user + system) of each call, which other work on the machine inflates less.

    python bench/admin_cli.py            # 15 runs of each
    python bench/admin_cli.py --quick    # 3 runs of each
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402

PUBKEY = "ab" * 32
# The CLI as before: the migration step on every call (the version check bypassed).
FORCED = ("import sys, pool_api.db as d; d.migrate_if_needed = lambda engine: d.migrate(engine) or True; "
          "from pool_api.cli import main; sys.argv[0] = 'dc-pool-api'; main()")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], cpu: list[float] | None = None) -> float:
    """Wall time of one run; its CPU time (user + system) is appended to `cpu`."""
    t, c = time.perf_counter(), _children_cpu()
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, cwd=h.REPO, env=env)
    elapsed = time.perf_counter() - t
    if cpu is not None:
        cpu.append(_children_cpu() - c)
    if res.returncode != 0:
        raise RuntimeError(f"{argv} exited {res.returncode}: {res.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--runs", type=int, default=15, help="runs of each command")
    args = parser.parse_args()
    if args.quick:
        args.runs = 3
    started = time.monotonic()
    cli = str(Path(sys.executable).with_name("dc-pool-api"))
    with tempfile.TemporaryDirectory(prefix="dc-bench-admin-") as tmp:
        url = f"sqlite:///{tmp}/pool.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DC_POOL_API_")}
        env["DC_POOL_API_DATABASE_URL"] = url
        add = [cli, "provider", "add", "--pubkey", PUBKEY, "--name", "bench"]
        first = timed(add, env)  # fresh file: the migrations run
        timed([cli, "offering", "create", "--provider", PUBKEY, "--offering-id", "vps", "--name", "VPS",
               "--country", "DE"], env)
        timed([cli, "contract", "create", "--offering", "vps", "--count", "20"], env)
        skip, forced, listing, python = [], [], [], []
        cpu: dict[str, list[float]] = {"skip": [], "forced": [], "list": [], "python": []}
        for _ in range(args.runs):
            skip.append(timed(add, env, cpu["skip"]))
            forced.append(timed([sys.executable, "-c", FORCED, *add[1:]], env, cpu["forced"]))
            listing.append(timed([cli, "contract", "list"], env, cpu["list"]))
            python.append(timed([sys.executable, "-c", "pass"], env, cpu["python"]))
    med_skip, med_forced, med_list = h.median(skip), h.median(forced), h.median(listing)
    cpu_med = {k: h.median(v) * 1000 for k, v in cpu.items()}
    print()
    h.figure("provider_add_median", round(med_skip * 1000), "ms")
    h.figure("contract_list_median", round(med_list * 1000), "ms")
    h.figure("provider_add_forced_migrations_median", round(med_forced * 1000), "ms")
    h.figure("first_call_with_migrations", round(first * 1000), "ms")
    h.figure("provider_add_cpu_median", round(cpu_med["skip"]), "ms")
    table = "\n".join([
        f"| command (SQLite, {args.runs} runs each, median) | wall time | CPU time |",
        "|---|---|---|",
        f"| `dc-pool-api provider add` (schema at head: migrations skipped) | {med_skip * 1000:.0f} ms "
        f"(min {min(skip) * 1000:.0f} ms) | {cpu_med['skip']:.0f} ms |",
        f"| `dc-pool-api contract list` (20 contracts) | {med_list * 1000:.0f} ms (min {min(listing) * 1000:.0f} ms) "
        f"| {cpu_med['list']:.0f} ms |",
        f"| `provider add` with the migration step forced (as before) | {med_forced * 1000:.0f} ms "
        f"(min {min(forced) * 1000:.0f} ms) | {cpu_med['forced']:.0f} ms |",
        f"| `python -c pass` (the interpreter alone) | {h.median(python) * 1000:.0f} ms | {cpu_med['python']:.0f} ms |",
        f"| first call on a fresh file (migrates) | {first * 1000:.0f} ms | |",
    ])
    print(table)
    body = h.run_header(h.command_line(), started, {
        "Set-up": "a fresh SQLite file; the console script of the venv; the forced variant runs the same CLI "
                  "with the version check bypassed",
    }) + "\n\n" + table
    run = f"{args.runs} runs" + (" (quick)" if args.quick else "")
    h.record(h.results_path(args), "admin_cli", "7. Admin CLI start-up", body, {
        "admin_cli": {"value": f"{med_skip * 1000:.0f} ms, CPU {cpu_med['skip']:.0f} ms (forced migrations: "
                               f"{med_forced * 1000:.0f} ms)",
                      "run": run},
    }, h.SECTION_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
