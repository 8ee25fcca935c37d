"""The docker driver against a real dockerd (tests/support/dockerd.py): containers, limits, SSH, clean-up.

Containers are reached only through ports published on 127.0.0.1. Failures are injected by overriding
the driver's `checkpoint` (or its port choice) in a subclass; Docker itself is never mocked.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioners import Cancelled, ConfigError, Contract, ProvisionError, Unsupported, load
from provisioners.docker import LABEL_AGENT, LABEL_ATTEMPT, LABEL_CONTRACT, LABEL_MANAGED, DockerProvisioner
from provisioners.docker_config import parse_settings
from tests.support.dockerd import (  # noqa: F401 - docker_daemon and daemon are fixtures
    TEST_LABEL,
    Background,
    DockerDaemon,
    Pausing,
    daemon,
    docker_daemon,
    exec_in,
    inspect,
    silent_registry,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("created", "keys_installed", "started", "inspected")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Two throwaway ed25519 key pairs: name -> (private key file, public key line)."""
    folder = tmp_path_factory.mktemp("ssh-keys")
    out = {}
    for name in ("tenant", "next"):
        path = folder / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
                       check=True, capture_output=True)
        out[name] = (path, (folder / f"{name}.pub").read_text().strip())
    return out


def cid() -> str:
    return f"ctr/{uuid.uuid4().hex[:8]}"


class Failing(DockerProvisioner):
    """Raises an unexpected error at one step after the create."""

    fail_at = ""

    def checkpoint(self, step: str, name: str, cancel: threading.Event) -> None:
        if step == self.fail_at:
            raise RuntimeError(f"injected failure at {step}")
        super().checkpoint(step, name, cancel)


# ------------------------------------------------------------------ SSH from the host, through 127.0.0.1


def host_key_line(daemon: DockerDaemon, container_id: str, port: int) -> str:
    """A known_hosts line for the container's dropbear host key (read through the Docker API)."""
    def read() -> str | None:
        code, out = exec_in(daemon, container_id, "dropbearkey", "-y", "-f",
                            "/etc/dropbear/dropbear_ed25519_host_key")
        key = next((line for line in out.splitlines() if line.startswith("ssh-ed25519 ")), None)
        return key if code == 0 else None

    key = wait_for(read, "the container's host key")
    return f"[127.0.0.1]:{port} {' '.join(key.split()[:2])}\n"


