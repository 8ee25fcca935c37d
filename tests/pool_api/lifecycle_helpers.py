"""Shared set-up of the lifecycle tests: a provider with two pools, three agents, and provisioned contracts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pool_api.tables import contracts
from tests.pool_api.helpers import Agent, engine_for, make_contracts, new_agent
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, data


@dataclass
class World:
    """`a` and `b` in the europe pool (offering `de` routes there), `us` in the na pool."""

    server: PoolServer
    provider: Provider
    a: Agent
    b: Agent
    us: Agent
    de: str
    eu_pool: str

    def contract(self, **kw: Any) -> str:
        [cid] = make_contracts(self.server, self.de, 1, **kw)
        return cid

    def provisioned(self, agent: Agent | None = None, **kw: Any) -> str:
        """A contract `agent` (default a) locked and reported provisioned as externalId `pve1/<n>`."""
        agent = agent or self.a
        cid = self.contract(**kw)
        data(agent.lock(cid))
        data(agent.provisioned(cid, {"externalId": external_id(cid), "provisioner": "proxmox"}))
        return cid

    def set_contract(self, cid: str, **values: Any) -> None:
        """Change a contract row directly (what the marketplace or the clock would do)."""
        with engine_for(self.server).begin() as conn:
            conn.execute(sa.update(contracts).where(contracts.c.contract_id == cid).values(**values))


def external_id(cid: str) -> str:
    return f"pve1/{int(cid[:6], 16) % 100000 + 100}"


@contextlib.contextmanager
def make_world(server: PoolServer, provider: Provider, tag: str) -> Iterator[World]:
    eu = provider.create_pool(f"{tag}-eu", "europe", "proxmox")
    na = provider.create_pool(f"{tag}-na", "na", "proxmox")
    de = f"{tag}-de-{provider.pubkey[:8]}"
    provider.create_offering(de, "DE")
    provider.create_offering(f"{tag}-us-{provider.pubkey[:8]}", "US")
    a, b, us = new_agent(provider, eu["poolId"], "a"), new_agent(provider, eu["poolId"], "b"), \
        new_agent(provider, na["poolId"], "us")
    for agent in (a, b, us):
        agent.heartbeat()
    try:
        yield World(server, provider, a, b, us, de, eu["poolId"])
    finally:
        for agent in (a, b, us):
            agent.close()


def reconcile(agent: Agent, *instances: tuple[str, str | None]) -> dict[str, Any]:
    body = {"runningInstances": [{"externalId": e, "contractId": c} for e, c in instances]}
    return data(agent.call("POST", "/reconcile", body))
