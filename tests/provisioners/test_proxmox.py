"""The Proxmox driver against a fake PVE 9 (fakepve) over TLS, verified with the fake's own certificate."""

from __future__ import annotations

import functools
import threading
import time
import urllib.parse
from typing import Any

import pytest

from provisioners import Cancelled, ConfigError, Contract, ProvisionError, load
from provisioners.proxmox import GuestAgentTimeout, ProxmoxProvisioner
from tests.support.fakepve_server import TEMPLATE_VMID, FakePveServer, fake, make_fake  # noqa: F401 - fixtures
from tests.support.wait import wait_until

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG+/x9=Qk alice@laptop"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC+7/yz:w== bob@example.org"


def contract(cid: str = "ctr-0001", **kw: Any) -> Contract:
    values: dict[str, Any] = dict(contract_id=cid, offering_id="off-1", requester_ssh_pubkey=KEY_A,
                                  cpu_cores=2, memory_mb=2048, storage_gb=20)
    values.update(kw)
    return Contract(**values)


def driver(fake: FakePveServer, **overrides: Any) -> ProxmoxProvisioner:
    drv = load("proxmox", fake.settings(**overrides))
    assert isinstance(drv, ProxmoxProvisioner)
    return drv


def requests_to(fake: FakePveServer, method: str, suffix: str) -> list[tuple[str, str, bytes]]:
    return [r for r in list(fake.pve.requests) if r[0] == method and r[1].endswith(suffix)]


# Helper threads act at one point of the provisioning: poll finely.
wait_until = functools.partial(wait_until, timeout=20.0, interval=0.005)


def assert_no_secret(fake: FakePveServer, text: str) -> None:
    assert fake.token_secret not in text


class TestHappyPath:
    def test_provision_returns_the_vm_and_its_addresses(self, fake: FakePveServer) -> None:
        """A contract becomes one running VM, tagged and described with the contract, sized as ordered."""
        details = driver(fake).provision(contract(), threading.Event())

        (vm,) = fake.vms()
        assert details.external_id == f"pve1/{vm.vmid}"
        assert details.provisioner == "proxmox" and details.node == "pve1" and details.ssh_port == 22
        assert details.ip_address == f"10.20.0.{vm.vmid + 2}"  # eth0 (net0's MAC), not docker0 or lo
        assert details.ipv6_address == f"2001:db8:20::{vm.vmid:x}"  # not the link-local one
        assert vm.status == "running"
        cfg = vm.config
        assert cfg["name"] == "dc-ctr-0001"
        assert "dc-agent contract: ctr-0001" in cfg["description"]
        assert {"dc-agent", "dc-contract-ctr-0001"} <= set(cfg["tags"].split(";"))
        assert str(cfg["cores"]) == "2" and str(cfg["memory"]) == "2048"
        assert cfg["ipconfig0"] == "ip=dhcp"
        resize = requests_to(fake, "PUT", f"/qemu/{vm.vmid}/resize")
        assert len(resize) == 1 and b"size=20G" in resize[0][2] and b"disk=scsi0" in resize[0][2]
        assert details.to_api()["externalId"] == details.external_id

    def test_full_clone_on_the_configured_storage(self, fake: FakePveServer) -> None:
        """The clone request is a full clone onto `storage`, with the contract's name and description."""
        driver(fake).provision(contract(), threading.Event())
        (clone,) = requests_to(fake, "POST", f"/qemu/{TEMPLATE_VMID}/clone")
        body = urllib.parse.parse_qs(clone[2].decode())
        assert body["full"] == ["1"] and body["storage"] == ["local-lvm"] and body["name"] == ["dc-ctr-0001"]

    def test_disk_is_not_shrunk(self, fake: FakePveServer) -> None:
        """A contract smaller than the template's 10 GiB disk leaves the disk alone."""
        driver(fake).provision(contract(storage_gb=5), threading.Event())
        assert requests_to(fake, "PUT", "/resize") == []

    def test_sshkeys_encoded_as_pve_wants(self, fake: FakePveServer) -> None:
        """sshkeys is strictly percent-encoded (spaces, +, /, =, :, @ and the newline between keys)."""
        driver(fake, ciuser="debian").provision(contract(requester_ssh_pubkey=f"{KEY_A}\r\n\n{KEY_B}\n"),
                                                threading.Event())
        (vm,) = fake.vms()
        stored = vm.config["sshkeys"]
        assert urllib.parse.unquote(stored) == f"{KEY_A}\n{KEY_B}"
        assert stored == urllib.parse.quote(f"{KEY_A}\n{KEY_B}", safe="")
        for raw in (" ", "+", "/", "=", ":", "@", "\n"):
            assert raw not in stored
        assert "%0A" in stored and "%2B" in stored and "%2F" in stored
        assert vm.config["ciuser"] == "debian"

    def test_contract_overrides_template_and_storage(self, fake: FakePveServer) -> None:
        """provisionerConfig of the offering picks another template and storage."""
        from tests.support.fakepve_server import add_template

        fake.do(add_template, fake.pve, vmid=9100)
        fake.pve.storages["fast"] = {"type": "lvmthin", "active": 1, "content": "images", "files": set(),
                                     "vgname": "fast", "thinpool": "data"}
        driver(fake).provision(contract(provisioner_config={"template_vmid": 9100, "storage": "fast"}),
                               threading.Event())
        (clone,) = requests_to(fake, "POST", "/clone")
        assert clone[1].endswith("/qemu/9100/clone") and b"storage=fast" in clone[2]
        (vm,) = fake.vms()
        assert vm.config["scsi0"].startswith("fast:")

    def test_bridge_and_ipconfig_from_settings(self, fake: FakePveServer) -> None:
        """`bridge` moves net0 (MAC kept); `ipconfig0` replaces the DHCP default."""
        driver(fake, bridge="vmbr1", ipconfig0="ip=dhcp,ip6=auto").provision(contract(), threading.Event())
        (vm,) = fake.vms()
        assert "bridge=vmbr1" in vm.config["net0"] and vm.config["net0"].lower().startswith("virtio=bc:24:11")
        assert vm.config["ipconfig0"] == "ip=dhcp,ip6=auto"


