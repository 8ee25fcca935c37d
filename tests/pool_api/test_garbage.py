"""Bad input never gives a 500 or a traceback: every refusal is a 4xx in the envelope naming the problem.
Also: the 1 MiB body limit (413) and the one structlog line per request without secrets."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from nacl.signing import SigningKey

from dc_agent.signing import sign_headers
from tests.pool_api.helpers import error, new_agent, signed_request
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, data

MIB = 1024 * 1024


@pytest.fixture
def agent(provider: Provider):
    pool = provider.create_pool(f"g-{uuid.uuid4().hex[:6]}", "europe", "proxmox")
    a = new_agent(provider, pool["poolId"])
    yield a
    a.close()


def assert_envelope_4xx(response: httpx.Response, *statuses: int) -> str:
    assert 400 <= response.status_code < 500, f"{response.status_code} {response.text[:300]}"
    if statuses:
        assert response.status_code in statuses, f"{response.status_code} {response.text[:300]}"
    body = response.json()
    assert body["success"] is False and body["data"] is None and body["error"]
    assert "Traceback" not in response.text
    return body["error"]


class TestGarbageBodies:
    @pytest.mark.parametrize("raw,status", [
        (b"{", 400), (b"not json", 400), (b'{"version": }', 400), (b"\xff\xfe\x00", 400),
        (b"[" * 50_000 + b"]" * 50_000, 400),
        (b"[]", 422), (b"42", 422), (b"null", 422), (b'"x"', 422), (b"{}", 422),
        (b'{"version": 5}', 422), (b'{"version": "1", "activeContracts": 100000000000000000000000000000}', 422),
        (b'{"version": "1", "activeContracts": -1}', 422), (b'{"version": "1", "activeContracts": 1.5}', 422),
        (b'{"version": "1", "activeContracts": "3"}', 422), (b'{"version": "1", "capacity": [1]}', 422),
        (b'{"version": "' + b"v" * 100 + b'"}', 422),
    ])
    def test_signed_garbage_heartbeat(self, server: PoolServer, agent, raw: bytes, status: int) -> None:
        """Malformed JSON is 400; valid JSON of the wrong shape, types or size is 422; never 500."""
        r = signed_request(server, "POST", f"/providers/{agent.provider.pubkey}/heartbeat", raw, key=agent.key)
        message = assert_envelope_4xx(r, status)
        if status == 422 and raw not in (b"[]", b"42", b"null", b'"x"'):
            assert "version" in message or "activeContracts" in message or "capacity" in message

    @pytest.mark.parametrize("body", [
        {"name": "x", "datacenterCountry": "DE", "cpuCores": 10**30},
        {"name": "x", "datacenterCountry": "DE", "memoryMb": 2**70},
        {"name": "x", "datacenterCountry": "DE", "price": 1e308 * 10},
        {"name": "x" * 10_000, "datacenterCountry": "DE"},
        {"name": "x", "datacenterCountry": "D" * 1000},
        {"name": "x", "datacenterCountry": "DE", "offeringId": "has space"},
        {"name": "x", "datacenterCountry": "DE", "provisionerType": "PROXMOX"},
        {"name": "x", "datacenterCountry": "DE", "agentPoolId": 7},
        {"name": None, "datacenterCountry": "DE"},
    ])
    def test_offering_garbage(self, provider: Provider, body: dict) -> None:
        """Huge numbers, long strings, unknown enum values and wrong types are 422 (also on PostgreSQL)."""
        raw = json.dumps(body).replace("Infinity", "1e999").encode()
        r = provider.client.post(f"/providers/{provider.pubkey}/offerings", content=raw,
                                 headers={"content-type": "application/json"})
        assert_envelope_4xx(r, 422)

    def test_nan_and_infinity_literals(self, provider: Provider) -> None:
        """NaN / Infinity tokens are not JSON numbers: refused with a 4xx, not stored."""
        for literal in (b"NaN", b"Infinity", b"-Infinity"):
            raw = b'{"name":"x","datacenterCountry":"DE","price":' + literal + b"}"
            r = provider.client.post(f"/providers/{provider.pubkey}/offerings", content=raw,
                                     headers={"content-type": "application/json"})
            assert_envelope_4xx(r, 400, 422)

    @pytest.mark.parametrize("path", [
        "/contracts/%00/lock", "/contracts/" + "x" * 5000 + "/lock", "/contracts/..%2F..%2Fetc/lock",
        "/contracts/'; DROP TABLE contracts; --/lock",
    ])
    def test_odd_contract_ids(self, server: PoolServer, agent, path: str) -> None:
        """Odd or hostile contract ids are plain 404s (or 4xx), never errors."""
        r = agent.call("POST", path)
        assert_envelope_4xx(r)
        data(httpx.get(f"{server.url}/api/v1/health"))

    def test_unsigned_and_half_signed(self, server: PoolServer, provider: Provider) -> None:
        """Missing or malformed signature headers are 401 naming the header."""
        path = f"/providers/{provider.pubkey}/pools"
        assert "X-Agent-Pubkey" in assert_envelope_4xx(signed_request(server, "GET", path), 401)
        for header, value in (("x-public-key", "zz" * 32), ("x-timestamp", "yesterday"), ("x-signature", "00"),
                              ("x-nonce", "")):
            r = signed_request(server, "GET", path, key=provider.key, role="provider", extra_headers={header: value})
            assert_envelope_4xx(r, 401)

    def test_setup_garbage(self, server: PoolServer) -> None:
        """The unsigned setup endpoint refuses garbage with 400/422 too."""
        for raw in (b"", b"{", b"[]", b'{"token": null, "agentPubkey": null}', b'{"token": "a", "agentPubkey": "' +
                    b"g" * 64 + b'"}'):
            r = httpx.post(f"{server.url}/api/v1/agents/setup", content=raw, headers={"content-type": "application/json"})
            assert_envelope_4xx(r, 400, 422)


class TestBodyLimit:
    def test_over_one_mib_is_413(self, server: PoolServer, agent) -> None:
        """A declared Content-Length over 1 MiB is 413 before anything else, signed or not."""
        big = b'{"version": "' + b"x" * MIB + b'"}'
        r = signed_request(server, "POST", f"/providers/{agent.provider.pubkey}/heartbeat", big, key=agent.key)
        assert "bytes" in error(r, 413)
        error(httpx.post(f"{server.url}/api/v1/agents/setup", content=big), 413)

    def test_streamed_over_one_mib_is_413(self, server: PoolServer) -> None:
        """A chunked upload without Content-Length is cut off at 1 MiB with 413."""
        def chunks():
            for _ in range(20):
                yield b"x" * (128 * 1024)
        r = httpx.post(f"{server.url}/api/v1/agents/setup", content=chunks(),
                       headers={"content-type": "application/json"})
        error(r, 413)

    def test_just_under_the_limit_is_parsed(self, server: PoolServer) -> None:
        """A body just under 1 MiB is read and validated normally (here: 422 for the long token)."""
        body = json.dumps({"token": "t" * (MIB - 100), "agentPubkey": "ab" * 32}).encode()
        assert len(body) < MIB
        assert "token" in error(httpx.post(f"{server.url}/api/v1/agents/setup", content=body,
                                           headers={"content-type": "application/json"}), 422)


class TestRequestLog:
    def test_one_line_per_request_without_secrets(self, server: PoolServer, provider: Provider) -> None:
        """Each request logs method, path, status and latency_ms; tokens and signatures never appear."""
        pool = provider.create_pool(f"log-{uuid.uuid4().hex[:6]}", "europe", "proxmox")
        token = provider.create_token(pool["poolId"])
        r = provider.request("DELETE", f"/setup-tokens/{token}")
        data(r)
        signature = r.request.headers["x-signature"]
        marker = f"/providers/{provider.pubkey}/pools/nope-{uuid.uuid4().hex}"
        error(provider.request("GET", marker[len(f"/providers/{provider.pubkey}"):]), 404)
        key = SigningKey.generate()
        httpx.post(f"{server.url}/api/v1/agents/setup", json={"token": token, "agentPubkey": key.verify_key.encode().hex()})
        log = server.log_path.read_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"request"' in line]
        [line] = [entry for entry in lines if entry.get("path") == f"/api/v1{marker}"]
        assert line["method"] == "GET" and line["status"] == 404 and isinstance(line["latency_ms"], float)
        assert any(entry["path"].endswith("/setup-tokens/apt_<redacted>") and entry["status"] == 200 for entry in lines)
        assert token not in log and token.rsplit("_", 1)[1] not in log and signature not in log


class TestReportsAndRequestShape:
    @pytest.mark.parametrize("details,field", [
        ({}, "externalId"), ({"externalId": ""}, "externalId"), ({"externalId": 5}, "externalId"),
        ({"externalId": "a", "sshPort": "x"}, "sshPort"), ({"externalId": "a", "sshPort": 10**30}, "sshPort"),
        ({"externalId": "a", "sshPort": 0}, "sshPort"), ({"externalId": "a", "extra": "notobject"}, "extra"),
        ({"externalId": "a", "ipAddress": "not-an-ip"}, "ipAddress"),
        ({"externalId": "a", "ipv6Address": "192.0.2.1"}, "ipv6Address"),
        ({"externalId": "a", "surprise": 1}, "surprise"),
    ])
    def test_malformed_instance_details_never_mark_a_contract_provisioned(self, server: PoolServer, provider: Provider,
                                                                          agent, details: dict, field: str) -> None:
        """A bad report is 422 naming the field, and the contract stays open for the agent's real report."""
        offering = f"g-{uuid.uuid4().hex[:8]}"
        provider.create_offering(offering, "DE")
        [cid] = provider.create_contract(offering, 1)
        data(agent.lock(cid))
        bad = agent.call("POST", f"/contracts/{cid}/provisioned", {"instanceDetails": details})
        assert field in assert_envelope_4xx(bad, 422)
        good = {"externalId": "pve/101", "ipAddress": "192.0.2.7", "ipv6Address": "2001:db8::7", "sshPort": 22,
                "provisioner": "proxmox", "node": "pve", "extra": {}}
        assert data(agent.provisioned(cid, good))["status"] == "provisioned"
        assert data(agent.provisioned(cid, good))["repeated"] is True

    def test_heartbeat_with_an_unknown_provisioner_type_is_422(self, server: PoolServer, agent) -> None:
        """provisionerType is one of proxmox, docker, script, manual."""
        r = agent.call("POST", "/heartbeat", {"version": "1", "provisionerType": "kvm", "activeContracts": 0})
        assert "provisionerType" in assert_envelope_4xx(r, 422)

    def test_a_trailing_slash_is_an_envelope_not_a_redirect(self, server: PoolServer, provider: Provider) -> None:
        """No 307 without a body (following it would change the signed PATH): a 404 in the envelope."""
        r = provider.client.get(f"/providers/{provider.pubkey}/pools/")
        assert_envelope_4xx(r, 404)

    def test_a_json_body_without_content_type_is_read_as_json(self, server: PoolServer, agent) -> None:
        """PROTOCOL's bodies are JSON: a client that signs raw bytes and sends no Content-Type is understood."""
        path = f"/providers/{agent.provider.pubkey}/heartbeat"
        raw = json.dumps({"version": "1", "provisionerType": "proxmox", "activeContracts": 0}).encode()
        r = signed_request(server, "POST", path, raw, key=agent.key, extra_headers={"content-type": ""})
        assert r.status_code == 200, r.text
        bare = httpx.Request("POST", f"{server.url}/api/v1{path}", content=raw)
        bare.headers.pop("content-type", None)  # httpx adds none for bytes; make sure
        bare.headers.update(sign_headers(agent.key, "agent", "POST", f"/api/v1{path}", raw))
        with httpx.Client(timeout=30) as client:
            r = client.send(bare)
        assert r.status_code == 200, r.text
        assert data(r)["acknowledged"] is True
