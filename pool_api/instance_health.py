"""Health reports of running instances: the last one on the contract, a bounded history beside it.

An agent checks each instance it runs and reports `{status, detail, latencyMs, checkedAtNs}`. The
contract keeps the newest report by `checkedAtNs` (a late, older report does not overwrite a newer
one); `contract_health` keeps the last HEALTH_HISTORY reports per contract, trimmed on every insert.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api import contract_events
from pool_api.auth import Caller
from pool_api.contracts import HAS_INSTANCE, health_json, load_for_agent
from pool_api.db import now_ns
from pool_api.tables import agent_delegations as d
from pool_api.tables import contract_health as h
from pool_api.tables import contracts as c

HEALTH_HISTORY = 100
HEALTH_STATUSES = ("healthy", "unhealthy", "unknown")


def record(conn: sa.Connection, caller: Caller, contract_id: str, status: str, detail: str | None,
           latency_ms: float | None, checked_at_ns: int) -> dict[str, Any]:
    """Store one report of the calling agent (404 another provider's contract, 403 another pool's)."""
    before = load_for_agent(conn, caller, contract_id).health_status
    now = now_ns()
    conn.execute(sa.insert(h).values(contract_id=contract_id, status=status, detail=detail, latency_ms=latency_ms,
                                     checked_at_ns=checked_at_ns, agent_pubkey=caller.pubkey, received_at_ns=now))
    newest = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id,
                           sa.or_(c.c.health_checked_at_ns.is_(None), c.c.health_checked_at_ns <= checked_at_ns))
        .values(health_status=status, health_detail=detail, health_latency_ms=latency_ms,
                health_checked_at_ns=checked_at_ns, health_agent=caller.pubkey)
    ).rowcount
    if newest and status != before:  # the history keeps changes of status, not every report
        contract_events.record(conn, contract_id, "health", agent=caller.pubkey, at_ns=now,
                               detail={"status": status, "detail": detail, "checkedAtNs": checked_at_ns})
    trim(conn, contract_id)
    return {"recorded": True}


def trim(conn: sa.Connection, contract_id: str, keep: int = HEALTH_HISTORY) -> int:
    """Delete all but the newest `keep` reports of the contract (one statement; none when fewer)."""
    oldest_kept = (sa.select(h.c.id).where(h.c.contract_id == contract_id).order_by(h.c.id.desc())
                   .offset(keep - 1).limit(1).scalar_subquery())
    return conn.execute(sa.delete(h).where(h.c.contract_id == contract_id, h.c.id < oldest_kept)).rowcount


def history(conn: sa.Connection, contract_id: str, limit: int = HEALTH_HISTORY) -> list[dict[str, Any]]:
    """The contract's reports, newest first."""
    rows = conn.execute(sa.select(h).where(h.c.contract_id == contract_id).order_by(h.c.id.desc()).limit(limit))
    return [{"status": r.status, "detail": r.detail, "latencyMs": r.latency_ms, "checkedAtNs": r.checked_at_ns,
             "agentPubkey": r.agent_pubkey} for r in rows]


def pool_contracts(conn: sa.Connection, provider_pubkey: str, pool_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """Contracts with an instance that an agent of the pool provisioned, with their last health (pool page)."""
    rows = conn.execute(
        sa.select(c.c.contract_id, c.c.offering_id, c.c.status, c.c.provisioned_by, c.c.ends_at_ns,
                  c.c.instance_details, c.c.health_status, c.c.health_detail, c.c.health_latency_ms,
                  c.c.health_checked_at_ns, c.c.health_agent)
        .select_from(c.join(d, d.c.agent_pubkey == c.c.provisioned_by))
        .where(c.c.provider_pubkey == provider_pubkey, d.c.pool_id == pool_id, c.c.status.in_(HAS_INSTANCE))
        .order_by(c.c.provisioned_at_ns.desc(), c.c.contract_id).limit(limit)
    ).all()
    out = []
    for r in rows:
        details = r.instance_details if isinstance(r.instance_details, dict) else {}
        out.append({"contractId": r.contract_id, "offeringId": r.offering_id, "status": r.status,
                    "provisionedBy": r.provisioned_by, "endsAtNs": r.ends_at_ns,
                    "externalId": details.get("externalId"), "health": health_json(r._mapping)})
    return out
