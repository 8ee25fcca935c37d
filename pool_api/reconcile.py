"""Reconcile: which of an agent's running instances to keep, terminate, or treat as unknown.

For each `{externalId, contractId}` the agent reports:
- contractId null, unknown, or of another provider -> `unknown` (the server has no claim on it);
- contract provisioned by this agent as this externalId (or with no recorded externalId) -> keep;
- contract this agent holds the lock on (provisioning in progress) -> keep;
- contract cancelled or terminated -> terminate, reason "cancelled" / "terminated";
- contract provisioned by this agent as another externalId -> terminate, reason "duplicate-instance";
- contract provisioned by another agent -> terminate, reason "provisioned-by-another-agent";
- contract not provisioned and not locked by this agent (a failed or abandoned attempt) ->
  terminate, reason "not-provisioned-by-this-agent".
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api.auth import Caller
from pool_api.tables import contracts as c


def _decide(row: Any, me: str, external_id: str) -> str | None:
    """None = keep, else the termination reason."""
    if row.status in ("cancelled", "terminated"):
        return row.status
    if row.status == "provisioned":
        if row.provisioned_by not in (me, None):
            return "provisioned-by-another-agent"
        recorded = (row.instance_details or {}).get("externalId") if isinstance(row.instance_details, dict) else None
        if recorded is not None and str(recorded) != external_id:
            return "duplicate-instance"
        return None
    if row.lock_agent == me:
        return None
    return "not-provisioned-by-this-agent"


def reconcile(conn: sa.Connection, caller: Caller, running: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    ids = {r["contract_id"] for r in running if r.get("contract_id")}
    rows: dict[str, Any] = {}
    id_list = sorted(ids)
    for i in range(0, len(id_list), 500):
        chunk = id_list[i:i + 500]
        for row in conn.execute(sa.select(c).where(c.c.contract_id.in_(chunk),
                                                   c.c.provider_pubkey == caller.provider_pubkey)):
            rows[row.contract_id] = row
    keep, terminate, unknown = [], [], []
    for inst in running:
        ext, cid = inst["external_id"], inst.get("contract_id")
        row = rows.get(cid) if cid else None
        if row is None:
            unknown.append({"externalId": ext, "contractId": cid})
            continue
        reason = _decide(row, caller.pubkey, ext)
        if reason is None:
            keep.append({"externalId": ext, "contractId": cid})
        else:
            terminate.append({"externalId": ext, "contractId": cid, "reason": reason})
    return {"keep": keep, "terminate": terminate, "unknown": unknown}
