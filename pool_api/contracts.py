"""Contracts as agents see them: pending-provision, and the admin stand-ins for the marketplace."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pool_api import contract_events, wakeups
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.routing import DEFAULT_PROVISIONER_TYPE, routes_to
from pool_api.tables import agent_pools as p
from pool_api.tables import contracts as c
from pool_api.tables import offerings as o

if TYPE_CHECKING:  # PyNaCl stays out of the admin commands' start-up
    from pool_api.auth import Caller

PROVISIONABLE = ("accepted", "provisioning")
# An instance runs for a provisioned contract; a paused one keeps its instance, stopped (pool_api.pause).
HAS_INSTANCE = ("provisioned", "paused")
STATUSES = ("requested", "accepted", "provisioning", "provisioned", "paused", "cancelled", "terminated")
PAYMENT_STATUSES = ("pending", "succeeded", "failed", "refunded")


def not_ended(now: int) -> sa.ColumnElement[bool]:
    """The contract has no end, or its end is still ahead."""
    return sa.or_(c.c.ends_at_ns.is_(None), c.c.ends_at_ns > now)


def has_ended(row: Any, now: int | None = None) -> bool:
    return row.ends_at_ns is not None and row.ends_at_ns <= (now_ns() if now is None else now)


def health_json(m: Any) -> dict[str, Any] | None:
    """The last health report kept on the contract, or None before the first."""
    if m["health_status"] is None:
        return None
    return {"status": m["health_status"], "detail": m["health_detail"], "latencyMs": m["health_latency_ms"],
            "checkedAtNs": m["health_checked_at_ns"], "agentPubkey": m["health_agent"]}


def contract_json(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "contractId": m["contract_id"],
        "offeringId": m["offering_id"],
        "providerPubkey": m["provider_pubkey"],
        "status": m["status"],
        "paymentStatus": m["payment_status"],
        "requesterSshPubkey": m["requester_ssh_pubkey"],
        "instanceConfig": m["instance_config"],
        "createdAtNs": m["created_at_ns"],
        "updatedAtNs": m["updated_at_ns"],
        "lockAgent": m["lock_agent"],
        "lockAtNs": m["lock_at_ns"],
        "lockExpiresNs": m["lock_expires_ns"],
        "firstLockedAtNs": m["first_locked_at_ns"],
        "provisionedBy": m["provisioned_by"],
        "provisionedAtNs": m["provisioned_at_ns"],
        "instanceDetails": m["instance_details"],
        "failureCount": m["failure_count"],
        "lastError": m["last_error"],
        "lastFailedBy": m["last_failed_by"],
        "lastFailedAtNs": m["last_failed_at_ns"],
        "cancelledAtNs": m["cancelled_at_ns"],
        "terminatedAtNs": m["terminated_at_ns"],
        "terminatedBy": m["terminated_by"],
        "endsAtNs": m["ends_at_ns"],
        "pausedAtNs": m["paused_at_ns"],
        "resumedAtNs": m["resumed_at_ns"],
        "health": health_json(m),
    }


def agent_pool(conn: sa.Connection, caller: Caller) -> Any:
    if caller.pool_id is None:
        return None
    return conn.execute(sa.select(p).where(p.c.pool_id == caller.pool_id)).first()


_LOAD_FOR_AGENT = (  # built once: every agent call on a contract runs it
    sa.select(c, o.c.agent_pool_id, o.c.datacenter_country, o.c.provisioner_type)
    .select_from(c.join(o, o.c.offering_id == c.c.offering_id))
    .where(c.c.contract_id == sa.bindparam("p_contract"), c.c.provider_pubkey == sa.bindparam("p_provider"))
)


def load_for_agent(conn: sa.Connection, caller: Caller, contract_id: str, rules: Any = None) -> Any:
    """The contract + its offering's routing columns, if this agent may act on it.

    404 for an unknown contract or one of another provider (no existence leak across providers);
    403 for a contract of this provider that routes to another pool, unless this agent holds its
    lock or provisioned it, or its pool is that pool's due fallback (pool_api.fallback, judged by
    `rules`, a DispatchRules). A legacy agent (no pool) may act on all of its provider's contracts.
    """
    row = conn.execute(_LOAD_FOR_AGENT, {"p_contract": contract_id, "p_provider": caller.provider_pubkey}).first()
    if row is None:
        raise ApiError(404, "unknown contract")
    if caller.pool_id is None or caller.pubkey in (row.lock_agent, row.provisioned_by):
        return row
    pool = agent_pool(conn, caller)
    offering = {"agent_pool_id": row.agent_pool_id, "datacenter_country": row.datacenter_country,
                "provisioner_type": row.provisioner_type}
    if pool is None or not routes_to(offering, pool._mapping):
        if not _fallback_routes(conn, caller, offering, rules):
            raise ApiError(403, "contract belongs to another pool")
    return row


def _fallback_routes(conn: sa.Connection, caller: Caller, offering: dict[str, Any], rules: Any) -> bool:
    """Does the offering route to a pool that the caller's pool serves now as its fallback?"""
    from pool_api import eligibility  # imports this module
    from pool_api.dispatch_rules import DispatchRules

    eligible = eligibility.for_agent(conn, caller, now_ns(), rules or DispatchRules())
    return any(routes_to(offering, pool) for pool in (eligible.pools or [])[1:])


