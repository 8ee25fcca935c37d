"""Agents: setup with a one-time token, heartbeats, revocation."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api import tokens
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.pools import agent_json
from pool_api.schemas import MAX_INT32
from pool_api.tables import agent_delegations as d
from pool_api.tables import agent_pools as p
from pool_api.tables import agent_setup_tokens as t

AGENT_PERMISSIONS = ["heartbeat", "pending-provision", "claim", "lock", "provisioned", "failed", "reconcile", "terminated",
                     "health", "pending-password-reset", "password", "pending-ssh-key-rotation", "ssh-key-rotation"]


def setup(conn: sa.Connection, token: str, agent_pubkey: str) -> dict[str, Any]:
    """Consume the token and create the agent's delegation, in one transaction (caller commits).

    A key that is already registered (revoked or not) is refused (409) and the token stays unused,
    because the whole transaction rolls back: a new identity needs a new key, never a silent takeover.
    """
    now = now_ns()
    agent_pubkey = agent_pubkey.lower()
    pool_id = tokens.consume(conn, token, agent_pubkey, now)
    pool = conn.execute(sa.select(p).where(p.c.pool_id == pool_id)).one()
    label = conn.execute(sa.select(t.c.label).where(t.c.token_hash == tokens.token_hash(token))).scalar_one_or_none()
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(d).values(
                agent_pubkey=agent_pubkey, provider_pubkey=pool.provider_pubkey, pool_id=pool_id, label=label,
                permissions=AGENT_PERMISSIONS, created_at_ns=now,
            ))
    except sa.exc.IntegrityError:
        if conn.execute(sa.select(d.c.agent_pubkey).where(d.c.agent_pubkey == agent_pubkey)).first() is None:
            raise ApiError(404, "the token's pool was deleted") from None  # the pool row vanished meanwhile
        raise ApiError(409, "agentPubkey: this agent key is already registered") from None
    return {
        "agentPubkey": agent_pubkey,
        "providerPubkey": pool.provider_pubkey,
        "poolId": pool.pool_id,
        "poolName": pool.name,
        "poolLocation": pool.location,
        "provisionerType": pool.provisioner_type,
        "label": label,
        "permissions": AGENT_PERMISSIONS,
        "apiDialect": "pool-api",  # dc-agent setup tells pool_api from the live API by this field
    }


def _slots(capacity: dict[str, Any] | None, key: str) -> int | None:
    """A whole number 0..2**31-1 from the heartbeat's free-form capacity object, else None."""
    value = (capacity or {}).get(key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT32:
        return value
    return None


# Built once: every heartbeat runs both (an UPDATE executed with a dict sets exactly the dict's columns).
_HEARTBEAT = sa.update(d).where(d.c.agent_pubkey == sa.bindparam("p_agent"))
_POOL_OF_AGENT = (sa.select(d.c.pool_id, p.c.name).select_from(d.outerjoin(p, p.c.pool_id == d.c.pool_id))
                  .where(d.c.agent_pubkey == sa.bindparam("p_agent")))


def heartbeat(conn: sa.Connection, agent_pubkey: str, version: str, provisioner_type: str | None,
              active_contracts: int, capacity: dict[str, Any] | None, *, resources: dict[str, Any] | None = None,
              provisioners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Store the agent's state; its capacity `{maxConcurrent, freeSlots}` also goes to columns for dispatch.
    The host inventory and provisioner list replace the stored ones only when sent (as on the live API)."""
    values: dict[str, Any] = dict(last_seen_ns=now_ns(), version=version, provisioner_type=provisioner_type,
                                  active_contracts=active_contracts, capacity=capacity)
    if capacity is not None:
        values.update(max_concurrent=_slots(capacity, "maxConcurrent"), free_slots=_slots(capacity, "freeSlots"))
    if resources is not None or provisioners is not None:
        stored = conn.execute(sa.select(d.c.inventory).where(d.c.agent_pubkey == agent_pubkey)).scalar_one_or_none()
        inventory = dict(stored) if isinstance(stored, dict) else {}
        if resources is not None:
            inventory = {**resources, **({"provisioners": inventory["provisioners"]} if "provisioners" in inventory
                                         else {})}
        if provisioners is not None:
            inventory["provisioners"] = provisioners
        values["inventory"] = inventory
    conn.execute(_HEARTBEAT, {"p_agent": agent_pubkey, **values})  # SET: the keys of `values`
    row = conn.execute(_POOL_OF_AGENT, {"p_agent": agent_pubkey}).one()
    return {"poolId": row.pool_id, "poolName": row.name}


def revoke(conn: sa.Connection, provider_pubkey: str, agent_pubkey: str) -> dict[str, Any]:
    """Revoke an agent of this provider; revoking twice answers the same (idempotent)."""
    agent_pubkey = agent_pubkey.lower()
    conn.execute(
        sa.update(d).where(d.c.agent_pubkey == agent_pubkey, d.c.provider_pubkey == provider_pubkey,
                           d.c.revoked_at_ns.is_(None)).values(revoked_at_ns=now_ns())
    )
    row = conn.execute(sa.select(d).where(d.c.agent_pubkey == agent_pubkey, d.c.provider_pubkey == provider_pubkey)).first()
    if row is None:
        raise ApiError(404, "unknown agent")
    return {"agentPubkey": agent_pubkey, "revoked": True, "revokedAtNs": row.revoked_at_ns}


def list_agents(conn: sa.Connection, provider_pubkey: str, online_window_ns: int) -> list[dict[str, Any]]:
    now = now_ns()
    rows = conn.execute(sa.select(d).where(d.c.provider_pubkey == provider_pubkey).order_by(d.c.created_at_ns)).all()
    return [agent_json(r, now, online_window_ns) for r in rows]