class TestFailuresLeaveNothing:
    def test_clone_task_fails(self, fake: FakePveServer) -> None:
        """A clone task that ends in TASK ERROR is reported with its exit status; no VM is left."""
        fake.pve.storages["local-lvm"]["avail"] = 1024**3  # 1 GiB free, the template's disk is 10 GiB
        with pytest.raises(ProvisionError, match=r"clone of template 9000 to VM \d+ failed: task exit status: "
                                                 r"clone failed: .*No space left on device") as err:
            driver(fake).provision(contract(), threading.Event())
        assert fake.vms() == []
        assert_no_secret(fake, str(err.value))

    def test_clone_task_fails_and_leaves_the_vm(self, fake: FakePveServer) -> None:
        """When a failed clone leaves its VM behind, the driver destroys it."""
        fake.pve.clone_error = "clone failed: disk copy aborted"
        with pytest.raises(ProvisionError, match=r"task exit status: clone failed: disk copy aborted; VM \d+ removed"):
            driver(fake).provision(contract(), threading.Event())
        assert fake.vms() == []
        assert any(m == "DELETE" and f"/qemu/" in p for m, p, _ in fake.pve.requests)

    def test_guest_agent_never_answers(self, fake: FakePveServer) -> None:
        """No guest agent: failed after ip_timeout_seconds, told apart from API errors, no VM left."""
        fake.pve.agent_on_clone = False
        drv = driver(fake, ip_timeout_seconds=1.5)
        started = time.monotonic()
        with pytest.raises(GuestAgentTimeout, match=r"guest agent never answered within 1.5 s on VM \d+") as err:
            drv.provision(contract(), threading.Event())
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 15
        assert "removed" in str(err.value)
        assert fake.vms() == []

    def test_guest_agent_answers_without_an_address(self, fake: FakePveServer) -> None:
        """An agent that only reports loopback, link-local and docker addresses is a different failure."""
        fake.pve.agent_on_clone = False
        drv = driver(fake, ip_timeout_seconds=1)

        def agent_without_dhcp() -> None:
            wait_until(lambda: fake.vms())
            fake.vms()[0].agent = {"interfaces": [
                {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4"}]},
                {"name": "docker0", "ip-addresses": [{"ip-address": "172.17.0.1", "ip-address-type": "ipv4"}]},
                {"name": "eth0", "ip-addresses": [{"ip-address": "fe80::1", "ip-address-type": "ipv6"}]},
            ]}

        helper = threading.Thread(target=agent_without_dhcp)
        helper.start()
        with pytest.raises(GuestAgentTimeout, match="answered but reported no usable IPv4 address within 1 s"):
            drv.provision(contract(), threading.Event())
        helper.join()
        assert fake.vms() == []

    def test_api_error_after_clone(self, fake: FakePveServer) -> None:
        """An API error while writing the VM's config names the step and PVE's message; the VM is destroyed."""
        fake.pve.fail("PUT", "/config", 500, "unable to parse value of 'cores'", times=2)
        with pytest.raises(ProvisionError, match=r"Proxmox API error while tagging VM \d+: 500 .*unable to parse") as err:
            driver(fake).provision(contract(), threading.Event())
        assert not isinstance(err.value, GuestAgentTimeout)
        assert fake.vms() == []
        assert_no_secret(fake, str(err.value))

    def test_start_task_fails(self, fake: FakePveServer) -> None:
        """A start task that fails (a missing disk, say) is reported with its exit status; no VM left."""
        original = fake.pve.task

        async def task(node, ttype, tid, user, body, vm=None, lock=True, log=()):  # noqa: ANN001
            if ttype == "qmstart" and vm is not None:
                vm.start_error = "volume 'local-lvm:vm-100-disk-0' does not exist"
            return await original(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

        fake.pve.task = task  # type: ignore[method-assign]
        with pytest.raises(ProvisionError, match=r"start of VM \d+ failed: task exit status: .*does not exist"):
            driver(fake).provision(contract(), threading.Event())
        assert fake.vms() == []

    def test_task_timeout(self, make_fake) -> None:  # noqa: ANN001
        """A clone that outlasts task_timeout_seconds fails (and is removed once it ends)."""
        fake = make_fake(0.01, clone_secs=150)  # 1.5 s real
        with pytest.raises(ProvisionError, match=r"clone of template 9000 to VM \d+: the task did not finish within 0.5 s"):
            driver(fake, task_timeout_seconds=0.5).provision(contract(), threading.Event())
        assert fake.vms() == []

    def test_template_missing(self, fake: FakePveServer) -> None:
        """A template VMID that does not exist fails before anything is made."""
        with pytest.raises(ProvisionError, match="template VM 4242 not found"):
            driver(fake, template_vmid=4242).provision(contract(), threading.Event())
        assert fake.vms() == []


class TestLocksAndRaces:
    def test_config_lock_timeout_is_retried(self, fake: FakePveServer) -> None:
        """"can't lock file … got timeout" on a config write is waited out and retried."""
        fake.pve.fail("PUT", "/config", 500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
                      times=2)
        details = driver(fake).provision(contract(), threading.Event())
        assert details.ip_address
        assert len(fake.vms()) == 1

    def test_clone_lock_timeout_is_retried(self, fake: FakePveServer) -> None:
        """A clone refused because the template's config lock is busy is retried."""
        fake.pve.fail("POST", f"/qemu/{TEMPLATE_VMID}/clone", error="config_lock_timeout", times=1)
        driver(fake).provision(contract(), threading.Event())
        assert len(requests_to(fake, "POST", "/clone")) == 2
        assert len(fake.vms()) == 1

    def test_vm_locked_by_a_backup_is_waited_for(self, make_fake) -> None:  # noqa: ANN001
        """A VM whose config is locked after the clone (a backup job) is waited for, then configured."""
        fake = make_fake(0.01)
        original = fake.pve.task

        async def task(node, ttype, tid, user, body, vm=None, lock=True, log=()):  # noqa: ANN001
            upid = await original(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)
            if ttype == "qmclone":
                import asyncio

                async def later() -> None:
                    while vm.lock == "clone":
                        await asyncio.sleep(0.005)
                    await fake.pve.backup(vm.vmid, secs=50)  # 0.5 s real

                asyncio.ensure_future(later())
            return upid

        fake.pve.task = task  # type: ignore[method-assign]
        details = driver(fake).provision(contract(), threading.Event())
        assert details.ip_address and len(fake.vms()) == 1

    def test_two_agents_race_for_the_same_vmid(self, fake: FakePveServer) -> None:
        """Two agents get the same VMID from nextid at once; the loser retries, both succeed, distinct VMIDs."""
        fake.pve.nextid_barrier = 2
        # Two agents = two processes: each has its own process-local lock. Spell the URL apart so the
        # drivers here do not share one (the certificate names both 127.0.0.1 and localhost).
        one = driver(fake)
        two = driver(fake, api_url=fake.url.replace("127.0.0.1", "localhost"))
        results: dict[str, Any] = {}

        def run(name: str, drv: ProxmoxProvisioner) -> None:
            try:
                results[name] = drv.provision(contract(name), threading.Event())
            except Exception as exc:  # noqa: BLE001
                results[name] = exc

        threads = [threading.Thread(target=run, args=(n, d)) for n, d in (("ctr-a", one), ("ctr-b", two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(not isinstance(r, Exception) for r in results.values()), results
        ids = {results["ctr-a"].external_id, results["ctr-b"].external_id}
        assert len(ids) == 2
        assert len(fake.vms()) == 2 and all(vm.status == "running" for vm in fake.vms())
        clones = requests_to(fake, "POST", "/clone")
        assert len(clones) == 3  # one lost the race and cloned again with a new VMID

    def test_threads_of_one_agent_do_not_race(self, fake: FakePveServer) -> None:
        """Several contracts at once in one process: the local lock means no clone is refused."""
        drv = driver(fake)
        out: list[Any] = []
        threads = [threading.Thread(target=lambda i=i: out.append(drv.provision(contract(f"ctr-{i}"), threading.Event())))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len({d.external_id for d in out}) == 4
        assert len(requests_to(fake, "POST", "/clone")) == 4
        assert len(fake.vms()) == 4

    def test_vmid_range(self, fake: FakePveServer) -> None:
        """With vmid_range the VMIDs come from that range, skipping ids in use."""
        fake.pve.add_vm(5000, "someone-else", status="running")
        drv = driver(fake, vmid_range=[5000, 5001])
        details = drv.provision(contract(), threading.Event())
        assert details.external_id == "pve1/5001"
        with pytest.raises(ProvisionError, match="no free VMID left in vmid_range 5000-5001"):
            drv.provision(contract("ctr-0002"), threading.Event())


class TestCancel:
    def test_cancel_during_clone(self, make_fake) -> None:  # noqa: ANN001
        """Cancel while the clone task runs: the clone is waited out, then the VM destroyed; Cancelled."""
        fake = make_fake(0.01, clone_secs=100)  # 1 s real
        cancel = threading.Event()

        def cancel_when_cloning() -> None:
            wait_until(lambda: fake.vms() and fake.vms()[0].lock == "clone")
            cancel.set()

        threading.Thread(target=cancel_when_cloning, daemon=True).start()
        with pytest.raises(Cancelled, match=r"provisioning cancelled; VM \d+ removed"):
            driver(fake).provision(contract(), cancel)
        assert fake.vms() == []

    def test_cancel_while_waiting_for_the_address(self, fake: FakePveServer) -> None:
        """Cancel while waiting for the guest agent: stopped within a poll, VM stopped and destroyed."""
        fake.pve.agent_on_clone = False
        cancel = threading.Event()

        def cancel_when_running() -> None:
            wait_until(lambda: requests_to(fake, "GET", "/agent/network-get-interfaces"))
            cancel.set()

        threading.Thread(target=cancel_when_running, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            driver(fake, ip_timeout_seconds=60).provision(contract(), cancel)
        assert time.monotonic() - started < 20  # not the 60 s ip_timeout
        assert fake.vms() == []

    def test_cancel_before_start(self, fake: FakePveServer) -> None:
        """A cancel already set makes nothing."""
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            driver(fake).provision(contract(), cancel)
        assert requests_to(fake, "POST", "/clone") == []


class TestHandOver:
    """An agent whose lease expired may still be running when another agent adopts its VM with find."""

    @staticmethod
    def adopt_when_waiting(fake: FakePveServer) -> Any:
        """Once the driver polls the guest agent, rewrite the VM's attempt as another agent's find does."""
        from provisioners.proxmox_guest import description

        wait_until(lambda: requests_to(fake, "GET", "/agent/network-get-interfaces"))
        (vm,) = fake.vms()
        vm.config["description"] = description("ctr-0001", "adopted-by-someone-else")
        return vm

    def test_cleanup_leaves_an_adopted_vm_alone(self, fake: FakePveServer) -> None:
        """Cancelled after another provisioning adopted the VM: the VM is not destroyed."""
        fake.pve.agent_on_clone = False
        cancel = threading.Event()

        def adopt_then_cancel() -> None:
            self.adopt_when_waiting(fake)
            cancel.set()

        threading.Thread(target=adopt_then_cancel, daemon=True).start()
        with pytest.raises(Cancelled, match=r"no longer\) this attempt's, so it was left alone"):
            driver(fake, ip_timeout_seconds=60).provision(contract(), cancel)
        assert len(fake.vms()) == 1 and fake.vms()[0].status == "running"

    def test_no_success_for_an_adopted_vm(self, fake: FakePveServer) -> None:
        """The address arrives after another provisioning adopted the VM: no success, VM kept."""
        from tests.support.fakepve_server import guest_interfaces

        fake.pve.agent_on_clone = False

        def adopt_then_boot() -> None:
            vm = self.adopt_when_waiting(fake)
            vm.agent = {"interfaces": guest_interfaces(vm)}

        threading.Thread(target=adopt_then_boot, daemon=True).start()
        with pytest.raises(ProvisionError, match=r"was adopted by another provisioning of this contract"):
            driver(fake, ip_timeout_seconds=60).provision(contract(), threading.Event())
        assert len(fake.vms()) == 1

    def test_find_takes_the_vm_over(self, fake: FakePveServer) -> None:
        """find marks an adopted VM as its own, so the attempt that made it will leave it alone."""
        from provisioners.proxmox_guest import attempt_of_description

        drv = driver(fake)
        drv.provision(contract(), threading.Event())
        before = attempt_of_description(fake.vms()[0].config["description"])
        assert drv.find("ctr-0001") is not None
        after = attempt_of_description(fake.vms()[0].config["description"])
        assert before and after and after != before and after.startswith("adopted-")


class TestFindListTerminate:
    def test_list_instances_sees_only_ours(self, fake: FakePveServer) -> None:
        """Foreign VMs, a VM with a look-alike tag and the template are not listed."""
        drv = driver(fake)
        made = drv.provision(contract("ctr-x"), threading.Event())
        fake.pve.add_vm(700, "web", status="running", config={"tags": "prod;web"})
        fake.pve.add_vm(701, "dc-ctr-y", status="running", config={"tags": "dc-contract-ctr-y"})
        fake.pve.add_vm(702, "tmpl-2", template=True, config={"tags": "dc-agent"})
        instances = drv.list_instances()
        assert [(i.external_id, i.contract_id) for i in instances] == [(made.external_id, "ctr-x")]

    def test_contract_id_survives_the_tag_charset(self, fake: FakePveServer) -> None:
        """A contract id outside PVE's tag charset is escaped in the tag and read back exactly."""
        cid = "Ctr/ÄB:42 x"
        drv = driver(fake)
        drv.provision(contract(cid), threading.Event())
        (inst,) = drv.list_instances()
        assert inst.contract_id == cid
        assert drv.find(cid) is not None

    def test_find_returns_the_running_vm(self, fake: FakePveServer) -> None:
        drv = driver(fake)
        made = drv.provision(contract(), threading.Event())
        found = drv.find("ctr-0001")
        assert found is not None and found.external_id == made.external_id and found.ip_address == made.ip_address
        assert drv.find("ctr-other") is None
        assert len(fake.vms()) == 1

    def test_find_destroys_a_stopped_half_made_vm(self, fake: FakePveServer) -> None:
        """A stopped VM of the contract (crash before start) is removed and find returns None."""
        drv = driver(fake)
        drv.provision(contract(), threading.Event())
        (vm,) = fake.vms()
        vm.status = vm.qmpstatus = "stopped"
        assert drv.find("ctr-0001") is None
        assert fake.vms() == []

    def test_find_ignores_a_foreign_vm_with_the_same_name(self, fake: FakePveServer) -> None:
        fake.pve.add_vm(800, "dc-ctr-0001", status="stopped", config={"description": "mine, hands off"})
        assert driver(fake).find("ctr-0001") is None
        assert [vm.vmid for vm in fake.vms()] == [800]

    def test_terminate(self, fake: FakePveServer) -> None:
        """terminate stops and destroys; a second terminate (already gone) is fine."""
        drv = driver(fake)
        made = drv.provision(contract(), threading.Event())
        drv.terminate(made.external_id)
        assert fake.vms() == []
        drv.terminate(made.external_id)
        drv.terminate("pve1/4321")
        assert any(m == "POST" and p.endswith("/status/stop") for m, p, _ in fake.pve.requests)

    def test_terminate_refuses_a_vm_that_is_not_ours(self, fake: FakePveServer) -> None:
        fake.pve.add_vm(900, "prod-db", status="running")
        with pytest.raises(ProvisionError, match="refusing to destroy VM 900"):
            driver(fake).terminate("pve1/900")
        assert [vm.vmid for vm in fake.vms()] == [900]

    def test_terminate_bad_id(self, fake: FakePveServer) -> None:
        with pytest.raises(ProvisionError, match="not a Proxmox instance id"):
            driver(fake).terminate("pve1/abc")


class TestHealthAndTls:
    def test_health_ok(self, fake: FakePveServer) -> None:
        health = driver(fake).health()
        assert health.ok, health
        assert health.checks == {"api_reachable": True, "token_accepted": True, "template_present": True}

    def test_health_bad_token(self, fake: FakePveServer) -> None:
        health = driver(fake, api_token_secret="wrong").health()
        assert not health.ok and health.checks["api_reachable"] and not health.checks["token_accepted"]
        assert "token rejected" in health.detail and "wrong" not in health.detail

    def test_health_template_missing(self, fake: FakePveServer) -> None:
        health = driver(fake, template_vmid=4242).health()
        assert not health.ok and health.checks["token_accepted"] and not health.checks["template_present"]

    def test_health_not_a_template(self, fake: FakePveServer) -> None:
        fake.pve.add_vm(4243, "plain", status="stopped")
        health = driver(fake, template_vmid=4243).health()
        assert not health.ok and "not a template" in health.detail

    def test_tls_is_verified(self, fake: FakePveServer, tmp_path) -> None:  # noqa: ANN001
        """Without the fake's certificate as CA, TLS verification fails (the system CAs do not know it)."""
        drv = driver(fake, ca_cert=None)
        health = drv.health()
        assert not health.ok and not health.checks["api_reachable"]
        assert "TLS verification failed" in health.detail
        with pytest.raises(ProvisionError, match="TLS verification failed"):
            drv.provision(contract(), threading.Event())

    def test_unreachable(self, fake: FakePveServer) -> None:
        health = driver(fake, api_url="https://127.0.0.1:1").health()
        assert not health.ok and not health.checks["api_reachable"]
        assert "cannot connect" in health.detail

    def test_ca_cert_relative_to_the_config_file(self, fake: FakePveServer, tmp_path) -> None:  # noqa: ANN001
        import shutil

        shutil.copy(fake.cafile, tmp_path / "pve-ca.pem")
        (tmp_path / "token").write_text(fake.token_secret + "\n")
        settings = fake.settings(ca_cert="pve-ca.pem", api_token_secret=None, api_token_secret_file="token")
        drv = load("proxmox", settings, config_path=tmp_path / "config.toml")
        assert drv.health().ok

    def test_config_error_names_the_key(self, fake: FakePveServer) -> None:
        with pytest.raises(ConfigError, match=r"^\[provisioner.proxmox\] ca_cert: .* does not exist"):
            load("proxmox", fake.settings(ca_cert="/nonexistent/ca.pem"))


class TestLeastPrivilege:
    """The README's roles and ACLs are enough (fakepve checks PVE 9's permission rules per call)."""

    TOKEN = "dc-agent@pve!provisioning"
    # README, "Create the API token": role -> privileges, and where each role is granted.
    ROLES = {
        "DCAgentVM": ("VM.Allocate", "VM.Audit", "VM.Config.Options", "VM.Config.CPU", "VM.Config.Memory",
                      "VM.Config.Cloudinit", "VM.Config.Disk", "VM.PowerMgmt", "VM.GuestAgent.Audit",
                      "VM.GuestAgent.FileRead", "VM.GuestAgent.FileWrite"),
        "DCAgentTemplate": ("VM.Clone", "VM.Audit"),
        "DCAgentStorage": ("Datastore.AllocateSpace",),
        "DCAgentNet": ("SDN.Use",),
        "DCAgentPassword": ("VM.GuestAgent.Unrestricted",),  # only for password resets (README)
    }
    ACLS = (("/pool/dc-vms", "DCAgentVM"), (f"/vms/{TEMPLATE_VMID}", "DCAgentTemplate"),
            ("/storage/local-lvm", "DCAgentStorage"), ("/sdn/zones/localnetwork/vmbr0", "DCAgentNet"))
    PASSWORD_ACL = ("/pool/dc-vms", "DCAgentPassword")  # the README's optional grant for password resets

    def grant_readme_acls(self, fake: FakePveServer, *, skip: str = "", password: bool = False) -> None:
        fake.pve.pools["dc-vms"] = set()
        for path, role in self.ACLS + ((self.PASSWORD_ACL,) if password else ()):
            privs = [p for p in self.ROLES[role] if p != skip]
            for who in (self.TOKEN, self.TOKEN.split("!")[0]):  # privilege separation: token and its user
                fake.pve.grant(who, path, *privs)

    def test_readme_privileges_suffice(self, fake: FakePveServer) -> None:
        self.grant_readme_acls(fake)
        drv = driver(fake, pool="dc-vms")
        assert drv.health().ok
        made = drv.provision(contract(), threading.Event())
        assert made.ip_address
        assert [i.contract_id for i in drv.list_instances()] == ["ctr-0001"]
        assert drv.find("ctr-0001") is not None
        drv.terminate(made.external_id)
        assert fake.vms() == []

    def test_missing_guest_agent_privilege_is_named(self, fake: FakePveServer) -> None:
        self.grant_readme_acls(fake, skip="VM.GuestAgent.Audit")
        with pytest.raises(ProvisionError, match=r"403 .*VM.GuestAgent.Audit.*; VM \d+ removed"):
            driver(fake, pool="dc-vms").provision(contract(), threading.Event())
        assert fake.vms() == []

    def test_clone_refused_without_the_pool_grant(self, fake: FakePveServer) -> None:
        """Without VM.Allocate on the pool (or /vms), the clone is refused with PVE's 403; nothing made."""
        self.grant_readme_acls(fake, skip="VM.Allocate")
        with pytest.raises(ProvisionError, match=r"while cloning template 9000 to VM \d+: 403"):
            driver(fake, pool="dc-vms").provision(contract(), threading.Event())
        assert fake.vms() == []
