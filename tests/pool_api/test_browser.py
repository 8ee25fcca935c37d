"""The provider pages in a real browser: headless Chromium (Debian's `chromium` package) against a
real `dc-pool-api serve` on PostgreSQL with pools, agents (set up with tokens and heartbeating),
pending tokens and offerings, one of them in a country no pool serves.

Each page is one Chromium run: `--dump-dom` and `--screenshot` of a fresh one-time link from
`dc-pool-api login-link` with `&next=<page>`, so the run also proves that the link sets the session
cookie and that the cookie rides along the redirect. Screenshots go to artifacts/screenshots/
(git-ignored). Without Chromium the test is skipped and says so; nothing is faked.
"""

from __future__ import annotations

import html as htmllib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.pool_api.helpers import Agent, new_agent
from tests.pool_api.test_pages import table_rows
from tests.support.pool_server import REPO, PoolServer, running_pool_api
from tests.support.provider import Provider

SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM_TIMEOUT_S = 90
XSS_POOL = "<script>document.title='pwned'</script>"


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); the real-browser test of the "
           "provider pages did NOT run")


class Browser:
    def __init__(self, server: PoolServer, provider: Provider) -> None:
        self.server = server
        self.provider = provider

    def login_link(self, next_page: str) -> str:
        link = self.server.admin("login-link", "--pubkey", self.provider.pubkey, "--base-url", self.server.url).strip()
        assert link.startswith(f"{self.server.url}/provider/login?token="), link
        return f"{link}&next={quote(next_page)}"

    def load(self, next_page: str, screenshot: str) -> str:
        """Open a fresh sign-in link that lands on `next_page` in a fresh profile (no cookie but the one
        the link sets); return the DOM, write the screenshot."""
        dom = self.open(self.login_link(next_page), screenshot)
        assert "<h1>Sign in</h1>" not in dom, f"not signed in on {next_page}: {dom[:2000]}"
        return dom

    def open(self, url: str, screenshot: str, profile: Path | None = None) -> str:
        """One Chromium run on `url` (in `profile`, default a new empty one): the DOM, and a screenshot."""
        if profile is None:
            fresh = Path(tempfile.mkdtemp(prefix="dc-pages-chromium-"))
            try:
                return self.open(url, screenshot, fresh)
            finally:
                shutil.rmtree(fresh, ignore_errors=True)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / screenshot
        target.unlink(missing_ok=True)
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1400,900",
                f"--screenshot={target}", "--dump-dom", url]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
        assert res.returncode == 0, f"chromium exited with {res.returncode}: {res.stderr[-2000:]}"
        dom = res.stdout
        assert target.exists() and target.stat().st_size > 5000, f"no screenshot written to {target}"
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return dom


@pytest.fixture(scope="module")
def world(pg_cluster) -> Iterator[dict]:  # noqa: ANN001 - session fixture from tests/conftest.py
    url = pg_cluster.create_database()
    agents: list[Agent] = []
    try:
        with running_pool_api(url) as server:
            provider = Provider.register(server, name="acme")
            other = Provider.register(server, name="someone-else")
            not_yours = other.create_pool("not-yours", "europe", "proxmox")["poolId"]
            eu = provider.create_pool("europe-proxmox", "europe", "proxmox")["poolId"]
            na = provider.create_pool("na-proxmox", "na", "proxmox")["poolId"]
            apac = provider.create_pool("apac-hetzner", "apac", "script")["poolId"]
            xss = provider.create_pool(XSS_POOL, "mena", "manual")["poolId"]
            for pool_id, label, beat in ((eu, "proxmox-node-1", {"version": "0.5.2", "activeContracts": 8}),
                                         (eu, "proxmox-node-2", {"version": "0.5.2", "activeContracts": 7}),
                                         (eu, "proxmox-node-3", None),
                                         (na, "na-node-1", {"version": "0.5.1", "activeContracts": 2}),
                                         (apac, "<b>bold-label</b>", {"version": "0.5.0", "provisionerType": "script"})):
                agent = new_agent(provider, pool_id, label=label)
                agents.append(agent)
                if beat is not None:
                    agent.heartbeat(**beat)
            provider.create_token(eu, label="proxmox-node-6")
            provider.create_token(eu)
            provider.create_offering("vps-s-eu", "DE", name="VPS Small", price=5, cpuCores=1, memoryMb=1024,
                                     storageGb=25)
            provider.create_offering("vps-m-eu", "FR", name="VPS Medium", price=10, cpuCores=2, memoryMb=4096,
                                     storageGb=80)
            provider.create_offering("vps-s-us", "US", pool_id=na, name="VPS Small US", price=5, cpuCores=1,
                                     memoryMb=1024, storageGb=25)
            provider.create_offering("sg-script", "SG", provisioner_type="script", name="Script SG", price=7)
            provider.create_offering("ded-br", "BR", name="Dedicated BR", productType="dedicated", price=99,
                                     cpuCores=16, memoryMb=65536, storageGb=2000)
            try:
                yield {"server": server, "provider": provider, "browser": Browser(server, provider), "eu": eu,
                       "na": na, "apac": apac, "xss": xss, "not_yours": not_yours}
            finally:
                for agent in agents:
                    agent.close()
                provider.close()
                other.close()
    finally:
        pg_cluster.drop_database(url)


