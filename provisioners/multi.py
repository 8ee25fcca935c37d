"""Several provisioners behind one driver, so the run loop never asks which one it talks to.

`[provisioner]` is the default; `[provisioners.<name>]` tables add more (dc_agent/config.py). A contract goes
to the provisioner whose *name* equals its `provisionerType`, else to the first whose *type* does (the default
first), else to the default: an offering with no or an unknown provisioner type is provisioned by the default
(the Rust dc-agent 0.6 fails such a contract instead; here the pool's routing already chose this agent).

Instances are owned by the driver that made or listed them. The owner of each `externalId` is remembered
(in memory and in `<state_dir>/provisioners/owners.json`, so that lifecycle actions after a restart still
reach a driver that cannot list); terminate and the lifecycle actions go to the owner, and an unknown
externalId is looked up in every driver's list first. An instance that no driver lists counts as gone for
terminate, and as "unknown" for a health check: it is never handed to a driver that does not claim it (a
bare number from a script could name a Proxmox VM).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provisioners.base import (
    ConfigError,
    Contract,
    Health,
    Instance,
    InstanceDetails,
    InstanceHealth,
    Lifecycle,
    ProvisionError,
    Provisioner,
    capabilities,
)
from provisioners.inventory import merge

log = logging.getLogger(__name__)
OWNERS_FILE = "owners.json"


class TableSpec(Protocol):
    """What :func:`build` needs of one configured provisioner (dc_agent.config.ProvisionerTable)."""

    name: str
    type: str
    settings: dict[str, Any]
    default: bool

    @property
    def table(self) -> str: ...


@dataclass(frozen=True)
class Member:
    """One provisioner of the agent."""

    name: str
    type: str
    driver: Provisioner
    default: bool = False

    @property
    def table(self) -> str:
        return f"[provisioner.{self.type}]" if self.default else f"[provisioners.{self.name}]"


def renamed_error(message: str, spec: TableSpec) -> str:
    """A driver's config error names `[provisioner.<type>]`; say which table it really came from."""
    if spec.default:
        return message
    message = message.replace(f"[provisioner.{spec.type}]", spec.table)
    return re.sub(r"\[provisioner\](?= type)", spec.table, message)


def build(specs: list[TableSpec], *, config_path: Path | None = None, state_dir: Path | None = None) -> Provisioner:
    """The driver of each table (the default first); one of them alone is returned as it is."""
    from provisioners import load

    members = []
    for spec in specs:
        try:
            driver = load(spec.type, spec.settings, config_path=config_path)
        except ConfigError as exc:
            raise ConfigError(renamed_error(str(exc), spec)) from None
        members.append(Member(spec.name, spec.type, driver, default=spec.default))
    if len(members) == 1:
        return members[0].driver
    return MultiProvisioner(members, state_dir=state_dir)


def members_of(driver: Any) -> list[Member]:
    """The provisioners behind `driver` (a plain driver is one, named by its type)."""
    if isinstance(driver, MultiProvisioner):
        return list(driver.members)
    kind = str(getattr(driver, "name", type(driver).__name__))
    return [Member(kind, kind, driver, default=True)]


def pick(members: list[Member], name: str | None) -> Member | None:
    """The member called `name`, else the first of that type; None when there is none."""
    if not name:
        return members[0] if members else None
    return next((m for m in members if m.name == name), None) or next((m for m in members if m.type == name), None)


