"""Agent pools: a provider's group of agents with one location and one provisioner type."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from pool_api import agent_health, fallback, provision_stats, wakeups
from pool_api.db import now_ns
from pool_api.dispatch_rules import DispatchRules
from pool_api.errors import ApiError
from pool_api.fallback import DEFAULT_FALLBACK_AFTER_SECONDS
from pool_api.routing import routes_to_clause
from pool_api.tables import agent_delegations as d
from pool_api.tables import agent_pools as p
from pool_api.tables import offerings as o


def new_pool_id() -> str:
    return "pool_" + secrets.token_hex(8)


def _stats_query(provider_pubkey: str, online_since_ns: int) -> sa.Select:
    live = sa.and_(d.c.pool_id == p.c.pool_id, d.c.revoked_at_ns.is_(None))
    return (
        sa.select(
            p,
            sa.func.count(d.c.agent_pubkey).label("agent_count"),
            sa.func.coalesce(sa.func.sum(sa.case((d.c.last_seen_ns >= online_since_ns, 1), else_=0)), 0).label("online_count"),
            sa.func.coalesce(sa.func.sum(d.c.active_contracts), 0).label("active_contracts"),
        )
        .select_from(p.outerjoin(d, live))
        .where(p.c.provider_pubkey == provider_pubkey)
        .group_by(*p.c)
        .order_by(p.c.created_at_ns, p.c.pool_id)
    )


def pool_json(m: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "poolId": m["pool_id"],
        "providerPubkey": m["provider_pubkey"],
        "name": m["name"],
        "location": m["location"],
        "provisionerType": m["provisioner_type"],
        "fallbackPoolId": m.get("fallback_pool_id"),
        "fallbackAfterSeconds": m.get("fallback_after_seconds", DEFAULT_FALLBACK_AFTER_SECONDS),
        "createdAtNs": m["created_at_ns"],
    }
    for key, camel in (("agent_count", "agentCount"), ("online_count", "onlineCount"), ("active_contracts", "activeContracts")):
        if key in m:
            out[camel] = int(m[key] or 0)
    return out


def create_pool(conn: sa.Connection, provider_pubkey: str, name: str, location: str, provisioner_type: str,
                fallback_pool_id: str | None = None,
                fallback_after_seconds: int = DEFAULT_FALLBACK_AFTER_SECONDS) -> dict[str, Any]:
    fallback.validate(conn, provider_pubkey, None, fallback_pool_id or None)
    values = dict(pool_id=new_pool_id(), provider_pubkey=provider_pubkey, name=name, location=location,
                  provisioner_type=provisioner_type, created_at_ns=now_ns(), fallback_pool_id=fallback_pool_id or None,
                  fallback_after_seconds=fallback_after_seconds)
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(p).values(**values))
    except sa.exc.IntegrityError:
        raise ApiError(409, f"name: a pool named {name!r} already exists") from None
    return {**pool_json(values), "agentCount": 0, "onlineCount": 0, "activeContracts": 0}


def list_pools(conn: sa.Connection, provider_pubkey: str, online_window_ns: int) -> list[dict[str, Any]]:
    rows = conn.execute(_stats_query(provider_pubkey, now_ns() - online_window_ns)).all()
    return [pool_json(r._mapping) for r in rows]


def get_pool_row(conn: sa.Connection, provider_pubkey: str, pool_id: str) -> Any:
    row = conn.execute(sa.select(p).where(p.c.pool_id == pool_id, p.c.provider_pubkey == provider_pubkey)).first()
    if row is None:
        raise ApiError(404, "unknown pool")
    return row


def offering_count(conn: sa.Connection, pool: Any) -> int:
    """Offerings that route to the pool: explicitly, or by region and provisioner type."""
    q = sa.select(sa.func.count()).select_from(o).where(o.c.provider_pubkey == pool.provider_pubkey,
                                                        routes_to_clause(o, pool._mapping))
    return int(conn.execute(q).scalar_one())


def pool_detail(conn: sa.Connection, provider_pubkey: str, pool_id: str, online_window_ns: int,
                rules: DispatchRules | None = None) -> dict[str, Any]:
    """The pool with its agents (capacity, failure streak, passed over), its fallback state and its last 24 h
    (pool_api.provision_stats). `rules` default: the serve defaults with this online window."""
    rules = rules or DispatchRules(online_window_ns=online_window_ns)
    now = now_ns()
    row = conn.execute(_stats_query(provider_pubkey, now - online_window_ns).where(p.c.pool_id == pool_id)).first()
    if row is None:
        raise ApiError(404, "unknown pool")
    out = pool_json(row._mapping)
    agents = conn.execute(
        sa.select(d).where(d.c.pool_id == pool_id, d.c.revoked_at_ns.is_(None)).order_by(d.c.created_at_ns)
    ).all()
    states = fallback.pool_states(conn, provider_pubkey, now, rules)
    healthy_online = states[pool_id].healthy_online_count
    out["agents"] = []
    for a in agents:
        item = agent_json(a, now, online_window_ns)
        unhealthy = agent_health.is_unhealthy(a, now, rules)
        item.update(unhealthy=unhealthy, passedOver=unhealthy and healthy_online > 0,
                    waitingInClaim=a.claim_waiting_until_ns is not None and a.claim_waiting_until_ns > now)
        out["agents"].append(item)
    out["offeringCount"] = offering_count(conn, row)
    out["fallback"] = {
        "downSinceNs": states[pool_id].down_since_ns,
        "takenOverBy": fallback.fallback_for(states, pool_id, now),
        "takingOverFor": [s.pool_id for s in fallback.served_pools(states, pool_id, now)[1:]],
    }
    out["stats"] = provision_stats.pool_stats(conn, pool_id, now)
    return out


def agent_json(a: Any, now: int, online_window_ns: int) -> dict[str, Any]:
    return {
        "agentPubkey": a.agent_pubkey,
        "poolId": a.pool_id,
        "label": a.label,
        "online": a.last_seen_ns is not None and a.last_seen_ns >= now - online_window_ns,
        "version": a.version,
        "provisionerType": a.provisioner_type,
        "activeContracts": a.active_contracts or 0,
        "capacity": a.capacity,
        "maxConcurrent": a.max_concurrent,
        "freeSlots": a.free_slots,
        "consecutiveFailures": a.consecutive_failures or 0,
        "lastFailureNs": a.last_failure_ns,
        "lastSeenNs": a.last_seen_ns,
        "createdAtNs": a.created_at_ns,
        "revokedAtNs": a.revoked_at_ns,
    }


def update_pool(conn: sa.Connection, provider_pubkey: str, pool_id: str, changes: dict[str, Any],
                online_window_ns: int) -> dict[str, Any]:
    """Apply `changes` (columns); a new fallback is validated (pool_api.fallback) and waiting claims are told."""
    get_pool_row(conn, provider_pubkey, pool_id)
    if changes.get("fallback_pool_id"):
        fallback.validate(conn, provider_pubkey, pool_id, changes["fallback_pool_id"])
    if changes:
        try:
            with conn.begin_nested():
                conn.execute(sa.update(p).where(p.c.pool_id == pool_id).values(**changes))
        except sa.exc.IntegrityError:
            raise ApiError(409, f"name: a pool named {changes.get('name')!r} already exists") from None
        wakeups.notify(conn, provider_pubkey)
    return pool_detail(conn, provider_pubkey, pool_id, online_window_ns)


def delete_pool(conn: sa.Connection, provider_pubkey: str, pool_id: str) -> None:
    """Delete a pool that has no (unrevoked) agents; one conditional DELETE, so an agent joining at
    the same moment either lands first (409) or finds the pool gone."""
    has_agents = sa.exists().where(d.c.pool_id == p.c.pool_id, d.c.revoked_at_ns.is_(None))
    if conn.execute(sa.select(p.c.pool_id).where(p.c.pool_id == pool_id, p.c.provider_pubkey == provider_pubkey,
                                                 ~has_agents)).first() is not None:
        fallback.clear_references(conn, pool_id)  # the FK's ON DELETE SET NULL would too; explicit is portable
    deleted = conn.execute(
        sa.delete(p).where(p.c.pool_id == pool_id, p.c.provider_pubkey == provider_pubkey, ~has_agents)
    ).rowcount
    if deleted == 0:
        get_pool_row(conn, provider_pubkey, pool_id)
        raise ApiError(409, "pool still has agents: revoke them first")


def pools_of_provider(conn: sa.Connection, provider_pubkey: str) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(sa.select(p).where(p.c.provider_pubkey == provider_pubkey))]

