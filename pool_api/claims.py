"""Claim: lock up to `max` contracts for the calling agent in one statement, and the re-check the hub of
waiting claims runs (`survey`).

The statement is a CTE that picks the contracts (the agent's eligible contracts, pool_api.eligibility:
first those it holds, then those sticky for it, then the oldest) with `FOR UPDATE OF contracts SKIP
LOCKED`, and an UPDATE of exactly those rows that sets the lock and returns it. On PostgreSQL two
concurrent claims never pick the same row (the second skips rows the first has locked, and a row changed
by a committed claim is re-checked against the WHERE clause); on SQLite the clause is not rendered and
BEGIN IMMEDIATE (pool_api.db) runs one writer at a time. The UPDATE repeats the lock condition, so a row
can only be taken while it is free, the caller's, or expired: the same rule as POST .../lock.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from pool_api import agent_health, contract_events, eligibility
from pool_api.auth import Caller
from pool_api.contracts import pending_items
from pool_api.db import now_ns
from pool_api.dispatch_rules import DispatchRules
from pool_api.tables import agent_delegations as d
from pool_api.tables import contracts as c
from pool_api.tables import offerings as o

SURVEY_LIMIT = 256  # counting further changes nothing: a round wakes at most this many claims


@dataclass
class ClaimResult:
    items: list[dict[str, Any]] = field(default_factory=list)
    passed_over: bool = False
    free_slots: int | None = None


# The claim statement is built once per shape (how many pools the agent serves, passed over or not,
# exclusions or not, the dispatch rules) with every value a bound parameter: building it anew on each
# claim cost more CPU than running it (bench/RESULTS.md, "A cheaper cycle").
_NS = sa.BigInteger()
_ME = sa.bindparam("p_me", type_=sa.String())
_NOW = sa.bindparam("p_now", type_=_NS)


def _param_pools(n_pools: int) -> list[dict[str, Any]]:
    return [{"pool_id": sa.bindparam(f"p_pool_{i}", type_=sa.String()),
             "location": sa.bindparam(f"p_location_{i}", type_=sa.String()),
             "provisioner_type": sa.bindparam(f"p_ptype_{i}", type_=sa.String())} for i in range(n_pools)]


def _pool_params(pools: list[Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, pool in enumerate(pools):
        params.update({f"p_pool_{i}": pool["pool_id"], f"p_location_{i}": pool["location"],
                       f"p_ptype_{i}": pool["provisioner_type"]})
    return params


def _candidates(n_pools: int | None, passed_over: bool, has_exclude: bool,
                rules: DispatchRules) -> sa.ColumnElement[bool]:
    mine = c.c.lock_agent == _ME
    sticky_mine = sa.and_(c.c.sticky_agent == _ME, c.c.sticky_until_ns > _NOW)
    if passed_over:
        wanted: sa.ColumnElement[bool] = mine
    else:
        pools = None if n_pools is None else _param_pools(n_pools)
        wanted = sa.and_(sa.or_(eligibility.route_clause(eligibility.Eligibility(pools=pools)), mine, sticky_mine),
                         ~eligibility.kept_for_another(_ME, _NOW, rules))
    conditions = [eligibility.open_contract(sa.bindparam("p_provider", type_=sa.String()), _NOW),
                  eligibility.free_lock(_ME, _NOW), wanted]
    if has_exclude:
        conditions.append(c.c.contract_id.not_in(sa.bindparam("p_exclude", expanding=True)))
    return sa.and_(*conditions)


@functools.lru_cache(maxsize=256)
def _claim_statement(n_pools: int | None, passed_over: bool, has_exclude: bool, rules: DispatchRules) -> sa.Update:
    """UPDATE … WHERE contract_id IN (the CTE picking up to `p_max` with FOR UPDATE SKIP LOCKED) RETURNING."""
    first = sa.case((eligibility.held_by(_ME, _NOW), 0), (c.c.sticky_agent == _ME, 1), else_=2)
    picked = (
        sa.select(c.c.contract_id)
        .select_from(c.join(o, o.c.offering_id == c.c.offering_id))
        .where(_candidates(n_pools, passed_over, has_exclude, rules))
        .order_by(first, c.c.created_at_ns, c.c.contract_id)
        .limit(sa.bindparam("p_max", type_=sa.Integer()))
        .with_for_update(of=c, skip_locked=True)
        .cte("picked")
    )
    expires = sa.bindparam("p_expires", type_=_NS)
    return (
        sa.update(c)
        .where(c.c.contract_id.in_(sa.select(picked.c.contract_id)), eligibility.free_lock(_ME, _NOW))
        .values(lock_agent=_ME, lock_at_ns=_NOW, lock_expires_ns=expires, updated_at_ns=_NOW,
                first_locked_at_ns=sa.func.coalesce(c.c.first_locked_at_ns, _NOW),
                sticky_agent=_ME, sticky_until_ns=sa.bindparam("p_sticky_until", type_=_NS),
                **contract_events.lock_since(_ME, _NOW))
        .returning(c.c.contract_id, c.c.first_locked_at_ns, c.c.lock_since_ns)
    )


_WAITING = sa.update(d).where(d.c.agent_pubkey == _ME).values(
    claim_waiting_until_ns=sa.bindparam("p_waiting", type_=_NS))
_WAITING_AND_SLOTS = _WAITING.values(free_slots=sa.bindparam("p_free_slots", type_=sa.Integer()))


def claim(conn: sa.Connection, caller: Caller, max_contracts: int, ttl_seconds: int, rules: DispatchRules, *,
          free_slots: int | None = None, exclude: Sequence[str] = (), waiting_until_ns: int | None = None,
          now: int | None = None) -> ClaimResult:
    """Lock up to `max_contracts` for the caller; each item is a pending-provision item plus its lease.

    Also stores the caller's `free_slots` (when given) and whether it now waits for more
    (`waiting_until_ns`, cleared when it got something), which other claims' capacity rule reads.
    """
    now = now_ns() if now is None else now
    eligible = eligibility.for_agent(conn, caller, now, rules)
    free = free_slots if free_slots is not None else eligible.free_slots
    result = ClaimResult(passed_over=eligible.passed_over, free_slots=free)
    me = caller.pubkey
    if eligible.pools is None or eligible.pools:
        expires = now + ttl_seconds * 1_000_000_000
        n_pools = None if eligible.pools is None else len(eligible.pools)
        statement = _claim_statement(n_pools, eligible.passed_over, bool(exclude), rules)
        params: dict[str, Any] = {"p_me": me, "p_now": now, "p_provider": caller.provider_pubkey,
                                  "p_max": max_contracts, "p_expires": expires,
                                  "p_sticky_until": expires + ttl_seconds * 1_000_000_000,
                                  **_pool_params(eligible.pools or [])}
        if exclude:
            params["p_exclude"] = list(exclude)
        leases = conn.execute(statement, params).all()
        for row in leases:
            contract_events.record_lock(conn, row.contract_id, me, now, expires, row.lock_since_ns)
        items = pending_items(conn, [row.contract_id for row in leases], me)
        for row in leases:
            item = items[row.contract_id]
            item.update(acquired=True, lockedAtNs=now, expiresAtNs=expires, firstLockedAtNs=row.first_locked_at_ns)
            result.items.append(item)
        result.items.sort(key=lambda item: (item["createdAtNs"], item["contractId"]))
    waiting = waiting_until_ns if not result.items else None
    if free_slots is not None:
        conn.execute(_WAITING_AND_SLOTS, {"p_me": me, "p_waiting": waiting, "p_free_slots": free_slots})
    else:
        conn.execute(_WAITING, {"p_me": me, "p_waiting": waiting})
    return result


@dataclass(frozen=True)
class Survey:
    """What the hub needs before waking claims of one pool: how many contracts are free for it, and the most
    free slots any waiting, healthy, online agent of the pool has (any replica's)."""

    claimable: int
    best_free_slots: int | None


def survey(conn: sa.Connection, provider_pubkey: str, pool_id: str | None, rules: DispatchRules,
           now: int | None = None) -> Survey:
    now = now_ns() if now is None else now
    eligible = eligibility.for_pool(conn, provider_pubkey, pool_id, now, rules)
    if eligible.pools is not None and not eligible.pools:
        return Survey(0, None)
    free = (
        sa.select(c.c.contract_id)
        .select_from(c.join(o, o.c.offering_id == c.c.offering_id))
        .where(eligibility.open_contract(provider_pubkey, now), eligibility.route_clause(eligible),
               sa.or_(c.c.lock_agent.is_(None), c.c.lock_expires_ns < now))
        .limit(SURVEY_LIMIT)
        .subquery()
    )
    claimable = int(conn.execute(sa.select(sa.func.count()).select_from(free)).scalar_one())
    best = None
    if claimable and pool_id is not None:
        best = conn.execute(
            sa.select(sa.func.max(d.c.free_slots)).where(
                d.c.pool_id == pool_id, d.c.revoked_at_ns.is_(None), d.c.claim_waiting_until_ns > now,
                d.c.last_seen_ns >= now - rules.online_window_ns, ~agent_health.unhealthy_clause(d, now, rules))
        ).scalar_one_or_none()
    return Survey(claimable, best)
