"""The pool-api dialect of the signed API client: signatures verified with PyNaCl, retry policy, error mapping."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx
from nacl.signing import SigningKey, VerifyKey

from dc_agent import errors
from dc_agent.api.base import HeartbeatInfo
from dc_agent.api.http import RetryPolicy, register
from dc_agent.api.pool_api import PoolApiClient as ApiClient
from dc_agent.signing import signature_message
from provisioners.base import Instance

API = "https://pool.test"
PROVIDER = "ab" * 32
FAST = {name: RetryPolicy(attempts=4, budget_seconds=5, initial_wait=0.001, max_wait=0.002)
        for name in ("heartbeat", "poll", "lock", "renew", "unlock", "unlock-quick", "report", "reconcile", "status")}


def beat(active: int = 2) -> HeartbeatInfo:
    return HeartbeatInfo(version="1", provisioner_type="script", active_contracts=active, max_concurrent=2,
                         free_slots=2 - active)


def ok(data):
    return httpx.Response(200, json={"success": True, "data": data, "error": None})


def err(status, message="nope"):
    return httpx.Response(status, json={"success": False, "data": None, "error": message})


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


async def _call(key, fn, **kwargs):
    client = ApiClient(API, key, PROVIDER, policies=FAST, **kwargs)
    try:
        return await fn(client)
    finally:
        await client.aclose()


def verify(request: httpx.Request, key: SigningKey) -> None:
    """Check a request's signature exactly as the server does (PROTOCOL.md, 'Signed requests')."""
    headers = request.headers
    assert headers["X-Agent-Pubkey"] == key.verify_key.encode().hex()
    message = signature_message(headers["X-Timestamp"], headers["X-Nonce"], request.method,
                                request.url.path, request.content)
    VerifyKey(bytes.fromhex(headers["X-Agent-Pubkey"])).verify(message, bytes.fromhex(headers["X-Signature"]))


class TestSigning:
    @respx.mock
    def test_post_is_signed_over_timestamp_nonce_method_path_body(self, key):
        """The server can verify a POST's signature over the exact body bytes and the /api/v1 path."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/heartbeat").mock(
            return_value=ok({"acknowledged": True, "nextHeartbeatSeconds": 30}))
        answer = run(_call(key, lambda c: c.heartbeat(beat())))
        assert answer.next_heartbeat_seconds == 30
        request = route.calls.last.request
        verify(request, key)
        assert request.url.path == f"/api/v1/providers/{PROVIDER}/heartbeat"
        assert json.loads(request.content) == {"version": "1", "provisionerType": "script", "activeContracts": 2,
                                               "capacity": {"maxConcurrent": 2, "freeSlots": 0}}
        int(request.headers["X-Timestamp"])
        assert len(bytes.fromhex(request.headers["X-Signature"])) == 64

    @respx.mock
    def test_get_without_body_is_signed_over_empty_body(self, key):
        """A GET signs an empty body and no query string."""
        route = respx.get(f"{API}/api/v1/providers/{PROVIDER}/contracts/pending-provision").mock(
            return_value=ok([{"contractId": "c1"}]))
        offers = run(_call(key, lambda c: c.pending()))
        assert [(o.contract_id, o.contract.contract_id) for o in offers] == [("c1", "c1")]
        request = route.calls.last.request
        assert request.content == b""
        verify(request, key)

    @respx.mock
    def test_a_tampered_body_does_not_verify(self, key):
        """The signature covers the body: changing one byte breaks it."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/contracts/c-1/failed").mock(return_value=ok({}))
        run(_call(key, lambda c: c.report_failed("c-1", "disk full")))
        request = route.calls.last.request
        h = request.headers
        tampered = signature_message(h["X-Timestamp"], h["X-Nonce"], "POST", request.url.path,
                                     request.content.replace(b"disk", b"DISK"))
        with pytest.raises(Exception):
            VerifyKey(bytes.fromhex(h["X-Agent-Pubkey"])).verify(tampered, bytes.fromhex(h["X-Signature"]))

    @respx.mock
    def test_each_retry_is_signed_anew_with_a_fresh_nonce(self, key):
        """A retried request gets a new nonce (the server rejects replays) and still verifies."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/contracts/c-1/lock").mock(
            side_effect=[err(503), err(502), ok({"acquired": True, "expiresAtNs": 1})])
        assert run(_call(key, lambda c: c.lock("c-1"))).expires_at_ns == 1
        nonces = {call.request.headers["X-Nonce"] for call in route.calls}
        assert route.call_count == 3 and len(nonces) == 3
        for call in route.calls:
            verify(call.request, key)


class TestRetries:
    @respx.mock
    def test_retries_connection_errors_then_succeeds(self, key):
        """Connection refused and timeouts are retried."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/contracts/c-1/provisioned").mock(
            side_effect=[httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok({"status": "provisioned"})])
        run(_call(key, lambda c: c.report_provisioned("c-1", {"externalId": "vm-1"})))
        assert route.call_count == 3

    @respx.mock
    def test_gives_up_on_persistent_5xx_with_server_error(self, key):
        """After the policy's attempts, the last 5xx is raised as ServerError naming endpoint and status."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/heartbeat").mock(return_value=err(500, "db down"))
        with pytest.raises(errors.ServerError) as info:
            run(_call(key, lambda c: c.heartbeat(beat(0))))
        assert route.call_count == 4
        assert "POST /providers/{pk}/heartbeat -> 500" in str(info.value) and "db down" in str(info.value)

    @respx.mock
    def test_unreachable_after_retries(self, key):
        """A server that never answers ends in Unreachable (status None)."""
        respx.get(f"{API}/api/v1/providers/{PROVIDER}/contracts/pending-provision").mock(
            side_effect=httpx.ConnectError("connection refused"))
        with pytest.raises(errors.Unreachable) as info:
            run(_call(key, lambda c: c.pending()))
        assert info.value.status is None and "no answer" in str(info.value)

    @pytest.mark.parametrize("status, cls", [
        (400, errors.BadRequest), (401, errors.Unauthorized), (403, errors.Forbidden), (404, errors.NotFound),
        (409, errors.Conflict), (410, errors.Gone), (422, errors.BadRequest),
    ])
    @respx.mock
    def test_4xx_is_not_retried_and_is_mapped(self, key, status, cls):
        """Each 4xx maps to one agent error, after exactly one request."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/contracts/c-1/lock").mock(
            return_value=err(status, "lock held by another agent"))
        with pytest.raises(cls) as info:
            run(_call(key, lambda c: c.lock("c-1")))
        assert route.call_count == 1
        assert info.value.status == status
        assert f"POST /providers/{{pk}}/contracts/c-1/lock -> {status}" in str(info.value)
        assert "lock held by another agent" in str(info.value)


