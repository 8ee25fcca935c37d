"""The provider's contracts in flight, for the console: filters (pool, status, stuck) and 50-row pages.

Pages are keyset pages, newest first: the cursor is the last row's (created_at_ns, contract_id), so a page
costs the same wherever it is and rows created meanwhile do not shift the next one.

"Stuck" is either of:
- locked longer than N minutes (default 15): the current holder's unbroken lock began N minutes ago or
  earlier (`lock_since_ns`; renewals keep it) and has not expired: an agent that renews but never reports;
- failed STUCK_FAILURES (3) times or more and still open: every attempt so far went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pool_api.contracts import PROVISIONABLE, health_json
from pool_api.errors import ApiError
from pool_api.pools import pools_of_provider
from pool_api.routing import find_pools_for_offering, routes_to_clause
from pool_api.tables import contracts as c
from pool_api.tables import offerings as o

PAGE_SIZE = 50
STUCK_MINUTES = 15
STUCK_FAILURES = 3
MAX_STUCK_MINUTES = 7 * 24 * 60
MINUTE_NS = 60 * 1_000_000_000
NO_POOL = "none"


@dataclass(frozen=True)
class Filters:
    """pool: a pool id, NO_POOL (offerings no pool serves) or "" (all); status: a contract status or ""."""

    pool: str = ""
    status: str = ""
    stuck: bool = False
    stuck_minutes: int = STUCK_MINUTES


def lock_started() -> sa.ColumnElement[Any]:
    """When the current lock began; a lock from before migration 0007 counts from its last renewal."""
    return sa.func.coalesce(c.c.lock_since_ns, c.c.lock_at_ns)


def stuck_clause(now: int, minutes: int) -> sa.ColumnElement[bool]:
    long_locked = sa.and_(c.c.lock_agent.is_not(None), c.c.lock_expires_ns >= now,
                          lock_started() <= now - minutes * MINUTE_NS)
    failing = sa.and_(c.c.failure_count >= STUCK_FAILURES, c.c.status.in_(PROVISIONABLE))
    return sa.or_(long_locked, failing)


def _pool_clause(pools: list[dict[str, Any]], pool: str) -> sa.ColumnElement[bool]:
    if pool == NO_POOL:  # coalesce: a NULL explicit pool makes `agent_pool_id = x` NULL, and NOT NULL is no TRUE
        return sa.and_(sa.true(), *[~sa.func.coalesce(routes_to_clause(o, p), sa.false()) for p in pools])
    chosen = [p for p in pools if p["pool_id"] == pool]
    return routes_to_clause(o, chosen[0]) if chosen else sa.false()


def _where(provider_pubkey: str, pools: list[dict[str, Any]], f: Filters, now: int) -> list[sa.ColumnElement[bool]]:
    clauses = [c.c.provider_pubkey == provider_pubkey]
    if f.pool:
        clauses.append(_pool_clause(pools, f.pool))
    if f.status:
        clauses.append(c.c.status == f.status)
    if f.stuck:
        clauses.append(stuck_clause(now, f.stuck_minutes))
    return clauses


def _select() -> sa.Select:
    """Contracts with the offering columns the console shows and routes by."""
    return (sa.select(c, o.c.name.label("offering_name"), o.c.agent_pool_id, o.c.datacenter_country,
                      o.c.provisioner_type.label("offering_ptype"))
            .select_from(c.join(o, o.c.offering_id == c.c.offering_id)))


def parse_cursor(value: str | None) -> tuple[int, str] | None:
    """`<created_at_ns>.<contract_id>` from a page link, or None (first page) when absent or malformed."""
    if not value or "." not in value:
        return None
    ns, _, contract_id = value.partition(".")
    if not ns.isdigit() or not contract_id or len(contract_id) > 64:
        return None
    return int(ns), contract_id


def list_page(conn: sa.Connection, provider_pubkey: str, f: Filters, now: int,
              after: tuple[int, str] | None = None, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of the provider's contracts, newest first: {rows, total, next} (next: a cursor, or None)."""
    pools = pools_of_provider(conn, provider_pubkey)
    where = _where(provider_pubkey, pools, f, now)
    joined = c.join(o, o.c.offering_id == c.c.offering_id)
    total = conn.execute(sa.select(sa.func.count()).select_from(joined).where(*where)).scalar_one()
    q = (_select().where(*where)
         .order_by(c.c.created_at_ns.desc(), c.c.contract_id.desc()).limit(page_size + 1))
    if after is not None:
        q = q.where(sa.or_(c.c.created_at_ns < after[0],
                           sa.and_(c.c.created_at_ns == after[0], c.c.contract_id < after[1])))
    rows = conn.execute(q).all()
    more = len(rows) > page_size
    rows = rows[:page_size]
    out = [row_json(r, pools, now, f.stuck_minutes) for r in rows]
    cursor = f"{rows[-1].created_at_ns}.{rows[-1].contract_id}" if more else None
    return {"rows": out, "total": int(total), "next": cursor}


def resolved_pool(r: Any, pools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pool the contract's offering routes to (the first match, as the offerings page shows)."""
    offering = {"agent_pool_id": r.agent_pool_id, "datacenter_country": r.datacenter_country,
                "provisioner_type": r.offering_ptype}
    matches = find_pools_for_offering(offering, pools)
    return {"poolId": matches[0]["pool_id"], "name": matches[0]["name"]} if matches else None


def stuck_reason(r: Any, now: int, minutes: int) -> str | None:
    """Why the row counts as stuck ("locked 23m", "failed 4 times"), or None."""
    reasons = []
    since = r.lock_since_ns or r.lock_at_ns
    if r.lock_agent and r.lock_expires_ns is not None and r.lock_expires_ns >= now and since is not None \
            and since <= now - minutes * MINUTE_NS:
        reasons.append(f"locked {(now - since) // MINUTE_NS}m")
    if r.failure_count >= STUCK_FAILURES and r.status in PROVISIONABLE:
        reasons.append(f"failed {r.failure_count} times")
    return ", ".join(reasons) or None


def row_json(r: Any, pools: list[dict[str, Any]], now: int, minutes: int = STUCK_MINUTES) -> dict[str, Any]:
    m = r._mapping
    locked = r.lock_agent is not None and r.lock_expires_ns is not None and r.lock_expires_ns >= now
    return {
        "contractId": r.contract_id,
        "offeringId": r.offering_id,
        "offeringName": r.offering_name,
        "pool": resolved_pool(r, pools),
        "status": r.status,
        "paymentStatus": r.payment_status,
        "lockAgent": r.lock_agent if locked else None,
        "lockExpiresNs": r.lock_expires_ns if locked else None,
        "lockSinceNs": (r.lock_since_ns or r.lock_at_ns) if locked else None,
        "failureCount": r.failure_count,
        "lastError": r.last_error,
        "health": health_json(m),
        "createdAtNs": r.created_at_ns,
        "stuck": stuck_reason(r, now, minutes),
    }


def get_row(conn: sa.Connection, provider_pubkey: str, contract_id: str) -> Any:
    """One contract of this provider with its offering's columns (as the list has them); 404 otherwise."""
    row = conn.execute(
        _select().where(c.c.contract_id == contract_id, c.c.provider_pubkey == provider_pubkey)
    ).first()
    if row is None:
        raise ApiError(404, "unknown contract")
    return row
