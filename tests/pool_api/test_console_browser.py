"""The provider's console in headless Chromium (Debian's `chromium`, driven over the DevTools pipe as in
test_browser_flow.py) against a real `dc-pool-api serve` on SQLite, with agents acting through the signed
API: find the stuck contracts, open one, see why, release its lock through the confirmation page; look at
an agent and revoke it; create and edit an offering; import CSV with a bad line, then a good file.
Every page gets a screenshot in artifacts/screenshots/ (console-*.png)."""

from __future__ import annotations

import time

import pytest

from tests.pool_api.console_helpers import backdate_lock
from tests.pool_api.helpers import contract, engine_for, make_contracts, new_agent
from tests.pool_api.test_browser import CHROMIUM
from tests.pool_api.test_browser_flow import Chromium, browser, cells, server, sign_in  # noqa: F401 - fixtures
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, data

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); the browser test of the provider's "
           "console did NOT run")

XSS = "<img src=x onerror=document.title='pwned'>"


def text(browser: Chromium, selector: str) -> str:
    return browser.js(f"(document.querySelector({selector!r}) || {{innerText: ''}}).innerText")


def test_find_a_stuck_contract_see_why_and_release_it(server: PoolServer, browser: Chromium) -> None:
    provider = Provider.register(server, name="console")
    one = two = None
    try:
        pool = provider.create_pool("europe-proxmox", "europe", "proxmox")["poolId"]
        one, two = new_agent(provider, pool, label="node-1"), new_agent(provider, pool, label="node-2")
        one.heartbeat(version="0.8.0", capacity={"maxConcurrent": 4, "freeSlots": 3})
        provider.create_offering("vps-eu", "DE", name="VPS EU")
        hung, failing, running = make_contracts(server, "vps-eu", 3)
        data(one.lock(hung))
        backdate_lock(engine_for(server), hung, 25)
        for _ in range(3):
            data(two.lock(failing))
            data(two.failed(failing, f"clone failed: no space left {XSS}"))
        data(two.lock(running))
        data(two.provisioned(running, {"externalId": "pve/101", "rootPassword": "hunter2"}))
        data(two.call("POST", f"/contracts/{running}/health",
                      {"status": "unhealthy", "detail": "guest agent down", "checkedAtNs": time.time_ns()}))

        sign_in(server, browser, provider, "/provider/contracts")
        assert len(cells(browser, "contracts")) == 3
        browser.screenshot("console-contracts.png")
        browser.click("input[name=stuck]")
        browser.click("#contract-filters button[type=submit]")
        browser.wait_for("location.search.includes('stuck=1') && document.readyState === 'complete'", "stuck filter")
        stuck = {row[0]: row for row in cells(browser, "contracts")}
        assert {k[:8] for k in stuck} == {hung[:8], failing[:8]}
        why = {row[3] for row in stuck.values()}
        assert "accepted ⚠ locked 25m" in why and "accepted ⚠ failed 3 times" in why
        browser.screenshot("console-contracts-stuck.png")

        browser.click(f'a[href="/provider/contracts/{failing}"]')
        browser.wait_for("!!document.querySelector('#timeline')", "the contract page")
        history = cells(browser, "timeline")
        assert [r[1] for r in history] == ["Created", "Locked", "Failed", "Locked", "Failed", "Locked", "Failed"]
        assert history[2][3] == f"clone failed: no space left {XSS}" and browser.js("document.title") != "pwned"
        browser.screenshot("console-contract-failing.png")

        browser.goto(f"{server.url}/provider/contracts/{hung}", f"/provider/contracts/{hung}")
        assert "Stuck: locked 25m" in text(browser, "#stuck-warning")
        browser.click("#release")
        browser.wait_for("!!document.querySelector('#confirm')", "the confirmation page")
        assert f"is locked by agent {one.pubkey}" in text(browser, "#confirm")
        browser.screenshot("console-confirm-release.png")
        browser.click("#confirm button[type=submit]")
        browser.wait_for("(document.querySelector('.notice') || {}).innerText?.startsWith('Lock released')",
                         "the release notice")
        assert contract(server, hung)["lockAgent"] is None
        assert cells(browser, "timeline")[-1][1] == "Lock released by you"
        browser.screenshot("console-contract-released.png")
        assert data(two.lock(hung))["acquired"] is True  # another agent of the pool takes it at once

        browser.goto(f"{server.url}/provider/contracts/{running}", f"/provider/contracts/{running}")
        instance = browser.js("document.querySelector('#instance').innerText")
        assert "pve/101" in instance and "***" in instance and "hunter2" not in browser.js("document.body.innerHTML")
        browser.screenshot("console-contract-provisioned.png")

        browser.goto(f"{server.url}/provider/agents/{one.pubkey}", f"/provider/agents/{one.pubkey}")
        assert "0.8.0" in text(browser, "#agent") and "pool-api" in text(browser, "#agent")
        assert "maxConcurrent=4" in text(browser, "#agent")
        browser.screenshot("console-agent.png")
        browser.click("#revoke")
        browser.wait_for("!!document.querySelector('#confirm')", "the revoke confirmation")
        browser.screenshot("console-confirm-revoke.png")
        browser.click("#confirm button[type=submit]")
        browser.wait_for("(document.querySelector('.notice') || {}).innerText?.startsWith('Agent revoked')",
                         "the revoke notice")
        assert one.call("POST", "/heartbeat", {"version": "0.8.0"}).status_code == 403  # refused from now on
    finally:
        for a in (one, two):
            if a is not None:
                a.close()
        provider.close()


