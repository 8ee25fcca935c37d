"""The one interface every provisioning driver implements.

Drivers are synchronous and may block for minutes (a Proxmox clone, a provider's script); the agent
runs each call in a worker thread so that lock renewal and heartbeats never wait on a driver.
A driver is told to stop through a :class:`threading.Event`: when it is set the driver removes what
it made for that contract and raises :class:`Cancelled`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class ProvisionError(Exception):
    """Provisioning failed; the message is what the agent reports to the server (no secrets).

    `retryable` False says another attempt cannot help (bad contract, missing capability): where a failure
    report is final, the agent then reports at once instead of trying again first.
    """

    def __init__(self, *args: object, retryable: bool = True) -> None:
        super().__init__(*args)
        self.retryable = retryable


class Cancelled(ProvisionError):
    """The agent asked the driver to stop (lock lost or shutdown); what was made is removed."""


class Unsupported(ProvisionError):
    """The driver cannot do this action; the message names the action and, if any, the setting that enables it."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args, retryable=False)


class ConfigError(Exception):
    """A driver's configuration is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class Contract:
    """What a driver needs to know about a contract, from pending-provision."""

    contract_id: str
    offering_id: str = ""
    requester_ssh_pubkey: str | None = None
    cpu_cores: int | None = None
    memory_mb: int | None = None
    storage_gb: int | None = None
    provisioner_type: str | None = None
    provisioner_config: dict[str, Any] | None = None
    instance_config: dict[str, Any] | None = None
    datacenter_country: str | None = None
    post_provision_script: str | None = None  # the live API's offering script, run by drivers that support it

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Contract":
        return cls(
            contract_id=str(data["contractId"]),
            offering_id=str(data.get("offeringId") or ""),
            requester_ssh_pubkey=data.get("requesterSshPubkey"),
            cpu_cores=data.get("cpuCores"),
            memory_mb=data.get("memoryMb"),
            storage_gb=data.get("storageGb"),
            provisioner_type=data.get("provisionerType"),
            provisioner_config=data.get("provisionerConfig"),
            instance_config=data.get("instanceConfig"),
            datacenter_country=data.get("datacenterCountry"),
        )

    def to_api(self) -> dict[str, Any]:
        """The contract as camelCase JSON, the form scripts receive on stdin."""
        return {
            "contractId": self.contract_id,
            "offeringId": self.offering_id,
            "requesterSshPubkey": self.requester_ssh_pubkey,
            "cpuCores": self.cpu_cores,
            "memoryMb": self.memory_mb,
            "storageGb": self.storage_gb,
            "provisionerType": self.provisioner_type,
            "provisionerConfig": self.provisioner_config,
            "instanceConfig": self.instance_config,
            "datacenterCountry": self.datacenter_country,
            **({"postProvisionScript": self.post_provision_script} if self.post_provision_script else {}),
        }


@dataclass
class InstanceDetails:
    """What the agent reports in `provisioned` (PROTOCOL.md, "Instance details")."""

    external_id: str
    provisioner: str
    ip_address: str | None = None
    ipv6_address: str | None = None
    ssh_port: int = 22
    root_password: str | None = None
    node: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "externalId": self.external_id,
            "ipAddress": self.ip_address,
            "ipv6Address": self.ipv6_address,
            "sshPort": self.ssh_port,
            "provisioner": self.provisioner,
            "extra": dict(self.extra),
        }
        if self.root_password is not None:
            out["rootPassword"] = self.root_password
        if self.node is not None:
            out["node"] = self.node
        return out

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "InstanceDetails":
        return cls(
            external_id=str(data["externalId"]),
            provisioner=str(data.get("provisioner") or ""),
            ip_address=data.get("ipAddress"),
            ipv6_address=data.get("ipv6Address"),
            ssh_port=int(data.get("sshPort") or 22),
            root_password=data.get("rootPassword"),
            node=data.get("node"),
            extra=dict(data.get("extra") or {}),
        )


@dataclass(frozen=True)
class Instance:
    """One instance a driver manages, as listed for reconcile."""

    external_id: str
    contract_id: str | None


@dataclass(frozen=True)
class Health:
    """A driver's self-check for `dc-agent status`."""

    ok: bool
    detail: str
    checks: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceHealth:
    """One health check of one instance (reported every `health_interval_seconds`)."""

    status: str  # "healthy" | "unhealthy" | "unknown"
    detail: str = ""  # one line, no secrets
    latency_ms: float | None = None  # how long the check took (or a ping inside it)


