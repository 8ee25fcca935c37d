"""Helpers of the console tests: agents that act through pool_api's own functions (the code paths the signed
API calls), in-process, so that a test can set up locks, renewals, failures and reports in a few lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pool_api import actions, instance_health, locks, offerings
from pool_api.auth import Caller
from pool_api.contracts import create_contracts
from pool_api.db import now_ns
from pool_api.tables import contracts as contracts_table
from tests.pool_api.test_pages import make_agent

MINUTE_NS = 60 * 10**9


@dataclass
class InProcessAgent:
    engine: sa.Engine
    caller: Caller

    @property
    def pubkey(self) -> str:
        return self.caller.pubkey

    def _run(self, fn: Any, *args: Any) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, self.caller, *args)

    def lock(self, cid: str, ttl_seconds: int = 300) -> dict[str, Any]:
        return self._run(locks.acquire, cid, ttl_seconds)

    def release(self, cid: str) -> dict[str, Any]:
        return self._run(locks.release, cid)

    def failed(self, cid: str, message: str) -> dict[str, Any]:
        return self._run(locks.failed, cid, message)

    def provisioned(self, cid: str, details: dict[str, Any]) -> dict[str, Any]:
        return self._run(locks.provisioned, cid, details)

    def health(self, cid: str, status: str, detail: str | None = None) -> dict[str, Any]:
        return self._run(instance_health.record, cid, status, detail, 3.0, now_ns())

    def report_password(self, cid: str, request_id: str, error: str | None = None) -> dict[str, Any]:
        return self._run(actions.report_password, cid, request_id, None if error else "c2VhbGVk" * 8, error)


def agent(engine: sa.Engine, provider: str, pool_id: str, pubkey: str, label: str | None = None,
          heartbeat: dict[str, Any] | None = None) -> InProcessAgent:
    """An agent registered with a real setup token in `pool_id` (see test_pages.make_agent)."""
    make_agent(engine, pool_id, pubkey, label, heartbeat)
    return InProcessAgent(engine, Caller(role="agent", pubkey=pubkey, provider_pubkey=provider, pool_id=pool_id))


def offering(engine: sa.Engine, provider: str, offering_id: str, country: str = "DE", **fields: Any) -> str:
    with engine.begin() as conn:
        offerings.create_offering(conn, provider, {"name": offering_id.upper(), "datacenter_country": country,
                                                   **fields}, offering_id)
    return offering_id


def contracts(engine: sa.Engine, offering_id: str, count: int = 1, **kw: Any) -> list[str]:
    with engine.begin() as conn:
        return create_contracts(conn, offering_id, count=count, **kw)


def backdate_lock(engine: sa.Engine, cid: str, minutes: int) -> None:
    """Make the current lock look `minutes` old (time travel for the stuck filter; the lock stays valid)."""
    with engine.begin() as conn:
        conn.execute(sa.update(contracts_table).where(contracts_table.c.contract_id == cid)
                     .values(lock_since_ns=now_ns() - minutes * MINUTE_NS))
