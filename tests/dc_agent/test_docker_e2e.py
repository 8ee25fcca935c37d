"""End to end with the docker driver: `dc-pool-api serve` on PostgreSQL, two `dc-agent run` processes with
`[provisioner] type = "docker"` on one real dockerd (tests/support/dockerd.py: ports on 127.0.0.1 only), the
test SSH image.

The daemon is the truth: each contract has exactly one running container carrying its label, that container
is the externalId the agent reported, and the reported 127.0.0.1:port reaches its sshd with the contract's
key. Doubles that a reconcile might have removed again still show in the daemon's create events. An agent
SIGKILLed the moment one of its containers starts is restarted: the container it had started is the one the
contract keeps (reported, or adopted through find), nothing doubled. A cancelled contract's container is
removed by reconcile and the contract reported terminated.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from provisioners.docker import LABEL_AGENT, LABEL_CONTRACT
from tests.dc_agent.fleet import AgentProc, Fleet, wait_until
from tests.provisioners.test_docker import host_key_line, logs_in
from tests.support.dockerd import TEST_LABEL, DockerDaemon, daemon, docker_daemon  # noqa: F401 - fixtures
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider

pytestmark = pytest.mark.slow
LOCK_TTL = 10  # a lock the killed agent held lapses after this (its restart may take it back sooner)
OPTIONS = {"poll_interval_seconds": 0.5, "max_concurrent": 2, "reconcile_interval_seconds": 1,
           "lock_timeout_seconds": LOCK_TTL, "shutdown_grace_seconds": 10}


class DockerFleet(Fleet):
    """Agents whose [provisioner] is the docker driver on the test daemon, each with its own agent label."""

    def __init__(self, *args: Any, docker: DockerDaemon, image: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = docker
        self.image = image

    def agent_label(self, name: str) -> str:
        return f"{self.daemon.session}-{name}"

    def provisioner_section(self, name: str, written: dict[str, Any]) -> dict[str, Any]:
        settings = self.daemon.settings(default_image=self.image, agent_label=self.agent_label(name),
                                        labels={TEST_LABEL: self.daemon.session})  # the fixture cleans these up
        return {"type": "docker", "docker": settings}

    def containers_by_contract(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in self.daemon.containers():
            contract = (c.get("Labels") or {}).get(LABEL_CONTRACT)
            if contract:
                out[contract].append(c)
        return dict(out)

    def creates_by_contract(self, since: float) -> Counter[str]:
        """How many containers the daemon created per contract since `since` (removed ones included)."""
        with self.daemon.api() as api:
            events = api.events(since=f"{since:.3f}", until=f"{time.time():.3f}", decode=True,
                                filters={"type": "container", "event": "create",
                                         "label": f"{TEST_LABEL}={self.daemon.session}"})
            return Counter((e.get("Actor") or {}).get("Attributes", {}).get(LABEL_CONTRACT) for e in events)


def tenant_key(folder: Path) -> tuple[Path, str]:
    path = folder / "tenant"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tenant@test", "-f", str(path)],
                   check=True, capture_output=True)
    return path, (folder / "tenant.pub").read_text().strip()


def check_one_container_each(fleet: DockerFleet, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Exactly one running container per contract, the one reported (externalId, 127.0.0.1:published port)."""
    rows = fleet.contracts()
    by_contract = fleet.containers_by_contract()
    for cid in ids:
        found = by_contract.get(cid, [])
        assert len(found) == 1, (cid, [(c["Id"][:12], c["State"]) for c in found], fleet.dump_logs())
        (container,) = found
        details = rows[cid]["instanceDetails"]
        assert container["State"] == "running", (cid, container["State"])
        assert details["externalId"] == container["Id"] and details["provisioner"] == "docker", (cid, details)
        published = [p for p in container["Ports"] if p.get("PrivatePort") == 22 and p.get("PublicPort")]
        assert [(p["IP"], p["PublicPort"]) for p in published] == [("127.0.0.1", details["sshPort"])], published
        assert details["ipAddress"] == "127.0.0.1"
    stray = set(by_contract) - set(rows)
    assert not stray, f"containers of contracts the server does not know: {stray}"
    return rows


class KillOnStart:
    """Watches the daemon's events; the moment a container of `victim` starts, SIGKILLs that agent."""

    def __init__(self, fleet: DockerFleet, victim: AgentProc) -> None:
        self.victim = victim
        self.started: dict[str, str] = {}  # the container that started: contract id, container id
        self.error: BaseException | None = None
        self._api = fleet.daemon.api()
        self._stream = self._api.events(decode=True, filters={
            "type": "container", "event": "start", "label": f"{LABEL_AGENT}={fleet.agent_label(victim.name)}"})
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            for event in self._stream:
                self.victim.kill()
                attributes = (event.get("Actor") or {}).get("Attributes", {})
                self.started = {"contract": attributes[LABEL_CONTRACT], "container": event["id"]}
                return
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def close(self) -> None:
        self._stream.close()
        self._thread.join(10)
        self._api.close()


