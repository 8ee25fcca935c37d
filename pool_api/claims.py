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


def _candidates(caller: Caller, eligible: eligibility.Eligibility, now: int, rules: DispatchRules,
                exclude: Sequence[str]) -> sa.ColumnElement[bool]:
    me = caller.pubkey
    mine = c.c.lock_agent == me
    sticky_mine = sa.and_(c.c.sticky_agent == me, c.c.sticky_until_ns > now)
    if eligible.passed_over:
        wanted: sa.ColumnElement[bool] = mine
    else:
        wanted = sa.and_(sa.or_(eligibility.route_clause(eligible), mine, sticky_mine),
                         ~eligibility.kept_for_another(me, now, rules))
    conditions = [eligibility.open_contract(caller.provider_pubkey, now), eligibility.free_lock(me, now), wanted]
    if exclude:
        conditions.append(c.c.contract_id.not_in(list(exclude)))
    return sa.and_(*conditions)


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
    if eligible.pools is None or eligible.pools:
        me = caller.pubkey
        first = sa.case((eligibility.held_by(me, now), 0), (c.c.sticky_agent == me, 1), else_=2)
        picked = (
            sa.select(c.c.contract_id)
            .select_from(c.join(o, o.c.offering_id == c.c.offering_id))
            .where(_candidates(caller, eligible, now, rules, exclude))
            .order_by(first, c.c.created_at_ns, c.c.contract_id)
            .limit(max_contracts)
            .with_for_update(of=c, skip_locked=True)
            .cte("picked")
        )
        expires = now + ttl_seconds * 1_000_000_000
        leases = conn.execute(
            sa.update(c)
            .where(c.c.contract_id.in_(sa.select(picked.c.contract_id)), eligibility.free_lock(me, now))
            .values(lock_agent=me, lock_at_ns=now, lock_expires_ns=expires, updated_at_ns=now,
                    first_locked_at_ns=sa.func.coalesce(c.c.first_locked_at_ns, now),
                    sticky_agent=me, sticky_until_ns=expires + ttl_seconds * 1_000_000_000,
                    **contract_events.lock_since(me, now))
            .returning(c.c.contract_id, c.c.first_locked_at_ns, c.c.lock_since_ns)
        ).all()
        for row in leases:
            contract_events.record_lock(conn, row.contract_id, me, now, expires, row.lock_since_ns)
        items = pending_items(conn, [row.contract_id for row in leases], me)
        for row in leases:
            item = items[row.contract_id]
            item.update(acquired=True, lockedAtNs=now, expiresAtNs=expires, firstLockedAtNs=row.first_locked_at_ns)
            result.items.append(item)
        result.items.sort(key=lambda item: (item["createdAtNs"], item["contractId"]))
    waiting = waiting_until_ns if not result.items else None
    values: dict[str, Any] = {"claim_waiting_until_ns": waiting}
    if free_slots is not None:
        values["free_slots"] = free_slots
    conn.execute(sa.update(d).where(d.c.agent_pubkey == caller.pubkey).values(**values))
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
