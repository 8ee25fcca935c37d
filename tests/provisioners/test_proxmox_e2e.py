"""End to end: pool_api + two `dc-agent run` processes configured for proxmox against one fakepve process.

Every piece is a real process: `dc-pool-api serve` (SQLite), two `dc-agent run`, and fakepve (served by
tests/support/fakepve_server.py with its own TLS certificate, which the agents verify through
`ca_cert`). Clones get a guest agent (``--agent-on-clone``), so each VM reports an address that is a
function of its VMID; the test checks that each contract's reported IP is its own VM's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

try:
    import tomli_w

    from dc_agent.commands import run as _agent_run  # noqa: F401 - `dc-agent run` exists
    from tests.support.pool_server import PoolServer, running_pool_api
    from tests.support.provider import Provider
except ImportError as exc:  # pragma: no cover - only while the agent or the server is not in the repo
    pytest.skip(f"end-to-end proxmox tests need dc-agent run and tests/support/pool_server.py: {exc}",
                allow_module_level=True)


from proxmoxer import ProxmoxAPI  # noqa: E402 - after the skip

from provisioners.proxmox_guest import contract_tag  # noqa: E402
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
DEADLINE = 120.0


def dc_agent_command() -> list[str]:
    for candidate in (Path(sys.executable).parent / "dc-agent", ROOT / ".venv" / "bin" / "dc-agent"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "dc_agent.cli"]


class FakePveProcess:
    """tests/support/fakepve_server.py in its own process; `info` holds url, cafile and token."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir / "fakepve.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.fakepve_server",
                                          "--state-dir", str(state_dir), *args],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        ready = state_dir / "fakepve.json"
        wait_until(lambda: ready.exists() or self.proc.poll() is not None, 30, "fakepve start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"fakepve exited: {self.log_path.read_text(errors='replace')[-3000:]}")
        self.info: dict[str, Any] = json.loads(ready.read_text())

    def api(self) -> ProxmoxAPI:
        host, port = self.info["url"].removeprefix("https://").rsplit(":", 1)
        return ProxmoxAPI(host, port=int(port), user="root@pam", password="secret",
                          verify_ssl=self.info["cafile"], timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


class AgentProcess:
    def __init__(self, directory: Path, server: PoolServer, provider: Provider, pool_id: str, label: str,
                 pve: FakePveProcess, *, lock_timeout: float) -> None:
        self.dir = directory
        self.config = directory / "config.toml"
        self.log_path = directory / "agent.log"
        token = provider.create_token(pool_id, label=label)
        setup = subprocess.run([*dc_agent_command(), "setup", "--token", token, "--api-url", server.url,
                                "--config", str(self.config), "--label", label],
                               capture_output=True, text=True, cwd=ROOT, timeout=120, env=self._env())
        assert setup.returncode == 0, setup.stderr
        doc = tomllib.loads(self.config.read_text())
        doc["agent"].update(poll_interval_seconds=0.5, lock_timeout_seconds=lock_timeout, max_concurrent=3,
                            reconcile_interval_seconds=3600, shutdown_grace_seconds=5, log_level="info")
        doc["provisioner"] = {"type": "proxmox", "proxmox": {
            "api_url": pve.info["url"], "api_token_id": pve.info["token_id"],
            "api_token_secret": pve.info["token_secret"], "node": pve.info["node"],
            "template_vmid": pve.info["template_vmid"], "storage": "local-lvm", "ca_cert": pve.info["cafile"],
            "ip_timeout_seconds": 30, "task_timeout_seconds": 60, "poll_interval_seconds": 0.1,
        }}
        self.config.write_text(tomli_w.dumps(doc))
        os.chmod(self.config, 0o600)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([*dc_agent_command(), "run", "--config", str(self.config),
                                          "--log-format", "json"],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self._env())
        finally:
            log.close()

    @staticmethod
    def _env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DC_AGENT_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def counters(self) -> dict[str, int]:
        """The agent's own counters (state/status.json), once it has stopped."""
        return json.loads((self.dir / "state" / "status.json").read_text()).get("counters", {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def start_world(stack: ExitStack, tmp_path: Path, *, lock_ttl: int, pve_args: tuple[str, ...],
                agents: int = 2) -> tuple[PoolServer, Provider, FakePveProcess, list[AgentProcess]]:
    server = stack.enter_context(running_pool_api(f"sqlite:///{tmp_path / 'pool.db'}",
                                                  lock_ttl_seconds=lock_ttl, lock_sweep_seconds=0.2))
    provider = Provider.register(server, name="acme")
    stack.callback(provider.close)
    pool = provider.create_pool("eu-proxmox", "europe", "proxmox")
    provider.create_offering("vps-eu", "DE", cpuCores=2, memoryMb=2048, storageGb=20, price=5.0)
    (tmp_path / "pve").mkdir()
    pve = FakePveProcess(tmp_path / "pve", *pve_args)
    stack.callback(pve.stop)
    procs = []
    for i in range(agents):
        d = tmp_path / f"agent-{i}"
        d.mkdir()
        agent = AgentProcess(d, server, provider, pool["poolId"], f"node-{i}", pve, lock_timeout=lock_ttl)
        stack.callback(agent.stop)
        procs.append(agent)
    return server, provider, pve, procs


def contracts(server: PoolServer) -> list[dict[str, Any]]:
    return json.loads(server.admin("contract", "list", "--json"))


def expected_ip(vmid: int) -> str:
    return f"10.20.{vmid // 250}.{vmid % 250 + 2}"  # tests.support.fakepve_server.guest_interfaces


def our_vms(pve: FakePveProcess) -> list[dict[str, Any]]:
    return [r for r in pve.api().cluster.resources.get(type="vm") if not r.get("template")]


def clone_tasks(pve: FakePveProcess) -> list[dict[str, Any]]:
    tasks = pve.api().nodes(pve.info["node"]).tasks.get(limit=1000)
    return [t for t in tasks if t.get("type") == "qmclone"]


def check_one_vm_per_contract(server: PoolServer, pve: FakePveProcess, ids: list[str],
                              agents: list[AgentProcess]) -> dict[str, Any]:
    logs = lambda: "\n".join(a.log()[-3000:] for a in agents)  # noqa: E731
    wait_until(lambda: {c["contractId"] for c in contracts(server) if c["status"] == "provisioned"} >= set(ids),
               timeout=DEADLINE, what="every contract provisioned", details=logs)
    shown = {cid: json.loads(server.admin("contract", "show", cid, "--json")) for cid in ids}
    vms = our_vms(pve)
    assert len(vms) == len(ids), vms
    assert all(vm["status"] == "running" for vm in vms)
    by_vmid = {int(vm["vmid"]): vm for vm in vms}
    for cid, contract in shown.items():
        details = contract["instanceDetails"]
        node, vmid = details["externalId"].split("/")
        vm = by_vmid[int(vmid)]
        assert details["provisioner"] == "proxmox" and details["node"] == node == vm["node"]
        assert details["ipAddress"] == expected_ip(int(vmid)), (cid, details)
        assert details["ipv6Address"] and details["sshPort"] == 22
        assert {"dc-agent", contract_tag(cid)} <= set(vm["tags"].split(";"))
    assert len({c["instanceDetails"]["externalId"] for c in shown.values()}) == len(ids)
    return shown


def test_two_agents_n_contracts_n_vms(stack: ExitStack, tmp_path: Path) -> None:
    """Two agents, one fakepve, N contracts: exactly N running VMs, each contract's own IP reported."""
    server, provider, pve, agents = start_world(stack, tmp_path, lock_ttl=30, pve_args=("--agent-on-clone",))
    n = 8
    ids = provider.create_contract("vps-eu", n)
    assert len(ids) == n
    check_one_vm_per_contract(server, pve, ids, agents)
    assert len(clone_tasks(pve)) == n  # nobody cloned a contract twice
    for agent in agents:
        assert agent.proc.poll() is None, agent.log()[-3000:]
        agent.stop()
        assert agent.proc.returncode == 0, agent.log()[-3000:]
    counters = [a.counters() for a in agents]
    assert sum(c.get("provisioned", 0) for c in counters) == n
    assert sum(c.get("lost_leases", 0) + c.get("failed", 0) for c in counters) == 0


def test_clone_slower_than_the_lock_ttl(stack: ExitStack, tmp_path: Path) -> None:
    """Each clone takes longer than the lock TTL: the holder renews the lock, no other agent clones it."""
    ttl = 2
    server, provider, pve, agents = start_world(
        stack, tmp_path, lock_ttl=ttl,
        pve_args=("--agent-on-clone", "--time-scale", "0.01", "--clone-secs", "500"))  # 5 s per clone
    ids = provider.create_contract("vps-eu", 3)
    check_one_vm_per_contract(server, pve, ids, agents)
    clones = clone_tasks(pve)
    assert len(clones) == len(ids), clones
    assert all(t.get("status") == "OK" for t in clones)
    assert all(int(t["endtime"]) - int(t["starttime"]) >= 2 * ttl for t in clones), clones
    for agent in agents:
        agent.stop()
    counters = [a.counters() for a in agents]
    assert sum(c.get("provisioned", 0) for c in counters) == len(ids)
    assert sum(c.get("lost_leases", 0) for c in counters) == 0
    # Each 5 s clone outlives the 2 s lock: the holder renewed it (every TTL/3), so the lock never
    # expired and the other agent, polling every 0.5 s, never cloned the same contract (clone count above).
    assert sum(c.get("renewals", 0) for c in counters) >= 2 * len(ids)
