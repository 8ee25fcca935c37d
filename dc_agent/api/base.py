"""The one client interface the run loop talks to, whichever API dialect is behind it.

A dialect (`pool_api.py`, `decent_cloud.py`) turns these calls into its own requests and its answers into the
plain values below, and maps its refusals onto :mod:`dc_agent.errors` (`Conflict` = another agent holds the
contract, `Forbidden`/`NotFound`/`Gone` = not ours any more, `Unreachable`/`ServerError` = try again). The loop
never asks which dialect it runs; where dialects really differ in meaning it reads a property
(:attr:`AgentApi.failures_are_final`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioners.base import Contract, Instance, InstanceHealth


@dataclass(frozen=True)
class Offer:
    """One pending contract as the server offers it. `contract` is None when the item could not be read
    (`problem` says why): the loop then releases it instead of provisioning from a guess."""

    contract_id: str
    locked_by_me: bool = False
    contract: Contract | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Lease:
    """A provisioning lock held by this agent. `expires_at_ns` None: the server did not say (assume the
    configured lock timeout). `first_lock`: nobody ever held this contract before, so no earlier attempt
    can have left an instance (the agent may skip the driver's find)."""

    expires_at_ns: int | None = None
    first_lock: bool = False


@dataclass(frozen=True)
class HeartbeatAnswer:
    next_heartbeat_seconds: float | None = None
    upgrade_to_version: str | None = None
    claim: bool = False  # the server offers the claim endpoint (pool_api dispatch without polling)
    pool_name: str | None = None


@dataclass(frozen=True)
class ReconcileItem:
    external_id: str
    contract_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ReconcileAnswer:
    """What the server says of the instances the agent runs."""

    keep: list[ReconcileItem] = field(default_factory=list)
    terminate: list[ReconcileItem] = field(default_factory=list)
    unknown: list[ReconcileItem] = field(default_factory=list)
    pause: list[ReconcileItem] = field(default_factory=list)


PASSWORD = "password"
SSH_KEY = "ssh_key"


@dataclass(frozen=True)
class ActionRequest:
    """A tenant's request the agent carries out on a provisioned instance: a new password or a new SSH key.
    `request_id` tells two requests for one contract apart (the live API has one per contract at a time)."""

    kind: str  # PASSWORD | SSH_KEY
    contract_id: str
    request_id: str
    external_id: str | None = None  # None: the server does not say; the agent looks it up
    username: str | None = None
    new_key: str | None = None
    old_key: str | None = None
    recipient_public_key: str | None = None  # pool-api: the password is sealed to this X25519 key


@dataclass(frozen=True)
class HeartbeatInfo:
    version: str
    provisioner_type: str
    active_contracts: int
    max_concurrent: int
    free_slots: int
    capabilities: list[str] = field(default_factory=list)
    resources: dict[str, Any] | None = None  # the host inventory (live API ResourceInventory field names)
    provisioners: list[dict[str, Any]] | None = None  # [{name, type, default, capabilities, healthy, detail}]


class AgentApi(Protocol):
    """The agent's side of one API dialect. One instance per process; close with :meth:`aclose`."""

    dialect: str  # for logs and `status` only
    failures_are_final: bool  # a failure report ends the contract (no retry by the server): retry locally first

    @property
    def agent_pubkey(self) -> str: ...

    async def aclose(self) -> None: ...

    async def heartbeat(self, info: HeartbeatInfo, *, policy: str = "heartbeat") -> HeartbeatAnswer: ...

    async def pending(self) -> list[Offer]:
        """Contracts this agent may take now."""
        ...

    async def lock(self, contract_id: str, *, renew: bool = False) -> Lease:
        """Take or renew the contract's lock; `Conflict` if another agent holds it."""
        ...

    async def unlock(self, contract_id: str, *, quick: bool = False) -> None: ...

    async def claim(self, max_contracts: int, wait_seconds: float, *, free_slots: int,
                    exclude: list[str]) -> list[tuple[Offer, Lease]]:
        """Lock up to `max_contracts` for this agent in one call, waiting up to `wait_seconds` for one to
        arrive (only where a heartbeat answered `claim: true`)."""
        ...

    async def started(self, contract_id: str) -> None:
        """Provisioning starts (best effort: the live API wants `provisioning` before `provisioned`)."""
        ...

    async def report_provisioned(self, contract_id: str, details: dict[str, Any]) -> None: ...

    async def report_failed(self, contract_id: str, message: str) -> None: ...

    async def reconcile(self, running: list[Instance]) -> ReconcileAnswer: ...

    async def report_terminated(self, contract_id: str) -> None: ...

    async def report_health(self, contract_id: str, health: InstanceHealth, checked_at_ns: int) -> None: ...

    async def pending_actions(self, kind: str) -> list[ActionRequest]:
        """Password resets (PASSWORD) or key rotations (SSH_KEY) waiting for this agent."""
        ...

    async def report_action(self, request: ActionRequest, *, password: str | None = None,
                            error: str | None = None) -> bool:
        """Done (`password` for a reset) or failed (`error`); False when the API has no way to say it."""
        ...
