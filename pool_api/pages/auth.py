"""Sign-in for the provider pages: one-time login links, server-side sessions, CSRF tokens.

- `dc-pool-api login-link --pubkey HEX` stores the SHA-256 of a fresh random link token with an
  expiry (default 10 minutes) and prints `<base-url>/provider/login?token=…`.
- Opening the link consumes it with ONE conditional UPDATE (unused and unexpired), so a link signs
  in once, and creates a session: a random cookie value whose SHA-256 is stored with its provider
  and expiry. Nothing secret is kept in the database in the clear and no server secret exists.
- The CSRF token of a session is HMAC-SHA256(session cookie, "csrf"): per session, known to the
  page (it is rendered into every form) but not derivable by another site, and compared with
  `hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa

from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.tables import provider_login_links as links
from pool_api.tables import provider_sessions as sessions
from pool_api.tables import providers

SESSION_COOKIE = "dc_pool_session"
LOGIN_PATH = "/provider/login"
MINUTE_NS = 60 * 1_000_000_000
LINK_TTL_MINUTES = 10
SESSION_TTL_HOURS = 12


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_login_link(conn: sa.Connection, provider_pubkey: str, base_url: str,
                      ttl_minutes: int = LINK_TTL_MINUTES) -> tuple[str, int]:
    """Store a one-time link for a registered provider; return (link URL, expiry ns)."""
    pubkey = provider_pubkey.lower()
    if conn.execute(sa.select(providers.c.pubkey).where(providers.c.pubkey == pubkey)).first() is None:
        raise ApiError(404, f"unknown provider {pubkey}: run `dc-pool-api provider add --pubkey {pubkey}` first")
    now = now_ns()
    conn.execute(sa.delete(links).where(links.c.expires_at_ns < now))
    token = secrets.token_urlsafe(32)
    expires = now + ttl_minutes * MINUTE_NS
    conn.execute(sa.insert(links).values(token_hash=_hash(token), provider_pubkey=pubkey, created_at_ns=now,
                                         expires_at_ns=expires, used_at_ns=None))
    return f"{base_url.rstrip('/')}{LOGIN_PATH}?token={token}", expires


def consume_login_link(conn: sa.Connection, token: str) -> str:
    """Mark the link used and return its provider; ApiError 410 when used, expired or unknown."""
    now = now_ns()
    pubkey = conn.execute(
        sa.update(links)
        .where(links.c.token_hash == _hash(token), links.c.used_at_ns.is_(None), links.c.expires_at_ns > now)
        .values(used_at_ns=now)
        .returning(links.c.provider_pubkey)
    ).scalar_one_or_none()
    if pubkey is None:
        raise ApiError(410, "This sign-in link is unknown, expired or already used. "
                            "Run dc-pool-api login-link on the server for a new one.")
    return pubkey


def create_session(conn: sa.Connection, provider_pubkey: str, ttl_hours: int = SESSION_TTL_HOURS) -> str:
    """A new session for the provider; returns the cookie value (only its hash is stored)."""
    now = now_ns()
    conn.execute(sa.delete(sessions).where(sessions.c.expires_at_ns < now))
    cookie = secrets.token_urlsafe(32)
    conn.execute(sa.insert(sessions).values(session_hash=_hash(cookie), provider_pubkey=provider_pubkey,
                                            created_at_ns=now, expires_at_ns=now + ttl_hours * 60 * MINUTE_NS))
    return cookie


def session_provider(conn: sa.Connection, cookie: str | None) -> str | None:
    """The provider of a live session cookie, else None."""
    if not cookie or len(cookie) > 256:
        return None
    return conn.execute(
        sa.select(sessions.c.provider_pubkey)
        .where(sessions.c.session_hash == _hash(cookie), sessions.c.expires_at_ns > now_ns())
    ).scalar_one_or_none()


def end_session(conn: sa.Connection, cookie: str | None) -> None:
    if cookie:
        conn.execute(sa.delete(sessions).where(sessions.c.session_hash == _hash(cookie)))


def csrf_token(cookie: str) -> str:
    return hmac.new(cookie.encode("utf-8", "surrogatepass"), b"csrf", hashlib.sha256).hexdigest()


def csrf_ok(cookie: str, presented: object) -> bool:
    if not isinstance(presented, str) or not presented:
        return False
    return hmac.compare_digest(csrf_token(cookie).encode(), presented.encode("utf-8", "surrogatepass"))
