"""Real processes: `dc-pool-api serve` on PostgreSQL and four `dc-agent run` with the script driver.

Each scenario creates 40 contracts (the slow-lease one fewer) and checks, from the script's own record
and from the database, that every contract was provisioned exactly once: no doubles, none lost. The
figures (agents, contracts, doubles, lost, 409s per contract) are printed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.dc_agent.fleet import Fleet, dc_agent_command, wait_until

DIES_WITH_AGENT = shutil.which("setpriv") is not None  # see provisioners/script.py _die_with_agent_prefix


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider

pytestmark = pytest.mark.slow
N_AGENTS = 4
N_CONTRACTS = 40


@contextmanager
def pool_of_agents(pg_url, tmp_path, *, lock_ttl_seconds=60, script_delay=0.5, agent_options=None):
    with running_pool_api(pg_url, lock_ttl_seconds=lock_ttl_seconds, heartbeat_seconds=2,
                          lock_sweep_seconds=1) as server:
        provider = Provider.register(server)
        pool = provider.create_pool("eu-script", "europe", "script")
        provider.create_offering("off-1", "DE", provisioner_type="script", pool_id=pool["poolId"],
                                 cpu_cores=1, memory_mb=1024, storage_gb=10)
        options = {"lock_timeout_seconds": lock_ttl_seconds, **(agent_options or {})}
        fleet = Fleet(tmp_path, server, provider, pool["poolId"], script_delay=script_delay, agent_options=options)
        fleet.add_agents(N_AGENTS)
        try:
            yield fleet
        finally:
            try:
                fleet.stop_all()
            finally:
                provider.close()


def report(capsys, title: str, figures: dict) -> None:
    with capsys.disabled():
        print(f"\n[{title}] " + json.dumps(figures, sort_keys=True))


def assert_exactly_once(fleet: Fleet, ids: list[str], figures: dict) -> None:
    assert figures["lost_db"] == 0, fleet.dump_logs()
    assert figures["doubles_script"] == 0, fleet.dump_logs()
    assert figures["details_match"] == len(ids)
    calls = fleet.script_calls()
    for cid in ids:
        done = [c for c in calls if c["contract"] == cid and c["phase"] == "done" and c["action"] == "provision"]
        assert len(done) <= 1, (cid, done)


class TestFleet:
    def test_four_agents_forty_contracts_each_provisioned_once(self, pg_url, tmp_path, capsys):
        """4 agents share 40 contracts: each is provisioned exactly once and all agents take part."""
        with pool_of_agents(pg_url, tmp_path) as fleet:
            fleet.start_all()
            ids = fleet.provider.create_contract("off-1", N_CONTRACTS)
            fleet.wait_provisioned(ids, timeout=150)
            wait_until(lambda: sum(a.counters().get("provisioned", 0) for a in fleet.agents) == N_CONTRACTS,
                       30, "the agents' counters to catch up")
            figures = fleet.figures(ids)
            report(capsys, "baseline", figures)
            assert_exactly_once(fleet, ids, figures)
            assert figures["doubles_started"] == 0  # nobody even started a contract twice
            assert len(figures["by_agent"]) == N_AGENTS, figures["by_agent"]
            codes = fleet.stop_all()
            assert all(code == 0 for code in codes.values()), codes

            # status --json of a stopped agent: reachable API, counters kept, never a secret
            res = subprocess.run([*dc_agent_command(), "status", "--json", "--config", str(fleet.agents[0].config)],
                                 capture_output=True, text=True, timeout=60)
            status = json.loads(res.stdout)
            assert status["checks"]["apiReachable"] and status["checks"]["signatureAccepted"] is True
            assert status["agent"]["counters"]["provisioned"] >= 1 and not status["agent"]["running"]
            assert res.returncode == 1 and status["checks"]["agentRunning"] is False  # stopped is not healthy
            assert fleet.agents[0].config.parent.joinpath("agent.key").read_text().strip() not in res.stdout

    def test_an_agent_killed_mid_provision_and_restarted(self, pg_url, tmp_path, capsys):
        """SIGKILL one agent while its scripts run; after a restart nothing is doubled or lost."""
        with pool_of_agents(pg_url, tmp_path, script_delay=1.0) as fleet:
            fleet.start_all()
            ids = fleet.provider.create_contract("off-1", N_CONTRACTS)
            victim = fleet.agents[0]
            running = wait_until(lambda: fleet.running_scripts(victim.name), 60, "agent1 to run a script", interval=0.05)
            victim.kill()
            killed_runs = {(r["contract"], r["pid"]) for r in running}
            if DIES_WITH_AGENT:  # parent-death signal: no orphan goes on while the agent is away
                wait_until(lambda: all(_gone(pid) for _, pid in killed_runs), 10, "the runs to die with their agent")
            victim.start()
            rows = fleet.wait_provisioned(ids, timeout=180)
            figures = fleet.figures(ids)
            figures["killed_mid_run"] = len(killed_runs)
            report(capsys, "sigkill", figures)
            assert_exactly_once(fleet, ids, figures)
            for cid, _pid in killed_runs:
                assert rows[cid]["status"] == "provisioned"
            # each run the killed agent left behind finished (and was adopted, not redone), died with it, or
            # was stopped by the restarted agent before it took the contract again
            stopped = {e.get("contract_id") for e in victim.log_events()
                       if str(e.get("event", "")).startswith("stopped a provisioning run left by a previous agent")}
            finished = {c["pid"] for c in fleet.script_calls() if c["phase"] == "done"}
            for cid, pid in killed_runs:
                assert pid in finished or cid in stopped or DIES_WITH_AGENT, (cid, pid, stopped)
                assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

    def test_api_down_for_30_seconds_while_scripts_run(self, pg_url, tmp_path, capsys):
        """Results made while the API is down wait in the outbox and arrive once it is back."""
        with pool_of_agents(pg_url, tmp_path, script_delay=1.0) as fleet:
            fleet.start_all()
            ids = fleet.provider.create_contract("off-1", N_CONTRACTS)
            wait_until(lambda: len(fleet.running_scripts()) >= 4, 60, "4 scripts to run", interval=0.05)
            fleet.server.stop()
            down_at = time.monotonic()
            # While it is down: the running scripts finish and their results wait in the outboxes.
            wait_until(lambda: sum(a.outbox_backlog() for a in fleet.agents) >= 4 and not fleet.running_scripts(),
                       25, "finished results to wait in the outboxes")
            backlog = sum(a.outbox_backlog() for a in fleet.agents)
            fleet.assert_alive()
            wait_until(lambda: time.monotonic() - down_at >= 30, 40, "the 30 s outage to pass", interval=0.5)
            fleet.server.start()
            fleet.wait_provisioned(ids, timeout=180)
            wait_until(lambda: sum(a.outbox_backlog() for a in fleet.agents) == 0, 30, "the outboxes to drain")
            figures = fleet.figures(ids)
            figures["outbox_backlog_during_outage"] = backlog
            report(capsys, "api-down-30s", figures)
            assert backlog >= 4
            assert figures["report_errors"] >= 1
            assert_exactly_once(fleet, ids, figures)

    def test_script_slower_than_the_lock_ttl(self, pg_url, tmp_path, capsys):
        """A 6 s server lock and 15 s scripts: renewal keeps each lock; no second agent starts a contract."""
        n = 6
        with pool_of_agents(pg_url, tmp_path, lock_ttl_seconds=6, script_delay=15.0) as fleet:
            fleet.start_all()
            ids = fleet.provider.create_contract("off-1", n)
            fleet.wait_provisioned(ids, timeout=120)
            figures = fleet.figures(ids)
            report(capsys, "slow-script-6s-lock", figures)
            assert_exactly_once(fleet, ids, figures)
            assert figures["doubles_started"] == 0, fleet.dump_logs()
            assert figures["script_runs"] == n
            assert figures["lost_leases"] == 0
            assert figures["renewals"] >= n * 4  # 15 s / (6 s / 3) = 7 renewals per contract, give or take
