"""Which contracts an agent may take: its pool's (PROTOCOL.md's routing), those of pools it is the due
fallback for (pool_api.fallback), none new while it is passed over (pool_api.agent_health), and, for
claims, not those kept for another agent (sticky re-provisioning).

Sticky: taking a lock (lock or claim) makes the locking agent the contract's sticky agent until its lock's
expiry plus one lock TTL. When such a lock lapses (the agent was restarted, paused or cut off and did not
renew in time), claim keeps the contract for that agent while it is online, since it may have a
half-made instance that its own `find` adopts; another agent claims it once the sticky agent is offline
or the extra TTL has passed. Releasing the lock or reporting `failed` ends the stickiness at once (the
agent gave the contract back). pending-provision and lock keep their rules unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pool_api import agent_health, fallback
from pool_api.auth import Caller
from pool_api.contracts import PROVISIONABLE, not_ended
from pool_api.dispatch_rules import DispatchRules
from pool_api.routing import routes_to_clause
from pool_api.tables import agent_delegations as d
from pool_api.tables import agent_pools as p
from pool_api.tables import contracts as c
from pool_api.tables import offerings as o


@dataclass(frozen=True)
class Eligibility:
    """What one agent may take now. `pools` None: a legacy agent (no pool), all of its provider's contracts."""

    pools: list[Mapping[str, Any]] | None
    passed_over: bool = False
    free_slots: int | None = None

    @property
    def pool_ids(self) -> list[str]:
        return [pool["pool_id"] for pool in self.pools or []]


# Built once (statements built per call cost their construction and cache key on every claim).
_POOLS = sa.select(p).where(p.c.provider_pubkey == sa.bindparam("p_provider"))
_AGENT = sa.select(d.c.consecutive_failures, d.c.last_failure_ns, d.c.free_slots).where(
    d.c.agent_pubkey == sa.bindparam("p_agent"))
_STICKY = d.alias("sticky")


def _provider_pools(conn: sa.Connection, provider_pubkey: str) -> dict[str, Mapping[str, Any]]:
    return {row.pool_id: row._mapping for row in conn.execute(_POOLS, {"p_provider": provider_pubkey})}


def _is_fallback(pools: Mapping[str, Mapping[str, Any]], pool_id: str) -> bool:
    """Does any pool of the provider fall back (directly) to this one? Only then can it serve others."""
    return any(pool["fallback_pool_id"] == pool_id for pool in pools.values())


def for_agent(conn: sa.Connection, caller: Caller, now: int, rules: DispatchRules) -> Eligibility:
    """The caller's served pools and whether it is passed over: two small queries, and a third (the pools'
    agent counts, pool_api.fallback) only for an unhealthy agent or a pool that is another's fallback."""
    me = conn.execute(_AGENT, {"p_agent": caller.pubkey}).first()
    free = me.free_slots if me is not None else None
    if caller.pool_id is None:
        return Eligibility(pools=None, free_slots=free)
    pools = _provider_pools(conn, caller.provider_pubkey)
    if caller.pool_id not in pools:
        return Eligibility(pools=[], free_slots=free)
    unhealthy = me is not None and agent_health.is_unhealthy(me, now, rules)
    if not unhealthy and not _is_fallback(pools, caller.pool_id):
        return Eligibility(pools=[pools[caller.pool_id]], free_slots=free)
    states = fallback.pool_states(conn, caller.provider_pubkey, now, rules)
    served = fallback.served_pools(states, caller.pool_id, now)
    passed_over = unhealthy and served[0].healthy_online_count > 0
    return Eligibility(pools=[s.pool for s in served], passed_over=passed_over, free_slots=free)


def for_pool(conn: sa.Connection, provider_pubkey: str, pool_id: str | None, now: int,
             rules: DispatchRules) -> Eligibility:
    """What the agents of one pool may take (the waiting claims' re-check), ignoring who is passed over."""
    if pool_id is None:
        return Eligibility(pools=None)
    pools = _provider_pools(conn, provider_pubkey)
    if pool_id not in pools:
        return Eligibility(pools=[])
    if not _is_fallback(pools, pool_id):
        return Eligibility(pools=[pools[pool_id]])
    served = fallback.served_pools(fallback.pool_states(conn, provider_pubkey, now, rules), pool_id, now)
    return Eligibility(pools=[s.pool for s in served])


def route_clause(eligible: Eligibility) -> sa.ColumnElement[bool]:
    """SQL over contracts + offerings: the contract routes to one of the eligible pools."""
    if eligible.pools is None:
        return sa.true()
    if not eligible.pools:
        return sa.false()
    return sa.or_(*(routes_to_clause(o, pool) for pool in eligible.pools))


def free_lock(me: str, now: int) -> sa.ColumnElement[bool]:
    """No lock, my lock, or an expired one."""
    return sa.or_(c.c.lock_agent.is_(None), c.c.lock_agent == me, c.c.lock_expires_ns < now)


def held_by(me: str, now: int) -> sa.ColumnElement[bool]:
    """My unexpired lock."""
    return sa.and_(c.c.lock_agent == me, c.c.lock_expires_ns >= now)


def open_contract(provider_pubkey: str, now: int) -> sa.ColumnElement[bool]:
    """The contract can be provisioned now: paid, accepted or provisioning, not ended."""
    return sa.and_(c.c.provider_pubkey == provider_pubkey, c.c.status.in_(PROVISIONABLE),
                   c.c.payment_status == "succeeded", not_ended(now))


def kept_for_another(me: str, now: int, rules: DispatchRules) -> sa.ColumnElement[bool]:
    """Sticky for another agent that is online (see the module docstring)."""
    sticky = _STICKY
    return sa.and_(
        c.c.sticky_agent.is_not(None), c.c.sticky_agent != me, c.c.sticky_until_ns > now,
        sa.exists().where(sticky.c.agent_pubkey == c.c.sticky_agent, sticky.c.revoked_at_ns.is_(None),
                          sticky.c.last_seen_ns >= now - rules.online_window_ns),
    )