def get_contract(conn: sa.Connection, contract_id: str) -> Any:
    row = conn.execute(sa.select(c).where(c.c.contract_id == contract_id)).first()
    if row is None:
        raise ApiError(404, "unknown contract")
    return row


def _item_query() -> sa.Select:
    """Contracts with the offering fields a pending-provision item shows."""
    explicit = p.alias("explicit_pool")
    return (
        sa.select(c, o.c.cpu_cores, o.c.memory_mb, o.c.storage_gb, o.c.provisioner_type.label("offering_ptype"),
                  o.c.provisioner_config, o.c.datacenter_country, o.c.name.label("offering_name"), o.c.product_type,
                  explicit.c.provisioner_type.label("pool_ptype"))
        .select_from(c.join(o, o.c.offering_id == c.c.offering_id)
                     .outerjoin(explicit, explicit.c.pool_id == o.c.agent_pool_id))
    )


def _item_json(r: Any, me: str) -> dict[str, Any]:
    return {
        "contractId": r.contract_id,
        "offeringId": r.offering_id,
        "offeringName": r.offering_name,
        "productType": r.product_type,
        "status": r.status,
        "requesterSshPubkey": r.requester_ssh_pubkey,
        "cpuCores": r.cpu_cores,
        "memoryMb": r.memory_mb,
        "storageGb": r.storage_gb,
        "provisionerType": r.offering_ptype or r.pool_ptype or DEFAULT_PROVISIONER_TYPE,
        "provisionerConfig": r.provisioner_config,
        "instanceConfig": r.instance_config,
        "datacenterCountry": r.datacenter_country,
        "createdAtNs": r.created_at_ns,
        "lockedByMe": r.lock_agent == me,
        "lockExpiresNs": r.lock_expires_ns if r.lock_agent == me else None,
        "failureCount": r.failure_count,
    }


_ITEMS_BY_ID = _item_query().where(c.c.contract_id.in_(sa.bindparam("p_ids", expanding=True)))  # built once


def pending_items(conn: sa.Connection, contract_ids: list[str], me: str) -> dict[str, dict[str, Any]]:
    """Pending-provision items of these contracts, by id (the claim answer's items)."""
    if not contract_ids:
        return {}
    return {r.contract_id: _item_json(r, me) for r in conn.execute(_ITEMS_BY_ID, {"p_ids": list(contract_ids)})}


