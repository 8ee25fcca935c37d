"""A crash mid-provision (the agent process is SIGKILLed), then `find` from a fresh docker driver.

The provisioning runs in a child process that stalls at one step, so the kill is real: none of the
driver's clean-up runs. Never a second container for the contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from provisioners import Cancelled, Contract, load
from tests.support.dockerd import (  # noqa: F401 - docker_daemon and daemon are fixtures
    Background,
    DockerDaemon,
    Pausing,
    daemon,
    docker_daemon,
    inspect,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl crash@test"
CHILD = """
import json, sys, threading
from provisioners import Contract
from provisioners.docker import DockerProvisioner
settings, cid, step, marker, key = json.loads(sys.argv[1]), *sys.argv[2:6]

class Stalls(DockerProvisioner):
    def checkpoint(self, name, container, cancel):
        if name == step:
            open(marker, "w").write(container)
            threading.Event().wait()
        super().checkpoint(name, container, cancel)

Stalls(settings).provision(Contract(contract_id=cid, cpu_cores=1, memory_mb=64, requester_ssh_pubkey=key),
                           threading.Event())
"""


def killed_at(daemon: DockerDaemon, tmp_path: Path, contract_id: str, step: str) -> str:
    """Run a provisioning in a child process, SIGKILL it once it reached `step`; the container's name."""
    marker = tmp_path / f"{step}.reached"
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(daemon.settings()), contract_id, step,
                              str(marker), KEY], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: child.poll() is not None or (marker.exists() and marker.read_text()),
                 f"the child to reach step {step}", timeout=60)
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
    finally:
        child.kill()
        child.wait(30)
    return marker.read_text()


def ours(daemon: DockerDaemon) -> list[dict[str, Any]]:
    return daemon.containers()


@pytest.fixture
def contract_id() -> str:
    return f"crash-{uuid.uuid4().hex[:8]}"


def test_killed_before_the_start_find_removes_it_and_provision_makes_one(daemon, tmp_path, contract_id):
    """Killed after the create and the key, before the start: find removes the half-made container and
    returns None; provisioning again makes exactly one container."""
    name = killed_at(daemon, tmp_path, contract_id, "keys_installed")
    (left,) = ours(daemon)
    assert left["Names"] == [f"/{name}"] and left["State"] == "created"

    drv = load("docker", daemon.settings())
    assert drv.find(contract_id) is None
    assert ours(daemon) == []
    details = drv.provision(Contract(contract_id=contract_id, requester_ssh_pubkey=KEY), threading.Event())
    assert [c["Id"] for c in ours(daemon)] == [details.external_id]


def test_killed_after_the_start_find_adopts_the_running_container(daemon, tmp_path, contract_id):
    """Killed once the container runs: find adopts it (same container, renamed to its own attempt) with
    the host port it was made with; a second find returns the same one."""
    name = killed_at(daemon, tmp_path, contract_id, "started")
    (left,) = ours(daemon)
    assert left["State"] == "running"

    drv = load("docker", daemon.settings())
    found = drv.find(contract_id)
    assert found is not None and found.external_id == left["Id"]
    attrs = inspect(daemon, found.external_id)
    assert found.ssh_port == int(attrs["HostConfig"]["PortBindings"]["22/tcp"][0]["HostPort"])
    assert found.ip_address == "127.0.0.1"
    assert attrs["Name"].lstrip("/") == found.extra["name"] != name
    again = drv.find(contract_id)
    assert again is not None and again.external_id == found.external_id
    assert [i.contract_id for i in drv.list_instances()] == [contract_id]


def test_an_adopted_container_survives_the_attempt_that_made_it(daemon, contract_id):
    """An attempt that lost its lease is cancelled after another agent adopted its running container:
    its clean-up (by its own container name) no longer removes the adopted container."""
    first = Pausing(daemon.settings())
    first.pause_at = "started"
    cancel = threading.Event()
    call = Background(lambda: first.provision(Contract(contract_id=contract_id), cancel))
    assert first.reached.wait(60)
    found = load("docker", daemon.settings()).find(contract_id)
    assert found is not None
    cancel.set()
    first.resume.set()
    assert isinstance(call.join(60), Cancelled), call.error
    assert [c["Id"] for c in ours(daemon)] == [found.external_id]
    assert inspect(daemon, found.external_id)["State"]["Running"]


def test_find_removes_a_stopped_container(daemon, contract_id):
    """A stopped container of the contract may be half made: find removes it and returns None."""
    drv = load("docker", daemon.settings())
    details = drv.provision(Contract(contract_id=contract_id), threading.Event())
    drv.stop(details.external_id)
    assert drv.find(contract_id) is None
    assert ours(daemon) == []
