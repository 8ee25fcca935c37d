"""Shared plumbing of the benchmarks in bench/: one PostgreSQL cluster, one real `dc-pool-api serve`,
real `dc-agent run` processes, the database read directly, figures printed and recorded.

It reuses the test support instead of copying it:

* tests/support/postgres.py      `start_cluster()`: an ephemeral PostgreSQL (as `postgres` under root)
* tests/support/pool_server.py   `PoolServer`: the real `dc-pool-api serve` process (start/stop/admin)
* tests/support/provider.py      `Provider`: a signed provider client (pools, tokens, offerings)
* tests/dc_agent/fleet.py        `Fleet`/`AgentProc`: `dc-agent setup` + `dc-agent run` with the example
                                 script provisioner, its call record, the agents' status.json counters

What is added here: parallel agent setup, contracts inserted in-process (exact creation times, no CLI
start-up per batch), database reads through SQLAlchemy, waits with deadlines, clean-up of everything
started (also on Ctrl-C), machine facts, figure lines (`FIGURE name = value unit`) and the
bench/RESULTS.md writer.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
import tomli_w  # noqa: E402

from tests.dc_agent.fleet import AgentProc, Fleet, dc_agent_command  # noqa: E402,F401
from tests.support.pool_server import PoolServer  # noqa: E402
from tests.support.postgres import PostgresCluster, start_cluster  # noqa: E402
from tests.support.provider import Provider  # noqa: E402
from tests.support.wait import wait_until as wait_for  # noqa: E402,F401 - bench scripts call h.wait_for

RESULTS = REPO / "bench" / "RESULTS.md"
DISPATCH_MODES = ("claim", "poll")  # claim: long-poll POST .../claim; poll: pending + lock (`serve --no-claim`)
EXAMPLE_SCRIPT = REPO / "examples" / "script-provisioner.py"
OWN_INSTANCES = REPO / "bench" / "own_instances.py"


# -- small utilities ----------------------------------------------------------------------------------

def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank-with-interpolation percentile (p in 0..100) of a non-empty list."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def iso_ns(text: str) -> int:
    """structlog's ISO UTC timestamp ('2026-11-25T12:44:27.123456Z') as ns since the epoch."""
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(stamp.timestamp() * 1_000_000) * 1000


def figure(name: str, value: Any, unit: str = "") -> None:
    """One machine-readable figure line; the quick-mode test looks for these."""
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
    print(f"FIGURE {name} = {value}{' ' + unit if unit else ''}", flush=True)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


LOAD_AT_START = loadavg()


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    pg = "?"
    with contextlib.suppress(Exception):
        from tests.support.postgres import find_bin_dir

        pg = subprocess.run([str(find_bin_dir() / "postgres"), "--version"], capture_output=True, text=True,
                            timeout=10).stdout.strip()
    return {"cpu": f"{cpu} × {os.cpu_count()}", "memory": mem, "kernel": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "postgres": pg}


# -- processes ----------------------------------------------------------------------------------------

