"""A crash mid-provision (the agent process is SIGKILLed), then `find` from a fresh driver.

The provisioning runs in a child process against the fake in this process, so the crash is real: no
clean-up code of the driver runs.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from provisioners import Contract, load
from tests.support.fakepve_server import FakePveServer, fake, guest_interfaces, make_fake  # noqa: F401 - fixtures
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import json, sys, threading
from provisioners import Contract, load
settings, cid = json.loads(sys.argv[1]), sys.argv[2]
load("proxmox", settings).provision(Contract(contract_id=cid, cpu_cores=1, memory_mb=1024, storage_gb=10,
                                             requester_ssh_pubkey="ssh-ed25519 AAAA k@h"), threading.Event())
"""


wait_until = functools.partial(wait_until, timeout=60.0, interval=0.01)


def start_child(fake: FakePveServer, cid: str, **overrides: Any) -> subprocess.Popen[bytes]:
    settings = fake.settings(**overrides)
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(settings), cid], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def clones(fake: FakePveServer) -> int:
    return sum(1 for m, p, _ in list(fake.pve.requests) if m == "POST" and p.endswith("/clone"))


def agent_requests(fake: FakePveServer) -> int:
    return sum(1 for m, p, _ in list(fake.pve.requests) if m == "GET" and p.endswith("/network-get-interfaces"))


def kill(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait(30)


def test_crash_while_waiting_for_the_address_then_find_adopts(fake: FakePveServer) -> None:
    """Killed after the VM started: find finishes it (waits for the IP) and returns it; no second VM."""
    fake.pve.agent_on_clone = False
    child = start_child(fake, "ctr-crash-1", ip_timeout_seconds=120)
    try:
        wait_until(lambda: agent_requests(fake) > 0)
    finally:
        kill(child)
    (vm,) = fake.vms()
    assert vm.status == "running"

    drv = load("proxmox", fake.settings(ip_timeout_seconds=30))
    asked_before = agent_requests(fake)

    def guest_boots() -> None:  # the guest agent comes up while find is already waiting for it
        wait_until(lambda: agent_requests(fake) > asked_before)
        vm.agent = {"interfaces": guest_interfaces(vm)}

    booted = threading.Thread(target=guest_boots)
    booted.start()
    found = drv.find("ctr-crash-1")
    booted.join(60)

    assert found is not None
    assert found.external_id == f"pve1/{vm.vmid}" and found.ip_address == f"10.20.0.{vm.vmid + 2}"
    assert len(fake.vms()) == 1 and clones(fake) == 1
    assert [i.contract_id for i in drv.list_instances()] == ["ctr-crash-1"]


def test_crash_during_the_clone_then_find_removes_it_and_provision_makes_one(make_fake) -> None:  # noqa: ANN001
    """Killed while the clone task runs: find waits for the clone, destroys the half-made VM, returns None;
    provisioning again makes exactly one VM."""
    fake = make_fake(0.01, clone_secs=100)  # 1 s real
    child = start_child(fake, "ctr-crash-2")
    try:
        wait_until(lambda: fake.vms() and fake.vms()[0].lock == "clone")
    finally:
        kill(child)

    drv = load("proxmox", fake.settings())
    assert drv.find("ctr-crash-2") is None
    assert fake.vms() == []

    details = drv.provision(Contract(contract_id="ctr-crash-2", cpu_cores=1, memory_mb=1024), threading.Event())
    assert details.ip_address
    assert len(fake.vms()) == 1 and clones(fake) == 2


def test_crash_after_clone_before_tagging_is_found_by_name(fake: FakePveServer) -> None:
    """A clone with no tags yet (killed between clone and tagging) is still recognised by its name and
    description, and removed."""
    fake.pve.add_vm(150, "dc-ctr-crash-3", status="stopped",
                    config={"description": "dc-agent contract: ctr-crash-3\n", "net0": "virtio=BC:24:11:00:00:07"})
    drv = load("proxmox", fake.settings())
    assert drv.find("ctr-crash-3") is None
    assert fake.vms() == []
