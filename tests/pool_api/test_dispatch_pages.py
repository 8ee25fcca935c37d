"""The pool pages' dispatch parts through FastAPI's TestClient (PostgreSQL and SQLite): the fallback pool and
delay in the create/edit form and on the pages, each agent's capacity, failure streak and pass-over, and the
last 24 h (success rate, provisioning p50/p95, the hourly SVG chart) under the pages' CSP."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from pool_api import agents, provision_stats
from pool_api.db import now_ns
from pool_api.pages.routes import SECURITY_HEADERS
from pool_api.tables import agent_delegations
from tests.pool_api.test_pages import alice, app, client, make_agent, make_pool, post, settings, table_rows  # noqa: F401

HOUR_NS = 3600 * 10**9
SECOND_NS = 10**9


def _pool_id_from(response: Any) -> str:
    assert response.status_code == 303, response.text
    return re.fullmatch(r"/provider/pools/(pool_[0-9a-f]{16})\?done=pool-created", response.headers["location"])[1]


class TestFallbackForm:
    def test_create_edit_and_show_the_fallback(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        backup = make_pool(engine, alice, "backup", "na")
        primary = _pool_id_from(post(client, "/provider/pools", "/provider/pools/new", name="primary",
                                     location="europe", provisionerType="proxmox", fallbackPoolId=backup,
                                     fallbackAfterSeconds="120"))
        detail = client.get(f"/provider/pools/{primary}").text
        assert re.search(r'id="fallback-setting">Fallback: <a href="/provider/pools/' + backup + r'"><b>backup</b></a>'
                         r' after 120 s', detail)
        rows = {r[0]: r for r in table_rows(client.get("/provider/pools").text, "pools")}
        assert rows["primary"][8] == "backup after 120 s" and rows["backup"][8] == "—"
        form = client.get(f"/provider/pools/{primary}/edit").text
        assert f'<option value="{backup}" selected>backup (na, proxmox)</option>' in form
        assert f'value="{primary}"' not in form.split('name="fallbackPoolId"')[1].split("</select>")[0]  # not itself
        cycle = post(client, f"/provider/pools/{backup}/edit", f"/provider/pools/{backup}/edit", name="backup",
                     location="na", provisionerType="proxmox", fallbackPoolId=primary, fallbackAfterSeconds="300")
        assert cycle.status_code == 422 and "cycle" in cycle.text
        bad = post(client, f"/provider/pools/{primary}/edit", f"/provider/pools/{primary}/edit", name="primary",
                   location="europe", provisionerType="proxmox", fallbackPoolId=backup, fallbackAfterSeconds="soon")
        assert bad.status_code == 422 and "fallbackAfterSeconds" in bad.text
        cleared = post(client, f"/provider/pools/{primary}/edit", f"/provider/pools/{primary}/edit", name="primary",
                       location="europe", provisionerType="proxmox", fallbackPoolId="", fallbackAfterSeconds="300")
        assert cleared.status_code == 303
        assert 'Fallback: <span class="muted">none</span>' in client.get(f"/provider/pools/{primary}").text


class TestPoolDetailDispatch:
    def test_agents_and_the_last_day(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        """Capacity "3/4 free", a streak of 3 shown as passed over (a healthy agent is online), and 6
        provisioned + 1 failed in the last 24 h: 85.7 %, p50 3.0 s, p95 6.0 s, bars that add up."""
        pool_id = make_pool(engine, alice, "europe-proxmox")
        make_agent(engine, pool_id, "11" * 32, "healthy", {})
        make_agent(engine, pool_id, "22" * 32, "sick", {})
        now = now_ns()
        with engine.begin() as conn:
            agents.heartbeat(conn, "11" * 32, "0.9", "proxmox", 1, {"maxConcurrent": 4, "freeSlots": 3})
            conn.execute(sa.update(agent_delegations).where(agent_delegations.c.agent_pubkey == "22" * 32)
                         .values(consecutive_failures=3, last_failure_ns=now))
            for i in range(6):
                provision_stats.record(conn, provider_pubkey=alice, pool_id=pool_id, agent_pubkey="11" * 32,
                                       contract_id=f"c{i}", outcome="provisioned",
                                       at_ns=now - (5 if i < 4 else 3) * HOUR_NS // 2 + i * SECOND_NS,
                                       duration_ns=(i + 1) * SECOND_NS)
            provision_stats.record(conn, provider_pubkey=alice, pool_id=pool_id, agent_pubkey="22" * 32,
                                   contract_id="c9", outcome="failed", at_ns=now - HOUR_NS // 2)
            provision_stats.record(conn, provider_pubkey=alice, pool_id=pool_id, agent_pubkey="22" * 32,
                                   contract_id="old", outcome="failed", at_ns=now - 30 * HOUR_NS)  # not in 24 h
        response = client.get(f"/provider/pools/{pool_id}")
        html = response.text
        rows = {r[0]: r for r in table_rows(html, "agents")}
        assert rows["healthy"][6:9] == ["3/4 free", "0", "—"]
        assert rows["sick"][6:9] == ["—", "3", "passed over"]
        stats = {k: re.search(rf'id="stat-{k}">([^<]*)<', html)[1] for k in ("provisioned", "failed", "success", "p50", "p95")}
        assert stats == {"provisioned": "6", "failed": "1", "success": "85.7 %", "p50": "3.0 s", "p95": "6.0 s"}
        svg = re.search(r'<svg class="chart" id="provision-chart".*?</svg>', html, re.S)[0]
        hours = re.findall(r'<g class="hour" data-provisioned="(\d+)" data-failed="(\d+)">', svg)
        assert len(hours) == 24
        assert sum(int(p) for p, _f in hours) == 6 and sum(int(f) for _p, f in hours) == 1
        assert len(re.findall(r'<rect class="ok"', svg)) == 2 and len(re.findall(r'<rect class="fail"', svg)) == 1
        assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        assert " style=" not in html and not re.search(r"<script(?![^>]*\bsrc=)", html)  # the CSP would block both
        pools_row = table_rows(client.get("/provider/pools").text, "pools")[0]
        assert pools_row[6:8] == ["85.7 %", "3.0 s / 6.0 s"]
