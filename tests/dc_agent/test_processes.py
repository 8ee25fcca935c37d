"""Single-agent behaviours with real processes: manual hand-off, SIGTERM drain, a revoked agent's lease.

Each runs one `dc-agent run` against a real `dc-pool-api serve` on PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.dc_agent.fleet import Fleet, dc_agent_command, wait_until
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider

pytestmark = pytest.mark.slow


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*dc_agent_command(), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def setup_pool(server, kind: str):
    provider = Provider.register(server)
    pool = provider.create_pool(f"eu-{kind}", "europe", kind)
    provider.create_offering("off-1", "DE", provisioner_type=kind, pool_id=pool["poolId"], cpu_cores=2,
                             memory_mb=2048, storage_gb=20)
    return provider, pool


def test_manual_provisioning_through_the_cli(pg_url, tmp_path):
    """`manual list` shows the held contract; the lock is renewed past its TTL; `manual done` reports it."""
    with running_pool_api(pg_url, lock_ttl_seconds=3, heartbeat_seconds=2, lock_sweep_seconds=1) as server:
        provider, pool = setup_pool(server, "manual")
        fleet = Fleet(tmp_path, server, provider, pool["poolId"],
                      agent_options={"lock_timeout_seconds": 3})
        agent = fleet.add_agent("ops")
        import tomllib

        import tomli_w

        data = tomllib.loads(agent.config.read_text())
        data["provisioner"] = {"type": "manual", "manual": {}}
        agent.config.write_text(tomli_w.dumps(data))
        agent.start()
        try:
            [cid] = provider.create_contract("off-1", 1)
            config = str(agent.config)
            listed = wait_until(lambda: json.loads(cli("manual", "list", "--json", "--config", config).stdout)["waiting"],
                                60, "the contract to wait for an operator")
            assert listed[0]["contractId"] == cid and listed[0]["contract"]["memoryMb"] == 2048
            assert cid in cli("manual", "list", "--config", config).stdout
            # the operator takes longer than the 3 s lock TTL: the agent renews the lock meanwhile
            wait_until(lambda: agent.counters().get("renewals", 0) >= 3, 30, "three renewals")
            row = json.loads(server.admin("contract", "show", cid, "--json"))
            assert row["status"] != "provisioned" and row["lockAgent"] is not None
            out = cli("manual", "done", cid, "--ip", "192.0.2.50", "--ssh-port", "2200", "--config", config).stdout
            assert "Handed" in out
            wait_until(lambda: json.loads(server.admin("contract", "show", cid, "--json"))["status"] == "provisioned",
                       30, "the contract to be provisioned")
            details = json.loads(server.admin("contract", "show", cid, "--json"))["instanceDetails"]
            assert (details["ipAddress"], details["sshPort"], details["provisioner"]) == ("192.0.2.50", 2200, "manual")
            bad = cli("manual", "done", cid, "--ip", "not-an-ip", "--config", config, check=False)
            assert bad.returncode != 0 and "Traceback" not in bad.stderr
        finally:
            assert agent.stop() == 0
            provider.close()


def test_sigterm_drains_then_cancels_and_releases_the_lock(pg_url, tmp_path):
    """SIGTERM: heartbeats go on, after the grace the script's group is killed and the lock released."""
    with running_pool_api(pg_url, lock_ttl_seconds=60, heartbeat_seconds=1, lock_sweep_seconds=1) as server:
        provider, pool = setup_pool(server, "script")
        fleet = Fleet(tmp_path, server, provider, pool["poolId"], script_delay=300,
                      agent_options={"shutdown_grace_seconds": 4, "lock_timeout_seconds": 60})
        agent = fleet.add_agent("drainer")
        agent.start()
        try:
            [cid] = provider.create_contract("off-1", 1)
            [run] = wait_until(lambda: fleet.running_scripts(), 60, "the script to start")
            heartbeats_before = wait_until(lambda: agent.counters().get("heartbeats", 0), 30, "a heartbeat")
            began = time.monotonic()
            agent.signal(signal.SIGTERM)
            code = agent.wait(60)
            took = time.monotonic() - began
            assert code == 0
            assert 3.5 < took < 30, took
            assert agent.counters()["heartbeats"] > heartbeats_before + 1  # heartbeats during the drain
            assert agent.counters()["cancelled_on_shutdown"] == 1
            row = json.loads(server.admin("contract", "show", cid, "--json"))
            assert row["lockAgent"] is None and row["status"] != "provisioned" and row["failureCount"] == 0
            pid = int(run["pid"])
            wait_until(lambda: not _alive(pid), 10, "the script to be killed")
        finally:
            agent.stop()
            provider.close()