def cell_texts(dom: str, table_id: str) -> list[list[str]]:
    return table_rows(dom, table_id)


def test_pools_page(world: dict) -> None:
    """Pools list with counts; the <script> pool name is text, not markup; delete disabled with a reason."""
    dom = world["browser"].load("/provider/pools", "pools.png")
    rows = cell_texts(dom, "pools")
    assert [r[:6] for r in rows] == [
        ["europe-proxmox", "europe", "proxmox", "3", "2/3", "15"],
        ["na-proxmox", "na", "proxmox", "1", "1/1", "2"],
        ["apac-hetzner", "apac", "script", "1", "1/1", "0"],
        [XSS_POOL, "mena", "manual", "0", "0/0", "0"],
    ]
    assert "revoke its 3 agents first" in rows[0][-1] and "not-yours" not in dom
    assert "<title>Agent Pools" in dom  # the injected script did not run (it would set the title)
    assert htmllib.escape(XSS_POOL, quote=False) in dom and XSS_POOL not in dom


def test_pool_detail_page(world: dict) -> None:
    dom = world["browser"].load(f"/provider/pools/{world['eu']}", "pool-detail.png")
    agents = cell_texts(dom, "agents")
    assert [(a[0], a[2], a[3], a[4]) for a in agents] == [
        ("proxmox-node-1", "● Online", "0.5.2", "8"),
        ("proxmox-node-2", "● Online", "0.5.2", "7"),
        ("proxmox-node-3", "● Offline", "—", "0"),
    ]
    assert all(re.fullmatch(r"[0-9a-f]{8}…[0-9a-f]{4}", a[1]) for a in agents)
    assert re.fullmatch(r"(just now|\d+s ago)", agents[0][5]) and agents[2][5] == "never"
    tokens = cell_texts(dom, "tokens")
    assert [t[1] for t in tokens] == ["proxmox-node-6", "—"]
    assert all(re.fullmatch(r"apt_europe_[0-9a-f]{8}…", t[0]) and re.fullmatch(r"23h 5\dm", t[3]) for t in tokens)
    assert '<b id="offering-count">2</b> linked' in dom


def test_pool_detail_escapes_labels(world: dict) -> None:
    dom = world["browser"].load(f"/provider/pools/{world['apac']}", "pool-detail-script.png")
    [agent] = cell_texts(dom, "agents")
    assert agent[0] == "<b>bold-label</b>" and "&lt;b&gt;bold-label&lt;/b&gt;" in dom


def test_add_agent_page(world: dict) -> None:
    dom = world["browser"].load(f"/provider/pools/{world['eu']}/add-agent", "add-agent.png")
    assert "Add Agent to Pool: europe-proxmox" in dom and 'name="label"' in dom and "Create Token" in dom


def test_create_pool_page(world: dict) -> None:
    dom = world["browser"].load("/provider/pools/new", "create-pool.png")
    assert '<h1>Create Pool</h1>' in dom and 'name="location"' in dom and 'name="provisionerType"' in dom


def test_offerings_page(world: dict) -> None:
    dom = world["browser"].load("/provider/offerings", "offerings.png")
    rows = {r[0]: r for r in cell_texts(dom, "offerings")}
    assert rows["vps-s-eu"][5] == "(auto: europe-proxmox)" and rows["vps-m-eu"][5] == "(auto: europe-proxmox)"
    assert rows["vps-s-us"][5] == "na-proxmox explicit"
    assert rows["sg-script"][5] == "(auto: apac-hetzner)"
    assert rows["ded-br"][5] == "⚠ no pool"
    warning = re.search(r'id="unrouted-warning">(.*?)</div>', dom, re.S)[1]
    assert "1 offering has no pool that serves its region" in warning and "ded-br" in warning
    assert "no pool with location 'latam'" in htmllib.unescape(warning)


def test_other_providers_pool_is_not_found(world: dict) -> None:
    """A signed-in browser asking for another provider's pool sees the 404 page, not the pool."""
    dom = world["browser"].load(f"/provider/pools/{world['not_yours']}", "not-found.png")
    assert "<h1>Not found</h1>" in dom and "unknown pool" in dom and "not-yours" not in dom


def test_used_link_shows_sign_in(world: dict) -> None:
    """A link works once: opened again (in a fresh profile, no cookie) it shows the sign-in page."""
    browser = world["browser"]
    link = browser.login_link("/provider/pools")
    assert "<h1>Agent Pools</h1>" in browser.open(link, "pools-again.png")
    dom = browser.open(link, "sign-in.png")
    assert "<h1>Sign in</h1>" in dom and "already used" in dom and "<table" not in dom