def pending_provision(conn: sa.Connection, caller: Caller, limit: int = 500, now: int | None = None,
                      rules: Any = None) -> list[dict[str, Any]]:
    """PROTOCOL.md's pending-provision filter, oldest first, including contracts this agent holds; plus the
    pools it is the due fallback for, and only its own locks while it is passed over (pool_api.eligibility)."""
    from pool_api import eligibility  # imports this module
    from pool_api.dispatch_rules import DispatchRules

    now = now_ns() if now is None else now
    q = (
        _item_query()
        .where(eligibility.open_contract(caller.provider_pubkey, now), eligibility.free_lock(caller.pubkey, now))
        .order_by(c.c.created_at_ns, c.c.contract_id)
        .limit(limit)
    )
    if caller.pool_id is not None:
        eligible = eligibility.for_agent(conn, caller, now, rules or DispatchRules())
        if not eligible.pools:
            return []
        mine = c.c.lock_agent == caller.pubkey
        q = q.where(mine if eligible.passed_over else sa.or_(eligibility.route_clause(eligible), mine))
    return [_item_json(r, caller.pubkey) for r in conn.execute(q)]


# --- admin (stand-ins for the marketplace) -------------------------------------------------------

def create_contracts(conn: sa.Connection, offering_id: str, *, ssh_pubkey: str | None = None, count: int = 1,
                     status: str = "accepted", payment_status: str = "succeeded",
                     instance_config: dict[str, Any] | None = None, ends_at_ns: int | None = None) -> list[str]:
    """Contracts as the marketplace makes them; `ends_at_ns` is the contract's end (None: open-ended)."""
    offering = conn.execute(sa.select(o.c.provider_pubkey, o.c.status).where(o.c.offering_id == offering_id)).first()
    if offering is None:
        raise ApiError(404, f"unknown offering {offering_id!r}")
    if offering.status != "active":
        raise ApiError(409, f"offering {offering_id!r} is {offering.status}: it takes no new contracts")
    now = now_ns()
    rows = [dict(contract_id=uuid.uuid4().hex, provider_pubkey=offering.provider_pubkey, offering_id=offering_id,
                 requester_ssh_pubkey=ssh_pubkey, instance_config=instance_config, status=status,
                 payment_status=payment_status, created_at_ns=now + i, updated_at_ns=now + i, failure_count=0,
                 ends_at_ns=ends_at_ns)
            for i in range(count)]
    if rows:
        conn.execute(sa.insert(c), rows)
        contract_events.record_many(conn, [(r["contract_id"], r["created_at_ns"]) for r in rows], "created",
                                    detail={"status": status, "paymentStatus": payment_status})
        wakeups.notify(conn, offering.provider_pubkey)  # waiting claims look again once this commits
    return [r["contract_id"] for r in rows]


def list_contracts(conn: sa.Connection, *, status: str | None = None, provider_pubkey: str | None = None,
                   limit: int = 1000) -> list[dict[str, Any]]:
    q = sa.select(c).order_by(c.c.created_at_ns, c.c.contract_id).limit(limit)
    if status:
        q = q.where(c.c.status == status)
    if provider_pubkey:
        q = q.where(c.c.provider_pubkey == provider_pubkey)
    return [contract_json(r) for r in conn.execute(q)]


def cancel(conn: sa.Connection, contract_id: str) -> dict[str, Any]:
    """Mark a contract cancelled (the tenant ended it); clears any lock. Cancelling twice is a no-op."""
    now = now_ns()
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, c.c.status.not_in(("cancelled", "terminated")))
        .values(status="cancelled", cancelled_at_ns=now, updated_at_ns=now, lock_agent=None, lock_at_ns=None,
                lock_expires_ns=None, lock_since_ns=None)
    ).rowcount
    if got:
        contract_events.record(conn, contract_id, "cancelled", at_ns=now)
    return contract_json(get_contract(conn, contract_id))