def test_two_docker_agents_one_daemon(pg_url, tmp_path, daemon, capsys):
    image = daemon.image("ssh")
    key_path, pubkey = tenant_key(tmp_path)
    with running_pool_api(pg_url, lock_ttl_seconds=LOCK_TTL, heartbeat_seconds=2, lock_sweep_seconds=1) as server:
        provider = Provider.register(server)
        try:
            pool = provider.create_pool("eu-docker", "europe", "docker")
            provider.create_offering("box-1", "DE", provisioner_type="docker", pool_id=pool["poolId"],
                                     cpu_cores=1, memory_mb=256, storage_gb=1)
            fleet = DockerFleet(tmp_path, server, provider, pool["poolId"], agent_options=OPTIONS,
                                docker=daemon, image=image)
            fleet.add_agents(2)
            since = time.time() - 1
            fleet.start_all()
            try:
                run(fleet, provider, pubkey, key_path, since, capsys)
            finally:
                fleet.stop_all()
        finally:
            provider.close()


def run(fleet: DockerFleet, provider: Provider, pubkey: str, key_path: Path, since: float, capsys: Any) -> None:
    server = fleet.server
    # 1. eight contracts, two agents: each contract one container, the one reported; both agents took part
    ids = provider.create_contract("box-1", 8, "--ssh-pubkey", pubkey)
    fleet.wait_provisioned(ids, timeout=60)
    rows = check_one_container_each(fleet, ids)
    by_agent = Counter(rows[c]["provisionedBy"] for c in ids)
    assert len(by_agent) == 2, by_agent
    assert set(fleet.creates_by_contract(since)) == set(ids)
    assert all(n == 1 for n in fleet.creates_by_contract(since).values()), fleet.creates_by_contract(since)

    details = rows[ids[0]]["instanceDetails"]  # the contract's key logs in through 127.0.0.1:<published port>
    known = key_path.parent / "known_hosts"
    known.write_text(host_key_line(fleet.daemon, details["externalId"], details["sshPort"]))
    login = logs_in(details["sshPort"], known, key=key_path)
    with fleet.daemon.api() as api:
        assert login.stdout.strip() == api.inspect_container(details["externalId"])["Config"]["Hostname"]

    # 2. SIGKILL agent1 the moment one of its containers starts (before it could report it), restart it
    victim = fleet.agents[0]
    watcher = KillOnStart(fleet, victim)
    try:
        more = provider.create_contract("box-1", 4, "--ssh-pubkey", pubkey)
        wait_until(lambda: watcher.started or watcher.error, 60, "a container of agent1 to start")
    finally:
        watcher.close()
    assert watcher.error is None, watcher.error
    killed_on = watcher.started
    reported_before_kill = fleet.contracts()[killed_on["contract"]]["status"] == "provisioned"
    took_on = {e.get("contract_id") for e in victim.log_events() if e.get("event") == "provisioning"}
    victim.start()
    everything = ids + more
    rows = fleet.wait_provisioned(everything, timeout=90)
    rows = check_one_container_each(fleet, everything)
    # the container started before the kill is the contract's container: reported, or adopted after the restart
    assert rows[killed_on["contract"]]["instanceDetails"]["externalId"] == killed_on["container"], fleet.dump_logs()
    creates = fleet.creates_by_contract(since)
    redone = {c: n for c, n in creates.items() if n > 1}
    assert set(redone) <= took_on and all(n == 2 for n in redone.values()), (redone, took_on)  # an unstarted one
    events = [e for a in fleet.agents for e in a.log_events()]
    assert not [e for e in events if e.get("event") == "terminated"], "reconcile removed a container"
    adopted = sum(a.counters().get("adopted", 0) for a in fleet.agents)

    # 3. cancel one contract: reconcile removes its container and reports it terminated; the rest stay
    gone = ids[1]
    server.admin("contract", "cancel", gone)
    wait_until(lambda: gone not in fleet.containers_by_contract(), 30, "the cancelled contract's container removed",
               details=fleet.dump_logs)
    wait_until(lambda: fleet.contracts()[gone]["status"] == "terminated", 30, "the contract reported terminated")
    rest = [c for c in everything if c != gone]
    assert set(fleet.containers_by_contract()) == set(rest)
    check_one_container_each(fleet, rest)
    fleet.assert_alive()
    codes = fleet.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    with capsys.disabled():
        print("\n[docker e2e] " + json.dumps({
            "contracts": len(everything), "by_agent": {k[:8]: v for k, v in by_agent.items()},
            "killed_on": killed_on["contract"], "reported_before_kill": reported_before_kill,
            "redone_unstarted": len(redone), "adopted": adopted}, sort_keys=True))
