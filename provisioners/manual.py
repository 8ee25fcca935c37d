"""The `manual` driver: an operator provisions by hand; the agent holds (and renews) the lock meanwhile.

How the hand-off works (files under the driver's state directory, `<state_dir>/manual/` by default):

* when the agent takes a contract it writes `pending/<contract>.json` and waits, renewing the lock;
* `dc-agent manual list` shows those contracts (and any terminations the agent asks for);
* `dc-agent manual done CONTRACT --ip … [--ssh-port …]` or `manual fail CONTRACT --reason …` writes
  `results/<contract>.json` atomically; the waiting agent picks it up within a second and reports it
  like any other result (through its durable outbox, so an API outage does not lose it);
* a result written while the agent is stopped is adopted when the agent next takes the contract.

Configuration (`[provisioner.manual]`, all optional): `timeout_hours` (give the contract back as
failed after this long; default: wait indefinitely), `state_dir`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from provisioners.base import Cancelled, ConfigError, Contract, Health, Instance, InstanceDetails, Lifecycle, ProvisionError

KNOWN_KEYS = {"timeout_hours", "state_dir"}


def _name(contract_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in contract_id)[:80]
    return f"{safe}-{hashlib.sha256(contract_id.encode()).hexdigest()[:10]}.json"


def _write(path: Path, data: dict[str, Any]) -> None:
    from dc_common.fsutil import atomic_write

    atomic_write(path, json.dumps(data, sort_keys=True, indent=1).encode())


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


class HandoffDir:
    """The files shared by the running agent and `dc-agent manual` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.results = self.root / "results"
        self.instances = self.root / "instances"
        self.terminations = self.root / "terminate"

    def waiting(self) -> list[dict[str, Any]]:
        out = [_read(p) for p in sorted(self.pending.glob("*.json"))] if self.pending.exists() else []
        return sorted((d for d in out if d), key=lambda d: d.get("sinceNs", 0))

    def termination_requests(self) -> list[dict[str, Any]]:
        if not self.terminations.exists():
            return []
        return [d for d in (_read(p) for p in sorted(self.terminations.glob("*.json"))) if d]

    def is_waiting(self, contract_id: str) -> bool:
        return (self.pending / _name(contract_id)).exists()

    def hand_result(self, contract_id: str, result: dict[str, Any]) -> None:
        _write(self.results / _name(contract_id), {"contractId": contract_id, **result, "atNs": time.time_ns()})

    def take_result(self, contract_id: str) -> dict[str, Any] | None:
        path = self.results / _name(contract_id)
        data = _read(path)
        if data is not None:
            path.unlink(missing_ok=True)
        return data

    def peek_result(self, contract_id: str) -> dict[str, Any] | None:
        return _read(self.results / _name(contract_id))


class ManualProvisioner(Lifecycle):
    name = "manual"

    def __init__(self, settings: dict[str, Any], config_path: Path | str | None = None) -> None:
        unknown = set(settings) - KNOWN_KEYS
        if unknown:
            raise ConfigError(f"[provisioner.manual] {sorted(unknown)[0]} is not a known key; known keys: timeout_hours")
        hours = settings.get("timeout_hours")
        if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0):
            raise ConfigError(f"[provisioner.manual] timeout_hours must be a number > 0 (got {hours!r})")
        self.timeout_seconds = None if hours is None else float(hours) * 3600
        root = settings.get("state_dir")
        if not root:
            base = Path(config_path).parent if config_path else Path.cwd()
            root = base / "state" / "manual"
        self.handoff = HandoffDir(Path(root))
        self.poll_seconds = 0.25

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        pending = self.handoff.pending / _name(contract.contract_id)
        _write(pending, {"contractId": contract.contract_id, "contract": contract.to_api(), "sinceNs": time.time_ns()})
        deadline = None if self.timeout_seconds is None else time.monotonic() + self.timeout_seconds
        try:
            while True:
                result = self.handoff.take_result(contract.contract_id)
                if result is not None:
                    return self._outcome(contract.contract_id, result)
                if cancel.wait(self.poll_seconds):
                    raise Cancelled("manual provisioning was interrupted (lock lost or agent stopping)")
                if deadline is not None and time.monotonic() > deadline:
                    raise ProvisionError(f"no operator finished this contract within {self.timeout_seconds / 3600:g} h "
                                         "([provisioner.manual] timeout_hours)")
        finally:
            pending.unlink(missing_ok=True)

    def _outcome(self, contract_id: str, result: dict[str, Any]) -> InstanceDetails:
        if result.get("outcome") == "fail":
            raise ProvisionError(str(result.get("reason") or "an operator marked it failed"))
        details = InstanceDetails.from_api({"provisioner": self.name, **(result.get("instanceDetails") or {})})
        _write(self.handoff.instances / _name(contract_id), {"contractId": contract_id, "instanceDetails": details.to_api()})
        return details

    def find(self, contract_id: str) -> InstanceDetails | None:
        record = _read(self.handoff.instances / _name(contract_id))
        if record is not None:
            return InstanceDetails.from_api(record["instanceDetails"])
        result = self.handoff.peek_result(contract_id)
        if result is not None and result.get("outcome") == "done":  # handed in while the agent was down
            self.handoff.take_result(contract_id)
            return self._outcome(contract_id, result)
        return None

    def list_instances(self) -> list[Instance]:
        if not self.handoff.instances.exists():
            return []
        out = []
        for path in sorted(self.handoff.instances.glob("*.json")):
            record = _read(path)
            if record:
                out.append(Instance(external_id=str(record["instanceDetails"]["externalId"]),
                                    contract_id=record.get("contractId")))
        return out

    def terminate(self, external_id: str) -> None:
        """Ask the operator (via `dc-agent manual list`) to remove the machine; forget the instance."""
        for path in list(self.handoff.instances.glob("*.json")) if self.handoff.instances.exists() else []:
            record = _read(path)
            if record and str(record["instanceDetails"].get("externalId")) == external_id:
                _write(self.handoff.terminations / path.name,
                       {"externalId": external_id, "contractId": record.get("contractId"), "sinceNs": time.time_ns()})
                path.unlink(missing_ok=True)

    def health(self) -> Health:
        waiting = len(self.handoff.waiting())
        return Health(ok=True, detail=f"{waiting} contract(s) waiting for an operator", checks={})