def test_revoked_agent_stops_provisioning_and_reports_nothing(pg_url, tmp_path):
    """A renewal refused with 403 (agent revoked) cancels the script and reports nothing."""
    with running_pool_api(pg_url, lock_ttl_seconds=3, heartbeat_seconds=1, lock_sweep_seconds=1) as server:
        provider, pool = setup_pool(server, "script")
        fleet = Fleet(tmp_path, server, provider, pool["poolId"], script_delay=300,
                      agent_options={"lock_timeout_seconds": 3})
        agent = fleet.add_agent("revokee")
        agent.start()
        try:
            [cid] = provider.create_contract("off-1", 1)
            [run] = wait_until(lambda: fleet.running_scripts(), 60, "the script to start")
            status = json.loads(cli("status", "--json", "--config", str(agent.config)).stdout)
            response = provider.request("DELETE", f"/agents/{status['agentPubkey']}")
            assert response.status_code == 200, response.text
            wait_until(lambda: agent.counters().get("lost_leases", 0) == 1, 30, "the lease to be given up")
            wait_until(lambda: not _alive(int(run["pid"])), 15, "the script to be killed")
            row = json.loads(server.admin("contract", "show", cid, "--json"))
            assert row["status"] != "provisioned" and row["failureCount"] == 0
            res = cli("status", "--config", str(agent.config), check=False)
            assert res.returncode == 1 and "signature accepted" in res.stdout and "revoked" in res.stdout
        finally:
            agent.stop()
            provider.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_reconcile_removes_the_instance_of_a_cancelled_contract(pg_url, tmp_path):
    """A cancelled contract's instance is terminated by reconcile and reported; the others are kept."""
    with running_pool_api(pg_url, heartbeat_seconds=2, lock_sweep_seconds=1) as server:
        provider, pool = setup_pool(server, "script")
        fleet = Fleet(tmp_path, server, provider, pool["poolId"], script_delay=0.2,
                      agent_options={"reconcile_interval_seconds": 2})
        agent = fleet.add_agent("reconciler")
        agent.start()
        try:
            keep, cancel = provider.create_contract("off-1", 2)
            fleet.wait_provisioned([keep, cancel], timeout=60)
            server.admin("contract", "cancel", cancel)
            row = wait_until(lambda: (r := json.loads(server.admin("contract", "show", cancel, "--json")))
                             ["terminatedAtNs"] and r, 60, "the cancelled contract to be reported terminated")
            assert row["terminatedBy"] == json.loads(cli("status", "--json", "--config", str(agent.config)).stdout)["agentPubkey"]
            terminated = [c["contract"] for c in fleet.script_calls() if c["action"] == "terminate"]
            assert terminated == [cancel]
            remaining = [json.loads(p.read_text())["contractId"] for p in fleet.vms.glob("*.json")]
            assert remaining == [keep]
            assert json.loads(server.admin("contract", "show", keep, "--json"))["status"] == "provisioned"
        finally:
            agent.stop()
            provider.close()


def test_failed_script_is_reported_with_its_stderr_and_retried(pg_url, tmp_path):
    """A script exiting non-zero reports `failed` with its stderr; the contract is retried and provisioned."""
    with running_pool_api(pg_url, heartbeat_seconds=2, lock_sweep_seconds=1) as server:
        provider, pool = setup_pool(server, "script")
        fleet = Fleet(tmp_path, server, provider, pool["poolId"], script_delay=0.1)
        agent = fleet.add_agent("flaky")
        import tomllib

        import tomli_w

        data = tomllib.loads(agent.config.read_text())
        data["provisioner"]["script"]["command"] += ["--fail-every", "2"]
        agent.config.write_text(tomli_w.dumps(data))
        agent.start()
        try:
            ids = provider.create_contract("off-1", 4)
            rows = fleet.wait_provisioned(ids, timeout=90)
            failures = [rows[c] for c in ids if rows[c]["failureCount"]]
            assert failures, "every second run fails, so some contract failed at least once"
            assert all("no capacity left" in r["lastError"] and "exited with status 3" in r["lastError"]
                       for r in failures)
            assert agent.counters()["failed"] >= 2
            figures = fleet.figures(ids)
            assert figures["doubles_script"] == 0 and figures["lost_db"] == 0
        finally:
            agent.stop()
            provider.close()
