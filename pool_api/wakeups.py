"""Wake-ups for waiting claims: "something a waiting agent of provider P may claim has changed".

Writers call `notify(conn, provider_pubkey)` inside their transaction (a contract created, a lock
released or swept, a failure reported, a pool's fallback changed). On PostgreSQL that is
`pg_notify('dc_pool_dispatch', P)`, delivered at commit to every replica's listening connection
(`listen`), whichever process wrote: a replica, another replica, or an admin command. On SQLite the
providers are kept on the connection and handed to this process's hub once the connection goes back
to the pool after a commit (`install_local`); other processes' writes are found by the hub's periodic
re-check. A notification is only a hint: the hub re-checks the database before it wakes anyone.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

CHANNEL = "dc_pool_dispatch"
_PENDING = "dc_pool_wake_pending"
_COMMITTED = "dc_pool_wake_committed"
_LOCAL: weakref.WeakKeyDictionary[sa.Engine, Callable[[str], None]] = weakref.WeakKeyDictionary()
LISTEN_PING_SECONDS = 30.0
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)


def notify(conn: sa.Connection, provider_pubkey: str) -> None:
    """Tell waiting claims of this provider to look again, once this transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify(:channel, :provider)"), {"channel": CHANNEL, "provider": provider_pubkey})
    elif conn.engine in _LOCAL:
        conn.info.setdefault(_PENDING, set()).add(provider_pubkey)


def install_local(engine: sa.Engine, wake: Callable[[str], None]) -> None:
    """Deliver this process's committed notifications on `engine` to `wake` (which must be thread-safe)."""
    if engine in _LOCAL:
        _LOCAL[engine] = wake
        return
    _LOCAL[engine] = wake

    @event.listens_for(engine, "commit")
    def _committed(conn: sa.Connection) -> None:
        pending = conn.info.pop(_PENDING, None)
        if pending:
            conn.info.setdefault(_COMMITTED, set()).update(pending)

    @event.listens_for(engine, "rollback")
    def _rolled_back(conn: sa.Connection) -> None:
        conn.info.pop(_PENDING, None)

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        if record is None:
            return
        committed = record.info.pop(_COMMITTED, None)
        target = _LOCAL.get(engine)
        if committed and target is not None:
            for provider in committed:
                target(provider)


def uninstall_local(engine: sa.Engine) -> None:
    _LOCAL.pop(engine, None)


def listen_conninfo(engine: sa.Engine) -> str:
    """The libpq URI of the engine's database (for the one listening psycopg connection)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(engine: sa.Engine, on_notify: Callable[[str], None], on_connect: Callable[[], None]) -> None:
    """Keep one LISTEN connection open (reconnecting with backoff) and pass each payload to `on_notify`.
    `on_connect` runs after every (re)connect, since notifications sent while disconnected are lost."""
    import psycopg
    import structlog  # here, not at the top: the admin commands import this module and need no logging

    log = structlog.get_logger("pool_api.wakeups")
    attempt = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(listen_conninfo(engine), autocommit=True) as aconn:
                await aconn.execute(f"LISTEN {CHANNEL}")
                attempt = 0
                log.debug("listening", channel=CHANNEL)
                on_connect()
                while True:
                    async for note in aconn.notifies(timeout=LISTEN_PING_SECONDS):
                        on_notify(note.payload)
                    await aconn.execute("SELECT 1")  # finds a connection that died silently
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a database restart must not end the listener
            delay = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
            attempt += 1
            log.warning("listen_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
            await asyncio.sleep(delay)
