"""Background jobs: expire locks (and prune old nonces) every minute, delete expired tokens (and old provision
events) hourly.

Each job is one idempotent statement in its own transaction, so several replicas running them at
the same moment do the same harmless thing. A failing run is logged and retried next period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from starlette.concurrency import run_in_threadpool

from pool_api import auth, locks, provision_stats, tokens
from pool_api.settings import Settings

log = structlog.get_logger("pool_api.jobs")


def sweep_locks(engine: sa.Engine, settings: Settings) -> tuple[int, int]:
    with engine.begin() as conn:
        cleared = locks.expire_locks(conn)
    with engine.begin() as conn:
        pruned = auth.prune_nonces(conn, settings.nonce_retention_ns)
    return cleared, pruned


def sweep_tokens(engine: sa.Engine, _settings: Settings) -> tuple[int, int]:
    """Expired setup tokens, and provision events past their retention (pool_api.provision_stats)."""
    with engine.begin() as conn:
        swept = tokens.sweep_expired(conn)
    with engine.begin() as conn:
        return swept, provision_stats.prune(conn)


async def _every(period: float, name: str, job: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            result = await run_in_threadpool(job)
            log.debug("job_ran", job=name, result=result)
        except Exception as exc:  # noqa: BLE001 - a job must survive a database hiccup
            log.warning("job_failed", job=name, error=f"{type(exc).__name__}: {exc}")


def start(engine: sa.Engine, settings: Settings) -> list[asyncio.Task[None]]:
    return [
        asyncio.create_task(_every(settings.lock_sweep_seconds, "sweep_locks", lambda: sweep_locks(engine, settings))),
        asyncio.create_task(_every(settings.token_sweep_seconds, "sweep_tokens", lambda: sweep_tokens(engine, settings))),
    ]