class TestEnvelope:
    @respx.mock
    def test_data_is_unwrapped(self, key):
        """Callers get the envelope's data."""
        respx.post(f"{API}/api/v1/providers/{PROVIDER}/reconcile").mock(
            return_value=ok({"keep": [], "terminate": [{"externalId": "x", "contractId": "c"}], "unknown": []}))
        answer = run(_call(key, lambda c: c.reconcile([Instance("x", "c")])))
        assert [(t.external_id, t.contract_id) for t in answer.terminate] == [("x", "c")]
        assert answer.keep == [] and answer.pause == []

    @respx.mock
    def test_contract_ids_are_quoted_in_paths(self, key):
        """An opaque id with a slash cannot escape its path segment."""
        route = respx.delete(url__regex=r".*/contracts/a%2Fb/lock$").mock(return_value=ok(None))
        run(_call(key, lambda c: c.unlock("a/b")))
        assert route.call_count == 1


class TestRegister:
    @respx.mock
    def test_setup_is_unsigned_and_sends_token_and_pubkey(self):
        """POST /agents/setup carries no signature headers."""
        route = respx.post(f"{API}/api/v1/agents/setup").mock(return_value=ok({"providerPubkey": PROVIDER, "poolId": "p"}))
        info = register(API, "apt_europe_x", "cd" * 32)
        assert info["poolId"] == "p"
        request = route.calls.last.request
        assert "X-Signature" not in request.headers
        assert json.loads(request.content) == {"token": "apt_europe_x", "agentPubkey": "cd" * 32}

    @respx.mock
    def test_used_token_is_gone_and_not_retried(self):
        """410 is final: a single-use token is never sent twice."""
        route = respx.post(f"{API}/api/v1/agents/setup").mock(return_value=err(410, "token already used"))
        with pytest.raises(errors.Gone):
            register(API, "apt_europe_x", "cd" * 32)
        assert route.call_count == 1

    @respx.mock
    def test_5xx_is_not_retried_for_setup(self):
        """An answered setup request is not repeated (it may have consumed the token)."""
        route = respx.post(f"{API}/api/v1/agents/setup").mock(return_value=err(500))
        with pytest.raises(errors.ServerError):
            register(API, "apt_europe_x", "cd" * 32)
        assert route.call_count == 1

    @respx.mock
    def test_connect_error_is_retried(self):
        """Nothing reached the server: retrying is safe."""
        route = respx.post(f"{API}/api/v1/agents/setup").mock(
            side_effect=[httpx.ConnectError("refused"), ok({"poolId": "p"})])
        assert register(API, "apt_europe_x", "cd" * 32, retry_wait=0.001)["poolId"] == "p"
        assert route.call_count == 2
