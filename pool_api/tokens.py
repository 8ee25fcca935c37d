"""One-time agent setup tokens: `apt_<location>_<32 hex>` (128 random bits from `secrets`).

Only the SHA-256 of a token is stored; lookups hash the presented token, so no comparison of
secrets happens in Python. A token is consumed by ONE conditional UPDATE (unused and unexpired),
so of two concurrent setups with one token exactly one wins.
"""

from __future__ import annotations

import hashlib
import secrets
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.tables import agent_pools as p
from pool_api.tables import agent_setup_tokens as t

HOUR_NS = 3600 * 1_000_000_000
TOKEN_RANDOM_BYTES = 16


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(location: str) -> str:
    return f"apt_{location}_{secrets.token_hex(TOKEN_RANDOM_BYTES)}"


def token_prefix(token: str) -> str:
    """What listings show of a token: its pool part and the first 8 random characters."""
    head, _, rand = token.rpartition("_")
    return f"{head}_{rand[:8]}…"


def token_json(row: Any) -> dict[str, Any]:
    return {
        "tokenId": row.token_hash,
        "tokenPrefix": row.token_prefix,
        "poolId": row.pool_id,
        "label": row.label,
        "createdAtNs": row.created_at_ns,
        "expiresAtNs": row.expires_at_ns,
        "usedAtNs": row.used_at_ns,
        "usedByAgent": row.used_by_agent,
    }


def create_token(conn: sa.Connection, pool: Any, label: str | None, expires_in_hours: int,
                 now: int | None = None) -> tuple[str, dict[str, Any]]:
    """Store a new token for `pool`; return the token (shown once) and its listing entry."""
    now = now_ns() if now is None else now
    token = new_token(pool.location)
    values = dict(token_hash=token_hash(token), token_prefix=token_prefix(token), pool_id=pool.pool_id, label=label,
                  created_at_ns=now, expires_at_ns=now + expires_in_hours * HOUR_NS, used_at_ns=None,
                  used_by_agent=None)
    conn.execute(sa.insert(t).values(**values))
    return token, token_json(SimpleNamespace(**values))


def list_pending(conn: sa.Connection, pool_id: str, now: int | None = None) -> list[dict[str, Any]]:
    now = now_ns() if now is None else now
    rows = conn.execute(
        sa.select(t).where(t.c.pool_id == pool_id, t.c.used_at_ns.is_(None), t.c.expires_at_ns > now)
        .order_by(t.c.created_at_ns)
    ).all()
    return [token_json(r) for r in rows]


def delete_token(conn: sa.Connection, provider_pubkey: str, token_or_id: str) -> None:
    """Delete a token of this provider's pools, named by the token itself or by its tokenId."""
    hashes = [token_hash(token_or_id)]
    if len(token_or_id) == 64 and all(c in "0123456789abcdef" for c in token_or_id):
        hashes.append(token_or_id)
    own_pools = sa.select(p.c.pool_id).where(p.c.provider_pubkey == provider_pubkey)
    deleted = conn.execute(sa.delete(t).where(t.c.token_hash.in_(hashes), t.c.pool_id.in_(own_pools))).rowcount
    if deleted == 0:
        raise ApiError(404, "unknown setup token")


def consume(conn: sa.Connection, token: str, agent_pubkey: str, now: int | None = None) -> str:
    """Mark the token used by `agent_pubkey` and return its pool id; 410 if used or expired, 404 if unknown."""
    now = now_ns() if now is None else now
    h = token_hash(token)
    pool_id = conn.execute(
        sa.update(t)
        .where(t.c.token_hash == h, t.c.used_at_ns.is_(None), t.c.expires_at_ns > now)
        .values(used_at_ns=now, used_by_agent=agent_pubkey)
        .returning(t.c.pool_id)
    ).scalar_one_or_none()
    if pool_id is not None:
        return pool_id
    row = conn.execute(sa.select(t.c.used_at_ns).where(t.c.token_hash == h)).first()
    if row is None:
        raise ApiError(404, "unknown setup token")
    if row.used_at_ns is not None:
        raise ApiError(410, "setup token already used")
    raise ApiError(410, "setup token expired")


def sweep_expired(conn: sa.Connection, now: int | None = None) -> int:
    """Delete expired unused tokens (one idempotent statement; safe on several replicas at once)."""
    now = now_ns() if now is None else now
    return conn.execute(sa.delete(t).where(t.c.expires_at_ns < now, t.c.used_at_ns.is_(None))).rowcount