class MultiProvisioner(Lifecycle):
    """Routes each call to one of several drivers (see the module docstring)."""

    name = "multi"

    def __init__(self, members: list[Member], *, state_dir: Path | None = None) -> None:
        if not members:
            raise ValueError("at least one provisioner is needed")
        self.members = members
        self.default = members[0]
        self._by_name = {m.name: m for m in members}
        self._owners_path = Path(state_dir) / OWNERS_FILE if state_dir else None
        self._lock = threading.Lock()
        self._owners: dict[str, str] = self._read_owners()
        self._contracts: dict[str, str] = {}

    def __repr__(self) -> str:
        return "MultiProvisioner(" + ", ".join(f"{m.name}={m.type}" for m in self.members) + ")"

    # -- routing ----------------------------------------------------------------------------------------

    def route(self, contract: Contract) -> Member:
        """Name first, then type, else the default."""
        wanted = contract.provisioner_type
        found = pick(self.members, wanted) if wanted else None
        if found is None:
            if wanted:
                log.info("contract %s: provisioner type %r matches none of %s; using the default (%s)",
                         contract.contract_id, wanted, ", ".join(m.name for m in self.members), self.default.name)
            found = self.default
        return found

    def _read_owners(self) -> dict[str, str]:
        if self._owners_path is None:
            return {}
        try:
            data = json.loads(self._owners_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _remember(self, external_id: str, member: Member) -> None:
        with self._lock:
            if self._owners.get(external_id) == member.name:
                return
            self._owners[external_id] = member.name
            self._save_owners()

    def _forget(self, external_id: str) -> None:
        with self._lock:
            if self._owners.pop(external_id, None) is not None:
                self._save_owners()

    def _save_owners(self) -> None:
        if self._owners_path is None:
            return
        from dc_common.fsutil import atomic_write

        try:
            atomic_write(self._owners_path, json.dumps(self._owners, sort_keys=True).encode())
        except OSError as exc:  # the lists find the owner again; a full disk must not fail a provision
            log.warning("cannot record which provisioner owns which instance in %s: %s", self._owners_path, exc)

    def owner(self, external_id: str) -> Member | None:
        """The driver that made or lists `external_id` (asking every driver's list when it is not known)."""
        with self._lock:
            known = self._by_name.get(self._owners.get(external_id, ""))
        if known is not None:
            return known
        self.list_instances()
        with self._lock:
            return self._by_name.get(self._owners.get(external_id, ""))

    def _owner_or_fail(self, external_id: str, what: str) -> Member:
        member = self.owner(external_id)
        if member is None:
            raise ProvisionError(f"cannot {what} instance {external_id}: none of this agent's provisioners "
                                 f"({', '.join(m.name for m in self.members)}) lists it", retryable=False)
        return member

    # -- the Provisioner interface ------------------------------------------------------------------------

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        member = self.route(contract)
        self._contracts[contract.contract_id] = member.name
        details = member.driver.provision(contract, cancel)
        self._remember(details.external_id, member)
        return details

    def find(self, contract_id: str) -> InstanceDetails | None:
        """Each driver is asked (the contract's own first, when known): find has only the contract id, and a
        driver's find also clears what an unfinished attempt of the contract left in it."""
        first = self._by_name.get(self._contracts.get(contract_id, ""))
        found: InstanceDetails | None = None
        failed: list[ProvisionError] = []
        for member in ([first] if first else []) + [m for m in self.members if m is not first]:
            try:
                details = member.driver.find(contract_id)
            except ProvisionError as exc:  # another driver may still hold the instance: ask the rest first
                log.warning("provisioner %s: find for contract %s failed: %s", member.name, contract_id, exc)
                failed.append(exc)
                continue
            if details is not None and found is None:
                self._remember(details.external_id, member)
                found = details
        if found is None and failed:
            raise failed[0]  # not "nothing there": provisioning again could make a second instance
        return found

    def list_instances(self) -> list[Instance]:
        """Every driver's instances. A driver whose list fails is left out (logged): the server judges each
        listed instance on its own, so a partial list removes nothing; all failing raises the first error."""
        out: list[Instance] = []
        errors: list[tuple[Member, Exception]] = []
        for member in self.members:
            try:
                listed = member.driver.list_instances()
            except Exception as exc:  # noqa: BLE001 - one broken driver must not hide the others' instances
                errors.append((member, exc))
                log.warning("provisioner %s (%s) could not list its instances: %s", member.name, member.type, exc)
                continue
            for inst in listed:
                self._remember(inst.external_id, member)
            out.extend(listed)
        if errors and len(errors) == len(self.members):
            member, exc = errors[0]
            raise ProvisionError(f"provisioner {member.name}: {exc}") from exc
        return out

    def terminate(self, external_id: str) -> None:
        member = self.owner(external_id)
        if member is None:
            log.warning("terminate %s: no provisioner lists it; counted as gone", external_id)
            return
        member.driver.terminate(external_id)
        self._forget(external_id)

    def health(self) -> Health:
        parts = [(m, _safe_health(m.driver)) for m in self.members]
        checks = {f"{m.name}.{k}": v for m, h in parts for k, v in h.checks.items()}
        checks.update({m.name: h.ok for m, h in parts})
        return Health(ok=all(h.ok for _, h in parts), checks=checks,
                      detail="; ".join(f"{m.name} ({m.type}): {h.detail}" for m, h in parts))

    def capabilities(self) -> list[str]:
        """The union of the drivers' lifecycle capabilities (base.capabilities asks for this)."""
        out: list[str] = []
        for member in self.members:
            out.extend(c for c in capabilities(member.driver) if c not in out)
        return out

    def recover_orphans(self) -> list[str]:
        stopped: list[str] = []
        for member in self.members:
            recover = getattr(member.driver, "recover_orphans", None)
            if recover is None:
                continue
            try:
                stopped.extend(recover())
            except Exception as exc:  # noqa: BLE001 - best effort, like the agent's own call
                log.warning("provisioner %s: could not check for runs left by a previous agent: %s", member.name, exc)
        return stopped

    def inventory(self) -> dict[str, Any]:
        parts = []
        for member in self.members:
            try:
                parts.append(member.driver.inventory())
            except Exception as exc:  # noqa: BLE001 - the others still describe the host
                log.warning("provisioner %s: no inventory: %s", member.name, exc)
                parts.append(None)
        merged = merge(parts[0], [p for p in parts[1:] if p])
        if merged is None:
            raise ProvisionError("no provisioner could describe the host")
        return merged

    # -- lifecycle: the owner's ---------------------------------------------------------------------------

    def check_instance(self, external_id: str) -> InstanceHealth:
        member = self.owner(external_id)
        if member is None:
            return InstanceHealth("unknown", f"none of this agent's provisioners lists instance {external_id}")
        return member.driver.check_instance(external_id)

    def stop(self, external_id: str) -> None:
        self._owner_or_fail(external_id, "stop").driver.stop(external_id)

    def start(self, external_id: str) -> None:
        self._owner_or_fail(external_id, "start").driver.start(external_id)

    def set_password(self, external_id: str, password: str, username: str | None = None) -> None:
        self._owner_or_fail(external_id, "set a password on").driver.set_password(external_id, password, username)

    def rotate_ssh_key(self, external_id: str, new_key: str, old_key: str | None = None) -> None:
        self._owner_or_fail(external_id, "rotate the SSH key of").driver.rotate_ssh_key(external_id, new_key, old_key)


def _safe_health(driver: Any) -> Health:
    try:
        return driver.health()
    except Exception as exc:  # noqa: BLE001 - one driver's broken check must not hide the others'
        return Health(ok=False, detail=f"health check failed: {type(exc).__name__}: {exc}")


def describe(driver: Any, *, with_health: bool = True) -> list[dict[str, Any]]:
    """Each provisioner as heartbeats, status and the pool page list it: name, type, default, capabilities and
    (blocking: call it in a worker thread) its health."""
    out = []
    for member in members_of(driver):
        item: dict[str, Any] = {"name": member.name, "type": member.type, "default": member.default,
                                "capabilities": capabilities(member.driver)}
        if with_health:
            health = _safe_health(member.driver)
            item.update(healthy=health.ok, detail=health.detail[:300], checks=dict(health.checks))
        out.append(item)
    return out
