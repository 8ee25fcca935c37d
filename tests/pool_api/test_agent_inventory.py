"""The agent's host inventory and provisioner list in pool_api (migration 0006): accepted in the heartbeat
(bounded), stored until a heartbeat replaces them (one without them keeps them), shown on the agent page."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from pool_api import agents
from pool_api.schemas import MAX_INVENTORY_BYTES, HeartbeatRequest
from pool_api.tables import agent_delegations
from tests.pool_api.test_console_pages import _th_rows
from tests.pool_api.test_pages import (XSS, alice, app, client, make_agent, make_pool, settings,  # noqa: F401
                                       table_rows)

A1 = "e1" * 32
RESOURCES = {"cpuModel": "AMD EPYC 9354", "cpuCores": 32, "cpuThreads": 64, "cpuMhz": 3250, "memoryTotalMb": 257000,
             "memoryAvailableMb": 200000, "storagePools": [{"name": "local-lvm", "totalGb": 900, "availableGb": 700,
                                                             "storageType": "lvmthin"}],
             "gpuDevices": [], "templates": [{"vmid": 9000, "name": "debian-13"}]}
PROVISIONERS = [{"name": "proxmox", "type": "proxmox", "default": True, "healthy": True, "detail": "PVE 9.0"},
                {"name": "box", "type": "docker", "default": False, "healthy": False, "detail": f"no daemon {XSS}"}]


def beat(engine: sa.Engine, **kw: object) -> None:
    with engine.begin() as conn:
        agents.heartbeat(conn, A1, "0.2.0", "proxmox", 0, None, **kw)  # type: ignore[arg-type]


def stored(engine: sa.Engine) -> object:
    with engine.begin() as conn:
        return conn.execute(sa.select(agent_delegations.c.inventory)
                            .where(agent_delegations.c.agent_pubkey == A1)).scalar_one()


class TestHeartbeat:
    def test_schema_accepts_and_bounds_them(self):
        body = HeartbeatRequest.model_validate({"version": "1", "resources": RESOURCES, "provisioners": PROVISIONERS})
        assert body.resources == RESOURCES and body.provisioners == PROVISIONERS
        with pytest.raises(ValidationError, match="bytes of JSON"):
            HeartbeatRequest.model_validate({"version": "1", "resources": {"x": "y" * MAX_INVENTORY_BYTES}})
        with pytest.raises(ValidationError):
            HeartbeatRequest.model_validate({"version": "1", "provisioners": "proxmox"})

    def test_stored_until_replaced(self, engine: sa.Engine, alice: str):  # noqa: F811
        """Sent: stored; a heartbeat without them keeps them; each part replaces only itself."""
        make_agent(engine, make_pool(engine, alice, "eu"), A1, "hv-1")
        assert stored(engine) is None
        beat(engine, resources=RESOURCES, provisioners=PROVISIONERS)
        assert stored(engine) == {**RESOURCES, "provisioners": PROVISIONERS}
        beat(engine)
        assert stored(engine) == {**RESOURCES, "provisioners": PROVISIONERS}
        beat(engine, provisioners=PROVISIONERS[:1])
        assert stored(engine) == {**RESOURCES, "provisioners": PROVISIONERS[:1]}
        beat(engine, resources={**RESOURCES, "cpuCores": 16})
        assert stored(engine) == {**RESOURCES, "cpuCores": 16, "provisioners": PROVISIONERS[:1]}


def test_the_agent_page_shows_them(engine: sa.Engine, client: TestClient, alice: str):  # noqa: F811
    make_agent(engine, make_pool(engine, alice, "eu"), A1, "hv-1")
    beat(engine, resources=RESOURCES, provisioners=PROVISIONERS)
    html = client.get(f"/provider/agents/{A1}").text
    facts = dict(_th_rows(html, "inventory"))
    assert facts["cpuModel"] == "AMD EPYC 9354" and facts["cpuCores"] == "32" and "local-lvm" in facts["storagePools"]
    assert "provisioners" not in facts
    rows = [r[0] for r in table_rows(html, "provisioners")]
    assert len(rows) == 2 and "name=box" in rows[1] and "healthy=false" in rows[1]
    assert "<script>" not in html
