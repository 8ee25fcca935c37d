"""Provisioning locks and their outcomes (SPEC.md "Two-Phase Provisioning").

Every decision is ONE conditional UPDATE whose WHERE clause is the rule; the row count says
whether it applied. Only when it did not, the row is read to explain why (never read-then-write).
On PostgreSQL (READ COMMITTED) a concurrent UPDATE of the same row waits and re-checks the WHERE
clause on the committed row, so exactly one of N concurrent lockers wins; on SQLite writers are
serialised by BEGIN IMMEDIATE.

Outcomes, for the agent `me` acting on a contract of its pool:
- lock: 200 when the lock is free, mine (renewal: the expiry moves to now + TTL) or expired;
  409 when another agent holds an unexpired lock, or the contract is provisioned, paused, cancelled,
  ended (its `ends_at_ns` passed) or not (yet) payable.
- release: 200 `released: true` when I held it; 200 `released: false` when nobody holds it (a
  repeated release); 403 when another agent holds it.
- provisioned: 200 when I hold the lock (even past its expiry, as long as nobody took it over);
  repeating the same report after success is 200 and changes nothing (`provisioned_by` remembers
  me), a different report 409; provisioned by another agent 409; cancelled 409; another agent
  holding the lock, or no lock at all, 403 "not the lock holder" (re-lock and report again).
- failed: 200 when I hold the lock (lock cleared, failureCount + 1, status stays accepted);
  repeating my last failure with the same message is 200 and counts nothing; otherwise as
  provisioned: 409 when provisioned, 403 when not the holder.
- terminated: the agent removed the instance of a cancelled or ended contract: -> terminated (repeat 200).
A paused contract counts as provisioned for the repeats above (it has its instance, stopped).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api import agent_health, contract_events, provision_stats, wakeups
from pool_api.auth import Caller
from pool_api.contracts import HAS_INSTANCE, PROVISIONABLE, has_ended, load_for_agent, not_ended
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.tables import contracts as c

_CLEAR_LOCK = dict(lock_agent=None, lock_at_ns=None, lock_expires_ns=None, lock_since_ns=None)
_NOT_STICKY = dict(sticky_agent=None, sticky_until_ns=None)  # the agent gave the contract back (eligibility)


def _not_open(row: Any) -> ApiError | None:
    """409 when the contract can no longer be provisioned."""
    if row.status == "provisioned":
        return ApiError(409, "contract already provisioned")
    if row.status in ("paused", "cancelled", "terminated"):
        return ApiError(409, f"contract is {row.status}")
    if has_ended(row):
        return ApiError(409, f"contract ended (endsAtNs {row.ends_at_ns})")
    if row.status not in PROVISIONABLE or row.payment_status != "succeeded":
        return ApiError(409, f"contract is not ready for provisioning (status {row.status}, payment {row.payment_status})")
    return None


def acquire(conn: sa.Connection, caller: Caller, contract_id: str, ttl_seconds: int, rules: Any = None) -> dict[str, Any]:
    """`rules` (a DispatchRules) judges whether the caller's pool is the contract's due fallback pool."""
    load_for_agent(conn, caller, contract_id, rules)
    now = now_ns()
    expires = now + ttl_seconds * 1_000_000_000
    got = conn.execute(
        sa.update(c)
        .where(
            c.c.contract_id == contract_id,
            c.c.status.in_(PROVISIONABLE),
            c.c.payment_status == "succeeded",
            not_ended(now),
            sa.or_(c.c.lock_agent.is_(None), c.c.lock_agent == caller.pubkey, c.c.lock_expires_ns < now),
        )
        .values(lock_agent=caller.pubkey, lock_at_ns=now, lock_expires_ns=expires, updated_at_ns=now,
                first_locked_at_ns=sa.func.coalesce(c.c.first_locked_at_ns, now),
                sticky_agent=caller.pubkey, sticky_until_ns=expires + ttl_seconds * 1_000_000_000,
                **contract_events.lock_since(caller.pubkey, now))
        .returning(c.c.first_locked_at_ns, c.c.lock_since_ns)
    ).first()
    if got is not None:
        contract_events.record_lock(conn, contract_id, caller.pubkey, now, expires, got.lock_since_ns)
        # firstLockedAtNs == lockedAtNs: nobody ever held this contract before, so no instance of it can
        # exist and the agent may skip its adoption check (find)
        return {"acquired": True, "contractId": contract_id, "lockedAtNs": now, "expiresAtNs": expires,
                "firstLockedAtNs": got.first_locked_at_ns}
    row = load_for_agent(conn, caller, contract_id)
    raise _not_open(row) or ApiError(409, "lock held by another agent")


def release(conn: sa.Connection, caller: Caller, contract_id: str) -> dict[str, Any]:
    load_for_agent(conn, caller, contract_id)
    now = now_ns()
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, c.c.lock_agent == caller.pubkey)
        .values(updated_at_ns=now, **_CLEAR_LOCK, **_NOT_STICKY)
    ).rowcount
    if got == 1:
        wakeups.notify(conn, caller.provider_pubkey)
        contract_events.record(conn, contract_id, "released", agent=caller.pubkey, at_ns=now)
        return {"released": True, "contractId": contract_id}
    row = load_for_agent(conn, caller, contract_id)
    if row.lock_agent is None:
        return {"released": False, "contractId": contract_id}
    raise ApiError(403, "not the lock holder")


_PROVISIONED = (  # built once, values bound per report
    sa.update(c)
    .where(c.c.contract_id == sa.bindparam("p_contract"), c.c.lock_agent == sa.bindparam("p_me"),
           c.c.status.in_(PROVISIONABLE))
    .values(status="provisioned", provisioned_by=sa.bindparam("p_me"), provisioned_at_ns=sa.bindparam("p_now"),
            instance_details=sa.bindparam("p_details", type_=c.c.instance_details.type),
            updated_at_ns=sa.bindparam("p_now"), **_CLEAR_LOCK, **_NOT_STICKY)
    .returning(c.c.first_locked_at_ns)
)


def provisioned(conn: sa.Connection, caller: Caller, contract_id: str, details: dict[str, Any]) -> dict[str, Any]:
    """Also ends the agent's failure streak and records the outcome with its provisioning time (first lock ->
    now), which the answer carries as `firstLockedAtNs` (None for a contract locked before migration 0003)."""
    load_for_agent(conn, caller, contract_id)
    now = now_ns()
    done = conn.execute(_PROVISIONED, {"p_contract": contract_id, "p_me": caller.pubkey, "p_now": now,
                                       "p_details": details}).first()
    if done is not None:
        contract_events.record(conn, contract_id, "provisioned", agent=caller.pubkey, at_ns=now,
                               detail=contract_events.provisioned_detail(details))
        first = done.first_locked_at_ns or None  # 0: locked before migration 0003, time unknown
        agent_health.record_success(conn, caller.pubkey)
        provision_stats.record(conn, provider_pubkey=caller.provider_pubkey, pool_id=caller.pool_id,
                               agent_pubkey=caller.pubkey, contract_id=contract_id, outcome="provisioned", at_ns=now,
                               duration_ns=None if first is None else now - first)
        return {"contractId": contract_id, "status": "provisioned", "provisionedAtNs": now, "repeated": False,
                "firstLockedAtNs": first}
    row = load_for_agent(conn, caller, contract_id)
    if row.status in HAS_INSTANCE:
        if row.provisioned_by != caller.pubkey:
            raise ApiError(409, "contract already provisioned by another agent")
        if row.instance_details != details:
            raise ApiError(409, "contract already provisioned by this agent with different instanceDetails")
        return {"contractId": contract_id, "status": "provisioned", "provisionedAtNs": row.provisioned_at_ns,
                "repeated": True}
    if row.status in ("cancelled", "terminated"):
        raise ApiError(409, f"contract is {row.status}")
    if row.lock_agent is None:
        raise ApiError(403, "not the lock holder: the lock is free (expired or released); lock again, then report")
    raise ApiError(403, "not the lock holder")


def failed(conn: sa.Connection, caller: Caller, contract_id: str, error_message: str) -> dict[str, Any]:
    load_for_agent(conn, caller, contract_id)
    now = now_ns()
    row = conn.execute(
        sa.update(c)
        .where(c.c.contract_id == contract_id, c.c.lock_agent == caller.pubkey, c.c.status.not_in(HAS_INSTANCE))
        .values(failure_count=c.c.failure_count + 1, last_error=error_message, last_failed_by=caller.pubkey,
                last_failed_at_ns=now, updated_at_ns=now, **_CLEAR_LOCK, **_NOT_STICKY)
        .returning(c.c.status, c.c.failure_count)
    ).first()
    if row is not None:
        contract_events.record(conn, contract_id, "failed", agent=caller.pubkey, at_ns=now,
                               detail=contract_events.failed_detail(error_message))
        agent_health.record_failure(conn, caller.pubkey, now)
        provision_stats.record(conn, provider_pubkey=caller.provider_pubkey, pool_id=caller.pool_id,
                               agent_pubkey=caller.pubkey, contract_id=contract_id, outcome="failed", at_ns=now)
        wakeups.notify(conn, caller.provider_pubkey)
        return {"contractId": contract_id, "status": row.status, "failureCount": row.failure_count, "repeated": False}
    row = load_for_agent(conn, caller, contract_id)
    if row.last_failed_by == caller.pubkey and row.last_error == error_message:
        return {"contractId": contract_id, "status": row.status, "failureCount": row.failure_count, "repeated": True}
    if row.status in HAS_INSTANCE:
        raise ApiError(409, "contract already provisioned")
    if row.lock_agent is None:
        raise ApiError(403, "not the lock holder: the lock is free (expired or released)")
    raise ApiError(403, "not the lock holder")


def terminated(conn: sa.Connection, caller: Caller, contract_id: str) -> dict[str, Any]:
    """The agent removed the instance of a cancelled or ended contract: -> terminated (repeat: 200)."""
    load_for_agent(conn, caller, contract_id)
    now = now_ns()
    ended = sa.and_(c.c.ends_at_ns.is_not(None), c.c.ends_at_ns <= now, c.c.status != "terminated")
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, sa.or_(c.c.status == "cancelled", ended))
        .values(status="terminated", terminated_at_ns=now, terminated_by=caller.pubkey, updated_at_ns=now,
                **_CLEAR_LOCK)
    ).rowcount
    if got == 1:
        contract_events.record(conn, contract_id, "terminated", agent=caller.pubkey, at_ns=now)
    row = load_for_agent(conn, caller, contract_id)
    if got == 1 or row.status == "terminated":
        return {"contractId": contract_id, "status": "terminated", "terminatedAtNs": row.terminated_at_ns,
                "repeated": got == 0}
    raise ApiError(409, f"contract is {row.status}, not cancelled or ended: only the instance of a cancelled or "
                        "ended contract is terminated")


def expire_locks(conn: sa.Connection, now: int | None = None) -> int:
    """Clear expired locks (the every-minute job: one idempotent statement, safe on several replicas); the
    providers of the contracts it freed are notified (pool_api.wakeups)."""
    now = now_ns() if now is None else now
    freed = conn.execute(
        sa.update(c)
        .where(c.c.lock_expires_ns < now, c.c.status.not_in(("provisioned", "cancelled")))
        .values(**_CLEAR_LOCK)
        .returning(c.c.provider_pubkey)
    ).scalars().all()
    for provider in sorted(set(freed)):
        wakeups.notify(conn, provider)
    return len(freed)
