"""Provider pages through FastAPI's TestClient on PostgreSQL and SQLite: rendering, sign-in,
sessions, CSRF, another provider's objects (404), escaping, and that every action reaches the same
data the signed API reads (the page and the API call the same functions)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from pool_api import agents, db, offerings, pools, tokens
from pool_api.app import create_app
from pool_api.errors import ApiError
from pool_api.pages import auth, format as fmt
from pool_api.settings import Settings
from pool_api.tables import agent_delegations, provider_login_links, provider_sessions, providers
from tests.support.pool_server import REPO, pool_api_command

XSS = "<script>alert(1)</script>"
HOUR_NS = 3600 * 10**9


# --- HTML helpers (also used by the browser test) ---------------------------------------------------

class _Page(HTMLParser):
    """The text of each cell of each body row of every <table id=...>, and the forms' CSRF values."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.csrf: list[str] = []
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tbody" and self._table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "input" and a.get("name") == "csrf":
            self.csrf.append(a.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The body rows of `<table id=table_id>`, each a list of whitespace-normalised cell texts."""
    tables = parse_page(html).tables
    assert table_id in tables, f"no table #{table_id} in the page:\n{html[:3000]}"
    return tables[table_id]


def page_csrf(html: str) -> str:
    values = set(parse_page(html).csrf)
    assert len(values) == 1, f"expected one CSRF value in the page's forms, got {values}"
    return values.pop()


# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db.normalize_url(db_url), public_url="https://pools.example.test")


@pytest.fixture
def app(settings: Settings, engine: sa.Engine) -> Any:
    return create_app(settings, engine, run_jobs=False)


def add_provider(engine: sa.Engine, pubkey: str) -> str:
    with engine.begin() as conn:
        conn.execute(sa.insert(providers).values(pubkey=pubkey, created_at_ns=db.now_ns()))
    return pubkey


ALICE = "a1" * 32
BOB = "b0" * 32


@pytest.fixture
def alice(engine: sa.Engine) -> str:
    return add_provider(engine, ALICE)


@pytest.fixture
def bob(engine: sa.Engine) -> str:
    return add_provider(engine, BOB)


def login_link(engine: sa.Engine, pubkey: str, base_url: str = "http://testserver", ttl_minutes: int = 10) -> str:
    with engine.begin() as conn:
        return auth.create_login_link(conn, pubkey, base_url, ttl_minutes)[0]


def signed_in(app: Any, engine: sa.Engine, pubkey: str, base_url: str = "http://testserver") -> TestClient:
    client = TestClient(app, base_url=base_url)
    response = client.get(login_link(engine, pubkey, base_url), follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/provider/pools", response.text
    return client


@pytest.fixture
def client(app: Any, engine: sa.Engine, alice: str) -> Iterator[TestClient]:
    with signed_in(app, engine, alice) as c:
        yield c


def make_pool(engine: sa.Engine, provider: str, name: str, location: str = "europe", ptype: str = "proxmox") -> str:
    with engine.begin() as conn:
        return pools.create_pool(conn, provider, name, location, ptype)["poolId"]


def make_agent(engine: sa.Engine, pool_id: str, agent_pubkey: str, label: str | None = None,
               heartbeat: dict[str, Any] | None = None) -> None:
    """Register an agent the way `POST /agents/setup` does (a real token), then one heartbeat."""
    with engine.begin() as conn:
        pool = conn.execute(sa.text("SELECT * FROM agent_pools WHERE pool_id = :p"), {"p": pool_id}).one()
        token, _ = tokens.create_token(conn, pool, label, 24)
        agents.setup(conn, token, agent_pubkey)
        if heartbeat is not None:
            agents.heartbeat(conn, agent_pubkey, heartbeat.get("version", "0.5.2"), "proxmox",
                             heartbeat.get("active", 0), None)


def post(client: TestClient, path: str, page_with_form: str, **fields: str) -> Any:
    """POST a form the way the browser does: with the CSRF token of a page from the same session."""
    html = client.get(page_with_form).text
    return client.post(path, data={"csrf": page_csrf(html), **fields}, follow_redirects=False)


# --- sign-in and sessions -----------------------------------------------------------------------------

class TestSignIn:
    def test_no_session_redirects_to_sign_in(self, app: Any, engine: sa.Engine, alice: str) -> None:
        """Every page and every form without a session goes to the sign-in page; nothing is changed."""
        pool_id = make_pool(engine, alice, "eu")
        with TestClient(app) as anonymous:
            for path in ("/provider/pools", f"/provider/pools/{pool_id}", "/provider/offerings",
                         f"/provider/pools/{pool_id}/add-agent", "/provider/pools/new"):
                response = anonymous.get(path, follow_redirects=False)
                assert (response.status_code, response.headers["location"]) == (303, "/provider/login"), path
            response = anonymous.post(f"/provider/pools/{pool_id}/delete", data={"csrf": "x"}, follow_redirects=False)
            assert (response.status_code, response.headers["location"]) == (303, "/provider/login")
            anonymous.cookies.set(auth.SESSION_COOKIE, "not-a-session", path="/provider")
            assert anonymous.get("/provider/pools", follow_redirects=False).status_code == 303
            sign_in = anonymous.get("/provider/login")
            assert sign_in.status_code == 200 and "dc-pool-api login-link --pubkey" in sign_in.text
        with engine.begin() as conn:
            assert [p["poolId"] for p in pools.list_pools(conn, alice, 10**12)] == [pool_id]

    def test_link_sets_strict_httponly_cookie_and_works_once(self, app: Any, engine: sa.Engine, alice: str) -> None:
        """The link signs in once: the cookie is HttpOnly, SameSite=Strict, path /provider; reuse is 410."""
        link = login_link(engine, alice)
        assert re.fullmatch(r"http://testserver/provider/login\?token=[A-Za-z0-9_\-]{43}", link)
        with TestClient(app) as browser:
            response = browser.get(link, follow_redirects=False)
            assert response.status_code == 303 and response.headers["location"] == "/provider/pools"
            cookie = response.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/provider" in cookie
            assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
            pools_page = browser.get("/provider/pools")
            assert pools_page.status_code == 200 and ALICE[:8] in pools_page.text
        with TestClient(app) as other:
            again = other.get(link, follow_redirects=False)
            assert again.status_code == 410 and "already used" in again.text and "set-cookie" not in again.headers
            assert other.get("/provider/pools", follow_redirects=False).status_code == 303
        with engine.begin() as conn:
            stored = conn.execute(sa.select(provider_login_links.c.token_hash)).scalars().all()
            sessions = conn.execute(sa.select(provider_sessions.c.session_hash)).scalars().all()
        token = link.rsplit("=", 1)[1]
        assert token not in stored and len(stored) == 1 and len(sessions) == 1  # hashes only

    def test_next_page_stays_on_provider_pages(self, app: Any, engine: sa.Engine, alice: str) -> None:
        """`&next=` lands on a /provider/ page; anything else (other hosts, other paths) lands on pools."""
        for next_page, landing in (("/provider/offerings", "/provider/offerings"),
                                   ("https://evil.example/provider/pools", "/provider/pools"),
                                   ("//evil.example/provider/", "/provider/pools"),
                                   ("/provider//evil.example", "/provider/pools"),
                                   ("/provider/../api/v1/health", "/provider/pools"),
                                   ("/api/v1/health", "/provider/pools")):
            with TestClient(app) as browser:
                url = f"{login_link(engine, alice)}&{urlencode({'next': next_page})}"
                response = browser.get(url, follow_redirects=False)
                assert (response.status_code, response.headers["location"]) == (303, landing), next_page

    def test_secure_cookie_over_https(self, app: Any, engine: sa.Engine, alice: str) -> None:
        with TestClient(app, base_url="https://testserver") as browser:
            response = browser.get(login_link(engine, alice, "https://testserver"), follow_redirects=False)
            assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]
            assert browser.get("/provider/pools").status_code == 200

    def test_expired_and_unknown_links_refused(self, app: Any, engine: sa.Engine, alice: str) -> None:
        link = login_link(engine, alice)
        with engine.begin() as conn:
            conn.execute(sa.update(provider_login_links).values(expires_at_ns=db.now_ns() - 1))
        with TestClient(app) as browser:
            for url in (link, "/provider/login?token=guessed-token"):
                response = browser.get(url, follow_redirects=False)
                assert response.status_code == 410 and "login-link" in response.text
                assert "set-cookie" not in response.headers
        with engine.begin() as conn, pytest.raises(ApiError, match="unknown provider"):
            auth.create_login_link(conn, "cd" * 32, "http://x")

    def test_expired_session_and_sign_out(self, app: Any, engine: sa.Engine, alice: str) -> None:
        client = signed_in(app, engine, alice)
        html = client.get("/provider/pools").text
        response = client.post("/provider/logout", data={"csrf": page_csrf(html)}, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/provider/login?done=signed-out")
        assert client.get("/provider/pools", follow_redirects=False).status_code == 303
        client = signed_in(app, engine, alice)
        with engine.begin() as conn:
            conn.execute(sa.update(provider_sessions).values(expires_at_ns=db.now_ns() - 1))
        assert client.get("/provider/pools", follow_redirects=False).status_code == 303

    def test_login_link_command(self, db_url: str, engine: sa.Engine, alice: str, app: Any) -> None:
        """`dc-pool-api login-link` prints a working link; a bad or unknown key is an error, no traceback."""
        def run(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DC_POOL_API_")}
            return subprocess.run([*pool_api_command(), "login-link", *args, "--database-url", db_url],
                                  capture_output=True, text=True, cwd=REPO, env=env, timeout=120)

        ok = run("--pubkey", ALICE.upper(), "--base-url", "https://pools.example.test/")
        assert ok.returncode == 0, ok.stderr
        link = ok.stdout.strip()
        assert link.startswith("https://pools.example.test/provider/login?token=")
        with TestClient(app, base_url="https://pools.example.test") as browser:
            assert browser.get(link, follow_redirects=False).status_code == 303
            assert browser.get("/provider/pools").status_code == 200
        for args, message in ((["--pubkey", "xyz"], "--pubkey: must be a 32-byte"),
                              (["--pubkey", "cd" * 32], "unknown provider")):
            bad = run(*args)
            assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


# --- CSRF -----------------------------------------------------------------------------------------

class TestCsrf:
    def test_post_without_or_with_wrong_token_is_403(self, app: Any, engine: sa.Engine, client: TestClient,
                                                     alice: str) -> None:
        """A form without its CSRF token, with a wrong one, or with another session's is refused (403)."""
        pool_id = make_pool(engine, alice, "keep-me")
        with signed_in(app, engine, alice) as second:
            other_session_token = page_csrf(second.get("/provider/pools").text)
        own = page_csrf(client.get("/provider/pools").text)
        assert own != other_session_token
        for fields in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": other_session_token}):
            for path, extra in ((f"/provider/pools/{pool_id}/delete", {}),
                                ("/provider/pools", {"name": "x", "location": "europe", "provisionerType": "proxmox"}),
                                (f"/provider/pools/{pool_id}/add-agent", {"label": "n"})):
                response = client.post(path, data={**fields, **extra}, follow_redirects=False)
                assert response.status_code == 403, (path, fields, response.status_code)
                assert "security token" in response.text
        with engine.begin() as conn:
            assert [p["name"] for p in pools.list_pools(conn, alice, 10**12)] == ["keep-me"]
            assert tokens.list_pending(conn, pool_id) == []
        assert client.post(f"/provider/pools/{pool_id}/delete", data={"csrf": own},
                           follow_redirects=False).status_code == 303


# --- pages ----------------------------------------------------------------------------------------

class TestPools:
    def test_pools_table_counts_and_delete_rule(self, engine: sa.Engine, client: TestClient, alice: str,
                                                bob: str) -> None:
        """Name, region, type, agents, online x/y, active contracts; delete disabled with the reason."""
        eu = make_pool(engine, alice, "europe-proxmox")
        make_pool(engine, alice, "apac-hetzner", "apac", "script")
        make_pool(engine, bob, "bobs-pool")
        make_agent(engine, eu, "01" * 32, "node-1", {"active": 8})
        make_agent(engine, eu, "02" * 32, "node-2", {"active": 7})
        make_agent(engine, eu, "03" * 32, "node-3")  # never sent a heartbeat: offline
        html = client.get("/provider/pools").text
        got = table_rows(html, "pools")
        assert [r[:6] for r in got] == [["europe-proxmox", "europe", "proxmox", "3", "2/3", "15"],
                                        ["apac-hetzner", "apac", "script", "0", "0/0", "0"]]
        assert "revoke its 3 agents first" in got[0][-1] and "bobs-pool" not in html
        assert re.search(r'<button class="btn danger" type="button" disabled[^>]*>Delete</button>', html)
        assert f'action="/provider/pools/{eu}/delete"' not in html
        with engine.begin() as conn:  # the same numbers as the signed API's list
            api = pools.list_pools(conn, alice, Settings(database_url="x").online_window_ns)
        assert [(p["agentCount"], p["onlineCount"], p["activeContracts"]) for p in api] == [(3, 2, 15), (0, 0, 0)]

    def test_create_edit_delete_through_forms(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        response = post(client, "/provider/pools", "/provider/pools/new", name="na-proxmox", location="na",
                        provisionerType="proxmox")
        assert response.status_code == 303
        pool_id = re.fullmatch(r"/provider/pools/(pool_[0-9a-f]{16})\?done=pool-created", response.headers["location"])[1]
        detail = client.get(response.headers["location"])
        assert "Pool created." in detail.text and "Pool: na-proxmox" in detail.text
        duplicate = post(client, "/provider/pools", "/provider/pools/new", name="na-proxmox", location="na",
                         provisionerType="script")
        assert duplicate.status_code == 409 and "already exists" in duplicate.text
        invalid = post(client, "/provider/pools", "/provider/pools/new", name="x", location="mars",
                       provisionerType="proxmox")
        assert invalid.status_code == 422 and "location" in invalid.text
        edited = post(client, f"/provider/pools/{pool_id}/edit", f"/provider/pools/{pool_id}/edit",
                      name="na-main", location="latam", provisionerType="script")
        assert edited.status_code == 303
        with engine.begin() as conn:
            d = pools.pool_detail(conn, alice, pool_id, 10**12)
        assert (d["name"], d["location"], d["provisionerType"]) == ("na-main", "latam", "script")
        deleted = post(client, f"/provider/pools/{pool_id}/delete", "/provider/pools")
        assert deleted.headers["location"] == "/provider/pools?done=pool-deleted"
        assert "Pool deleted." in client.get(deleted.headers["location"]).text
        with engine.begin() as conn:
            assert pools.list_pools(conn, alice, 10**12) == []

    def test_delete_with_agents_is_refused(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        pool_id = make_pool(engine, alice, "busy")
        make_agent(engine, pool_id, "04" * 32, "n", {})
        refused = post(client, f"/provider/pools/{pool_id}/delete", "/provider/pools")
        assert refused.status_code == 409 and "still has agents" in refused.text
        assert table_rows(client.get("/provider/pools").text, "pools")[0][0] == "busy"


class TestPoolDetail:
    def test_agents_tokens_offering_count(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        pool_id = make_pool(engine, alice, "europe-proxmox")
        make_agent(engine, pool_id, "11" * 32, "proxmox-node-1", {"version": "0.5.2", "active": 8})
        make_agent(engine, pool_id, "22" * 32, "proxmox-node-4", {"version": "0.5.0", "active": 0})
        make_agent(engine, pool_id, "33" * 32, None)
        with engine.begin() as conn:
            conn.execute(sa.update(agent_delegations).where(agent_delegations.c.agent_pubkey == "22" * 32)
                         .values(last_seen_ns=db.now_ns() - 2 * HOUR_NS - 60 * 10**9))
            pool = conn.execute(sa.text("SELECT * FROM agent_pools WHERE pool_id = :p"), {"p": pool_id}).one()
            tokens.create_token(conn, pool, "node-6", 24)
            offerings.create_offering(conn, alice, {"name": "VPS S", "datacenter_country": "DE"}, "vps-s-eu")
            offerings.create_offering(conn, alice, {"name": "VPS US", "datacenter_country": "US"}, "vps-s-us")
        html = client.get(f"/provider/pools/{pool_id}").text
        agents_rows = table_rows(html, "agents")
        assert [r[0] for r in agents_rows] == ["proxmox-node-1", "proxmox-node-4", "—"]
        node1, node4, unnamed = agents_rows
        assert node1[1] == "11111111…1111" and node1[2] == "● Online" and node1[3:5] == ["0.5.2", "8"]
        assert re.fullmatch(r"(just now|\d+s ago)", node1[5]) and node1[-1] == "Revoke"
        assert node4[2] == "● Offline" and node4[5] == "2h ago"
        assert unnamed[2] == "● Offline" and unnamed[5] == "never"
        [token_row] = table_rows(html, "tokens")
        assert re.fullmatch(r"apt_europe_[0-9a-f]{8}…", token_row[0]) and token_row[1] == "node-6"
        assert re.fullmatch(r"23h 5\dm", token_row[3])
        assert '<b id="offering-count">1</b> linked' in html

    def test_contracts_with_last_health(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        """The pool page lists the running/paused contracts its agents provisioned with their last health."""
        from pool_api import contracts, instance_health, pause
        from pool_api.auth import Caller
        from pool_api.tables import contracts as contracts_table

        pool_id = make_pool(engine, alice, "eu-health")
        make_agent(engine, pool_id, "44" * 32, "node-h", {"version": "0.6.0"})
        agent = Caller(role="agent", pubkey="44" * 32, provider_pubkey=alice, pool_id=pool_id)
        with engine.begin() as conn:
            offerings.create_offering(conn, alice, {"name": "VPS H", "datacenter_country": "DE"}, "vps-h")
            ids = contracts.create_contracts(conn, "vps-h", count=3, ends_at_ns=db.now_ns() + 2 * HOUR_NS + 10**11)
            for n, cid in enumerate(ids[:2]):
                conn.execute(sa.update(contracts_table).where(contracts_table.c.contract_id == cid).values(
                    status="provisioned", provisioned_by="44" * 32, provisioned_at_ns=n,
                    instance_details={"externalId": f"pve1/{100 + n}"}))
            instance_health.record(conn, agent, ids[0], "unhealthy", f"VM stopped {XSS}", None, db.now_ns())
            pause.pause(conn, ids[1])
        rows = {r[0]: r for r in table_rows(client.get(f"/provider/pools/{pool_id}").text, "contracts")}
        first, second = rows[fmt.short_key(ids[0])], rows[fmt.short_key(ids[1])]
        assert first[1:6] == ["vps-h", "provisioned", "pve1/100", "44444444…4444", f"● Unhealthy VM stopped {XSS}"]
        assert re.fullmatch(r"(just now|\d+s ago)", first[6]) and re.fullmatch(r"2h \dm", first[7])
        assert second[2] == "paused" and second[5:7] == ["no report yet", "never"]
        assert fmt.short_key(ids[2]) not in rows  # never provisioned

    def test_add_agent_mints_token_and_shows_one_liner(self, engine: sa.Engine, client: TestClient,
                                                       alice: str) -> None:
        """The one-liner's token is real: it registers an agent (once) into this pool."""
        pool_id = make_pool(engine, alice, "europe-proxmox")
        form = client.get(f"/provider/pools/{pool_id}/add-agent")
        assert form.status_code == 200 and "Add Agent to Pool: europe-proxmox" in form.text
        response = post(client, f"/provider/pools/{pool_id}/add-agent", f"/provider/pools/{pool_id}/add-agent",
                        label="proxmox-node-6", expiresInHours="48")
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
        command = re.search(r'<pre id="setup-command">([^<]+)</pre>', response.text)[1]
        token = re.fullmatch(r"curl -sSL https://pools\.example\.test/install\.sh \| sudo bash -s -- "
                             r"--token (apt_europe_[0-9a-f]{32}) --api-url https://pools\.example\.test", command)[1]
        assert 'data-copy="setup-command"' in response.text and "/provider/static/pages.js" in response.text
        [pending] = table_rows(client.get(f"/provider/pools/{pool_id}").text, "tokens")
        assert pending[1] == "proxmox-node-6" and pending[3] == "1d 23h"
        with engine.begin() as conn:
            registered = agents.setup(conn, token, "55" * 32)
        assert registered["poolId"] == pool_id and registered["label"] == "proxmox-node-6"
        html = client.get(f"/provider/pools/{pool_id}").text
        assert "No unused setup tokens." in html and table_rows(html, "agents")[0][0] == "proxmox-node-6"
        bad = post(client, f"/provider/pools/{pool_id}/add-agent", f"/provider/pools/{pool_id}/add-agent",
                   label="x", expiresInHours="never")
        assert bad.status_code == 422 and "expiresInHours" in bad.text

    def test_delete_token_and_revoke_agent(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        pool_id = make_pool(engine, alice, "eu")
        make_agent(engine, pool_id, "66" * 32, "to-revoke", {})
        with engine.begin() as conn:
            pool = conn.execute(sa.text("SELECT * FROM agent_pools WHERE pool_id = :p"), {"p": pool_id}).one()
            _, entry = tokens.create_token(conn, pool, "spare", 24)
        page = f"/provider/pools/{pool_id}"
        deleted = post(client, f"{page}/setup-tokens/{entry['tokenId']}/delete", page)
        assert deleted.headers["location"] == f"{page}?done=token-deleted"
        revoked = post(client, f"{page}/agents/{'66' * 32}/revoke", page)
        assert revoked.headers["location"] == f"{page}?done=agent-revoked"
        with engine.begin() as conn:
            assert tokens.list_pending(conn, pool_id) == []
            [agent] = agents.list_agents(conn, alice, 10**12)
        assert agent["revokedAtNs"] is not None
        html = client.get(f"{page}?done=agent-revoked").text
        assert "Agent revoked" in html and "No agents in this pool yet." in html


class TestPermissions:
    def test_another_providers_pool_is_404(self, engine: sa.Engine, client: TestClient, bob: str) -> None:
        """Bob's pool, agent and token are invisible and untouchable from Alice's session."""
        pool_id = make_pool(engine, bob, "bobs")
        make_agent(engine, pool_id, "77" * 32, "bob-node", {})
        with engine.begin() as conn:
            pool = conn.execute(sa.text("SELECT * FROM agent_pools WHERE pool_id = :p"), {"p": pool_id}).one()
            _, entry = tokens.create_token(conn, pool, "bob-token", 24)
            offerings.create_offering(conn, bob, {"name": "Bob VPS", "datacenter_country": "DE"}, "bob-vps")
        for path in (f"/provider/pools/{pool_id}", f"/provider/pools/{pool_id}/edit",
                     f"/provider/pools/{pool_id}/add-agent", "/provider/pools/pool_unknown"):
            response = client.get(path)
            assert response.status_code == 404 and "unknown pool" in response.text, path
            assert "bobs" not in response.text
        own_csrf = page_csrf(client.get("/provider/pools").text)
        for path in (f"/provider/pools/{pool_id}/delete", f"/provider/pools/{pool_id}/edit",
                     f"/provider/pools/{pool_id}/add-agent",
                     f"/provider/pools/{pool_id}/setup-tokens/{entry['tokenId']}/delete",
                     f"/provider/pools/{pool_id}/agents/{'77' * 32}/revoke"):
            response = client.post(path, data={"csrf": own_csrf, "name": "stolen", "location": "europe",
                                               "provisionerType": "proxmox"}, follow_redirects=False)
            assert response.status_code == 404, (path, response.status_code)
        assert "Bob VPS" not in client.get("/provider/offerings").text
        with engine.begin() as conn:
            detail = pools.pool_detail(conn, bob, pool_id, 10**12)
            assert detail["name"] == "bobs" and [a["label"] for a in detail["agents"]] == ["bob-node"]
            assert [t["label"] for t in tokens.list_pending(conn, pool_id)] == ["bob-token"]


class TestEscaping:
    def test_script_in_pool_name_and_labels_is_escaped(self, engine: sa.Engine, client: TestClient,
                                                       alice: str) -> None:
        pool_id = make_pool(engine, alice, XSS)
        make_agent(engine, pool_id, "88" * 32, XSS, {"version": XSS})
        with engine.begin() as conn:
            pool = conn.execute(sa.text("SELECT * FROM agent_pools WHERE pool_id = :p"), {"p": pool_id}).one()
            tokens.create_token(conn, pool, XSS, 24)
            offerings.create_offering(conn, alice, {"name": XSS, "datacenter_country": "<img src=x onerror=alert(2)>"}, "xss-offering")
        escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
        for path in ("/provider/pools", f"/provider/pools/{pool_id}", f"/provider/pools/{pool_id}/edit",
                     f"/provider/pools/{pool_id}/add-agent", "/provider/offerings"):
            html = client.get(path).text
            assert "<script>" not in html and escaped in html, path
        html = client.get(f"/provider/pools/{pool_id}").text
        assert table_rows(html, "agents")[0][0] == XSS and table_rows(html, "tokens")[0][1] == XSS
        offerings_html = client.get("/provider/offerings").text
        assert "<img" not in offerings_html and "&lt;img src=x onerror=alert(2)&gt;" in offerings_html


class TestOfferings:
    def test_resolved_pool_and_unmatched_warning(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        eu = make_pool(engine, alice, "europe-proxmox")
        na = make_pool(engine, alice, "na-proxmox", "na")
        with engine.begin() as conn:
            for oid, name, country, extra in (
                ("vps-s-eu", "VPS Small", "DE", {"price": 5.0, "cpu_cores": 1, "memory_mb": 1024, "storage_gb": 25}),
                ("vps-s-us", "VPS Small US", "US", {"agent_pool_id": na}),
                ("ded-br", "Dedicated BR", "BR", {"product_type": "dedicated"}),
                ("bad-country", "Nowhere", "ZZ", {}),
            ):
                offerings.create_offering(conn, alice, {"name": name, "datacenter_country": country, **extra}, oid)
        html = client.get("/provider/offerings").text
        got = {r[0]: r for r in table_rows(html, "offerings")}
        assert got["vps-s-eu"][1:6] == ["VPS Small", "compute", "DE (europe)", "proxmox (default)",
                                        "(auto: europe-proxmox)"]
        assert got["vps-s-eu"][6:] == ["1", "1 GB", "25 GB", "5.00", "Active"]
        assert got["vps-s-us"][5] == "na-proxmox explicit"
        assert got["ded-br"][5] == "⚠ no pool" and got["bad-country"][5] == "⚠ no pool"
        warning = re.search(r'<div class="warning" role="alert" id="unrouted-warning">(.*?)</div>', html, re.S)[1]
        assert "2 offerings have no pool" in warning
        assert "no pool with location &#39;latam&#39; and provisioner type &#39;proxmox&#39;" in warning
        assert "ZZ" in warning and "not an ISO 3166-1 alpha-2 code" in warning
        assert f'href="/provider/pools/{eu}"' in html
        make_pool(engine, alice, "latam-proxmox", "latam")
        assert "1 offering has no pool" in client.get("/provider/offerings").text


    def test_filters_and_pages(self, engine: sa.Engine, client: TestClient, alice: str) -> None:
        """Filter by pool (or "no pool"), type and text; 50 rows a page."""
        eu = make_pool(engine, alice, "europe-proxmox")
        with engine.begin() as conn:
            for i in range(55):
                offerings.create_offering(conn, alice, {"name": f"VPS {i:02d}", "datacenter_country": "DE"}, f"vps-{i:02d}")
            for i in range(3):
                offerings.create_offering(conn, alice, {"name": f"Dedicated {i}", "product_type": "dedicated",
                                                        "datacenter_country": "BR"}, f"ded-{i}")
        first = client.get("/provider/offerings")
        assert len(table_rows(first.text, "offerings")) == 50 and "Showing 1–50 of 58" in first.text
        second = client.get("/provider/offerings", params={"page": "2"})
        assert [r[0] for r in table_rows(second.text, "offerings")] == \
               [f"vps-{i:02d}" for i in range(50, 55)] + ["ded-0", "ded-1", "ded-2"]
        assert "Showing 51–58 of 58" in second.text
        unrouted = client.get("/provider/offerings", params={"pool": "none"})
        assert [r[0] for r in table_rows(unrouted.text, "offerings")] == ["ded-0", "ded-1", "ded-2"]
        assert "(filtered from 58)" in unrouted.text
        by_pool = client.get("/provider/offerings", params={"pool": eu, "q": "vps 1"})
        assert [r[0] for r in table_rows(by_pool.text, "offerings")] == [f"vps-{i}" for i in range(10, 20)]
        by_type = client.get("/provider/offerings", params={"type": "dedicated", "q": "DED-2"})
        assert [r[0] for r in table_rows(by_type.text, "offerings")] == ["ded-2"]
        nothing = client.get("/provider/offerings", params={"q": XSS, "page": "x"})
        assert nothing.status_code == 200 and "No offering matches the filter." in nothing.text
        assert "<script>" not in nothing.text and "&lt;script&gt;" in nothing.text


class TestMisc:
    def test_static_files_headers_and_redirects(self, app: Any, client: TestClient) -> None:
        css = client.get("/provider/static/style.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and "table.grid" in css.text
        js = client.get("/provider/static/pages.js")
        assert js.status_code == 200 and "clipboard" in js.text
        assert client.get("/provider/static/../settings.py").status_code == 404
        assert client.get("/provider/static/nope.js").status_code == 404
        page = client.get("/provider/pools")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
        assert client.get("/provider", follow_redirects=False).headers["location"] == "/provider/pools"


@pytest.mark.parametrize(("delta_s", "text"), [(0, "just now"), (30, "30s ago"), (90, "1m ago"), (7300, "2h ago"),
                                               (3 * 86400 + 5, "3d ago")])
def test_ago(delta_s: int, text: str) -> None:
    now = 1_800_000_000 * 10**9
    assert fmt.ago(now - delta_s * 10**9, now) == text
    assert fmt.ago(None, now) == "never"


def test_remaining_and_short_key() -> None:
    now = 1_800_000_000 * 10**9
    assert fmt.remaining(now + (23 * 3600 + 55 * 60) * 10**9, now) == "23h 55m"
    assert fmt.remaining(now + 30 * 10**9, now) == "1m"
    assert fmt.remaining(now + (50 * 3600) * 10**9, now) == "2d 2h"
    assert fmt.remaining(now - 1, now) == "expired"
    assert fmt.short_key("ab" * 32) == "abababab…abab"
