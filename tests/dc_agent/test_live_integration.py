"""Real `dc-agent` processes on the decent-cloud dialect, against the fake of the live Decent Cloud API
(tests/support/live_api.py: a separate process that checks Ed25519ph-with-context signatures with its own
implementation and refuses plain Ed25519).

The scenarios of test_integration.py, on the live API's rules: every contract provisioned exactly once
(by the script's own record), none lost, and each contract reported `provisioned` through the status PUT
exactly once, with `provisioning` before it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
from contextlib import contextmanager
from typing import Any

import pytest

from tests.dc_agent.fleet import REPO, Fleet, dc_agent_command, wait_until
from tests.support.live_api import running_live_api

pytestmark = pytest.mark.slow
N_AGENTS = 3
N_CONTRACTS = 24
DIES_WITH_AGENT = shutil.which("setpriv") is not None


class LiveFleet(Fleet):
    """A Fleet whose tokens and contract records come from the fake live API."""

    def __init__(self, base: Any, server: Any, provider_pubkey: str, pool_id: str, **kwargs: Any) -> None:
        super().__init__(base, server, None, pool_id, **kwargs)
        self.provider_pubkey = provider_pubkey

    def new_token(self, name: str) -> str:
        return self.server.setup_token(self.pool_id, label=name)

    def contracts(self) -> dict[str, dict[str, Any]]:
        """Rows as Fleet.figures reads them: provisioned means provisioned or active (auto-accept)."""
        out = {}
        for row in self.server.contracts():
            details = row.get("provisioning_instance_details")
            try:
                parsed = json.loads(details) if details else {}
            except ValueError:
                parsed = {}
            out[row["contract_id"]] = {
                "status": "provisioned" if row["status"] in ("provisioned", "active") else row["status"],
                "liveStatus": row["status"],
                "instanceDetails": {"externalId": parsed.get("external_id", "")},
                "provisionedBy": row.get("lock_agent") or "",
            }
        return out

    def status_puts(self, cid: str) -> list[str]:
        """The statuses the server accepted for `cid`, in order."""
        return [h.get("status") for h in self.server.contract(cid)["history"]
                if h["kind"] == "status" and h.get("success")]


@contextmanager
def live_pool(tmp_path, *, lock_ttl_seconds=60, script_delay=0.5, agent_options=None):
    with running_live_api(tmp_path / "api", lock_ttl_seconds=lock_ttl_seconds) as server:
        provider, pool_id = server.create_pool(location="europe", provisioner_type="script", name="live-eu")
        offering = server.create_offering(provider, pool_id=pool_id, cpu_cores=1, memory_amount="1 GB",
                                          storage_capacity="10 GB", provisioner_type="script")
        options = {"lock_timeout_seconds": lock_ttl_seconds, "reconcile_interval_seconds": 300, **(agent_options or {})}
        fleet = LiveFleet(tmp_path, server, provider, pool_id, script_delay=script_delay, agent_options=options)
        fleet.offering = offering
        fleet.add_agents(N_AGENTS)
        try:
            yield fleet
        finally:
            fleet.stop_all()


def report(capsys, title: str, figures: dict) -> None:
    with capsys.disabled():
        print(f"\n[live {title}] " + json.dumps(figures, sort_keys=True))


def assert_exactly_once(fleet: LiveFleet, ids: list[str], figures: dict) -> None:
    assert figures["lost_db"] == 0, fleet.dump_logs()
    assert figures["doubles_script"] == 0, fleet.dump_logs()
    assert figures["details_match"] == len(ids)
    for cid in ids:
        puts = fleet.status_puts(cid)
        assert puts.count("provisioned") == 1, (cid, puts)
        assert "provisioning_failed" not in puts, (cid, puts)
        assert puts.index("provisioning") < puts.index("provisioned"), (cid, puts)


def test_setup_detects_the_live_dialect_and_status_proves_the_signature(tmp_path):
    """`dc-agent setup` against the live API writes api_dialect = "decent-cloud"; `status` shows the dialect and
    a signed heartbeat the fake accepted (it refuses anything but Ed25519ph with the decent-cloud context)."""
    with running_live_api(tmp_path / "api") as server:
        _provider, pool_id = server.create_pool(provisioner_type="script")
        config = tmp_path / "hv" / "config.toml"
        res = subprocess.run([*dc_agent_command(), "setup", "--token", server.setup_token(pool_id), "--api-url",
                              server.url, "--config", str(config), "--label", "hv-live"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stderr
        assert "decent-cloud" in res.stdout
        data = tomllib.loads(config.read_text())
        assert data["agent"]["api_dialect"] == "decent-cloud"
        assert (config.parent / "agent.key").stat().st_mode & 0o777 == 0o600
        res = subprocess.run([*dc_agent_command(), "status", "--config", str(config)], capture_output=True,
                             text=True, timeout=60, cwd=REPO)
        assert "decent-cloud (live Decent Cloud API" in res.stdout, res.stdout
        assert "yes (signed heartbeat)" in res.stdout, res.stdout
        beats = [a for a in server.agents() if a.get("heartbeats")]
        assert len(beats) == 1


class TestLiveFleet:
    def test_agents_provision_each_contract_once(self, tmp_path, capsys):
        """3 agents, 24 contracts: each provisioned once, reported provisioning then provisioned once."""
        with live_pool(tmp_path) as fleet:
            fleet.start_all()
            ids = fleet.server.create_contracts(fleet.provider_pubkey, fleet.offering, N_CONTRACTS)
            fleet.wait_provisioned(ids, timeout=150)
            wait_until(lambda: sum(a.counters().get("provisioned", 0) for a in fleet.agents) == N_CONTRACTS,
                       30, "the agents' counters to catch up")
            figures = fleet.figures(ids)
            report(capsys, "baseline", figures)
            assert_exactly_once(fleet, ids, figures)
            assert figures["doubles_started"] == 0
            assert sum(1 for a in fleet.agents if a.counters().get("provisioned")) >= 2  # the work is shared
            rows = fleet.server.contracts()
            assert all(r["status"] == "active" for r in rows if r["contract_id"] in ids)
            codes = fleet.stop_all()
            assert all(code == 0 for code in codes.values()), codes

    def test_an_agent_killed_mid_provision_and_restarted(self, tmp_path, capsys):
        """SIGKILL one agent while its scripts run; its locks lapse (10 s here) and the contracts are adopted
        or provisioned again: nothing doubled, nothing lost."""
        with live_pool(tmp_path, lock_ttl_seconds=10, script_delay=1.0) as fleet:
            fleet.start_all()
            ids = fleet.server.create_contracts(fleet.provider_pubkey, fleet.offering, N_CONTRACTS)
            victim = fleet.agents[0]
            running = wait_until(lambda: fleet.running_scripts(victim.name), 60, "agent1 to run a script",
                                 interval=0.05)
            victim.kill()
            killed = {r["contract"] for r in running}
            victim.start()
            fleet.wait_provisioned(ids, timeout=240)
            figures = fleet.figures(ids)
            figures["killed_mid_run"] = len(killed)
            report(capsys, "sigkill", figures)
            assert_exactly_once(fleet, ids, figures)

    def test_api_down_for_20_seconds_while_scripts_run(self, tmp_path, capsys):
        """Results made while the API is down wait in the outboxes and are reported once it is back."""
        with live_pool(tmp_path, script_delay=1.0) as fleet:
            fleet.start_all()
            ids = fleet.server.create_contracts(fleet.provider_pubkey, fleet.offering, N_CONTRACTS)
            wait_until(lambda: len(fleet.running_scripts()) >= 3, 60, "3 scripts to run", interval=0.05)
            fleet.server.stop()
            down_at = time.monotonic()
            wait_until(lambda: sum(a.outbox_backlog() for a in fleet.agents) >= 3 and not fleet.running_scripts(),
                       25, "finished results to wait in the outboxes")
            backlog = sum(a.outbox_backlog() for a in fleet.agents)
            fleet.assert_alive()
            wait_until(lambda: time.monotonic() - down_at >= 20, 30, "the outage to pass", interval=0.5)
            fleet.server.start()
            fleet.wait_provisioned(ids, timeout=180)
            wait_until(lambda: sum(a.outbox_backlog() for a in fleet.agents) == 0, 30, "the outboxes to drain")
            figures = fleet.figures(ids)
            figures["outbox_backlog_during_outage"] = backlog
            report(capsys, "api-down-20s", figures)
            assert backlog >= 3 and figures["report_errors"] >= 1
            assert_exactly_once(fleet, ids, figures)

    def test_script_slower_than_the_lock_ttl(self, tmp_path, capsys):
        """A 4 s server lock and 10 s scripts: the agents re-lock in time, no second agent starts a contract."""
        n = 4
        with live_pool(tmp_path, lock_ttl_seconds=4, script_delay=10.0) as fleet:
            fleet.start_all()
            ids = fleet.server.create_contracts(fleet.provider_pubkey, fleet.offering, n)
            fleet.wait_provisioned(ids, timeout=120)
            figures = fleet.figures(ids)
            report(capsys, "slow-script-4s-lock", figures)
            assert_exactly_once(fleet, ids, figures)
            assert figures["doubles_started"] == 0, fleet.dump_logs()
            assert figures["script_runs"] == n and figures["lost_leases"] == 0
            assert figures["renewals"] >= n * 4

    def test_bad_answers_are_logged_with_the_endpoint_and_the_loop_goes_on(self, tmp_path):
        """HTML 502 pages, success:false and malformed data from the server: one clear line each, no crash,
        and the contracts are still provisioned once."""
        with live_pool(tmp_path, script_delay=0.2) as fleet:
            server = fleet.server
            server.inject("pending_provision", "html502", count=2 * N_AGENTS)  # every first poll and its retry
            server.inject("pending_provision", "malformed", count=2, data={"not": "a list"})
            server.inject("heartbeat", "refuse", count=2, message="database is busy")
            fleet.start_all()
            ids = server.create_contracts(fleet.provider_pubkey, fleet.offering, 6)
            fleet.wait_provisioned(ids, timeout=120)
            figures = fleet.figures(ids)
            assert_exactly_once(fleet, ids, figures)
            events = [e for a in fleet.agents for e in a.log_events()]
            assert not [e for e in events if "Traceback" in json.dumps(e)], "a traceback was logged"
            lines = [str(e.get("error", "")) for e in events if e.get("event") in (
                "could not fetch pending contracts", "heartbeat failed")]
            assert any("GET /providers/{pk}/contracts/pending-provision" in line and "502 Bad Gateway" in line
                       for line in lines), lines
            assert any("expected a list" in line for line in lines), lines
            assert any("database is busy" in line for line in lines), lines


def test_a_rust_agents_config_imports_and_runs(tmp_path, capsys):
    """A Rust dc-agent 0.6 registered with the live API (its key, its dc-agent.toml, its one-script-per-action
    provisioner) is switched with `dc-agent import-config`, then `dc-agent run` provisions each contract once
    with the same identity and the same script."""
    from nacl.signing import SigningKey

    from tests.dc_agent.fleet import AgentProc
    from tests.dc_agent.test_import_config import rust_key, script_section

    with running_live_api(tmp_path / "api") as server:
        provider, pool_id = server.create_pool(provisioner_type="script", name="rust-pool")
        offering = server.create_offering(provider, pool_id=pool_id, cpu_cores=1, memory_amount="1 GB")
        key_path = rust_key(tmp_path / "root" / ".dc-agent", seed=b"\x42" * 32)
        pubkey = SigningKey(b"\x42" * 32).verify_key.encode().hex()
        import httpx

        answer = httpx.post(f"{server.api_url}/agents/setup", json={"token": server.setup_token(pool_id),
                                                                     "agentPubkey": pubkey}).json()
        assert answer["success"], answer  # the Rust agent's registration, as `dc-agent setup token` does it
        rust = tmp_path / "etc" / "dc-agent.toml"
        rust.parent.mkdir(parents=True)
        rust.write_text(f'[api]\nendpoint = "{server.url}"\nprovider_pubkey = "{provider}"\n'
                        f'agent_secret_key = "{key_path}"\npool_id = "{pool_id}"\n\n'
                        f'[polling]\ninterval_seconds = 1\n\n[provisioner]\n{script_section(tmp_path)}')
        ours = tmp_path / "ours" / "config.toml"
        res = subprocess.run([*dc_agent_command(), "import-config", str(rust), "--config", str(ours)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stdout + res.stderr
        data = tomllib.loads(ours.read_text())
        assert data["agent"]["api_dialect"] == "decent-cloud"
        assert data["provisioner"]["script"]["protocol"] == "rust"
        agent = AgentProc(name="imported", config=ours, log_path=tmp_path / "imported.log")
        agent.start()
        try:
            ids = server.create_contracts(provider, offering, 3)

            def provisioned():
                rows = {r["contract_id"]: r for r in server.contracts()}
                return all(rows[c]["status"] == "active" for c in ids)
            wait_until(provisioned, 90, "the imported agent to provision 3 contracts",
                       details=lambda: agent.log_path.read_text()[-3000:])
            for cid in ids:
                history = server.contract(cid)["history"]
                puts = [h["status"] for h in history if h["kind"] == "status" and h.get("success")]
                assert puts == ["provisioning", "provisioned"], puts
                assert {h["agent_pubkey"] for h in history if h["kind"] == "status"} == {pubkey}
            calls = (tmp_path / "vms" / "calls.log").read_text().split()
            assert calls.count("provision") == 3, calls
        finally:
            agent.stop()
