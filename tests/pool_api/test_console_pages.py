"""The provider's console pages through FastAPI's TestClient on PostgreSQL and SQLite: the contracts list
(columns, filters, stuck, keyset pages), a contract's history, release and retry behind a confirmation page
and the CSRF token, the agent page and revoke, offering forms and CSV import/export; another provider's
objects are 404 and what the pages show is escaped."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from pool_api import actions, agents, contract_events, pause
from pool_api.tables import contracts as contracts_table
from pool_api.tables import offerings as offerings_table
from tests.pool_api.console_helpers import agent, backdate_lock, contracts, offering
from tests.pool_api.test_pages import (ALICE, BOB, XSS, alice, app, bob, client, make_pool, page_csrf,  # noqa: F401
                                       parse_page, post, settings, table_rows)

A1, A2, B1 = "c1" * 32, "c2" * 32, "d1" * 32
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def rows_by_id(html: str, table: str = "contracts") -> dict[str, list[str]]:
    """Rows of the contracts table keyed by the short contract id in their first cell."""
    return {r[0]: r for r in table_rows(html, table)}


def short(cid: str) -> str:
    return f"{cid[:8]}…{cid[-4:]}"


def column(engine: sa.Engine, cid: str, name: str) -> Any:
    with engine.begin() as conn:
        return conn.execute(sa.select(contracts_table.c[name]).where(contracts_table.c.contract_id == cid)).scalar_one()


class TestContractsList:
    def test_columns_health_and_only_own_contracts(self, engine: sa.Engine, client: TestClient, alice: str,
                                                   bob: str) -> None:
        """id, offering, pool, status, lock holder and expiry, attempts, last error, health, age; Bob's are absent."""
        eu = make_pool(engine, alice, "europe-proxmox")
        node = agent(engine, alice, eu, A1, "node-1", {})
        offering(engine, alice, "vps-eu")
        locked, failing, running = contracts(engine, "vps-eu", 3)
        node.lock(locked)
        node.lock(failing)
        node.failed(failing, f"clone failed {XSS}")
        node.lock(running)
        node.provisioned(running, {"externalId": "pve/101", "rootPassword": "hunter2"})
        node.health(running, "unhealthy", "VM stopped")
        bob_pool = make_pool(engine, bob, "bobs")
        offering(engine, bob, "bob-vps")
        [bobs] = contracts(engine, "bob-vps")
        agent(engine, bob, bob_pool, B1).lock(bobs)
        html = client.get("/provider/contracts").text
        got = rows_by_id(html)
        assert set(got) == {short(locked), short(failing), short(running)} and short(bobs) not in html
        row = got[short(locked)]
        assert row[1:5] == ["vps-eu", "europe-proxmox", "accepted", short(A1)] and re.fullmatch(r"[45]m", row[5])
        assert row[6:9] == ["0", "—", "—"] and re.fullmatch(r"just now|\d+s", row[9]), row
        assert got[short(failing)][4:8] == ["—", "—", "1", f"clone failed {XSS}"]
        assert got[short(running)][3] == "provisioned" and got[short(running)][8] == "● unhealthy"
        assert "<script>" not in html and ESCAPED in html
        assert 'href="/provider/contracts"' in html and 'class="on">Contracts' in html

    def test_filters_stuck_and_keyset_pages(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        """pool (or no pool), status and stuck (locked over N minutes, or failed 3 times) filters; 50-row pages."""
        eu = make_pool(engine, alice, "eu")
        make_pool(engine, alice, "na", "na")
        node = agent(engine, alice, eu, A1, "node-1", {})
        offering(engine, alice, "vps-eu")
        offering(engine, alice, "vps-us", "US")
        offering(engine, alice, "vps-br", "BR")
        many = contracts(engine, "vps-eu", 52)
        [us] = contracts(engine, "vps-us")
        [br] = contracts(engine, "vps-br", status="requested")
        long_locked, short_locked, failing = many[:3]
        for cid in (long_locked, short_locked):
            node.lock(cid)
        backdate_lock(engine, long_locked, 20)
        backdate_lock(engine, short_locked, 5)
        for _ in range(3):
            node.lock(failing)
            node.failed(failing, "no storage")
        first = client.get("/provider/contracts").text
        shown = [r[0] for r in table_rows(first, "contracts")]
        assert len(shown) == 50 and shown[:2] == [short(br), short(us)] and "54 contracts" in first
        older = re.search(r'href="([^"]+)" id="older"', first)[1].replace("&amp;", "&")
        second = [r[0] for r in table_rows(client.get(older).text, "contracts")]
        assert second == [short(c) for c in reversed(many[:4])]  # the oldest four, newest first
        assert [r[0] for r in table_rows(client.get("/provider/contracts", params={"pool": "none"}).text,
                                         "contracts")] == [short(br)]
        na = client.get("/provider/contracts", params={"status": "requested"}).text
        assert [r[0] for r in table_rows(na, "contracts")] == [short(br)]
        stuck = client.get("/provider/contracts", params={"stuck": "1"}).text
        got = rows_by_id(stuck)
        assert set(got) == {short(long_locked), short(failing)}
        assert "locked 20m" in got[short(long_locked)][3] and "failed 3 times" in got[short(failing)][3]
        wider = client.get("/provider/contracts", params={"stuck": "1", "minutes": "4"}).text
        assert set(rows_by_id(wider)) == {short(long_locked), short(short_locked), short(failing)}
        nothing = client.get("/provider/contracts", params={"stuck": "1", "pool": "none", "after": "x.y<"}).text
        assert "No contract matches the filter." in nothing


class TestContractDetail:
    def test_history_from_the_code_paths(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        """created, a lock with its renewals folded, a failure, another agent's lock, provisioned without
        secrets, health changes only, pause/resume, a password reset."""
        eu = make_pool(engine, alice, "eu")
        one, two = agent(engine, alice, eu, A1, "node-1", {}), agent(engine, alice, eu, A2, "node-2", {})
        offering(engine, alice, "vps-eu")
        [cid] = contracts(engine, "vps-eu")
        for _ in range(4):  # a lock and three renewals
            one.lock(cid)
        one.failed(cid, f"clone failed {XSS}")
        two.lock(cid)
        two.provisioned(cid, {"externalId": "pve/7", "ipAddress": "192.0.2.7", "rootPassword": "hunter2"})
        for status in ("healthy", "healthy", "unhealthy"):
            two.health(cid, status, "guest agent down" if status == "unhealthy" else None)
        with engine.begin() as conn:
            pause.pause(conn, cid)
            pause.resume(conn, cid)
            request_id = actions.request_password_reset(conn, cid, "ab" * 32)["requestId"]
        two.report_password(cid, request_id, error="guest agent not running")
        html = client.get(f"/provider/contracts/{cid}").text
        rows = table_rows(html, "timeline")
        assert [r[1] for r in rows] == ["Created", "Locked", "Failed", "Locked", "Provisioned", "Health", "Health",
                                        "Paused", "Resumed", "Password reset requested", "Password reset failed"]
        assert rows[1][2] == short(A1) and re.fullmatch(r"renewed 3 times until \S+ \S+ UTC; the attempt failed",
                                                        rows[1][3]), rows[1]
        assert rows[2][3] == f"clone failed {XSS}" and rows[3][2] == short(A2)
        assert rows[3][3].endswith("; provisioned")
        assert "rootPassword=***" in rows[4][3] and "externalId=pve/7" in rows[4][3] and "hunter2" not in html
        assert rows[5][3] == "healthy" and rows[6][3] == "unhealthy guest agent down"
        assert rows[10][3] == f"{request_id} guest agent not running"
        assert "<script>" not in html and ESCAPED in html
        state = {r[0]: r[1] for r in _th_rows(html, "instance")}
        assert state["rootPassword"] == "***" and state["ipAddress"] == "192.0.2.7"
        assert 'id="release"' not in html and 'id="retry"' not in html  # provisioned: nothing to act on

    def test_contract_from_before_the_history_shows_its_state(self, engine: sa.Engine, client: TestClient,
                                                             alice: str) -> None:
        """A contract without events (made before migration 0007) is told from its current state."""
        eu = make_pool(engine, alice, "eu")
        node = agent(engine, alice, eu, A1, "node-1", {})
        offering(engine, alice, "vps-eu")
        [cid] = contracts(engine, "vps-eu")
        node.lock(cid)
        node.failed(cid, "no space left")
        node.lock(cid)
        node.provisioned(cid, {"externalId": "pve/9", "rootPassword": "hunter2"})
        with engine.begin() as conn:  # as a contract of the old schema: no history at all
            conn.execute(sa.delete(contract_events.e).where(contract_events.e.c.contract_id == cid))
        rows = table_rows(client.get(f"/provider/contracts/{cid}").text, "timeline")
        assert [r[1] for r in rows] == ["Created (from state)", "Locked (from state)", "Failed (from state)",
                                        "Provisioned (from state)"]
        assert rows[2][3] == "1 failure(s) in all; the last: no space left" and "rootPassword=***" in rows[3][3]

    def test_release_and_retry_behind_confirmation_and_csrf(self, engine: sa.Engine, client: TestClient,
                                                            alice: str) -> None:
        eu = make_pool(engine, alice, "eu")
        node = agent(engine, alice, eu, A1, "node-1", {})
        offering(engine, alice, "vps-eu")
        stuck, failing = contracts(engine, "vps-eu", 2)
        node.lock(stuck)
        backdate_lock(engine, stuck, 30)
        page = client.get(f"/provider/contracts/{stuck}").text
        assert "⚠ Stuck:</b> locked 30m" in page and 'href="/provider/contracts/%s/release"' % stuck in page
        confirm = client.get(f"/provider/contracts/{stuck}/release")
        assert confirm.status_code == 200 and f"is locked by agent {A1}" in confirm.text
        assert f'name="holder" value="{A1}"' in confirm.text
        csrf = page_csrf(confirm.text)
        for fields in ({"holder": A1}, {"holder": A1, "csrf": "0" * 64}):
            refused = client.post(f"/provider/contracts/{stuck}/release", data=fields, follow_redirects=False)
            assert refused.status_code == 403 and column(engine, stuck, "lock_agent") == A1
        changed = client.post(f"/provider/contracts/{stuck}/release", data={"csrf": csrf, "holder": A2},
                              follow_redirects=False)
        assert changed.status_code == 409 and "changed hands" in changed.text and column(engine, stuck, "lock_agent") == A1
        done = client.post(f"/provider/contracts/{stuck}/release", data={"csrf": csrf, "holder": A1},
                           follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == f"/provider/contracts/{stuck}?done=lock-released"
        assert column(engine, stuck, "lock_agent") is None
        after = client.get(done.headers["location"]).text
        assert "Lock released" in after and table_rows(after, "timeline")[-1][1:4] == [
            "Lock released by you", "—", f"the lock of agent {A1}"]
        assert table_rows(after, "timeline")[1][3].endswith("; released by the provider")

        for _ in range(3):
            node.lock(failing)
            node.failed(failing, "no storage")
        node.lock(failing)
        locked = client.get(f"/provider/contracts/{failing}")
        assert 'id="retry"' not in locked.text  # locked now: release first
        refused = post(client, f"/provider/contracts/{failing}/retry", f"/provider/contracts/{failing}/retry")
        assert refused.status_code == 409 and "release the lock first" in refused.text
        node.release(failing)
        confirm = client.get(f"/provider/contracts/{failing}/retry").text
        assert "failed 3 time(s); the last error: no storage" in confirm
        retried = post(client, f"/provider/contracts/{failing}/retry", f"/provider/contracts/{failing}/retry")
        assert retried.headers["location"] == f"/provider/contracts/{failing}?done=retry-requested"
        assert column(engine, failing, "failure_count") == 0 and column(engine, failing, "last_error") == "no storage"
        assert "No contract matches the filter." in client.get("/provider/contracts?stuck=1").text  # none is stuck

    def test_another_providers_contract_agent_and_offering_are_404(self, engine: sa.Engine, client: TestClient,
                                                                   bob: str) -> None:
        pool = make_pool(engine, bob, "bobs")
        node = agent(engine, bob, pool, B1, "bob-node", {})
        offering(engine, bob, "bob-vps")
        [cid] = contracts(engine, "bob-vps")
        node.lock(cid)
        for path in (f"/provider/contracts/{cid}", f"/provider/contracts/{cid}/release",
                     f"/provider/contracts/{cid}/retry", f"/provider/agents/{B1}", f"/provider/agents/{B1}/revoke",
                     "/provider/offerings/bob-vps/edit", "/provider/contracts/unknown"):
            response = client.get(path)
            assert response.status_code == 404 and "bob-vps" not in response.text, path
        csrf = page_csrf(client.get("/provider/contracts").text)
        for path in (f"/provider/contracts/{cid}/release", f"/provider/contracts/{cid}/retry",
                     f"/provider/agents/{B1}/revoke", "/provider/offerings/bob-vps/edit"):
            response = client.post(path, data={"csrf": csrf, "holder": B1, "name": "stolen", "datacenterCountry": "DE"},
                                   follow_redirects=False)
            assert response.status_code == 404, path
        assert column(engine, cid, "lock_agent") == B1
        with engine.begin() as conn:
            assert conn.execute(sa.select(offerings_table.c.name)
                                .where(offerings_table.c.offering_id == "bob-vps")).scalar_one() == "BOB-VPS"


def _th_rows(html: str, table_id: str) -> list[tuple[str, str]]:
    """(th text, td text) of each row of a key/value table."""
    body = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', html, re.S)[1]
    out = []
    for th, td in re.findall(r"<th>(.*?)</th>\s*<td[^>]*>(.*?)</td>", body, re.S):
        out.append((re.sub(r"<[^>]+>", "", th).strip(), " ".join(re.sub(r"<[^>]+>", "", td).split())))
    return out


class TestAgentPage:
    def test_agent_detail_errors_health_and_revoke(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        eu = make_pool(engine, alice, "eu")
        node = agent(engine, alice, eu, A1, XSS, {"version": "0.7.1"})
        offering(engine, alice, "vps-eu")
        failing, running = contracts(engine, "vps-eu", 2)
        node.lock(failing)
        node.failed(failing, f"disk full {XSS}")
        node.lock(running)
        node.provisioned(running, {"externalId": "pve/3"})
        node.health(running, "unhealthy", "stopped")
        html = client.get(f"/provider/agents/{A1}").text
        facts = dict(_th_rows(html, "agent"))
        assert facts["Version"] == "0.7.1" and facts["Dialect"] == "pool-api" and facts["Provisioner type"] == "proxmox"
        [error] = table_rows(html, "errors")
        assert error[1:6] == [short(failing), "vps-eu", "accepted", "1", f"disk full {XSS}"]
        [health] = table_rows(html, "health")
        assert health[:4] == [short(running), "vps-eu", "provisioned", "unhealthy — stopped"]
        assert "1 unhealthy" in html and "<script>" not in html and ESCAPED in html
        confirm = client.get(f"/provider/agents/{A1}/revoke")
        assert confirm.status_code == 200 and "can no longer sign requests" in confirm.text
        done = post(client, f"/provider/agents/{A1}/revoke", f"/provider/agents/{A1}/revoke")
        assert done.headers["location"] == f"/provider/agents/{A1}?done=agent-revoked"
        revoked = client.get(done.headers["location"]).text
        assert "Agent revoked" in revoked and "● Revoked" in revoked and 'id="revoke"' not in revoked
        assert client.get(f"/provider/agents/{A1}/revoke").status_code == 409

    def test_inventory_and_provisioners_as_the_heartbeat_sent_them(self, engine: sa.Engine, client: TestClient,
                                                                   alice: str) -> None:
        eu = make_pool(engine, alice, "eu")
        agent(engine, alice, eu, A1, "node-1")
        bare = client.get(f"/provider/agents/{A1}").text
        assert "heartbeat carried no inventory." in bare
        with engine.begin() as conn:
            agents.heartbeat(conn, A1, "0.9.0", "proxmox", 1, {"maxConcurrent": 2, "freeSlots": 1},
                             resources={"cpuCores": 16, "memoryMb": 65536, "gpus": [{"model": XSS}],
                                        "apiToken": "not-shown"},
                             provisioners=[{"name": "pve1", "type": "proxmox", "healthy": True}])
        html = client.get(f"/provider/agents/{A1}").text
        inventory = dict(_th_rows(html, "inventory"))
        assert inventory["cpuCores"] == "16" and inventory["memoryMb"] == "65536"
        assert inventory["apiToken"] == "***" and "not-shown" not in html
        assert "<script>" not in html and "\\u003cscript\\u003e" in html  # nested values as JSON, escaped
        provisioners = " ".join(" ".join(r) for r in table_rows(html, "provisioners"))
        assert provisioners == "name=pve1 type=proxmox healthy=true"
        assert dict(_th_rows(html, "agent"))["Active contracts"] == "1 of 2 (1 free)"


def resolved_pool(html: str) -> str:
    """The text of the offering form's "Routes to pool …" box."""
    return " ".join(re.sub(r"<[^>]+>", "", re.search(r'id="resolved-pool"[^>]*>(.*?)</div>', html, re.S)[1]).split())


class TestOfferingForms:
    def test_new_and_edit_set_and_clear_the_explicit_pool(self, engine: sa.Engine, client: TestClient,
                                                         alice: str) -> None:
        eu = make_pool(engine, alice, "europe-proxmox")
        na = make_pool(engine, alice, "na-proxmox", "na")
        form = client.get("/provider/offerings/new").text
        assert 'name="agentPoolId"' in form and f'value="{na}"' in form and page_csrf(form)
        fields = {"offeringId": "vps-s", "name": XSS, "productType": "compute", "datacenterCountry": "DE",
                  "provisionerType": "", "agentPoolId": na, "price": "5.5", "cpuCores": "2", "memoryMb": "2048",
                  "storageGb": "40", "status": "active", "provisionerConfig": '{"template": "debian-12"}'}
        created = post(client, "/provider/offerings/new", "/provider/offerings/new", **fields)
        assert created.headers["location"] == "/provider/offerings/vps-s/edit?done=offering-created"
        page = client.get(created.headers["location"]).text
        assert resolved_pool(page) == "Routes to pool na-proxmox (explicit)."
        assert ESCAPED in page and "<script>alert" not in page
        cleared = post(client, "/provider/offerings/vps-s/edit", "/provider/offerings/vps-s/edit",
                       **{**fields, "agentPoolId": "", "status": "inactive", "price": ""})
        assert cleared.headers["location"] == "/provider/offerings/vps-s/edit?done=offering-saved"
        page = client.get(cleared.headers["location"]).text
        assert resolved_pool(page) == "Routes to pool europe-proxmox (auto: region europe, type proxmox)."
        with engine.begin() as conn:
            row = conn.execute(sa.select(offerings_table).where(offerings_table.c.offering_id == "vps-s")).one()
        assert (row.agent_pool_id, row.status, row.price, row.cpu_cores, row.provisioner_config) == \
               (None, "inactive", None, 2, {"template": "debian-12"})
        assert f'value="{eu}"' in page
        for bad, message in (({"price": "cheap"}, "price: must be a number"),
                             ({"provisionerConfig": "[1]"}, "provisionerConfig: must be a JSON object"),
                             ({"datacenterCountry": ""}, "datacenterCountry: required"),
                             ({"agentPoolId": "pool_unknown"}, "unknown pool")):
            refused = post(client, "/provider/offerings/vps-s/edit", "/provider/offerings/vps-s/edit",
                           **{**fields, **bad})
            assert refused.status_code == 422 and message in refused.text, (bad, refused.text[-500:])
        listing = client.get("/provider/offerings", params={"status": "inactive"}).text
        assert [(r[0], r[-1]) for r in table_rows(listing, "offerings")] == [("vps-s", "Inactive")]
        assert "No offering matches the filter." in client.get("/provider/offerings", params={"status": "active"}).text

    def test_import_and_export_pages(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        offering(engine, alice, "vps-a")
        exported = client.get("/provider/offerings/export.csv")
        assert exported.headers["content-type"].startswith("text/csv")
        assert 'filename="offerings.csv"' in exported.headers["content-disposition"]
        header, row = exported.text.splitlines()
        assert header == "offering_id,name,product_type,datacenter_country,provisioner_type,agent_pool_id,price," \
                         "cpu_cores,memory_mb,storage_gb,status,provisioner_config"
        assert row == "vps-a,VPS-A,compute,DE,,,,,,,active,"
        csrf = page_csrf(client.get("/provider/offerings/import").text)
        bad = header + "\nvps-b,VPS B,,FR,,,,,,,,\nvps-c,VPS C,,FR,,,free,,,,,\n"
        refused = client.post("/provider/offerings/import", data={"csrf": csrf},
                              files={"file": ("o.csv", bad.encode(), "text/csv")})
        assert refused.status_code == 422 and "Nothing was imported" in refused.text
        assert "line 3: price: must be a number, not &#39;free&#39;" in refused.text
        good = exported.text.replace("VPS-A", "VPS A renamed") + "vps-b,VPS B,,FR,,,,,,,inactive,\r\n"
        done = client.post("/provider/offerings/import", data={"csrf": csrf},
                           files={"file": ("o.csv", good.encode(), "text/csv")})
        assert done.status_code == 200 and "Imported: 1 created, 1 updated." in done.text
        rows = {r[0]: r for r in table_rows(client.get("/provider/offerings").text, "offerings")}
        assert rows["vps-a"][1] == "VPS A renamed" and rows["vps-b"][-1] == "Inactive"
        pasted = client.post("/provider/offerings/import", data={"csrf": csrf, "text": "name\nX\n"})
        assert pasted.status_code == 422 and "required column(s) datacenter_country missing" in pasted.text
        assert client.post("/provider/offerings/import", data={"text": good}).status_code == 403
