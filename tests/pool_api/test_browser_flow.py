"""The provider pages driven like a user would, in headless Chromium (Debian's `chromium`) through
the DevTools protocol over `--remote-debugging-pipe` (no extra package, nothing downloaded), against
a real `dc-pool-api serve` on SQLite:

sign in with a `dc-pool-api login-link` link, create a pool with the form, add an agent (the token
page with its one-liner and Copy button), register an agent with that very token through the API,
see it online, revoke it (accepting the confirm dialog), delete the pool; and a cross-site form
post that the SameSite=Strict cookie keeps out. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from nacl.signing import SigningKey

from tests.pool_api.test_browser import CHROMIUM, SCREENSHOTS
from tests.support.pool_server import PoolServer, running_pool_api
from tests.support.provider import Provider, agent_client, data

DEADLINE_S = 60.0

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); the browser-driven test of the "
           "provider pages did NOT run")

# Put the two pipe ends on fds 3 and 4, where --remote-debugging-pipe expects them, then exec Chromium.
TRAMPOLINE = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
os.dup2(ends[0], 3)
os.dup2(ends[1], 4)
os.execv(sys.argv[3], sys.argv[3:])
"""


class Chromium:
    """One headless Chromium and one page, spoken to with DevTools protocol messages over pipes."""

    def __init__(self) -> None:
        assert CHROMIUM is not None
        self.profile = Path(tempfile.mkdtemp(prefix="dc-pages-cdp-"))
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        argv = [sys.executable, "-c", TRAMPOLINE, str(to_browser_r), str(from_browser_w), CHROMIUM,
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--window-size=1400,900", f"--user-data-dir={self.profile}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(argv, pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        for fd in (self._to_browser, self._from_browser):
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies[-1] = {"error": {"message": "browser closed the pipe"}}
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()
                else:
                    self._events.put(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        message: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + DEADLINE_S
        with self._cond:
            while mid not in self._replies and -1 not in self._replies:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no DevTools reply to {method} within {DEADLINE_S:.0f} s"
                self._cond.wait(remaining)
            reply = self._replies.pop(mid, None) or self._replies[-1]
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call(method, params, self.session)

    def js(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> Any:
        """Poll a JS expression until it is truthy (deadline DEADLINE_S)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                value = self.js(expression)
            except AssertionError:  # the page is navigating: its context was destroyed
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}; page: {self.js('location.href')}"
            time.sleep(0.05)

    def goto(self, url: str, path: str) -> None:
        self.page("Page.navigate", {"url": url})
        self.wait_for(f"location.pathname === {json.dumps(path)} && document.readyState === 'complete'",
                      f"page {path}")

    def click(self, selector: str) -> None:
        """Click the element; from a timer, so a confirm() it opens does not block this call."""
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", selector)
        self.js(f"(e => setTimeout(() => e.click(), 0))(document.querySelector({json.dumps(selector)}))")

    def fill(self, selector: str, value: str) -> None:
        self.js(f"(e => {{ e.value = {json.dumps(value)}; }})(document.querySelector({json.dumps(selector)}))")

    def accept_dialog(self) -> str:
        """Wait for a JavaScript dialog (confirm) and accept it; return its message."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                event = self._events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no confirm dialog appeared") from None
            if event.get("method") == "Page.javascriptDialogOpening":
                self.page("Page.handleJavaScriptDialog", {"accept": True})
                return event["params"]["message"]

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = self.page("Page.captureScreenshot", {"format": "png"})
        target = SCREENSHOTS / name
        target.write_bytes(base64.b64decode(shot["data"]))
        assert target.stat().st_size > 5000
        return target

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def server(sqlite_url: str) -> Iterator[PoolServer]:
    with running_pool_api(sqlite_url) as s:
        yield s


@pytest.fixture
def browser() -> Iterator[Chromium]:
    b = Chromium()
    try:
        yield b
    finally:
        b.close()


def sign_in(server: PoolServer, browser: Chromium, provider: Provider, next_page: str = "/provider/pools") -> None:
    link = server.admin("login-link", "--pubkey", provider.pubkey, "--base-url", server.url).strip()
    browser.goto(f"{link}&next={quote(next_page)}", next_page)


def cells(browser: Chromium, table: str) -> list[list[str]]:
    return browser.js(f"""Array.from(document.querySelectorAll('#{table} tbody tr')).map(
        tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim().replace(/\\s+/g, ' ')))""")


def test_user_flow_create_pool_add_agent_revoke_delete(server: PoolServer, browser: Chromium) -> None:
    provider = Provider.register(server, name="flow")
    try:
        sign_in(server, browser, provider)
        assert "No pools yet" in browser.js("document.body.innerText")

        # Create a pool with the form.
        browser.click('a[href="/provider/pools/new"]')
        browser.wait_for("location.pathname === '/provider/pools/new' && !!document.querySelector('#pool-form')",
                         "create form")
        browser.fill('input[name="name"]', "lab-cis")
        browser.fill('select[name="location"]', "cis")
        browser.fill('select[name="provisionerType"]', "script")
        browser.click('#pool-form button[type="submit"]')
        pool_path = browser.wait_for(
            "/^\\/provider\\/pools\\/pool_[0-9a-f]{16}$/.test(location.pathname) && document.readyState === 'complete'"
            " && location.pathname", "the new pool's page")
        pool_id = pool_path.rsplit("/", 1)[1]
        assert "Pool created." in browser.js("document.querySelector('.notice').innerText")
        [pool] = data(provider.request("GET", "/pools"))
        assert (pool["poolId"], pool["name"], pool["location"], pool["provisionerType"]) == \
               (pool_id, "lab-cis", "cis", "script")

        # Add an agent: the token page shows the one-liner once, with a working Copy button.
        browser.click(f'a[href="{pool_path}/add-agent"]')
        browser.wait_for("!!document.querySelector('#add-agent-form')", "add-agent form")
        browser.fill('input[name="label"]', "lab-node-1")
        browser.click('#add-agent-form button[type="submit"]')
        command = browser.wait_for("document.querySelector('#setup-command')?.innerText", "the setup command")
        match = re.fullmatch(rf"curl -sSL {re.escape(server.url)}/install\.sh \| sudo bash -s -- "
                             rf"--token (apt_cis_[0-9a-f]{{32}}) --api-url {re.escape(server.url)}", command.strip())
        assert match, command
        browser.screenshot("add-agent-token.png")
        browser.page("Browser.grantPermissions", {"origin": server.url,
                                                  "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
        browser.click('button[data-copy="setup-command"]')
        browser.wait_for("document.querySelector('button[data-copy]').innerText === 'Copied'", "the Copy feedback")
        assert browser.js("navigator.clipboard.readText()").strip() == command.strip()

        # The token from the page registers a real agent, which then heartbeats.
        key = SigningKey.generate()
        setup = data(httpx.post(f"{server.api_url}/agents/setup",
                                json={"token": match[1], "agentPubkey": key.verify_key.encode().hex()}, timeout=30))
        assert setup["poolId"] == pool_id and setup["label"] == "lab-node-1"
        with agent_client(server, key) as agent:
            data(agent.post(f"/providers/{provider.pubkey}/heartbeat",
                            json={"version": "0.9.1", "provisionerType": "script", "activeContracts": 2}))
        browser.goto(f"{server.url}{pool_path}", pool_path)
        [row] = cells(browser, "agents")
        assert row[0] == "lab-node-1" and row[2] == "● Online" and row[3:5] == ["0.9.1", "2"], row
        assert browser.js("document.querySelector('#tokens')") is None  # the token was used
        browser.screenshot("pool-detail-after-setup.png")

        # Delete is disabled while the pool has an agent; revoke it (confirm dialog), then delete.
        assert browser.js("document.querySelector('.bar .actions button.danger').disabled") is True
        browser.click(f'form[action="{pool_path}/agents/{key.verify_key.encode().hex()}/revoke"] button')
        assert "Revoke agent lab-node-1?" in browser.accept_dialog()
        browser.wait_for("document.querySelector('.notice')?.innerText.startsWith('Agent revoked')", "revoke notice")
        browser.click(f'form[action="{pool_path}/delete"] button')
        assert "Delete pool lab-cis?" in browser.accept_dialog()
        browser.wait_for("location.pathname === '/provider/pools' && "
                         "document.querySelector('.notice')?.innerText === 'Pool deleted.'", "pool deleted")
        assert data(provider.request("GET", "/pools")) == []
    finally:
        provider.close()


def test_cross_site_form_post_is_refused(server: PoolServer, browser: Chromium) -> None:
    """A form on another site posting to a provider page gets no session cookie (SameSite=Strict)."""
    provider = Provider.register(server, name="victim")
    try:
        pool_id = provider.create_pool("keep-me", "europe", "proxmox")["poolId"]
        sign_in(server, browser, provider)
        assert [r[0] for r in cells(browser, "pools")] == ["keep-me"]
        csrf = browser.js("document.querySelector('input[name=csrf]').value")  # even the right token
        attacker = (f'<form method="post" action="{server.url}/provider/pools/{pool_id}/delete">'
                    f'<input name="csrf" value="{csrf}"></form>')
        browser.page("Page.navigate", {"url": "data:text/html," + quote(attacker)})
        browser.wait_for("!!document.forms[0]", "the attacker's page")
        browser.js("document.forms[0].submit()")
        browser.wait_for("location.pathname === '/provider/login' && document.readyState === 'complete'",
                         "the sign-in page")
        assert [p["name"] for p in data(provider.request("GET", "/pools"))] == ["keep-me"]
        browser.goto(f"{server.url}/provider/pools", "/provider/pools")  # the session itself is still fine
        assert [r[0] for r in cells(browser, "pools")] == ["keep-me"]
    finally:
        provider.close()