def test_create_edit_and_import_offerings(server: PoolServer, browser: Chromium) -> None:
    provider = Provider.register(server, name="offers")
    try:
        na = provider.create_pool("na-proxmox", "na", "proxmox")["poolId"]
        provider.create_pool("europe-proxmox", "europe", "proxmox")
        sign_in(server, browser, provider, "/provider/offerings")
        browser.click("#new-offering")
        browser.wait_for("!!document.querySelector('#offering-form')", "the new-offering form")
        for name, value in (("offeringId", "vps-us"), ("name", "VPS US"), ("datacenterCountry", "US"),
                            ("price", "7.5"), ("cpuCores", "2"), ("memoryMb", "4096")):
            browser.fill(f'input[name="{name}"]', value)
        browser.fill('select[name="agentPoolId"]', na)
        browser.fill('textarea[name="provisionerConfig"]', '{"template": "debian-12"}')
        browser.screenshot("console-offering-new.png")
        browser.click("#offering-form button[type=submit]")
        browser.wait_for("location.pathname === '/provider/offerings/vps-us/edit' && "
                         "!!document.querySelector('#resolved-pool')", "the saved offering")
        assert text(browser, "#resolved-pool").startswith("Routes to pool na-proxmox (explicit)")
        browser.fill('select[name="agentPoolId"]', "")
        browser.fill('input[name="datacenterCountry"]', "DE")
        browser.fill('select[name="status"]', "inactive")
        browser.click("#offering-form button[type=submit]")
        browser.wait_for("(document.querySelector('.notice') || {}).innerText === 'Offering saved.'", "saved")
        assert "Routes to pool europe-proxmox (auto" in text(browser, "#resolved-pool")
        browser.screenshot("console-offering-edit.png")
        [saved] = data(provider.request("GET", "/offerings"))
        assert (saved["agentPoolId"], saved["status"], saved["provisionerConfig"]) == \
               (None, "inactive", {"template": "debian-12"})

        browser.goto(f"{server.url}/provider/offerings/import", "/provider/offerings/import")
        bad = "offering_id,name,datacenter_country,price\nvps-a,VPS A,FR,3\nvps-b,VPS B,FR,three\n"
        browser.fill('textarea[name="text"]', bad)
        browser.click("#import-form button[type=submit]")
        browser.wait_for("!!document.querySelector('#import-errors')", "the import errors")
        assert "line 3: price: must be a number, not 'three'" in text(browser, "#import-errors")
        browser.screenshot("console-offerings-import-errors.png")
        assert [o["offeringId"] for o in data(provider.request("GET", "/offerings"))] == ["vps-us"]
        browser.fill('textarea[name="text"]', bad.replace("three", "4"))
        browser.click("#import-form button[type=submit]")
        browser.wait_for("!!document.querySelector('#import-result')", "the import result")
        assert text(browser, "#import-result").startswith("Imported: 2 created, 0 updated.")
        browser.goto(f"{server.url}/provider/offerings", "/provider/offerings")
        rows = {r[0]: r for r in cells(browser, "offerings")}
        assert rows["vps-us"][-1] == "Inactive" and rows["vps-a"][-1] == "Active" and rows["vps-b"][9] == "4.00"
        browser.screenshot("console-offerings.png")
    finally:
        provider.close()
