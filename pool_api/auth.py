"""Signed-request verification (PROTOCOL.md, "Signed requests") and the database nonce store.

Order of checks: headers present and well-formed (401), clock skew (401), signature (401), key known
(401) and not revoked (403), nonce unused (401; the nonce is stored in the database so replicas
share it). Route-level rules (path provider, pool membership) come after, in `dependencies.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from nacl.exceptions import BadSignatureError, ValueError as NaclValueError
from nacl.signing import VerifyKey

from dc_common.signing import signature_message  # the one definition both sides sign and verify
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.tables import agent_delegations, providers, request_nonces

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
HEX128 = re.compile(r"^[0-9a-fA-F]{128}$")
NONCE = re.compile(r"^[A-Za-z0-9_\-]{8,128}$")

Role = Literal["agent", "provider"]


@dataclass(frozen=True)
class Caller:
    """Who signed the request."""

    role: Role
    pubkey: str
    provider_pubkey: str
    pool_id: str | None = None  # agents only; None = legacy agent without pool


def verify_signature(pubkey_hex: str, signature_hex: str, message: bytes) -> bool:
    """True when `signature_hex` is a valid Ed25519 signature of `message` by `pubkey_hex`."""
    if not HEX64.match(pubkey_hex) or not HEX128.match(signature_hex):
        return False
    try:
        VerifyKey(bytes.fromhex(pubkey_hex)).verify(message, bytes.fromhex(signature_hex))
    except (BadSignatureError, NaclValueError, ValueError, TypeError):
        return False
    return True


def parse_headers(headers: dict[str, str] | object) -> tuple[Role, str, str, str, str]:
    """(role, pubkey, timestamp, nonce, signature) from the request headers, or 401 naming the header."""
    get = headers.get  # type: ignore[attr-defined]
    agent, provider = get("x-agent-pubkey"), get("x-public-key")
    if agent and provider:
        raise ApiError(401, "send either X-Agent-Pubkey or X-Public-Key, not both")
    if not agent and not provider:
        raise ApiError(401, "missing signature headers: X-Agent-Pubkey or X-Public-Key is required")
    role: Role = "agent" if agent else "provider"
    header = "X-Agent-Pubkey" if agent else "X-Public-Key"
    pubkey = (agent or provider or "").strip()
    if not HEX64.match(pubkey):
        raise ApiError(401, f"{header}: must be a 32-byte public key in hex (64 characters)")
    values = {}
    for name in ("X-Timestamp", "X-Nonce", "X-Signature"):
        value = get(name.lower())
        if not value:
            raise ApiError(401, f"missing header {name}")
        values[name] = value.strip()
    if not values["X-Timestamp"].isdigit() or len(values["X-Timestamp"]) > 20:
        raise ApiError(401, "X-Timestamp: must be integer nanoseconds since the Unix epoch")
    if not NONCE.match(values["X-Nonce"]):
        raise ApiError(401, "X-Nonce: must be 8-128 characters of letters, digits, '-' or '_' (a UUID4)")
    if not HEX128.match(values["X-Signature"]):
        raise ApiError(401, "X-Signature: must be a 64-byte Ed25519 signature in hex (128 characters)")
    return role, pubkey.lower(), values["X-Timestamp"], values["X-Nonce"], values["X-Signature"].lower()


def check_skew(timestamp: str, skew_seconds: int, now: int | None = None) -> None:
    now = now_ns() if now is None else now
    if abs(now - int(timestamp)) > skew_seconds * 1_000_000_000:
        raise ApiError(401, f"X-Timestamp: clock skew over {skew_seconds} s")


# Built once: each request runs these, and a statement built anew costs its construction and cache key again.
_PROVIDER_KEY = sa.select(providers.c.pubkey).where(providers.c.pubkey == sa.bindparam("pubkey"))
_AGENT_KEY = sa.select(agent_delegations.c.provider_pubkey, agent_delegations.c.pool_id,
                       agent_delegations.c.revoked_at_ns).where(agent_delegations.c.agent_pubkey == sa.bindparam("pubkey"))
_NONCE = sa.insert(request_nonces).values(pubkey=sa.bindparam("pubkey"), nonce=sa.bindparam("nonce"),
                                          seen_at_ns=sa.bindparam("seen_at_ns"))
_REPLAYED = "replayed request: X-Nonce already used"


def identify(conn: sa.Connection, role: Role, pubkey: str) -> Caller:
    """The provider or agent behind a verified key: 401 when unknown, 403 when revoked."""
    if role == "provider":
        found = conn.execute(_PROVIDER_KEY, {"pubkey": pubkey}).first()
        if found is None:
            raise ApiError(401, "unknown provider key")
        return Caller(role="provider", pubkey=pubkey, provider_pubkey=pubkey)
    row = conn.execute(_AGENT_KEY, {"pubkey": pubkey}).first()
    if row is None:
        raise ApiError(401, "unknown agent key")
    if row.revoked_at_ns is not None:
        raise ApiError(403, "agent delegation revoked")
    return Caller(role="agent", pubkey=pubkey, provider_pubkey=row.provider_pubkey, pool_id=row.pool_id)


def remember_nonce(conn: sa.Connection, pubkey: str, nonce: str) -> None:
    """Store (key, nonce) in its own transaction; a second use of the pair hits the primary key and
    is a replay (401), whichever replica saw the first."""
    try:
        with conn.begin():
            conn.execute(_NONCE, {"pubkey": pubkey, "nonce": nonce, "seen_at_ns": now_ns()})
    except sa.exc.IntegrityError:
        raise ApiError(401, _REPLAYED) from None


def authenticate(engine: sa.Engine, method: str, path: str, headers: object, body: bytes, skew_seconds: int) -> Caller:
    """Run every check of PROTOCOL.md's signature rules and return the caller.

    The key lookup and the nonce go in one short transaction (two statements, one commit): an unknown or
    revoked key is refused before its nonce is stored, and a replayed nonce rolls the transaction back."""
    role, pubkey, timestamp, nonce, signature = parse_headers(headers)
    check_skew(timestamp, skew_seconds)
    if not verify_signature(pubkey, signature, signature_message(timestamp, nonce, method, path, body)):
        raise ApiError(401, "X-Signature: signature does not verify")
    try:
        with engine.begin() as conn:
            caller = identify(conn, role, pubkey)
            conn.execute(_NONCE, {"pubkey": pubkey, "nonce": nonce, "seen_at_ns": now_ns()})
    except sa.exc.IntegrityError:
        raise ApiError(401, _REPLAYED) from None
    return caller


def prune_nonces(conn: sa.Connection, retention_ns: int, now: int | None = None) -> int:
    """Delete nonces too old to pass the skew check again (one idempotent statement)."""
    now = now_ns() if now is None else now
    return conn.execute(sa.delete(request_nonces).where(request_nonces.c.seen_at_ns < now - retention_ns)).rowcount
