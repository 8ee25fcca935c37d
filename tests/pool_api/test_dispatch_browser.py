"""The pool page with its dispatch parts in headless Chromium, against a real `dc-pool-api serve` on
PostgreSQL: agents that claimed, provisioned and failed through the API (one passed over after three
failures), a fallback pool, and the last day's hourly chart. The screenshot goes to
artifacts/screenshots/pool-dispatch.png. Skipped, saying so, without Chromium (tests/pool_api/test_browser.py)."""

from __future__ import annotations

import re

from pool_api import provision_stats
from pool_api.db import now_ns
from tests.pool_api.dispatch_helpers import claim_ids
from tests.pool_api.helpers import engine_for, make_contracts, new_agent
from tests.pool_api.test_browser import Browser, pytestmark  # noqa: F401 - the Chromium skip applies here too
from tests.pool_api.test_pages import table_rows
from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider, data

HOUR_NS = 3600 * 10**9


def test_pool_page_with_chart(pg_url: str) -> None:
    with running_pool_api(pg_url) as server:
        provider = Provider.register(server, name="acme")
        backup = provider.create_pool("na-backup", "na", "proxmox")["poolId"]
        pool = data(provider.request("POST", "/pools", {"name": "europe-proxmox", "location": "europe",
                                                        "provisionerType": "proxmox", "fallbackPoolId": backup,
                                                        "fallbackAfterSeconds": 600}))["poolId"]
        provider.create_offering("vps-eu", "DE")
        healthy, sick = new_agent(provider, pool, label="node-1"), new_agent(provider, pool, label="node-2")
        healthy.heartbeat(version="0.9.0", capacity={"maxConcurrent": 4, "freeSlots": 2})
        sick.heartbeat(version="0.9.0", capacity={"maxConcurrent": 2, "freeSlots": 2})
        for cid in make_contracts(server, "vps-eu", 5):
            assert claim_ids(healthy, 1) == [cid]
            data(healthy.provisioned(cid))
        [retry] = make_contracts(server, "vps-eu")
        for attempt in range(3):
            assert claim_ids(sick, 1) == [retry]
            data(sick.failed(retry, f"clone failed ({attempt})"))
        now = now_ns()
        with engine_for(server).begin() as conn:  # earlier hours of the day, so the chart has a shape
            for hour, (ok, failed) in enumerate([(3, 0), (6, 1), (2, 0), (8, 2), (4, 0), (5, 1)]):
                at = now - (20 - 3 * hour) * HOUR_NS
                for i in range(ok):
                    provision_stats.record(conn, provider_pubkey=provider.pubkey, pool_id=pool, agent_pubkey=healthy.pubkey,
                                           contract_id=f"h{hour}-{i}", outcome="provisioned", at_ns=at + i,
                                           duration_ns=(40 + 7 * i) * 10**9)
                for i in range(failed):
                    provision_stats.record(conn, provider_pubkey=provider.pubkey, pool_id=pool, agent_pubkey=sick.pubkey,
                                           contract_id=f"f{hour}-{i}", outcome="failed", at_ns=at + 100 + i)
        dom = Browser(server, provider).load(f"/provider/pools/{pool}", "pool-dispatch.png")
        rows = {r[0]: r for r in table_rows(dom, "agents")}
        assert rows["node-1"][6:9] == ["2/4 free", "0", "—"]
        assert rows["node-2"][6:9] == ["2/2 free", "3", "passed over"]
        assert re.search(r'id="stat-provisioned">33<', dom) and re.search(r'id="stat-failed">7<', dom)
        assert re.search(r'id="stat-success">82\.5 %<', dom)
        assert len(re.findall(r'<g class="hour"', dom)) == 24 and len(re.findall(r'<rect class="fail"', dom)) == 4
        assert "na-backup</b></a> after 600 s" in dom
        for agent in (healthy, sick):
            agent.close()
        provider.close()