def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """(own utime+stime, waited-for children's cutime+cstime) of `pid`, in seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    children = (int(fields[13]) + int(fields[14])) / tick
    return own, children


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_by_component(bench: "Bench", fleet: Fleet | None) -> dict[str, float]:
    """CPU seconds used so far, by component, from /proc (call before and after, subtract).

    agents: the `dc-agent run` processes themselves; scripts: the find/provision/list processes the
    agents waited for (their cutime); server: `dc-pool-api serve`; postgres: the postmaster, the
    backends it reaped and the live ones. Agents that exited (killed) are not counted.
    """
    out = {"agents": 0.0, "scripts": 0.0, "server": 0.0, "postgres": 0.0, "machine": machine_busy_seconds()}
    for agent in (fleet.agents if fleet else []):
        if agent.proc is not None and agent.proc.poll() is None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                own, children = proc_cpu_seconds(agent.proc.pid)
                out["agents"] += own
                out["scripts"] += children
    for replica in bench.servers:
        if replica.proc is not None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                out["server"] += sum(proc_cpu_seconds(replica.proc.pid))
    if bench.cluster is not None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            postmaster = int((bench.cluster.base_dir / "data" / "postmaster.pid").read_text().split()[0])
            out["postgres"] = sum(proc_cpu_seconds(postmaster))
            for child in _children(postmaster):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    out["postgres"] += proc_cpu_seconds(child)[0]
    return out


CPU_PARTS = ("agents", "scripts", "server", "postgres")


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (user+nice+system+irq+softirq+steal, /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, after[k] - before.get(k, 0.0)) for k in after}


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def agent_ready(agent: AgentProc) -> bool:
    """The running process wrote status.json and has polled at least once."""
    if agent.proc is None or agent.proc.poll() is not None:
        return False
    status = agent.status_file()
    return status.get("pid") == agent.proc.pid and bool(status.get("lastPollNs"))


def agent_claiming(agent: AgentProc) -> bool:
    """The running process logged that it switched to claim (its heartbeat answer said `claim: true`)."""
    status = agent.status_file()
    if agent.proc is None or status.get("pid") != agent.proc.pid:
        return False
    since = int(status.get("startedNs") or 0)
    return any(iso_ns(e["timestamp"]) >= since - 1_000_000_000
               for e in agent_events(agent, {"dispatch: the server offers claim; long-polling instead of polling"}))


def agent_idle(agent: AgentProc) -> bool:
    status = agent.status_file()
    return agent.proc is not None and status.get("pid") == agent.proc.pid and not status.get("inProgress") \
        and not status.get("outboxBacklog")


def set_agent_options(agent: AgentProc, **options: Any) -> None:
    data = tomllib.loads(agent.config.read_text())
    data["agent"].update(options)
    agent.config.write_text(tomli_w.dumps(data))


def set_script_options(agent: AgentProc, **options: Any) -> None:
    data = tomllib.loads(agent.config.read_text())
    data["provisioner"]["script"].update(options)
    agent.config.write_text(tomli_w.dumps(data))


def kill_orphan_scripts(agent: AgentProc) -> list[str]:
    """Stop provision scripts a SIGKILLed agent left running (the driver's own recovery, from its records)."""
    from provisioners.script import ScriptProvisioner

    driver = ScriptProvisioner({"command": ["true"], "state_dir": str(agent.state_dir / "script"),
                                "kill_grace_seconds": 1})
    return driver.recover_orphans()


def agent_events(agent: AgentProc, events: set[str]) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for line in agent.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") in events:
                out.append(record)
    return out


# -- the environment ----------------------------------------------------------------------------------

class Bench:
    """PostgreSQL + `dc-pool-api serve` + a provider, a script pool and its offering; `fleet()` adds agents.

    Use as a context manager: everything it started is stopped on exit (also on Ctrl-C / errors).
    """

    def __init__(self, name: str, *, keep: bool = False, dispatch: str = "claim", replicas: int = 1,
                 **serve_options: Any) -> None:
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"dispatch: one of {', '.join(DISPATCH_MODES)}, not {dispatch!r}")
        self.name = name
        self.keep = keep
        self.dispatch = dispatch
        self.replicas = replicas
        self.serve_options = {"lock_ttl_seconds": 300, "heartbeat_seconds": 30, "lock_sweep_seconds": 1,
                              **serve_options}
        self.base = Path(tempfile.mkdtemp(prefix=f"dc-bench-{name}-"))
        self.cluster: PostgresCluster | None = None
        self.server: PoolServer | None = None
        self.servers: list[PoolServer] = []  # every replica; `server` is the first
        self.provider: Provider | None = None
        self.engine: sa.Engine | None = None
        self.fleets: list[Fleet] = []
        self.pool_id = ""
        self.offering_id = "bench-offering"

    def __enter__(self) -> Bench:
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self.cluster = start_cluster()
            url = self.cluster.create_database("bench")
            # poll mode: the server does not advertise claim, so the agents poll pending + lock (as before claim)
            env = {"DC_POOL_API_CLAIM": "false"} if self.dispatch == "poll" else {}
            for i in range(self.replicas):
                log_dir = self.base / ("server" if i == 0 else f"server{i + 1}")
                log_dir.mkdir(exist_ok=True)
                replica = PoolServer(url, log_dir=log_dir, env=env, **self.serve_options)
                self.servers.append(replica)
                replica.start()
            self.server = self.servers[0]
            from pool_api import db

            self.engine = db.create_engine(url)
            self.provider = Provider.register(self.server, name="bench")
            pool = self.provider.create_pool("bench-script", "europe", "script")
            self.pool_id = pool["poolId"]
            self.provider.create_offering(self.offering_id, "DE", provisioner_type="script", pool_id=self.pool_id,
                                          cpu_cores=1, memory_mb=1024, storage_gb=10)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fleet(self, n: int, *, script_delay: float, name: str = "fleet", own_list: bool = True,
              **agent_options: Any) -> Fleet:
        """`n` agents set up in parallel (`dc-agent setup` with a token each), script driver configured.

        The agents share the example script's instance directory (any agent's `find` can adopt what
        another made). With `own_list` (default) each agent's `list_command` (reconcile) lists only the
        instances its own node made (bench/own_instances.py), as a hypervisor's agent would; without it
        every agent's reconcile sees, and is told to terminate, the instances other agents reported.
        """
        assert self.server and self.provider
        base = self.base / name
        base.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(base, self.server, self.provider, self.pool_id, script_delay=script_delay,
                      agent_options=agent_options)
        self.fleets.append(fleet)
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, n)) as pool:
            list(pool.map(fleet.add_agent, [f"agent{i + 1:02d}" for i in range(n)]))
        fleet.agents.sort(key=lambda a: a.name)
        if own_list:
            for agent in fleet.agents:
                set_script_options(agent, list_command=[sys.executable, str(OWN_INSTANCES), "--dir", str(fleet.vms)])
        if len(self.servers) > 1:  # agents spread over the replicas, round robin
            for i, agent in enumerate(fleet.agents):
                set_agent_options(agent, api_url=self.servers[i % len(self.servers)].url)
        return fleet

    def start(self, fleet: Fleet, timeout: float = 120) -> None:
        """Start every agent and wait until each has polled once (the fleet is idle and ready)."""
        fleet.start_all()
        wait_for(lambda: fleet.assert_alive() or all(agent_ready(a) for a in fleet.agents), timeout,
                 f"{len(fleet.agents)} agents to poll once", interval=0.1)

    # -- database ---------------------------------------------------------------------------------

    def create_contracts(self, n: int, offering_id: str | None = None) -> tuple[list[str], int]:
        """Insert `n` paid, accepted contracts in one transaction; (ids, ns after the commit returned)."""
        assert self.engine is not None
        from pool_api import contracts

        with self.engine.begin() as conn:
            ids = contracts.create_contracts(conn, offering_id or self.offering_id, count=n)
        return ids, time.time_ns()

    def rows(self, ids: list[str], *columns: str) -> dict[str, Any]:
        assert self.engine is not None
        from pool_api.tables import contracts as c

        cols = [c.c.contract_id, *(c.c[name] for name in columns)]
        out: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                for row in conn.execute(sa.select(*cols).where(c.c.contract_id.in_(chunk))):
                    out[row.contract_id] = row
        return out

    def count_provisioned(self, ids: list[str]) -> int:
        assert self.engine is not None
        from pool_api.tables import contracts as c

        total = 0
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                total += conn.execute(sa.select(sa.func.count()).select_from(c).where(
                    c.c.contract_id.in_(chunk), c.c.status == "provisioned")).scalar_one()
        return total

    def wait_provisioned(self, fleet: Fleet | None, ids: list[str], timeout: float,
                         tick: Callable[[int], None] | None = None) -> int:
        """Wait until all `ids` are provisioned (checking the agents stay alive); the last count seen."""
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            if fleet is not None:
                fleet.assert_alive()
            done = self.count_provisioned(ids)
            if tick:
                tick(done)
            if done == len(ids):
                return done
            time.sleep(0.2)
        raise TimeoutError(f"{done}/{len(ids)} contracts provisioned after {timeout:.0f} s")

    # -- clean-up ---------------------------------------------------------------------------------

    def stop_fleet(self, fleet: Fleet) -> None:
        try:
            fleet.stop_all(timeout=60)
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            print(f"warning: stopping agents: {exc}", file=sys.stderr)
        for agent in fleet.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait(10)
            with contextlib.suppress(Exception):
                kill_orphan_scripts(agent)

    def close(self) -> None:
        for fleet in self.fleets:
            self.stop_fleet(fleet)
        self.fleets = []
        if self.provider is not None:
            with contextlib.suppress(Exception):
                self.provider.close()
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        for replica in self.servers:
            with contextlib.suppress(Exception):
                replica.stop()
        self.servers = []
        self.server = None
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop()
            self.cluster = None
        if self.keep:
            print(f"kept {self.base}", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGTERM, self._old_sigterm)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- RESULTS.md -----------------------------------------------------------------------------------------

