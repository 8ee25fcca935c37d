"""Reconcile: which of an agent's running instances to keep, terminate, or treat as unknown.

Agents of one pool often share one cluster (one agent per hypervisor, one Proxmox API), so an agent's
list can hold instances that another agent made, adopted or is still making. The rule that keeps a
contract's VM alive: the instance the server recorded for a provisioned contract is kept, whoever
lists it, and an instance of a contract that is still open is kept (an attempt in progress, or one
the next agent to take the contract adopts through find()).

For each `{externalId, contractId}` the agent reports:
- contractId null, unknown, or of another provider -> `unknown` (the server has no claim on it);
- contract cancelled or terminated -> terminate, reason "cancelled" / "terminated";
- contract ended (its `ends_at_ns` passed), whatever its status -> terminate, reason "expired" (the agent
  then reports `terminated`);
- contract provisioned as this externalId (whichever agent reported it) -> keep;
- contract provisioned as another externalId -> terminate, reason "duplicate-instance";
- contract provisioned without a recorded externalId -> keep when this agent provisioned it, else
  terminate, reason "provisioned-by-another-agent";
- contract accepted or provisioning (open: locked by any agent, or free for a retry) -> keep;
- any other status (not yet payable) -> terminate, reason "contract-<status>".
A paused contract is judged as a provisioned one, except that what would be kept goes to `pause`
(reason "paused": the agent stops the instance and keeps its disk) instead: its instance is never
terminated for the pause. After a resume the contract is provisioned again and the instance in `keep`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api.auth import Caller
from pool_api.contracts import HAS_INSTANCE, PROVISIONABLE, has_ended
from pool_api.db import now_ns
from pool_api.tables import contracts as c


def _decide(row: Any, me: str, external_id: str, now: int) -> str | None:
    """None = keep (or pause, for a paused contract), else the termination reason."""
    if row.status in ("cancelled", "terminated"):
        return row.status
    if has_ended(row, now):
        return "expired"
    if row.status in HAS_INSTANCE:
        recorded = (row.instance_details or {}).get("externalId") if isinstance(row.instance_details, dict) else None
        if recorded is not None:
            return None if str(recorded) == external_id else "duplicate-instance"
        return None if row.provisioned_by in (me, None) else "provisioned-by-another-agent"
    if row.status in PROVISIONABLE:
        return None
    return f"contract-{row.status}"


def reconcile(conn: sa.Connection, caller: Caller, running: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    ids = {r["contract_id"] for r in running if r.get("contract_id")}
    rows: dict[str, Any] = {}
    id_list = sorted(ids)
    for i in range(0, len(id_list), 500):
        chunk = id_list[i:i + 500]
        for row in conn.execute(sa.select(c).where(c.c.contract_id.in_(chunk),
                                                   c.c.provider_pubkey == caller.provider_pubkey)):
            rows[row.contract_id] = row
    keep, pause, terminate, unknown = [], [], [], []
    now = now_ns()
    for inst in running:
        ext, cid = inst["external_id"], inst.get("contract_id")
        row = rows.get(cid) if cid else None
        if row is None:
            unknown.append({"externalId": ext, "contractId": cid})
            continue
        reason = _decide(row, caller.pubkey, ext, now)
        if reason is not None:
            terminate.append({"externalId": ext, "contractId": cid, "reason": reason})
        elif row.status == "paused":
            pause.append({"externalId": ext, "contractId": cid, "reason": "paused"})
        else:
            keep.append({"externalId": ext, "contractId": cid})
    return {"keep": keep, "pause": pause, "terminate": terminate, "unknown": unknown}
