"""The history of a contract: one append-only row per state change, written by the code path that makes the
change, inside its transaction (so an event exists exactly when its change was committed).

Kinds and their detail (never a secret: instance details are stored redacted, passwords not at all):
- created: {status, paymentStatus}
- locked {expiresAtNs} (a lock the agent did not hold before) / renewed {expiresAtNs} (the holder locked again)
- released (the agent gave the lock back) / failed {error} / provisioned {instanceDetails (redacted)}
- health {status, detail} (only when the status differs from the previous report's)
- paused / resumed / cancelled / terminated
- password-reset-requested / password-reset-done / password-reset-failed {requestId[, error]}
- ssh-key-rotation-requested / ssh-key-rotation-done / ssh-key-rotation-failed {requestId[, error]}
- provider-released {agent} (the provider freed a stuck lock) / provider-retry {failureCount} (retry now)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dc_common.redact import redact_mapping
from pool_api.db import now_ns
from pool_api.tables import contract_events as e
from pool_api.tables import contracts as c

KINDS = (
    "created", "locked", "renewed", "released", "failed", "provisioned", "health", "paused", "resumed",
    "cancelled", "terminated",
    "password-reset-requested", "password-reset-done", "password-reset-failed",
    "ssh-key-rotation-requested", "ssh-key-rotation-done", "ssh-key-rotation-failed",
    "provider-released", "provider-retry",
)
MAX_ERROR_CHARS = 2000
_INSERT = sa.insert(e)  # built once: executed with each event's values  # a failure message is kept whole on the contract; its event keeps this much


def record(conn: sa.Connection, contract_id: str, kind: str, *, agent: str | None = None,
           detail: dict[str, Any] | None = None, at_ns: int | None = None) -> None:
    """Append one event (call it in the transaction of the change it records)."""
    if kind not in KINDS:
        raise ValueError(f"unknown contract event kind {kind!r}")
    conn.execute(_INSERT, {"contract_id": contract_id, "at_ns": now_ns() if at_ns is None else at_ns, "kind": kind,
                           "agent_pubkey": agent, "detail": detail})


def record_many(conn: sa.Connection, stamped: list[tuple[str, int]], kind: str, *,
                detail: dict[str, Any] | None = None) -> None:
    """The same event for several (contract id, at_ns) in one statement (contracts created together)."""
    if stamped:
        conn.execute(_INSERT, [dict(contract_id=cid, at_ns=at, kind=kind, agent_pubkey=None, detail=detail)
                                    for cid, at in stamped])


def provisioned_detail(details: dict[str, Any] | None) -> dict[str, Any]:
    """What a provisioned event keeps of the instance details: everything but secrets."""
    return {"instanceDetails": redact_mapping(details) if isinstance(details, dict) else None}


def failed_detail(error: str) -> dict[str, Any]:
    return {"error": error[:MAX_ERROR_CHARS]}


def events(conn: sa.Connection, contract_id: str, limit: int = 5000) -> list[dict[str, Any]]:
    """The contract's events, oldest first."""
    rows = conn.execute(sa.select(e).where(e.c.contract_id == contract_id).order_by(e.c.at_ns, e.c.id).limit(limit))
    return [{"atNs": r.at_ns, "kind": r.kind, "agentPubkey": r.agent_pubkey, "detail": r.detail or {}} for r in rows]


def lock_since(me: str, now: int) -> dict[str, Any]:
    """The `lock_since_ns` value for a lock UPDATE by agent `me` at `now`: kept when `me` renews its unexpired
    lock (a lock from before migration 0007 started no later than its last renewal), else now."""
    renewal = sa.and_(c.c.lock_agent == me, c.c.lock_expires_ns >= now)
    return {"lock_since_ns": sa.case((renewal, sa.func.coalesce(c.c.lock_since_ns, c.c.lock_at_ns)), else_=now)}


def record_lock(conn: sa.Connection, contract_id: str, me: str, now: int, expires_ns: int, since_ns: int | None) -> None:
    """`locked` when the lock UPDATE (with `lock_since`, RETURNING lock_since_ns) started a lock, else `renewed`."""
    kind = "locked" if since_ns == now else "renewed"
    record(conn, contract_id, kind, agent=me, detail={"expiresAtNs": expires_ns}, at_ns=now)