SUMMARY_ROWS = [
    ("makespan_ratio", "Makespan ratio (20 agents, 400 contracts, 1 s script, max_concurrent 1)", "≤ 1.10"),
    ("conflicts_per_contract", "409 per provisioned contract (same run)", "≤ 0.2"),
    ("pickup_p50", "Pickup p50 (creation → lock)", "—"),
    ("pending_p50", "pending-provision p50 (1,000 offerings × 10,000 contracts)", "—"),
    ("idle_rss", "Idle RSS of `dc-agent run` after 60 s", "—"),
    ("help_ratio", "`dc-agent --help` / `python -c pass` (median wall time)", "—"),
    ("cpu_per_contract_sh", "Agents + server + PostgreSQL CPU per contract (`--script sh`, claim)", "≤ 20 ms"),
    ("makespan_ratio_sh", "Makespan ratio, sh script, max_concurrent 1 and 4 (claim)", "≤ 1.05"),
    ("conflicts_mc4", "409s per contract at max_concurrent 4 (sh script, claim)", "0"),
    ("pickup_30s", "Pickup p50 at a 30 s poll interval (claim)", "≤ 50 ms"),
    ("pickup_30s_poll", "Pickup p50 at a 30 s poll interval, poll dispatch (before claim)", "—"),
    ("idle_fleet", "1,000 idle agents on one replica: pool_api CPU, RSS, pickup p50", "≤ 5 % of a core; ≤ 100 ms"),
    ("double_provisions", "Double provisions (2,000 contracts under faults)", "0"),
    ("lost_contracts", "Lost contracts (same run)", "0"),
]
HEADER = """# Benchmark results

Figures recorded by the scripts in `bench/` (see `bench/README.md`). Each section is rewritten by its
script's last full run; the table at the end collects the headline figures.
"""
_SECTION = re.compile(r"<!-- section:(?P<key>[\w-]+) -->\n.*?<!-- /section:(?P=key) -->\n", re.S)
_SUMMARY_DATA = re.compile(r"<!-- summary-data (?P<json>\{.*?\}) -->", re.S)