HEALTH_STATUSES = ("healthy", "unhealthy", "unknown")


class Lifecycle:
    """What the agent asks of a driver after provisioning. A driver inherits this and overrides what it can do;
    every default raises :class:`Unsupported` (health answers "unknown"), so the agent reports a plain
    "this driver cannot …" instead of failing obscurely. All methods block and run in a worker thread.

    * `check_instance(external_id)` -> InstanceHealth: the instance's health (never raises for an unhealthy one).
    * `stop(external_id)`: pause: power the instance off and keep its disk; an already stopped one is done.
    * `start(external_id)`: resume a stopped instance; an already running one is done.
    * `set_password(external_id, password, username)`: set the login password (the agent makes it and keeps
      it durably until reported, so a retry sets the same one: must be idempotent). `username` None = the
      driver's default user.
    * `rotate_ssh_key(external_id, new_key, old_key)`: install `new_key` (an OpenSSH public key line) and
      remove `old_key` (None: keep others, just add), idempotent.
    """

    def check_instance(self, external_id: str) -> InstanceHealth:
        return InstanceHealth("unknown", f"the {getattr(self, 'name', 'this')} driver has no health check")

    def stop(self, external_id: str) -> None:
        raise Unsupported(f"the {getattr(self, 'name', 'this')} driver cannot stop (pause) an instance")

    def start(self, external_id: str) -> None:
        raise Unsupported(f"the {getattr(self, 'name', 'this')} driver cannot start (resume) an instance")

    def set_password(self, external_id: str, password: str, username: str | None = None) -> None:
        raise Unsupported(f"the {getattr(self, 'name', 'this')} driver cannot reset a password")

    def rotate_ssh_key(self, external_id: str, new_key: str, old_key: str | None = None) -> None:
        raise Unsupported(f"the {getattr(self, 'name', 'this')} driver cannot rotate SSH keys")

    def inventory(self) -> dict[str, Any]:
        """The host's resources for the heartbeat (:mod:`provisioners.inventory` shape). Default: this machine
        (/proc and the root file system), right for drivers whose instances live where the agent runs."""
        from provisioners.inventory import local_host

        return local_host()


def capabilities(driver: object) -> list[str]:
    """The lifecycle actions `driver` overrides (for heartbeats and `status`): health, pause, password, ssh_key.

    A driver whose support depends on its settings (the script driver: one command per action) also
    defines `lifecycle_configured(method) -> bool`; an overridden method it says is not configured counts
    as unsupported. A driver with its own `capabilities()` method (several drivers in one) answers itself.
    """
    own = getattr(driver, "capabilities", None)
    if callable(own):  # a driver over other drivers (provisioners.multi) answers for them
        return list(own())
    configured = getattr(driver, "lifecycle_configured", None)

    def overrides(name: str) -> bool:
        impl = getattr(type(driver), name, None)
        return impl is not None and impl is not getattr(Lifecycle, name) and (configured is None or configured(name))
    caps = ["provision"]
    if overrides("check_instance"):
        caps.append("health")
    if overrides("stop") and overrides("start"):
        caps.append("pause")
    if overrides("set_password"):
        caps.append("password")
    if overrides("rotate_ssh_key"):
        caps.append("ssh_key")
    return caps


@runtime_checkable
class Provisioner(Protocol):
    """A driver. Every method may block; none may be called on the event loop thread."""

    name: str

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        """Make the instance; on any failure remove what was made and raise ProvisionError."""
        ...

    def find(self, contract_id: str) -> InstanceDetails | None:
        """The instance already made for this contract (after a crash), or None."""
        ...

    def list_instances(self) -> list[Instance]:
        """Every instance this driver made (and only those), for reconcile."""
        ...

    def terminate(self, external_id: str) -> None:
        """Remove an instance; one that is already gone counts as done."""
        ...

    def health(self) -> Health:
        ...
