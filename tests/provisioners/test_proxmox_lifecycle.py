"""The Proxmox driver's lifecycle actions (health, stop/start, password, SSH key) against fakepve over TLS."""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from typing import Any

import pytest

import tests.provisioners.test_proxmox as base
from provisioners import ProvisionError
from provisioners.proxmox import ProxmoxProvisioner
from tests.support.fakepve_server import FakePveServer, fake, make_fake  # noqa: F401 - fixtures
from tests.support.pool_server import REPO

KEY_A, KEY_B = base.KEY_A, base.KEY_B
KEY_C = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeepMeKeepMeKeepMeKeepMeKeepMeKeepMe0 carol@desk"
PASSWORD = "n3w-Pa55word-for-tenant"


def provisioned(fake: FakePveServer, **settings: Any) -> tuple[ProxmoxProvisioner, Any, str]:
    """A driver, and a running VM it made for a contract (guest agent answering)."""
    drv = base.driver(fake, **settings)
    details = drv.provision(base.contract(), threading.Event())
    (vm,) = fake.vms()
    return drv, vm, details.external_id


def agent_calls(vm: Any, command: str) -> list[dict[str, Any]]:
    return [values for name, values in vm.agent_requests if name == command]


def power_requests(fake: FakePveServer, action: str) -> list[tuple[str, str, bytes]]:
    return base.requests_to(fake, "POST", f"/status/{action}")


class TestCheckInstance:
    def test_running_with_guest_agent_is_healthy(self, fake: FakePveServer) -> None:
        """Running + a guest-agent ping: healthy, with the ping's latency."""
        drv, vm, ext = provisioned(fake)
        health = drv.check_instance(ext)
        assert health.status == "healthy" and health.latency_ms is not None and health.latency_ms >= 0
        assert f"VM {vm.vmid} running; guest agent answered" in health.detail
        assert agent_calls(vm, "ping")

    def test_stopped_and_missing_are_unhealthy(self, fake: FakePveServer) -> None:
        drv, vm, ext = provisioned(fake)
        vm.status = vm.qmpstatus = "stopped"
        health = drv.check_instance(ext)
        assert (health.status, health.detail) == ("unhealthy", f"VM {vm.vmid} is stopped")
        assert not agent_calls(vm, "ping")
        drv.terminate(ext)
        gone = drv.check_instance(ext)
        assert gone.status == "unhealthy" and "does not exist" in gone.detail

    def test_guest_agent_not_answering_is_unhealthy(self, fake: FakePveServer) -> None:
        """A running VM whose agent is not running, or hangs, is unhealthy and says so."""
        drv, vm, ext = provisioned(fake)
        vm.agent = None
        health = drv.check_instance(ext)
        assert health.status == "unhealthy"
        assert re.search(r"is running but its guest agent does not answer: 500 .*QEMU guest agent is not running",
                         health.detail), health.detail
        vm.agent, vm.agent_hangs = {}, True
        hung = drv.check_instance(ext)
        assert hung.status == "unhealthy" and "got timeout" in hung.detail

    def test_api_unreachable_is_unknown(self, fake: FakePveServer) -> None:
        """No answer from the API (or an error reading the status): unknown, not unhealthy."""
        drv, vm, ext = provisioned(fake)
        down = base.driver(fake, api_url="https://127.0.0.1:1").check_instance(ext)
        assert down.status == "unknown" and "cannot connect to the Proxmox API" in down.detail
        fake.pve.fail("GET", f"/qemu/{vm.vmid}/status/current", 500, "cfs-lock timeout", times=1)
        flaky = drv.check_instance(ext)
        assert flaky.status == "unknown" and "cfs-lock timeout" in flaky.detail
        base.assert_no_secret(fake, down.detail + flaky.detail)

    def test_refuses_a_vm_without_our_tag(self, fake: FakePveServer) -> None:
        fake.pve.add_vm(900, "prod-db", status="running")
        drv = base.driver(fake)
        for action in (drv.check_instance, drv.stop, drv.start):
            with pytest.raises(ProvisionError, match="refusing to .* VM 900: it does not carry the dc-agent tag"):
                action("pve1/900")
        with pytest.raises(ProvisionError, match="refusing"):
            drv.set_password("pve1/900", PASSWORD)
        with pytest.raises(ProvisionError, match="refusing"):
            drv.rotate_ssh_key("pve1/900", KEY_B, KEY_A)
        assert fake.pve.vms[-1].status == "running" and power_requests(fake, "stop") == []