def record(path: Path | None, key: str | None, title: str, body: str, summary: dict[str, str] | None = None,
           order: list[str] | None = None) -> None:
    """Replace (or add) section `key` of RESULTS.md and update its rows in the closing table."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read() or HEADER
        data_match = _SUMMARY_DATA.search(text)
        data = json.loads(data_match.group("json")) if data_match else {}
        data.update(summary or {})
        sections = {m.group("key"): m.group(0) for m in _SECTION.finditer(text)}
        head = text.split("<!-- section:", 1)[0].split("## Summary", 1)[0].rstrip() + "\n"
        if key is not None:
            sections[key] = f"<!-- section:{key} -->\n## {title}\n\n{body.strip()}\n\n<!-- /section:{key} -->\n"
        keys = order or []
        ordered = [k for k in keys if k in sections] + [k for k in sections if k not in keys]
        out = head + "\n" + "\n".join(sections[k] for k in ordered) + "\n" + summary_table(data)
        fh.seek(0)
        fh.truncate()
        fh.write(out)


SECTION_ORDER = ["issue11", "makespan", "makespan_sh", "makespan_poll", "makespan_sh_poll", "pickup", "pickup_poll",
                 "idle_fleet", "profile", "request_cost", "pending_query", "footprint", "exactly_once", "admin_cli"]


def summary_table(data: dict[str, str]) -> str:
    lines = ["## Summary", "", "| Figure | Result | Target | Run |", "|---|---|---|---|"]
    for key, label, target in SUMMARY_ROWS:
        value = data.get(key, {})
        if isinstance(value, str):
            value = {"value": value}
        lines.append(f"| {label} | {value.get('value', 'not measured yet')} | {target} | {value.get('run', '')} |")
    # the machine-readable copy goes first, so that the file ends with the table
    return "<!-- summary-data " + json.dumps(data, sort_keys=True) + " -->\n\n" + "\n".join(lines) + "\n"


def run_header(command: list[str], started: float, extra: dict[str, Any] | None = None) -> str:
    facts = machine()
    lines = [
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
        f"({time.monotonic() - started:.0f} s)",
        f"- Machine: {facts['cpu']}, {facts['memory']}, {facts['kernel']}; Python {facts['python']}; "
        f"{facts['postgres']}",
        f"- Load average (1, 5, 15 min) at the start: {LOAD_AT_START}; at the end: {loadavg()} (the "
        "benchmark's own processes count; a start above the core count means other work was running)",
        f"- Command: `{' '.join(shlex.quote(a) for a in command)}`",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def add_common_args(parser: Any) -> None:
    parser.add_argument("--quick", action="store_true", help="small sizes (CI: keeps the script from rotting)")
    parser.add_argument("--results", type=Path, default=None,
                        help="RESULTS.md to update (default: bench/RESULTS.md for a full run, none for --quick)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")


def add_dispatch_arg(parser: Any) -> None:
    parser.add_argument("--dispatch", choices=DISPATCH_MODES, default="claim",
                        help="claim: the server advertises claim and the agents long-poll it (the default); poll: "
                             "`serve --no-claim`, the agents poll pending-provision and lock one by one")


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards `wanted` (at most the hard limit; as root the hard
    limit too); children started afterwards inherit it. The soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def results_path(args: Any) -> Path | None:
    if args.no_record:
        return None
    if args.results is not None:
        return args.results
    return None if args.quick else RESULTS


def command_line() -> list[str]:
    return ["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]
