"""Pool priorities (SPEC.md "Future Enhancements" 4): a pool may name a fallback pool of the same provider.

A pool is *down* while none of its agents is online (unrevoked, heartbeat within the online window). It
has been down since the last moment one was: the latest `last_seen + online window` of its agents, a
revoked agent counting until its revocation at the latest, and the pool's creation when no agent was
ever online. Once a pool has been down for its `fallbackAfterSeconds` (default 300), the agents of its
fallback pool see and claim its contracts, and the fallback's fallback takes over in turn when the
fallback is down too (chains are followed; cycles are refused when a fallback is set). As soon as one of
the pool's own agents is online again, its contracts are its own again (locks already taken stay).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pool_api import agent_health
from pool_api.dispatch_rules import NS, DispatchRules
from pool_api.errors import ApiError
from pool_api.tables import agent_delegations as d
from pool_api.tables import agent_pools as p
from pool_api.tables import providers

DEFAULT_FALLBACK_AFTER_SECONDS = 300
MAX_FALLBACK_AFTER_SECONDS = 7 * 86400


@dataclass(frozen=True)
class PoolState:
    """A pool with what dispatch needs to know of its agents right now."""

    pool: Mapping[str, Any]
    online_count: int
    healthy_online_count: int
    down_since_ns: int | None  # None while an agent is online

    @property
    def pool_id(self) -> str:
        return self.pool["pool_id"]

    def fallback_due(self, now: int) -> bool:
        """Down for at least fallbackAfterSeconds: its fallback pool may take its contracts."""
        return (self.down_since_ns is not None
                and now >= self.down_since_ns + int(self.pool["fallback_after_seconds"]) * NS)


def pool_states(conn: sa.Connection, provider_pubkey: str, now: int, rules: DispatchRules) -> dict[str, PoolState]:
    """Every pool of the provider with its online and healthy agent counts and down-since time (one query)."""
    window = rules.online_window_ns
    live = d.c.revoked_at_ns.is_(None)
    online = sa.and_(live, d.c.last_seen_ns >= now - window)
    offline_at = d.c.last_seen_ns + window
    revoked_offline = sa.case((d.c.revoked_at_ns < offline_at, d.c.revoked_at_ns), else_=offline_at)
    q = (
        sa.select(
            p,
            sa.func.coalesce(sa.func.sum(sa.case((online, 1), else_=0)), 0).label("online_count"),
            sa.func.coalesce(sa.func.sum(sa.case(
                (sa.and_(online, ~agent_health.unhealthy_clause(d, now, rules)), 1), else_=0)), 0).label("healthy"),
            sa.func.max(sa.case((live, offline_at))).label("live_offline_at"),
            sa.func.max(sa.case((sa.and_(~live, d.c.last_seen_ns.is_not(None)), revoked_offline))).label("revoked_at"),
        )
        .select_from(p.outerjoin(d, d.c.pool_id == p.c.pool_id))
        .where(p.c.provider_pubkey == provider_pubkey)
        .group_by(*p.c)
    )
    out: dict[str, PoolState] = {}
    for row in conn.execute(q):
        m = row._mapping
        down_since = None
        if not m["online_count"]:
            down_since = max(v for v in (m["created_at_ns"], m["live_offline_at"], m["revoked_at"]) if v is not None)
        pool = {k: m[k] for k in p.c.keys()}
        out[m["pool_id"]] = PoolState(pool, int(m["online_count"]), int(m["healthy"]), down_since)
    return out


def served_pools(states: Mapping[str, PoolState], pool_id: str, now: int) -> list[PoolState]:
    """The pool itself, then every pool whose contracts it takes over now (chains followed, oldest first)."""
    if pool_id not in states:
        return []
    served = [states[pool_id]]
    seen = {pool_id}
    frontier = [pool_id]
    while frontier:
        target = frontier.pop()
        for state in sorted(states.values(), key=lambda s: (s.pool["created_at_ns"], s.pool_id)):
            if state.pool_id not in seen and state.pool["fallback_pool_id"] == target and state.fallback_due(now):
                seen.add(state.pool_id)
                served.append(state)
                frontier.append(state.pool_id)
    return served


def fallback_for(states: Mapping[str, PoolState], pool_id: str, now: int) -> list[str]:
    """The pools (ids) whose agents take this pool's contracts now, nearest first (for the pool pages)."""
    out: list[str] = []
    current = states.get(pool_id)
    while current is not None and current.fallback_due(now) and current.pool["fallback_pool_id"] in states:
        nxt = current.pool["fallback_pool_id"]
        if nxt in out or nxt == pool_id:
            break
        out.append(nxt)
        current = states[nxt]
    return out


def validate(conn: sa.Connection, provider_pubkey: str, pool_id: str | None, fallback_pool_id: str | None) -> None:
    """422 unless `fallback_pool_id` is None or another pool of the same provider that does not (through its
    own fallbacks) fall back to `pool_id`. The provider's row is locked first (PostgreSQL), so two concurrent
    changes cannot make a cycle together; SQLite writers are serialised anyway."""
    if fallback_pool_id is None:
        return
    if fallback_pool_id == pool_id:
        raise ApiError(422, "fallbackPoolId: a pool cannot fall back to itself")
    conn.execute(sa.select(providers.c.pubkey).where(providers.c.pubkey == provider_pubkey).with_for_update())
    chain = dict(conn.execute(sa.select(p.c.pool_id, p.c.fallback_pool_id)
                              .where(p.c.provider_pubkey == provider_pubkey)).all())
    if fallback_pool_id not in chain:
        raise ApiError(422, f"fallbackPoolId: no pool {fallback_pool_id!r} of this provider")
    current: str | None = fallback_pool_id
    hops = 0
    while current is not None and hops <= len(chain):
        if current == pool_id:
            raise ApiError(422, f"fallbackPoolId: {fallback_pool_id!r} falls back (directly or through other pools) "
                                "to this pool; fallbacks must not form a cycle")
        current = chain.get(current)
        hops += 1


def clear_references(conn: sa.Connection, pool_id: str) -> None:
    """Pools that fell back to `pool_id` have no fallback any more (the pool is being deleted)."""
    conn.execute(sa.update(p).where(p.c.fallback_pool_id == pool_id).values(fallback_pool_id=None))