class TestStopStart:
    def test_stop_by_acpi_keeps_the_disk_and_start_brings_it_back(self, fake: FakePveServer) -> None:
        """stop: ACPI shutdown (no hard stop needed), VM and disk kept; start: running again, healthy."""
        drv, vm, ext = provisioned(fake)
        disk = vm.config["scsi0"]
        drv.stop(ext)
        assert vm.status == "stopped" and fake.vms() == [vm] and vm.config["scsi0"] == disk
        (shutdown,) = power_requests(fake, "shutdown")
        assert b"timeout=120" in shutdown[2]
        assert power_requests(fake, "stop") == []
        drv.stop(ext)  # already stopped: done, nothing asked
        assert len(power_requests(fake, "shutdown")) == 1
        starts = len(power_requests(fake, "start"))
        drv.start(ext)
        assert vm.status == "running" and len(power_requests(fake, "start")) == starts + 1
        drv.start(ext)  # already running: done
        assert len(power_requests(fake, "start")) == starts + 1
        assert drv.check_instance(ext).status == "healthy"

    def test_guest_ignoring_acpi_is_stopped_hard(self, make_fake) -> None:  # noqa: ANN001
        """A guest that ignores the shutdown is stopped after shutdown_timeout_seconds."""
        fake = make_fake(0.01)
        drv, vm, ext = provisioned(fake, shutdown_timeout_seconds=1)
        vm.acpi = False
        drv.stop(ext)
        assert vm.status == "stopped"
        assert len(power_requests(fake, "shutdown")) == 1 and len(power_requests(fake, "stop")) == 1
        assert fake.vms() == [vm]

    def test_bad_ids(self, fake: FakePveServer) -> None:
        drv = base.driver(fake)
        with pytest.raises(ProvisionError, match="not a Proxmox instance id"):
            drv.stop("pve1/abc")
        with pytest.raises(ProvisionError, match="VM 4321 does not exist"):
            drv.start("pve1/4321")


class TestPassword:
    @staticmethod
    def capture_passwords(fake: FakePveServer) -> list[tuple[str, str]]:
        """(username, password) of each set-user-password the guest receives (fakepve records it masked)."""
        seen: list[tuple[str, str]] = []
        original = fake.pve._agent_call

        async def agent_call(match, values):  # noqa: ANN001, ANN202
            if match.template.endswith("/set-user-password"):
                seen.append((values["username"], values["password"]))
            return await original(match, values)

        fake.pve._agent_call = agent_call  # type: ignore[method-assign]
        return seen

    def test_sets_the_password_of_the_cloud_init_user(self, fake: FakePveServer, caplog) -> None:  # noqa: ANN001
        """The guest agent gets the password for ciuser (root without one); it is never logged, even by
        proxmoxer's request log at DEBUG."""
        drv, vm, ext = provisioned(fake, ciuser="debian")
        seen = self.capture_passwords(fake)
        proxmoxer_log = logging.getLogger("proxmoxer.core")
        old_level = proxmoxer_log.level
        proxmoxer_log.setLevel(logging.DEBUG)
        try:
            with caplog.at_level(logging.DEBUG):
                drv.set_password(ext, PASSWORD)
                drv.set_password(ext, PASSWORD)  # a retry sets the same one again
                drv.set_password(ext, PASSWORD, username="admin")
        finally:
            proxmoxer_log.setLevel(old_level)
        assert seen == [("debian", PASSWORD), ("debian", PASSWORD), ("admin", PASSWORD)]
        assert [c["username"] for c in agent_calls(vm, "set-user-password")] == ["debian", "debian", "admin"]
        assert "set-user-password" in caplog.text  # proxmoxer's request log ran, masked
        assert PASSWORD not in caplog.text
        drv_root = base.driver(fake)
        drv_root.set_password(ext, PASSWORD)
        assert seen[-1] == ("root", PASSWORD)

    def test_failures_never_show_the_password(self, fake: FakePveServer) -> None:
        """An error that echoes the password, a stopped VM, a bad password: messages without the password."""
        drv, vm, ext = provisioned(fake)
        fake.pve.fail("POST", "/agent/set-user-password", 500, f"chpasswd: bad password {PASSWORD}", times=1)
        with pytest.raises(ProvisionError, match=r"setting the password of root on VM \d+ failed: 500") as err:
            drv.set_password(ext, PASSWORD)
        assert PASSWORD not in str(err.value) and err.value.__cause__ is None
        vm.status = vm.qmpstatus = "stopped"
        with pytest.raises(ProvisionError, match="is not running") as err:
            drv.set_password(ext, PASSWORD)
        assert PASSWORD not in str(err.value) and not agent_calls(vm, "set-user-password")
        for bad in ("abc", "two\nlines"):
            with pytest.raises(ProvisionError) as err:
                drv.set_password(ext, bad)
            assert bad not in str(err.value)
        with pytest.raises(ProvisionError, match="not a valid Linux user name"):
            drv.set_password(ext, PASSWORD, username="root;rm")


