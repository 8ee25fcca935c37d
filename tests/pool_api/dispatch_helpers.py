"""Helpers of the dispatch tests (claim, long-poll, routing rules, metrics): claims as an agent makes them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa

from tests.pool_api.helpers import Agent, engine_for
from tests.support.pool_server import PoolServer
from tests.support.provider import data

LEASE_FIELDS = {"acquired", "expiresAtNs", "lockedAtNs", "firstLockedAtNs"}


def claim(agent: Agent, max_contracts: int = 1, wait: float = 0, timeout: float = 90, **extra: Any) -> list[dict[str, Any]]:
    """POST .../contracts/claim; the claimed items."""
    body = {"max": max_contracts, "waitSeconds": wait, **extra}
    response = agent.client.post(f"/providers/{agent.provider.pubkey}/contracts/claim", json=body, timeout=timeout)
    return data(response)["contracts"]


def claim_ids(agent: Agent, max_contracts: int = 1, wait: float = 0, **extra: Any) -> list[str]:
    return [item["contractId"] for item in claim(agent, max_contracts, wait, **extra)]


def claim_until_empty(agents: list[Agent], max_contracts: int, wait: float = 0,
                      then: Callable[[], Any] | None = None) -> tuple[dict[str, list[str]], Any]:
    """Each agent, in its own thread, claims (leaving out what it already holds) until a claim comes back
    empty; they start together, and `then()` runs once they have started. Returns (contracts by agent key,
    what `then` returned)."""
    got: dict[str, list[str]] = {agent.pubkey: [] for agent in agents}
    started = threading.Barrier(len(agents) + 1)

    def work(agent: Agent) -> None:
        started.wait(timeout=60)
        while True:
            items = claim_ids(agent, max_contracts, wait=wait, exclude=got[agent.pubkey])
            if not items:
                return
            got[agent.pubkey].extend(items)

    threads = [threading.Thread(target=work, args=(agent,)) for agent in agents]
    for t in threads:
        t.start()
    started.wait(timeout=60)
    made = then() if then is not None else None
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claimer did not finish"
    return got, made


class Background:
    """A call running in a thread (a long-poll claim); `result()` joins it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in result()
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 120) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background call did not finish"
        if self._error is not None:
            raise self._error
        return self._value


def waiting(server: PoolServer, agent: Agent) -> bool:
    """The agent's claim is waiting (its delegation says until when, pool_api.claims)."""
    from pool_api.db import now_ns
    from pool_api.tables import agent_delegations as d

    with engine_for(server).connect() as conn:
        until = conn.execute(sa.select(d.c.claim_waiting_until_ns).where(d.c.agent_pubkey == agent.pubkey)).scalar()
    return until is not None and until > now_ns()


def set_columns(server: PoolServer, table: sa.Table, where: sa.ColumnElement[bool], **values: Any) -> None:
    """Put a row in a given state (an old heartbeat, a lapsed lock) without waiting for the clock."""
    with engine_for(server).begin() as conn:
        conn.execute(sa.update(table).where(where).values(**values))


def metrics_text(server: PoolServer) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text
