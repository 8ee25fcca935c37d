"""Prometheus metrics of one pool_api replica (GET /metrics, text exposition).

Two kinds, by what Prometheus expects of several replicas:
- from the database at scrape time (the same value on every replica; aggregate with max(), not sum()):
  `dc_pool_pending_contracts{pool}` (paid, open, not locked or lock expired, routing to the pool),
  `dc_pool_locked_contracts{pool}` (open and locked), `dc_pool_agents_online{pool}`;
- counted in this process (per replica; aggregate with sum() / rate()): `dc_pool_claims_total{result}`
  (claimed, empty, timeout, disconnected), `dc_pool_claimed_contracts_total`,
  `dc_pool_lock_conflicts_total` (409s of POST .../lock), `dc_pool_provisions_total{pool,outcome}`
  (provisioned, failed), `dc_pool_provisioning_seconds{pool}` (histogram: first lock -> provisioned),
  `dc_pool_claims_waiting` (gauge: claims waiting on this replica now).
The label `pool` is the pool id (`none` for agents without a pool). Each app has its own registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pool_api.contracts import PROVISIONABLE
from pool_api.db import now_ns
from pool_api.routing import DEFAULT_PROVISIONER_TYPE
from pool_api.tables import agent_delegations as d
from pool_api.tables import agent_pools as p
from pool_api.tables import contracts as c
from pool_api.tables import offerings as o

PROVISIONING_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
CLAIM_RESULTS = ("claimed", "empty", "timeout", "disconnected")


def _pool_contract_counts(conn: sa.Connection, now: int) -> sa.Result:
    """Per pool: open paid contracts that route to it, free (pending) and locked (one query)."""
    routes = sa.and_(o.c.provider_pubkey == p.c.provider_pubkey, sa.or_(
        o.c.agent_pool_id == p.c.pool_id,
        sa.and_(o.c.agent_pool_id.is_(None), o.c.region == p.c.location,
                sa.func.coalesce(o.c.provisioner_type, DEFAULT_PROVISIONER_TYPE) == p.c.provisioner_type)))
    open_ = sa.and_(c.c.offering_id == o.c.offering_id, c.c.status.in_(PROVISIONABLE),
                    c.c.payment_status == "succeeded", sa.or_(c.c.ends_at_ns.is_(None), c.c.ends_at_ns > now))
    locked = sa.and_(c.c.lock_agent.is_not(None), c.c.lock_expires_ns >= now)
    return conn.execute(
        sa.select(p.c.pool_id,
                  sa.func.sum(sa.case((sa.and_(c.c.contract_id.is_not(None), ~locked), 1), else_=0)).label("pending"),
                  sa.func.sum(sa.case((locked, 1), else_=0)).label("locked"))
        .select_from(p.outerjoin(o, routes).outerjoin(c, open_))
        .group_by(p.c.pool_id)
    )


class DatabaseCollector(Collector):
    """The gauges that must agree across replicas, read from the database on each scrape."""

    def __init__(self, engine: sa.Engine, online_window_ns: int, waiting: Callable[[], int]) -> None:
        self.engine = engine
        self.online_window_ns = online_window_ns
        self.waiting = waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = now_ns()
        pending = GaugeMetricFamily("dc_pool_pending_contracts", "Paid open contracts routing to the pool, not "
                                    "locked (or lock expired).", labels=["pool"])
        locked = GaugeMetricFamily("dc_pool_locked_contracts", "Open contracts routing to the pool with an "
                                   "unexpired lock.", labels=["pool"])
        online = GaugeMetricFamily("dc_pool_agents_online", "Unrevoked agents with a heartbeat within the online "
                                   "window.", labels=["pool"])
        with self.engine.connect() as conn:
            for row in _pool_contract_counts(conn, now):
                pending.add_metric([row.pool_id], int(row.pending or 0))
                locked.add_metric([row.pool_id], int(row.locked or 0))
            counts = dict(conn.execute(
                sa.select(p.c.pool_id, sa.func.count(d.c.agent_pubkey))
                .select_from(p.outerjoin(d, sa.and_(d.c.pool_id == p.c.pool_id, d.c.revoked_at_ns.is_(None),
                                                    d.c.last_seen_ns >= now - self.online_window_ns)))
                .group_by(p.c.pool_id)).all())
        for pool_id, count in sorted(counts.items()):
            online.add_metric([pool_id], int(count))
        waiting = GaugeMetricFamily("dc_pool_claims_waiting", "Claims waiting on this replica now.")
        waiting.add_metric([], self.waiting())
        yield from (pending, locked, online, waiting)


class Metrics:
    """The registry of one app and the in-process counters the routers update."""

    def __init__(self, engine: sa.Engine, online_window_ns: int, waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.claims = Counter("dc_pool_claims", "Claim requests answered, by result.", ["result"],
                              registry=self.registry)
        for result in CLAIM_RESULTS:
            self.claims.labels(result)
        self.claimed_contracts = Counter("dc_pool_claimed_contracts", "Contracts handed out by claims.",
                                         registry=self.registry)
        self.lock_conflicts = Counter("dc_pool_lock_conflicts", "POST .../lock answered 409.", registry=self.registry)
        self.provisions = Counter("dc_pool_provisions", "Provision outcomes reported, by pool.", ["pool", "outcome"],
                                  registry=self.registry)
        self.provisioning = Histogram("dc_pool_provisioning_seconds", "First lock to provisioned, by pool.",
                                      ["pool"], buckets=PROVISIONING_BUCKETS, registry=self.registry)
        self.registry.register(DatabaseCollector(engine, online_window_ns, waiting))

    def claimed(self, result: str, contracts: int) -> None:
        self.claims.labels(result).inc()
        if contracts:
            self.claimed_contracts.inc(contracts)

    def provisioned(self, pool_id: str | None, seconds: float | None) -> None:
        pool = pool_id or "none"
        self.provisions.labels(pool, "provisioned").inc()
        if seconds is not None:
            self.provisioning.labels(pool).observe(max(0.0, seconds))

    def failed(self, pool_id: str | None) -> None:
        self.provisions.labels(pool_id or "none", "failed").inc()