class TestRotateSshKey:
    def test_replaces_the_old_key_in_the_guest_and_in_cloud_init(self, fake: FakePveServer) -> None:
        """authorized_keys: the old key out, the new one in, the tenant's other keys kept; sshkeys updated."""
        drv, vm, ext = provisioned(fake, ciuser="debian")
        path = "/home/debian/.ssh/authorized_keys"
        vm.agent.setdefault("files", {})[path] = f"{KEY_C}\n{KEY_A}\n"
        drv.rotate_ssh_key(ext, KEY_B, KEY_A)
        (write,) = agent_calls(vm, "file-write")
        assert write["file"] == path and write["content"] == f"{KEY_C}\n{KEY_B}\n"
        sshkeys = vm.pending.get("sshkeys", vm.config.get("sshkeys"))  # pending while running: the next boot
        assert sshkeys == urllib.parse.quote(KEY_B, safe="")
        # the guest now has the new file: a retry changes nothing
        vm.agent["files"][path] = write["content"]
        puts = len(base.requests_to(fake, "PUT", f"/qemu/{vm.vmid}/config"))
        drv.rotate_ssh_key(ext, KEY_B, KEY_A)
        assert len(agent_calls(vm, "file-write")) == 1
        assert len(base.requests_to(fake, "PUT", f"/qemu/{vm.vmid}/config")) == puts

    def test_root_and_a_missing_file(self, fake: FakePveServer) -> None:
        """Without ciuser the key goes to root's file; a missing file is created with just the new key."""
        drv, vm, ext = provisioned(fake)
        fake.pve.fail("GET", "/agent/file-read", 500,
                      "guest-file-open failed: Failed to open file '/root/.ssh/authorized_keys' (mode: 'r'): "
                      "No such file or directory", times=1)
        drv.rotate_ssh_key(ext, KEY_B, None)
        (write,) = agent_calls(vm, "file-write")
        assert (write["file"], write["content"]) == ("/root/.ssh/authorized_keys", f"{KEY_B}\n")
        assert urllib.parse.unquote(vm.pending.get("sshkeys", vm.config.get("sshkeys"))) == f"{KEY_A}\n{KEY_B}"

    def test_refusals(self, fake: FakePveServer) -> None:
        drv, vm, ext = provisioned(fake)
        for bad in ("", f"{KEY_A}\n{KEY_B}", "not a key"):
            with pytest.raises(ProvisionError, match="new key"):
                drv.rotate_ssh_key(ext, bad, KEY_A)
        vm.status = vm.qmpstatus = "stopped"
        with pytest.raises(ProvisionError, match="is not running"):
            drv.rotate_ssh_key(ext, KEY_B, KEY_A)
        assert not agent_calls(vm, "file-write")


class TestLifecyclePrivileges:
    """The README's grants cover every lifecycle action; the password needs the optional DCAgentPassword role."""

    grants = base.TestLeastPrivilege()  # the README's roles and ACLs, as test_proxmox.py grants them

    def test_readme_privileges_suffice(self, fake: FakePveServer) -> None:
        self.grants.grant_readme_acls(fake, password=True)
        drv, vm, ext = provisioned(fake, pool="dc-vms")
        assert drv.check_instance(ext).status == "healthy"
        drv.stop(ext)
        drv.start(ext)
        drv.set_password(ext, PASSWORD)
        drv.rotate_ssh_key(ext, KEY_B, KEY_A)
        assert vm.status == "running" and agent_calls(vm, "file-write") and agent_calls(vm, "set-user-password")

    def test_password_needs_the_optional_role(self, fake: FakePveServer) -> None:
        """Without DCAgentPassword the password is refused (403, the privilege named); the SSH key still works."""
        self.grants.grant_readme_acls(fake)
        drv, vm, ext = provisioned(fake, pool="dc-vms")
        with pytest.raises(ProvisionError, match=r"403 .*the token needs VM.GuestAgent.Unrestricted"):
            drv.set_password(ext, PASSWORD)
        drv.rotate_ssh_key(ext, KEY_B, KEY_A)
        assert agent_calls(vm, "file-write")

    def test_readme_lists_these_roles(self) -> None:
        """The README's `pveum role add` lines grant exactly the privileges these tests grant."""
        readme = (REPO / "README.md").read_text()
        section = readme[readme.index("### Create the API token"):]
        section = section[:section.index("\n### ", 1)]  # the least-privilege recipe, not optional extras elsewhere
        roles = dict(re.findall(r'pveum role add (\w+) --privs "([^"]+)"', section))
        assert {name: tuple(privs.split()) for name, privs in roles.items()} == self.grants.ROLES
