"""End to end: one `dc-agent run` with three provisioners (script as the default, Proxmox against a fakepve process,
Docker on a real dockerd when the machine has one) and `dc-pool-api serve`: each contract is provisioned by the
driver its offering's provisioner type names, and pool_api stores the agent's host inventory and provisioner list
(what the agent page shows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import tomli_w

from pool_api.agent_detail import agent_detail
from pool_api.tables import agent_delegations
from tests.dc_agent.fleet import EXAMPLE, REPO, dc_agent_command, wait_until
from tests.provisioners.test_proxmox_e2e import FakePveProcess
from tests.support.dockerd import docker_daemon  # noqa: F401 - a fixture, asked for by docker_or_none
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider

pytestmark = pytest.mark.slow


def docker_or_none(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("docker_daemon")
    except pytest.skip.Exception:
        return None


def test_contracts_go_to_the_provisioner_of_their_type(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    docker = docker_or_none(request)
    with ExitStack() as stack:
        db = tmp_path / "pool.db"
        server = stack.enter_context(running_pool_api(f"sqlite:///{db}", heartbeat_seconds=2))
        provider = Provider.register(server, name="acme")
        stack.callback(provider.close)
        pool = provider.create_pool("eu-mixed", "europe", "script")
        types = ["script", "proxmox"] + (["docker"] if docker else [])
        for kind in types:
            provider.create_offering(f"vps-{kind}", "DE", provisioner_type=kind, pool_id=pool["poolId"],
                                     cpu_cores=1, memory_mb=1024, storage_gb=10)
        (tmp_path / "pve").mkdir()
        pve = FakePveProcess(tmp_path / "pve", "--agent-on-clone")
        stack.callback(pve.stop)

        config = tmp_path / "hv" / "config.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DC_AGENT_")}
        res = subprocess.run([*dc_agent_command(), "setup", "--token", provider.create_token(pool["poolId"]),
                              "--api-url", server.url, "--config", str(config), "--label", "mixed"],
                             capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        assert res.returncode == 0, res.stderr
        doc = tomllib.loads(config.read_text())
        doc["agent"].update(poll_interval_seconds=0.5, max_concurrent=3)
        vms = tmp_path / "vms"
        doc["provisioner"]["script"] = {
            action_key: [sys.executable, str(EXAMPLE), action, "--dir", str(vms), "--delay", "0"]
            for action_key, action in (("command", "provision"), ("list_command", "list"),
                                       ("terminate_command", "terminate"), ("find_command", "find"))}
        info = pve.info
        doc["provisioners"] = {"pve": {
            "type": "proxmox", "api_url": info["url"], "api_token_id": info["token_id"],
            "api_token_secret": info["token_secret"], "node": info["node"], "template_vmid": info["template_vmid"],
            "storage": "local-lvm", "ca_cert": info["cafile"], "ip_timeout_seconds": 30, "poll_interval_seconds": 0.1}}
        if docker:
            doc["provisioners"]["box"] = {"type": "docker", **docker.settings()}
        config.write_text(tomli_w.dumps(doc))
        log_path = tmp_path / "agent.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*dc_agent_command(), "run", "--config", str(config), "--log-format", "json"],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

        def stop() -> None:
            proc.terminate()
            proc.wait(60)
        stack.callback(stop)

        ids = {kind: provider.create_contract(f"vps-{kind}")[0] for kind in types}

        def provisioned() -> dict[str, Any] | None:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            rows = {c["contractId"]: c for c in json.loads(server.admin("contract", "list", "--json"))}
            return rows if all(rows[c]["status"] == "provisioned" for c in ids.values()) else None

        wait_until(provisioned, 120, "every contract provisioned", interval=0.5)
        for kind, cid in ids.items():
            details = json.loads(server.admin("contract", "show", cid, "--json"))["instanceDetails"]
            assert details["provisioner"] == kind, (kind, details)
        assert len(list(vms.glob("*.json"))) == 1

        engine = sa.create_engine(f"sqlite:///{db}")
        stack.callback(engine.dispose)

        def stored() -> dict[str, Any] | None:
            with engine.begin() as conn:
                pubkey = conn.execute(sa.select(agent_delegations.c.agent_pubkey)).scalar_one()  # the only agent
                shown = agent_detail(conn, provider.pubkey, pubkey, 10**12, 0)
            return shown if shown.get("inventory") and shown.get("provisioners") else None

        shown = wait_until(stored, 60, "the agent's inventory stored", interval=0.5)
        assert shown["inventory"]["cpuThreads"] >= 1 and "local-lvm" in [p["name"] for p in
                                                                           shown["inventory"]["storagePools"]]
        assert {(p["name"], p["type"]) for p in shown["provisioners"]} >= {("script", "script"), ("pve", "proxmox")}
        assert all(p["healthy"] for p in shown["provisioners"]), shown["provisioners"]
