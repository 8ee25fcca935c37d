"""Docker driver: one container per contract, reached over SSH on a port published on the Docker host.

One container per contract, and never one left behind:
- the container carries the contract in its labels (`dc-agent.managed=true`, `dc-agent.contract`,
  `dc-agent.agent`, `dc-agent.attempt`); only containers with `dc-agent.managed=true` are listed,
  adopted, changed or removed;
- its name is `dc-<contract id, sanitized>-<hash of contract id and attempt>`: it names the attempt
  that owns the container. Clean-up removes a container *by that name*, so once `find` has adopted a
  container (renamed it to its own attempt) the attempt that made it can no longer remove it;
- root's authorized_keys is written through the archive API before the first start, and the image's
  sshd port (`ssh_port`) is published on `host_ip` at a host port chosen when the container is made
  (so it stays the same across stop/start and daemon restarts). The reported address is `public_ip`
  with that host port: never the container's bridge address;
- any failure or cancel after the create removes the container (force) before raising.

Adopting after a crash (`find`): a *running* container of the contract is adopted (it was started
after its key was written, so running means finished); a created-but-never-started or stopped one is
removed and `find` returns None, so the agent provisions again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from provisioners import docker_keys
from provisioners.base import (
    Cancelled,
    Contract,
    Health,
    Instance,
    InstanceDetails,
    InstanceHealth,
    Lifecycle,
    ProvisionError,
    Unsupported,
)
from provisioners.docker_config import DockerSettings, parse_image, parse_settings
from provisioners.docker_exec import run_with_stdin
from provisioners.docker_image import ensure_image, present, short

log = logging.getLogger(__name__)

LABEL_MANAGED = "dc-agent.managed"
LABEL_CONTRACT = "dc-agent.contract"
LABEL_AGENT = "dc-agent.agent"
LABEL_ATTEMPT = "dc-agent.attempt"
CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
PORT_TRIES = 5
STORAGE_DRIVERS = {"btrfs", "zfs", "devicemapper", "windowsfilter"}  # per-container size without conditions
_PORT_TAKEN = ("port is already allocated", "address already in use")
_STORAGE_REFUSED = ("storage-opt", "storage opt", "pquota")


def container_name(contract_id: str, attempt: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", contract_id).strip("-_.")[:40] or "contract"
    digest = hashlib.sha256(f"{contract_id}\n{attempt}".encode()).hexdigest()[:10]
    return f"dc-{safe}-{digest}"


def describe(exc: BaseException) -> str:
    """A Docker failure in a line fit for the marketplace: status and the daemon's message."""
    if isinstance(exc, docker.errors.APIError):
        return short(f"{exc.status_code} {exc.explanation or exc}")
    if isinstance(exc, requests.exceptions.Timeout):
        return "the Docker daemon did not answer in time (api_timeout_seconds)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot connect to the Docker daemon"
    if isinstance(exc, docker.errors.DockerException):
        return short(str(exc))
    return short(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class _Spec:
    """What every container made for one contract gets (the same across port retries)."""

    image: str
    limits: dict[str, Any]
    storage: dict[str, str] | None
    keys: list[str]


class _Gone(ProvisionError):
    """The container does not exist (any more)."""


class _PortTaken(ProvisionError):
    """The chosen host port was taken between choosing it and starting the container."""


class DockerProvisioner(Lifecycle):
    """The `docker` driver. Construct with the `[provisioner.docker]` table."""

    name = "docker"

    def __init__(self, settings: dict[str, Any], config_path: Path | None = None) -> None:
        self.cfg: DockerSettings = parse_settings(settings, config_path)
        self._local = threading.local()
        self._storage_ok: bool | None = None

    def __repr__(self) -> str:
        return f"DockerProvisioner(base_url={self.cfg.base_url!r}, default_image={self.cfg.default_image!r})"

    # ------------------------------------------------------------------ plumbing

    @property
    def api(self) -> docker.APIClient:
        """This thread's client (a requests session is not shared between threads); made on first use."""
        api = getattr(self._local, "api", None)
        if api is None:
            api = docker.APIClient(base_url=self.cfg.base_url, timeout=self.cfg.api_timeout)
            self._local.api = api
        return api

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ProvisionError(f"Docker API error while {what}: {describe(exc)}") from exc

    def checkpoint(self, step: str, name: str, cancel: threading.Event) -> None:
        """Called between the steps after the create (`created`, `keys_installed`, `started`, `inspected`).

        Raises Cancelled when the agent asked to stop. Tests override it to fail or stall at a step.
        """
        if cancel.is_set():
            raise Cancelled(f"cancelled after step {step} of container {name}")

    def _managed(self) -> list[dict[str, Any]]:
        """Summaries of every container carrying dc-agent.managed=true (running or not)."""
        return self.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})

    def _ours(self, external_id: str) -> dict[str, Any]:
        """The inspect data of a container this driver manages; _Gone if absent, ProvisionError if foreign."""
        if not isinstance(external_id, str) or not CONTAINER_ID.match(external_id):
            raise ProvisionError(f"{external_id!r} is not a Docker container id (64 hex digits)")
        with self._calling(f"inspecting container {external_id[:12]}"):
            try:
                attrs = self.api.inspect_container(external_id)
            except docker.errors.NotFound:
                raise _Gone(f"container {external_id[:12]} does not exist") from None
        if (attrs["Config"].get("Labels") or {}).get(LABEL_MANAGED) != "true":
            raise ProvisionError(f"refusing to touch container {external_id[:12]}: it does not carry the "
                                 f"{LABEL_MANAGED}=true label")
        return attrs

    # ------------------------------------------------------------------ what a contract asks for

    def _image(self, contract: Contract) -> str:
        """The offering's image, else the contract's, else default_image."""
        for where, table in (("the offering's provisioner config", contract.provisioner_config),
                             ("the contract's instance config", contract.instance_config)):
            if table is None:
                continue
            if not isinstance(table, dict):
                raise ProvisionError(f"{where} is not an object")
            if table.get("image") not in (None, ""):
                try:
                    return parse_image(table["image"], where)
                except ValueError as exc:
                    raise ProvisionError(str(exc)) from None
        return self.cfg.default_image

    @staticmethod
    def _limits(contract: Contract) -> dict[str, Any]:
        """CPU (CFS quota via NanoCpus) and memory (no swap beyond it) from the contract."""
        limits: dict[str, Any] = {}
        if contract.cpu_cores is not None:
            cores = contract.cpu_cores
            if isinstance(cores, bool) or not isinstance(cores, (int, float)) or cores <= 0:
                raise ProvisionError(f"the contract's cpuCores {cores!r} is not a positive number")
            limits["nano_cpus"] = int(round(float(cores) * 1e9))
        if contract.memory_mb is not None:
            mem = contract.memory_mb
            if isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem < 8 or mem != int(mem):
                raise ProvisionError(f"the contract's memoryMb {mem!r} is not a whole number of MiB (at least 8)")
            limits["mem_limit"] = limits["memswap_limit"] = int(mem) * 1024 * 1024
        return limits

    def _storage_opt(self, contract: Contract) -> dict[str, str] | None:
        """`size` for the container's writable layer, when the storage driver can enforce one."""
        if not contract.storage_gb or isinstance(contract.storage_gb, bool):
            return None
        if not isinstance(contract.storage_gb, (int, float)) or contract.storage_gb < 0:
            raise ProvisionError(f"the contract's storageGb {contract.storage_gb!r} is not a number of GiB")
        if self._storage_ok is None:
            with self._calling("reading the daemon's storage driver"):
                info = self.api.info()
            status = dict(info.get("DriverStatus") or [])
            driver = str(info.get("Driver") or "")
            self._storage_ok = driver in STORAGE_DRIVERS or (
                driver in ("overlay2", "overlay") and status.get("Backing Filesystem") == "xfs")
            if not self._storage_ok:
                log.info("docker: storage driver %s (%s) cannot limit a container's disk; storageGb is not "
                         "enforced", driver, status.get("Backing Filesystem", "?"))
        return {"size": f"{int(contract.storage_gb)}G"} if self._storage_ok else None

    def _used_ports(self) -> set[int]:
        """Host ports already bound to our containers, stopped ones included (they get them back on start)."""
        used: set[int] = set()
        for summary in self._managed():
            try:
                attrs = self.api.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                continue
            for bindings in ((attrs.get("HostConfig") or {}).get("PortBindings") or {}).values():
                used.update(int(b["HostPort"]) for b in bindings or [] if str(b.get("HostPort") or "").isdigit())
        return used

    def _pick_port(self, used: set[int]) -> int:
        family = socket.AF_INET6 if ":" in self.cfg.host_ip else socket.AF_INET
        for _ in range(100):
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((self.cfg.host_ip, 0))
                    port = int(probe.getsockname()[1])
            except OSError as exc:
                raise ProvisionError(f"cannot bind a port on host_ip {self.cfg.host_ip} ({exc.strerror or exc}); "
                                     "is it an address of this host?") from None
            if port not in used:
                return port
        raise ProvisionError(f"no free host port found on {self.cfg.host_ip}")

    # ------------------------------------------------------------------ provisioning

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        """Pull if needed, create, install the key, start; on any failure after the create remove the container."""
        image = self._image(contract)
        limits = self._limits(contract)
        keys = docker_keys.key_lines(contract.requester_ssh_pubkey, "the contract's requesterSshPubkey")
        if cancel.is_set():
            raise Cancelled("cancelled before the image check")
        with self._calling(f"checking for image {image}"):
            ensure_image(self.api, self.cfg.base_url, image, timeout=self.cfg.pull_timeout,
                         read_timeout=self.cfg.api_timeout, cancel=cancel)
        spec = _Spec(image, limits, self._storage_opt(contract), keys)
        for _ in range(PORT_TRIES):
            if cancel.is_set():
                raise Cancelled("cancelled before the container was created")
            with self._calling("listing the host ports of our containers"):
                port = self._pick_port(self._used_ports())
            attempt = uuid.uuid4().hex
            try:
                return self._make(contract, spec, port, attempt, cancel)
            except _PortTaken as exc:
                log.info("docker: contract %s: %s; trying another port", contract.contract_id, exc)
        raise ProvisionError(f"host ports on {self.cfg.host_ip} were taken {PORT_TRIES} times in a row")

    def _make(self, contract: Contract, spec: _Spec, port: int, attempt: str,
              cancel: threading.Event) -> InstanceDetails:
        name = container_name(contract.contract_id, attempt)
        try:
            container_id = self._create(contract, spec, name, port, attempt)
            self.checkpoint("created", name, cancel)
            if spec.keys:
                with self._calling(f"writing {docker_keys.AUTHORIZED_KEYS} into container {name}"):
                    self.api.put_archive(container_id, "/", docker_keys.archive(docker_keys.merged("", spec.keys)))
            self.checkpoint("keys_installed", name, cancel)
            self._start(container_id, name, port)
            self.checkpoint("started", name, cancel)
            with self._calling(f"inspecting container {name}"):
                attrs = self.api.inspect_container(container_id)
            self._check_running(attrs, name, port)
            self.checkpoint("inspected", name, cancel)
        except BaseException as exc:
            problem = self._remove_own(name, attempt)
            if problem is not None:
                log.warning("docker: contract %s: %s", contract.contract_id, problem)
            if not isinstance(exc, Exception) or (problem is None and isinstance(exc, ProvisionError)):
                raise
            message = (str(exc) if isinstance(exc, ProvisionError)
                       else f"provisioning container {name} failed: {describe(exc)}")
            raise (Cancelled if isinstance(exc, Cancelled) else ProvisionError)(
                message + (f"; {problem}" if problem else "")) from exc
        details = self._details(attrs)
        log.info("docker: contract %s: container %s (%s) is up, SSH at %s:%s", contract.contract_id, name,
                 details.external_id[:12], self.cfg.public_ip, details.ssh_port)
        return details

    def _create(self, contract: Contract, spec: _Spec, name: str, port: int, attempt: str) -> str:
        labels = {**self.cfg.labels, LABEL_MANAGED: "true", LABEL_CONTRACT: contract.contract_id,
                  LABEL_AGENT: self.cfg.agent_label, LABEL_ATTEMPT: attempt}
        host_config: dict[str, Any] = {
            "port_bindings": {f"{self.cfg.ssh_port}/tcp": (self.cfg.host_ip, port)},
            "network_mode": self.cfg.network,
            "restart_policy": {"Name": "unless-stopped"},
            **spec.limits,
        }

        def create(storage: dict[str, str] | None) -> dict[str, Any]:
            return self.api.create_container(
                spec.image, name=name, labels=labels, ports=[(self.cfg.ssh_port, "tcp")], detach=True,
                host_config=self.api.create_host_config(**host_config, storage_opt=storage))

        with self._calling(f"creating container {name} from {spec.image}"):
            try:
                made = create(spec.storage)
            except docker.errors.APIError as exc:
                text = str(exc.explanation or "").lower()
                if spec.storage is None or not any(s in text for s in _STORAGE_REFUSED):
                    raise
                log.warning("docker: the daemon refused a disk size (%s); storageGb is not enforced", describe(exc))
                self._storage_ok = False
                made = create(None)
        for warning in made.get("Warnings") or []:
            log.warning("docker: container %s: %s", name, short(warning))
        return str(made["Id"])

    def _start(self, container_id: str, name: str, port: int) -> None:
        try:
            self.api.start(container_id)
        except docker.errors.APIError as exc:
            if any(s in str(exc.explanation or "").lower() for s in _PORT_TAKEN):
                raise _PortTaken(f"host port {port} was taken meanwhile") from exc
            raise ProvisionError(f"Docker API error while starting container {name}: {describe(exc)}") from exc
        except requests.RequestException as exc:
            raise ProvisionError(f"Docker API error while starting container {name}: {describe(exc)}") from exc

    def _check_running(self, attrs: dict[str, Any], name: str, port: int) -> None:
        state = attrs.get("State") or {}
        if not state.get("Running") or state.get("Restarting"):
            raise ProvisionError(f"container {name} stopped right after it started (exit code "
                                 f"{state.get('ExitCode')}): its image must keep sshd running in the foreground "
                                 f"(see `docker logs {name}`)")
        published = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{self.cfg.ssh_port}/tcp") or []
        if not any(str(b.get("HostPort")) == str(port) for b in published):
            raise ProvisionError(f"container {name} runs, but its port {self.cfg.ssh_port} is not published on "
                                 f"host port {port} (network {self.cfg.network!r} must be a bridge network)")

    def _host_port(self, attrs: dict[str, Any]) -> int | None:
        bindings = ((attrs.get("HostConfig") or {}).get("PortBindings") or {}).get(f"{self.cfg.ssh_port}/tcp") or []
        ports = [int(b["HostPort"]) for b in bindings if str(b.get("HostPort") or "").isdigit()]
        return ports[0] if ports else None

    def _details(self, attrs: dict[str, Any]) -> InstanceDetails:
        host = attrs.get("HostConfig") or {}
        v6 = self.cfg.public_is_ipv6
        return InstanceDetails(
            external_id=str(attrs["Id"]), provisioner=self.name,
            ip_address=None if v6 else self.cfg.public_ip, ipv6_address=self.cfg.public_ip if v6 else None,
            ssh_port=self._host_port(attrs) or 0,
            extra={"name": str(attrs.get("Name") or "").lstrip("/"), "image": (attrs.get("Config") or {}).get("Image"),
                   "nanoCpus": host.get("NanoCpus") or None, "memoryBytes": host.get("Memory") or None,
                   "storageLimited": bool(host.get("StorageOpt"))})

    # ------------------------------------------------------------------ removal

    def _remove_own(self, name: str, attempt: str) -> str | None:
        """Remove the container this attempt made, by its name. None when it is gone; else the problem."""
        try:
            attrs = self.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return f"container {name} could not be checked for removal ({describe(exc)}); remove it by hand"
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_ATTEMPT) != attempt:
            return f"container {name} is not this attempt's, so it was left alone"
        return self._force_remove(name)  # by name: a container adopted (renamed) meanwhile is not removed

    def _force_remove(self, ref: str) -> str | None:
        """Kill and remove (with anonymous volumes); None when it is gone, else the problem."""
        try:
            self.api.remove_container(ref, force=True, v=True)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "in progress" in str(exc.explanation or ""):
                return self._wait_gone(ref)
            return f"removing container {ref} failed ({describe(exc)}); remove it by hand"
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return f"removing container {ref} failed ({describe(exc)}); remove it by hand"
        log.info("docker: container %s removed", ref)
        return None

    def _wait_gone(self, ref: str) -> str | None:
        deadline = time.monotonic() + self.cfg.api_timeout
        while time.monotonic() < deadline:
            try:
                self.api.inspect_container(ref)
            except docker.errors.NotFound:
                return None
            except (docker.errors.DockerException, requests.RequestException):
                pass
            time.sleep(0.2)
        return f"container {ref} was still being removed after {self.cfg.api_timeout:g} s"

    # ------------------------------------------------------------------ the rest of the interface

    def list_instances(self) -> list[Instance]:
        with self._calling("listing containers"):
            return [Instance(external_id=str(c["Id"]), contract_id=(c.get("Labels") or {}).get(LABEL_CONTRACT))
                    for c in self._managed()]

    def find(self, contract_id: str) -> InstanceDetails | None:
        """This contract's container after a crash: adopted if running, removed otherwise."""
        with self._calling(f"looking for the container of contract {contract_id}"):
            ids = [str(c["Id"]) for c in sorted(self._managed(), key=lambda c: c.get("Created") or 0)
                   if (c.get("Labels") or {}).get(LABEL_CONTRACT) == contract_id]
        found: InstanceDetails | None = None
        for container_id in ids:
            try:
                attrs = self._ours(container_id)
            except _Gone:
                continue
            state = attrs.get("State") or {}
            running = state.get("Running") and not state.get("Restarting") and not state.get("Paused")
            if found is None and running and self._host_port(attrs):
                new_name = container_name(contract_id, uuid.uuid4().hex)
                with self._calling(f"adopting container {container_id[:12]}"):
                    try:  # the attempt that made it (if alive) removes by its old name: no longer this one
                        self.api.rename(container_id, new_name)
                    except docker.errors.NotFound:
                        continue
                    attrs = self.api.inspect_container(container_id)
                found = self._details(attrs)
                log.info("docker: contract %s: adopted running container %s as %s", contract_id,
                         container_id[:12], new_name)
                continue
            problem = self._force_remove(container_id)
            if problem is not None:
                raise ProvisionError(f"contract {contract_id}: a leftover container could not be removed: {problem}")
            log.info("docker: contract %s: removed unfinished container %s (%s)", contract_id, container_id[:12],
                     state.get("Status"))
        return found

    def terminate(self, external_id: str) -> None:
        try:
            self._ours(external_id)
        except _Gone:
            return  # already gone
        problem = self._force_remove(external_id)
        if problem is not None:
            raise ProvisionError(problem)

    def stop(self, external_id: str) -> None:
        """Stop (SIGTERM, SIGKILL after stop_timeout_seconds); the container and its files stay."""
        attrs = self._ours(external_id)
        if not (attrs.get("State") or {}).get("Running"):
            return
        with self._calling(f"stopping container {external_id[:12]}"):
            self.api.stop(external_id, timeout=self.cfg.stop_timeout)

    def start(self, external_id: str) -> None:
        """Start a stopped container again: same files, same host port."""
        attrs = self._ours(external_id)
        state = attrs.get("State") or {}
        if state.get("Running") and not state.get("Paused"):
            return
        with self._calling(f"starting container {external_id[:12]}"):
            if state.get("Paused"):
                self.api.unpause(external_id)
            else:
                self.api.start(external_id)
            attrs = self.api.inspect_container(external_id)
        if not (attrs.get("State") or {}).get("Running"):
            raise ProvisionError(f"container {external_id[:12]} exited right after the start "
                                 f"(exit code {(attrs.get('State') or {}).get('ExitCode')})")

    def check_instance(self, external_id: str) -> InstanceHealth:
        """From the container state, and the image's HEALTHCHECK status when it has one."""
        began = time.monotonic()

        def answer(status: str, detail: str) -> InstanceHealth:
            return InstanceHealth(status, detail, latency_ms=round((time.monotonic() - began) * 1000, 1))

        try:
            attrs = self._ours(external_id)
        except _Gone:
            return answer("unhealthy", "the container does not exist")
        except ProvisionError as exc:
            return answer("unknown", str(exc))
        state = attrs.get("State") or {}
        status = str(state.get("Status") or "unknown")
        if status != "running" or not state.get("Running"):
            return answer("unhealthy", f"container is {status} (exit code {state.get('ExitCode')})")
        health = state.get("Health") or {}
        probe = str(health.get("Status") or "")
        if probe == "unhealthy":
            last = (health.get("Log") or [{}])[-1]
            return answer("unhealthy", f"running, health check failing ({health.get('FailingStreak', '?')} in a row, "
                                       f"last exit code {last.get('ExitCode')})")
        if probe == "starting":
            return answer("unknown", "running, health check not decided yet")
        return answer("healthy", "running, health check passing" if probe == "healthy" else "running")

    def set_password(self, external_id: str, password: str, username: str | None = None) -> None:
        """`chpasswd` in the container, `user:password` on its stdin (never argv, never logged)."""
        user = username or "root"
        if not USERNAME.match(user):
            raise ProvisionError(f"{user!r} is not a valid user name")
        if not isinstance(password, str) or not password or any(c in password for c in "\r\n\0"):
            raise ProvisionError("the password must be one non-empty line")
        attrs = self._ours(external_id)
        if not (attrs.get("State") or {}).get("Running"):
            raise ProvisionError(f"container {external_id[:12]} is not running; start it to set a password")
        with self._calling(f"running chpasswd in container {external_id[:12]}"):
            result = run_with_stdin(self.api, external_id, ["chpasswd"], f"{user}:{password}\n".encode(),
                                    timeout=self.cfg.api_timeout)
        err = (result.stderr + result.stdout).replace(password, "***")
        if result.exit_code in (126, 127) or "executable file not found" in err:
            raise Unsupported(f"the image of container {external_id[:12]} has no chpasswd on its PATH, so the "
                              "docker driver cannot set a password there (add chpasswd, from shadow or busybox, "
                              "to the image)")
        if result.exit_code != 0:
            raise ProvisionError(f"chpasswd in container {external_id[:12]} failed (exit code {result.exit_code})"
                                 + (f": {short(err)}" if err.strip() else ""))
        log.info("docker: password of %s set in container %s", user, external_id[:12])

    def rotate_ssh_key(self, external_id: str, new_key: str, old_key: str | None = None) -> None:
        """Rewrite root's authorized_keys through the archive API (running or stopped, no tools needed)."""
        add = docker_keys.key_lines(new_key, "the new SSH key")
        if not add:
            raise ProvisionError("the new SSH key is empty")
        drop = docker_keys.key_lines(old_key, "the old SSH key") if old_key else []
        self._ours(external_id)
        with self._calling(f"reading {docker_keys.AUTHORIZED_KEYS} of container {external_id[:12]}"):
            try:
                stream, _stat = self.api.get_archive(external_id, docker_keys.AUTHORIZED_KEYS)
                current = docker_keys.read_archive(stream)
            except docker.errors.NotFound:
                current = ""
        text = docker_keys.merged(current, add, drop)
        if text == current:
            return
        with self._calling(f"writing {docker_keys.AUTHORIZED_KEYS} of container {external_id[:12]}"):
            self.api.put_archive(external_id, "/", docker_keys.archive(text))
        log.info("docker: SSH keys of container %s rotated", external_id[:12])

    def health(self) -> Health:
        checks = {"daemon_reachable": False, "default_image_present": False}
        try:
            self.api.ping()
            version = self.api.version()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return Health(ok=False, detail=f"{self.cfg.base_url}: {describe(exc)}", checks=checks)
        checks["daemon_reachable"] = True
        image = self.cfg.default_image
        try:
            checks["default_image_present"] = present(self.api, image)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return Health(ok=False, detail=f"cannot inspect image {image}: {describe(exc)}", checks=checks)
        where = f"Docker {version.get('Version', '?')} at {self.cfg.base_url}"
        if not checks["default_image_present"]:
            return Health(ok=False, checks=checks,
                          detail=f"{where}: default image {image} is not on the host (`docker pull {image}`)")
        return Health(ok=True, checks=checks, detail=f"{where}, default image {image} present")

    def inventory(self) -> dict[str, Any]:
        """The Docker host's resources for the heartbeat: `docker info` (CPUs, memory, storage driver) and the
        tagged images as templates (vmid 0); CPU model, free memory and the data root's free space from this
        machine when the daemon is local (a unix socket)."""
        from provisioners.docker_inventory import docker_inventory

        with self._calling("reading docker info"):
            return docker_inventory(self.api.info(), self.api.images(), local=self.cfg.base_url.startswith("unix://"),
                                    default_image=self.cfg.default_image)
