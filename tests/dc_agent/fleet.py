"""Real `dc-agent` processes against a real `dc-pool-api serve`, for the integration tests.

    fleet = Fleet(tmp_path, server, provider, pool_id, script_delay=0.5)
    fleet.add_agents(4)                # `dc-agent setup` with a fresh token each, then the script driver
    fleet.start_all()
    ids = provider.create_contract("off-1", 40)
    fleet.wait_provisioned(ids)        # polls `dc-pool-api contract list --json` with a deadline
    figures = fleet.figures(ids)       # doubles / lost / 409s, from the script's record and the database
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "script-provisioner.py"


def dc_agent_command() -> list[str]:
    for candidate in (Path(sys.executable).parent / "dc-agent", REPO / ".venv" / "bin" / "dc-agent"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "dc_agent.cli"]


wait_until = functools.partial(wait_until, interval=0.25)


@dataclass
class AgentProc:
    name: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.config.parent / "state"

    def start(self) -> None:
        env = {**os.environ, "DC_AGENT_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
        env.pop("DC_AGENT_CONFIG", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([*dc_agent_command(), "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        finally:
            log.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.exits.append(code)
        self.proc = None
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 90) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.wait(1)
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(10)
            raise

    def status_file(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def counters(self) -> dict[str, int]:
        return self.status_file().get("counters", {})

    def in_progress(self) -> dict[str, Any]:
        return self.status_file().get("inProgress", {})

    def outbox_backlog(self) -> int:
        return len(list((self.state_dir / "outbox").glob("*.json")))

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "non-json", "line": line})
        return out


class Fleet:
    def __init__(self, base: Path, server: Any, provider: Any, pool_id: str, *, script_delay: float = 0.5,
                 agent_options: dict[str, Any] | None = None) -> None:
        self.base = base
        self.server = server
        self.provider = provider
        self.pool_id = pool_id
        self.vms = base / "vms"
        self.calls = base / "calls.log"
        self.script_delay = script_delay
        self.agent_options = {"poll_interval_seconds": 0.5, "max_concurrent": 2, "shutdown_grace_seconds": 30,
                              "reconcile_interval_seconds": 300, **(agent_options or {})}
        self.agents: list[AgentProc] = []

    def script_settings(self, name: str) -> dict[str, Any]:
        def argv(action: str, *extra: str) -> list[str]:
            return [sys.executable, str(EXAMPLE), action, "--dir", str(self.vms), "--log", str(self.calls), *extra]

        return {"command": argv("provision", "--delay", str(self.script_delay)), "find_command": argv("find"),
                "list_command": argv("list"), "terminate_command": argv("terminate"),
                "timeout_seconds": 600, "kill_grace_seconds": 2, "env": {"AGENT_NAME": name}}

    def provisioner_section(self, name: str, written: dict[str, Any]) -> dict[str, Any]:
        """Agent `name`'s [provisioner] table (`written` is what `dc-agent setup` wrote): the script driver here;
        a subclass returns another driver's table."""
        return {**written, "script": self.script_settings(name)}

    def new_token(self, name: str) -> str:
        return self.provider.create_token(self.pool_id, label=name)

    def add_agent(self, name: str) -> AgentProc:
        token = self.new_token(name)
        config = self.base / name / "config.toml"
        res = subprocess.run([*dc_agent_command(), "setup", "--token", token, "--api-url", self.server.url,
                              "--config", str(config), "--label", name],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stderr
        data = tomllib.loads(config.read_text())
        data["agent"].update(self.agent_options)
        data["provisioner"] = self.provisioner_section(name, data["provisioner"])
        config.write_text(tomli_w.dumps(data))
        agent = AgentProc(name=name, config=config, log_path=self.base / f"{name}.log")
        self.agents.append(agent)
        return agent

    def add_agents(self, n: int) -> list[AgentProc]:
        return [self.add_agent(f"agent{i + 1}") for i in range(n)]

    def start_all(self) -> None:
        for agent in self.agents:
            agent.start()

    def stop_all(self, timeout: float = 90) -> dict[str, int | None]:
        """One SIGTERM to each running agent (a second would force the stop), then wait for each."""
        signalled = []
        for agent in self.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.signal(signal.SIGTERM)
                signalled.append(agent)
        codes: dict[str, int | None] = {agent.name: None for agent in self.agents}
        for agent in self.agents:
            if agent.proc is None:
                continue
            try:
                codes[agent.name] = agent.wait(timeout)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.wait(10)
                raise
        return codes

    # -- observing ---------------------------------------------------------------------------------

    def contracts(self) -> dict[str, dict[str, Any]]:
        return {c["contractId"]: c for c in json.loads(self.server.admin("contract", "list", "--json"))}

    def wait_provisioned(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            self.assert_alive()
            rows = self.contracts()
            return rows if all(rows[c]["status"] == "provisioned" for c in ids) else None

        return wait_until(done, timeout, f"{len(ids)} contracts to be provisioned", interval=0.5)

    def assert_alive(self) -> None:
        for agent in self.agents:
            if agent.proc is not None and agent.proc.poll() is not None:
                raise AssertionError(f"{agent.name} exited with {agent.proc.returncode}:\n"
                                     + agent.log_path.read_text(errors="replace")[-3000:])

    def script_calls(self) -> list[dict[str, str]]:
        if not self.calls.exists():
            return []
        out = []
        for line in self.calls.read_text().splitlines():
            ts, action, phase, cid, agent, pid = line.split("\t")
            out.append({"ts": ts, "action": action, "phase": phase, "contract": cid, "agent": agent, "pid": pid})
        return out

    def running_scripts(self, agent: str | None = None) -> list[dict[str, str]]:
        """Provision runs that started and have not finished (by the script's own record)."""
        finished = {(c["contract"], c["pid"]) for c in self.script_calls() if c["phase"] in ("done", "fail")}
        return [c for c in self.script_calls() if c["phase"] == "start" and (c["contract"], c["pid"]) not in finished
                and (agent is None or c["agent"] == agent)]

    def figures(self, ids: list[str]) -> dict[str, Any]:
        """Doubles and lost, counted from the script's record and from the database; 409s per contract."""
        rows = self.contracts()
        calls = self.script_calls()
        done = Counter(c["contract"] for c in calls if c["action"] == "provision" and c["phase"] == "done")
        starts = Counter(c["contract"] for c in calls if c["action"] == "provision" and c["phase"] == "start")
        terminated = Counter(c["contract"] for c in calls if c["action"] == "terminate")
        conflicts = sum(a.counters().get("lock_conflicts", 0) for a in self.agents)
        counters: Counter[str] = Counter()
        for agent in self.agents:
            counters.update(agent.counters())
        provisioned_db = [c for c in ids if rows[c]["status"] == "provisioned"]
        details_ok = [c for c in provisioned_db if (rows[c].get("instanceDetails") or {}).get("externalId", "").startswith(f"demo-{c}@")]
        return {
            "agents": len(self.agents),
            "contracts": len(ids),
            "provisioned_db": len(provisioned_db),
            "details_match": len(details_ok),
            "doubles_script": sum(1 for c in ids if done[c] - terminated[c] > 1),
            "doubles_started": sum(1 for c in ids if starts[c] > 1),
            "lost_db": len(ids) - len(provisioned_db),
            "lost_script": sum(1 for c in ids if done[c] == 0 and rows[c]["status"] == "provisioned"
                               and counters.get("adopted", 0) == 0),
            "script_runs": sum(starts[c] for c in ids),
            "conflicts_409": conflicts,
            "conflicts_per_contract": round(conflicts / max(1, len(ids)), 2),
            "by_agent": dict(Counter(rows[c].get("provisionedBy", "")[:8] for c in provisioned_db)),
            "adopted": counters.get("adopted", 0),
            "renewals": counters.get("renewals", 0),
            "lost_leases": counters.get("lost_leases", 0),
            "report_errors": counters.get("report_errors", 0),
        }

    def dump_logs(self) -> str:
        parts = []
        for agent in self.agents:
            parts.append(f"--- {agent.name}\n" + agent.log_path.read_text(errors="replace")[-2500:])
        return "\n".join(parts)
