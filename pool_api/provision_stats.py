"""Pool success rates and provisioning times (SPEC.md "Future Enhancements" 5), from provision_events.

`provisioned` and `failed` reports (not their repeats) each add one event, counted for the reporting
agent's pool. Over the last 24 h a pool shows: provisioned and failed counts, the success rate
provisioned / (provisioned + failed), and the p50/p95 of the provisioning time, first lock -> provisioned
(nearest-rank percentiles), plus one bar per hour for the pages' chart. Events older than
EVENT_RETENTION_DAYS are deleted by the hourly job.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

from pool_api.db import now_ns
from pool_api.tables import provision_events as e

HOUR_NS = 3600 * 1_000_000_000
WINDOW_HOURS = 24
EVENT_RETENTION_DAYS = 30
MAX_DURATIONS = 100_000  # a pool provisioning more than this in 24 h gets its percentiles from the newest
_INSERT = sa.insert(e)  # built once: executed with each event's values


def record(conn: sa.Connection, *, provider_pubkey: str, pool_id: str | None, agent_pubkey: str, contract_id: str,
           outcome: str, at_ns: int, duration_ns: int | None = None) -> None:
    conn.execute(_INSERT, {"provider_pubkey": provider_pubkey, "pool_id": pool_id, "agent_pubkey": agent_pubkey,
                           "contract_id": contract_id, "outcome": outcome, "at_ns": at_ns, "duration_ns": duration_ns})


def percentile(sorted_values: list[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def pool_stats(conn: sa.Connection, pool_id: str, now: int | None = None) -> dict[str, Any]:
    """The last 24 h of a pool: counts, success rate, p50/p95 ms, and `hourly` (oldest hour first)."""
    now = now_ns() if now is None else now
    start = now - WINDOW_HOURS * HOUR_NS
    hour = (e.c.at_ns - start) // HOUR_NS
    rows = conn.execute(
        sa.select(hour.label("hour"), e.c.outcome, sa.func.count().label("n"))
        .where(e.c.pool_id == pool_id, e.c.at_ns > start, e.c.at_ns <= now)
        .group_by(hour, e.c.outcome)
    ).all()
    hourly = [{"provisioned": 0, "failed": 0, "startNs": start + i * HOUR_NS} for i in range(WINDOW_HOURS)]
    for row in rows:
        index = min(WINDOW_HOURS - 1, max(0, int(row.hour)))
        if row.outcome in ("provisioned", "failed"):
            hourly[index][row.outcome] += int(row.n)
    durations = sorted(conn.execute(
        sa.select(e.c.duration_ns)
        .where(e.c.pool_id == pool_id, e.c.outcome == "provisioned", e.c.at_ns > start, e.c.at_ns <= now,
               e.c.duration_ns.is_not(None))
        .order_by(e.c.at_ns.desc()).limit(MAX_DURATIONS)
    ).scalars())
    provisioned = sum(h["provisioned"] for h in hourly)
    failed = sum(h["failed"] for h in hourly)
    p50, p95 = percentile(durations, 0.50), percentile(durations, 0.95)
    return {
        "windowHours": WINDOW_HOURS,
        "provisioned": provisioned,
        "failed": failed,
        "successRate": provisioned / (provisioned + failed) if provisioned + failed else None,
        "provisioningP50Ms": None if p50 is None else round(p50 / 1e6, 1),
        "provisioningP95Ms": None if p95 is None else round(p95 / 1e6, 1),
        "hourly": hourly,
    }


def prune(conn: sa.Connection, now: int | None = None) -> int:
    """Delete events older than the retention (one idempotent statement, safe on several replicas)."""
    now = now_ns() if now is None else now
    return conn.execute(sa.delete(e).where(e.c.at_ns < now - EVENT_RETENTION_DAYS * 24 * HOUR_NS)).rowcount