def ssh(port: int, known_hosts: Path, command: str, *, key: Path | None = None,
        password_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The system ssh client with strict host key checking against `known_hosts`."""
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR"]
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    if password_file is not None:
        askpass = password_file.with_suffix(".askpass")
        askpass.write_text(f"#!/bin/sh\ncat {password_file}\n")
        askpass.chmod(0o700)
        argv += ["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                 "-o", "NumberOfPasswordPrompts=1"]
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    else:
        assert key is not None
        argv += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no",
                 "-i", str(key)]
    return subprocess.run([*argv, "root@127.0.0.1", command], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


def logs_in(port: int, known_hosts: Path, **how: Any) -> subprocess.CompletedProcess[str]:
    """Wait (with a deadline) until sshd answers and the login works; the last attempt."""
    last: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> bool:
        last[:] = [ssh(port, known_hosts, "cat /etc/hostname", **how)]
        return last[0].returncode == 0

    wait_for(attempt, "an SSH login through 127.0.0.1", timeout=30)
    return last[0]


@pytest.fixture
def ssh_container(daemon: DockerDaemon, keys: dict[str, tuple[Path, str]],
                  tmp_path: Path) -> Iterator[tuple[DockerProvisioner, Any, Path]]:
    """A container of the SSH image provisioned with the tenant key: (driver, details, known_hosts)."""
    drv = load("docker", daemon.settings(default_image=daemon.image("ssh")))
    details = drv.provision(Contract(contract_id=cid(), cpu_cores=1, memory_mb=256, storage_gb=2,
                                     requester_ssh_pubkey=keys["tenant"][1]), threading.Event())
    known = tmp_path / "known_hosts"
    known.write_text(host_key_line(daemon, details.external_id, details.ssh_port))
    yield drv, details, known


# ------------------------------------------------------------------ settings (no daemon)


class TestSettings:
    BASE = {"default_image": "example.net/ssh:1", "host_ip": "127.0.0.1"}

    def test_unknown_key_is_named(self):
        """A misspelt key fails with its name and the known keys."""
        with pytest.raises(ConfigError, match=r"\[provisioner.docker\] pull_timeout: is not a setting"):
            parse_settings({**self.BASE, "pull_timeout": 5})

    def test_every_address_needs_a_public_ip(self):
        """host_ip 0.0.0.0 without public_ip cannot say where tenants connect: an error naming public_ip."""
        with pytest.raises(ConfigError, match="public_ip: is missing"):
            parse_settings({"default_image": "x:1"})
        cfg = parse_settings({"default_image": "x:1", "public_ip": "2001:db8::7"})
        assert cfg.host_ip == "0.0.0.0" and cfg.public_ip == "2001:db8::7" and cfg.public_is_ipv6
        assert parse_settings(self.BASE).public_ip == "127.0.0.1"

    @pytest.mark.parametrize("override, key", [
        ({"network": "host"}, "network"), ({"labels": {"dc-agent.contract": "x"}}, "labels"),
        ({"default_image": ""}, "default_image"), ({"base_url": "http://x"}, "base_url"),
        ({"ssh_port": 0}, "ssh_port"), ({"host_ip": "not-an-ip"}, "host_ip"),
    ])
    def test_bad_values_name_their_key(self, override, key):
        """Each bad value fails with the key in the message."""
        with pytest.raises(ConfigError, match=rf"\[provisioner.docker\] {key}:"):
            parse_settings({**self.BASE, **override})

    def test_cli_help_does_not_import_docker(self):
        """`dc-agent --help` and reading the driver's settings never import the docker SDK."""
        code = ("import sys\nsys.argv = ['dc-agent', '--help']\nfrom dc_agent.cli import main\n"
                "import provisioners.docker_config\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\nprint('DOCKER', 'docker' in sys.modules)\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert "DOCKER False" in res.stdout, res.stdout[-300:] + res.stderr[-300:]


# ------------------------------------------------------------------ provisioning


class TestProvision:
    def test_happy_path_limits_key_and_a_real_ssh_login(self, daemon, keys, ssh_container):
        """Running, labelled, CPU/memory limits in HostConfig, the key in authorized_keys, and the
        reported 127.0.0.1:port reaches this container's sshd with the contract's key."""
        drv, details, known = ssh_container
        attrs = inspect(daemon, details.external_id)
        assert attrs["State"]["Running"]
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL_MANAGED] == "true" and labels[LABEL_AGENT] == daemon.session
        assert labels[LABEL_CONTRACT].startswith("ctr/") and len(labels[LABEL_ATTEMPT]) == 32
        host = attrs["HostConfig"]
        assert host["NanoCpus"] == 1_000_000_000
        assert host["Memory"] == 256 * MiB and host["MemorySwap"] == 256 * MiB
        assert host["PortBindings"] == {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(details.ssh_port)}]}
        assert not host.get("StorageOpt") and details.extra["storageLimited"] is False  # ext4 here: not enforced
        assert details.ip_address == "127.0.0.1" and details.ipv6_address is None
        assert details.extra["name"] == attrs["Name"].lstrip("/") and details.extra["name"].startswith("dc-ctr-")
        code, out = exec_in(daemon, details.external_id, "cat", "/root/.ssh/authorized_keys")
        assert code == 0 and out == keys["tenant"][1] + "\n"

        login = logs_in(details.ssh_port, known, key=keys["tenant"][0])
        assert login.stdout.strip() == attrs["Config"]["Hostname"]  # this container, not another one

    def test_missing_image_without_registry_fails_and_leaves_nothing(self, daemon):
        """An image that is absent and whose registry (a closed loopback port) cannot be reached."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        image = f"127.0.0.1:{port}/dc-agent-test/absent:1"
        drv = load("docker", daemon.settings())
        with pytest.raises(ProvisionError, match=f"image {image} is not on the Docker host and pulling it failed"):
            drv.provision(Contract(contract_id=cid(), instance_config={"image": image}), threading.Event())
        assert daemon.containers() == []

    def test_a_stalled_registry_is_bounded_by_the_pull_timeout(self, daemon):
        """A registry that accepts and never answers: ProvisionError naming pull_timeout_seconds."""
        with silent_registry() as (_registry, image):
            drv = load("docker", daemon.settings(pull_timeout_seconds=1.5))
            with pytest.raises(ProvisionError, match=r"did not finish within 1.5 s \(pull_timeout_seconds\)"):
                drv.provision(Contract(contract_id=cid(), provisioner_config={"image": image}), threading.Event())
        assert daemon.containers() == []

    def test_cancel_during_a_pull_stops_it_at_once(self, daemon):
        """Cancelled while dockerd waits on the registry: Cancelled long before the pull timeout, nothing made."""
        with silent_registry() as (registry, image):
            drv = load("docker", daemon.settings(pull_timeout_seconds=120))
            cancel = threading.Event()
            call = Background(lambda: drv.provision(Contract(contract_id=cid(), provisioner_config={"image": image}),
                                                    cancel))
            conn, _ = registry.accept()  # dockerd is pulling now
            cancel.set()
            error = call.join(60)
            conn.close()
        assert isinstance(error, Cancelled) and "while pulling image" in str(error), error
        assert daemon.containers() == []

    @pytest.mark.parametrize("step", STEPS)
    def test_a_failure_at_any_step_after_create_leaves_nothing(self, daemon, keys, step):
        """An unexpected error after the create: the container is removed and a ProvisionError says what."""
        drv = Failing(daemon.settings())
        drv.fail_at = step
        with pytest.raises(ProvisionError, match=f"injected failure at {step}"):
            drv.provision(Contract(contract_id=cid(), requester_ssh_pubkey=keys["tenant"][1]), threading.Event())
        assert daemon.containers() == []

    def test_cancel_mid_provision_removes_the_running_container(self, daemon):
        """Cancelled once the container runs: Cancelled is raised and the container is gone."""
        drv = Pausing(daemon.settings())
        drv.pause_at = "started"
        cancel = threading.Event()
        call = Background(lambda: drv.provision(Contract(contract_id=cid(), cpu_cores=1, memory_mb=64), cancel))
        assert drv.reached.wait(60)
        (running,) = daemon.containers()
        assert running["State"] == "running"
        cancel.set()
        drv.resume.set()
        assert isinstance(call.join(60), Cancelled), call.error
        assert daemon.containers() == []

    def test_a_host_port_taken_meanwhile_is_retried_on_another(self, daemon):
        """The chosen port gets taken before the start: that container is removed and the next port used."""
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen(1)
            taken = squatter.getsockname()[1]
            picks: list[int] = []

            class Unlucky(DockerProvisioner):
                def _pick_port(self, used: set[int]) -> int:
                    picks.append(taken if not picks else super()._pick_port(used | {taken}))
                    return picks[-1]

            details = Unlucky(daemon.settings()).provision(Contract(contract_id=cid()), threading.Event())
        assert picks[0] == taken and details.ssh_port == picks[1] != taken
        assert [c["Id"] for c in daemon.containers()] == [details.external_id]

    def test_a_refused_disk_size_is_skipped_not_fatal(self, daemon):
        """A driver that believes the storage driver limits disks (here it cannot: overlay2 on ext4) asks for
        a size; the daemon refuses it and the container is made without one."""
        class Hopeful(DockerProvisioner):
            def __init__(self, settings: dict[str, Any]) -> None:
                super().__init__(settings)
                self._storage_ok = True

        with daemon.api() as api:
            info = api.info()
        if dict(info.get("DriverStatus") or []).get("Backing Filesystem") == "xfs":
            pytest.skip("this daemon's storage may enforce disk sizes; the refusal cannot be seen here")
        details = Hopeful(daemon.settings()).provision(Contract(contract_id=cid(), storage_gb=3), threading.Event())
        assert details.extra["storageLimited"] is False
        assert [c["Id"] for c in daemon.containers()] == [details.external_id]

    def test_foreign_containers_are_never_listed_adopted_or_removed(self, daemon):
        """A container without dc-agent.managed=true, even one naming our contract, is left alone."""
        contract = cid()
        with daemon.api() as api:
            foreign = api.create_container(daemon.image("busybox"), name=f"dc-foreign-{uuid.uuid4().hex[:6]}",
                                           labels={TEST_LABEL: daemon.session, LABEL_CONTRACT: contract})["Id"]
            api.start(foreign)
        drv = load("docker", daemon.settings())
        ours = drv.provision(Contract(contract_id=cid()), threading.Event())

        assert [i.external_id for i in drv.list_instances()] == [ours.external_id]
        assert drv.find(contract) is None
        with pytest.raises(ProvisionError, match="refusing to touch container"):
            drv.terminate(foreign)
        with pytest.raises(ProvisionError, match="refusing to touch container"):
            drv.stop(foreign)
        assert inspect(daemon, foreign)["State"]["Running"]

    def test_terminate_removes_and_counts_gone_as_done(self, daemon):
        """terminate removes the container; a second terminate is done; a non-id is refused."""
        drv = load("docker", daemon.settings())
        details = drv.provision(Contract(contract_id=cid()), threading.Event())
        drv.terminate(details.external_id)
        assert daemon.containers() == []
        drv.terminate(details.external_id)
        with pytest.raises(ProvisionError, match="is not a Docker container id"):
            drv.terminate("dc-some-name")

    def test_health_reports_daemon_and_default_image(self, daemon):
        """health: ok with the daemon up and the default image present; not ok naming a missing image."""
        ok = load("docker", daemon.settings()).health()
        assert ok.ok and ok.checks == {"daemon_reachable": True, "default_image_present": True}
        missing = load("docker", daemon.settings(default_image="dc-agent-test/nothing:0")).health()
        assert not missing.ok and missing.checks["daemon_reachable"] and "dc-agent-test/nothing:0" in missing.detail
        down = load("docker", daemon.settings(base_url="unix:///nonexistent/docker.sock")).health()
        assert not down.ok and not down.checks["daemon_reachable"]


# ------------------------------------------------------------------ lifecycle


class TestLifecycle:
    def test_stop_and_start_keep_the_container_its_files_and_port(self, daemon):
        """stop: exited but kept (unhealthy); start: the same container, its file, the same host port."""
        drv = load("docker", daemon.settings())
        details = drv.provision(Contract(contract_id=cid()), threading.Event())
        assert exec_in(daemon, details.external_id, "sh", "-c", "echo kept > /root/marker")[0] == 0

        drv.stop(details.external_id)
        assert inspect(daemon, details.external_id)["State"]["Status"] == "exited"
        assert drv.check_instance(details.external_id).status == "unhealthy"
        drv.stop(details.external_id)  # already stopped: done

        drv.start(details.external_id)
        drv.start(details.external_id)  # already running: done
        attrs = inspect(daemon, details.external_id)
        assert attrs["State"]["Running"]
        assert attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"] == str(details.ssh_port)
        assert exec_in(daemon, details.external_id, "cat", "/root/marker") == (0, "kept\n")
        health = drv.check_instance(details.external_id)
        assert health.status == "healthy" and health.latency_ms is not None
        assert [c["Id"] for c in daemon.containers()] == [details.external_id]

    def test_check_instance_follows_the_image_healthcheck(self, daemon):
        """An image with a HEALTHCHECK (chosen by the offering): healthy, then unhealthy when it fails;
        a removed container is unhealthy too."""
        drv = load("docker", daemon.settings())
        details = drv.provision(Contract(contract_id=cid(), provisioner_config={"image": daemon.image("health")}),
                                threading.Event())
        assert details.extra["image"] == daemon.image("health")
        wait_for(lambda: drv.check_instance(details.external_id).status == "healthy", "a passing health check")
        assert exec_in(daemon, details.external_id, "rm", "/tmp/healthy")[0] == 0
        wait_for(lambda: drv.check_instance(details.external_id).status == "unhealthy", "a failing health check")
        assert "health check failing" in drv.check_instance(details.external_id).detail
        drv.terminate(details.external_id)
        gone = drv.check_instance(details.external_id)
        assert gone.status == "unhealthy" and "does not exist" in gone.detail

    def test_set_password_then_a_password_login(self, daemon, ssh_container, tmp_path, caplog):
        """chpasswd gets the password on stdin: the password logs in over SSH, a wrong one does not, and the
        password appears in no log record."""
        drv, details, known = ssh_container
        password = f"pw-{uuid.uuid4().hex}"
        caplog.set_level(logging.DEBUG)
        drv.set_password(details.external_id, password)
        drv.set_password(details.external_id, password)  # a retry sets the same one
        right, wrong = tmp_path / "right", tmp_path / "wrong"
        right.write_text(password + "\n")
        wrong.write_text("not-" + password + "\n")
        logs_in(details.ssh_port, known, password_file=right)
        denied = ssh(details.ssh_port, known, "true", password_file=wrong)
        assert denied.returncode == 255 and "Permission denied" in denied.stderr
        assert password not in caplog.text
        with pytest.raises(ProvisionError, match="one non-empty line"):
            drv.set_password(details.external_id, "two\nlines")

    def test_set_password_without_chpasswd_is_unsupported(self, daemon):
        """The busybox test image has no chpasswd: Unsupported, saying what the image lacks."""
        drv = load("docker", daemon.settings())
        details = drv.provision(Contract(contract_id=cid()), threading.Event())
        with pytest.raises(Unsupported, match="has no chpasswd"):
            drv.set_password(details.external_id, "secret-pw")

    def test_rotate_ssh_key_the_new_key_logs_in_the_old_does_not(self, daemon, keys, ssh_container):
        """After the rotation only the new key is in authorized_keys: it logs in, the old one is refused."""
        drv, details, known = ssh_container
        logs_in(details.ssh_port, known, key=keys["tenant"][0])
        drv.rotate_ssh_key(details.external_id, keys["next"][1], keys["tenant"][1])
        drv.rotate_ssh_key(details.external_id, keys["next"][1], keys["tenant"][1])  # idempotent
        assert exec_in(daemon, details.external_id, "cat", "/root/.ssh/authorized_keys") == (0, keys["next"][1] + "\n")
        logs_in(details.ssh_port, known, key=keys["next"][0])
        old = ssh(details.ssh_port, known, "true", key=keys["tenant"][0])
        assert old.returncode == 255 and "Permission denied" in old.stderr
