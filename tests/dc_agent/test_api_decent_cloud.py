"""The decent-cloud dialect against respx answers shaped as docs/decent-cloud-dialect.md describes the live
server: Ed25519ph-with-context signatures (checked with an independent RFC 8032 implementation), refusals
as HTTP 200 `success:false`, snake_case pending items, the status state machine."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx
from nacl.signing import SigningKey

from dc_agent import errors
from dc_agent.api.base import HeartbeatInfo
from dc_agent.api.decent_cloud import DecentCloudClient, contract_from_live, instance_details_text
from dc_agent.api.http import RetryPolicy
from dc_agent.signing import Ed25519phSigner, signature_message
from provisioners.base import Instance
from tests.support.ed25519ph_ref import verify_ed25519, verify_ed25519ph

API = "https://api.decent.test"
PROVIDER = "ab" * 32
CID = "0f" * 32
FAST = {name: RetryPolicy(attempts=3, budget_seconds=5, initial_wait=0.001, max_wait=0.002)
        for name in ("heartbeat", "poll", "lock", "renew", "unlock", "unlock-quick", "report", "reconcile", "status")}
STATUS_URL = f"{API}/api/v1/provider/rental-requests/{CID}/provisioning"
LOCK_URL = f"{API}/api/v1/providers/{PROVIDER}/contracts/{CID}/lock"


def ok(data):
    return httpx.Response(200, json={"success": True, "data": data})


def refused(message, data=None):
    body = {"success": False, "error": message}
    if data is not None:
        body["data"] = data
    return httpx.Response(200, json=body)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def call(key, fn):
    async def go():
        client = DecentCloudClient(API, key, PROVIDER, policies=FAST)
        try:
            return await fn(client)
        finally:
            await client.aclose()
    return asyncio.run(go())


def message_of(request: httpx.Request) -> bytes:
    h = request.headers
    return signature_message(h["X-Timestamp"], h["X-Nonce"], request.method, request.url.path, request.content)


class TestSignature:
    @respx.mock
    def test_requests_carry_ed25519ph_with_the_decent_cloud_context(self, key):
        """The independent verifier accepts the signature as Ed25519ph/ctx "decent-cloud", and rejects it as
        plain Ed25519 and as Ed25519ph without the context."""
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/heartbeat").mock(
            return_value=ok({"acknowledged": True, "nextHeartbeatSeconds": 60, "upgradeToVersion": "0.7.0"}))
        answer = call(key, lambda c: c.heartbeat(HeartbeatInfo("1.0", "script", 0, 2, 2, ["provision"])))
        assert answer.next_heartbeat_seconds == 60 and answer.upgrade_to_version == "0.7.0"
        request = route.calls.last.request
        pub = bytes.fromhex(request.headers["X-Agent-Pubkey"])
        sig = bytes.fromhex(request.headers["X-Signature"])
        msg = message_of(request)
        assert request.url.path == f"/api/v1/providers/{PROVIDER}/heartbeat"
        assert verify_ed25519ph(pub, msg, sig, context=b"decent-cloud")
        assert not verify_ed25519(pub, msg, sig)
        assert not verify_ed25519ph(pub, msg, sig, context=b"")
        assert json.loads(request.content) == {"version": "1.0", "provisionerType": "script", "activeContracts": 0,
                                               "capabilities": ["provision"]}
        assert request.headers["Content-Type"] == "application/json"

    def test_signer_matches_rfc8032_ed25519ph_vector(self):
        """RFC 8032 section 7.3 (Ed25519ph, empty context), message "abc"."""
        seed = bytes.fromhex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42")
        signer = Ed25519phSigner(SigningKey(seed), context=b"")
        assert signer.public_key_hex == "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"
        assert signer.sign(b"abc").hex() == (
            "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
            "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406")

    def test_signer_with_context_verifies_only_with_that_context(self):
        """A context is part of what is signed: the same key and message under another context fail."""
        key = SigningKey.generate()
        sig = Ed25519phSigner(key).sign(b"payload")
        pub = key.verify_key.encode()
        assert verify_ed25519ph(pub, b"payload", sig, context=b"decent-cloud")
        assert not verify_ed25519ph(pub, b"payload", sig, context=b"decent-cloue")


class TestDispatch:
    @respx.mock
    def test_pending_items_are_read_from_snake_case(self, key):
        """Sizes in text, configs in JSON text, the post-provision script kept."""
        respx.get(f"{API}/api/v1/providers/{PROVIDER}/contracts/pending-provision").mock(return_value=ok([
            {"contract_id": CID, "offering_id": "off-1", "requester_ssh_pubkey": "ssh-ed25519 AAAA t@x",
             "cpu_cores": 4, "memory_amount": "16 GB", "storage_capacity": "1 TB", "provisioner_type": "script",
             "provisioner_config": "{\"template\": 9000}", "instance_config": "not json",
             "post_provision_script": "#!/bin/sh\necho hi"},
            {"offering_id": "no id: skipped"},
        ]))
        offers = call(key, lambda c: c.pending())
        assert [o.contract_id for o in offers] == [CID]
        contract = offers[0].contract
        assert (contract.cpu_cores, contract.memory_mb, contract.storage_gb) == (4, 16384, 1024)
        assert contract.provisioner_config == {"template": 9000}
        assert contract.instance_config == {"raw": "not json"}
        assert contract.post_provision_script.startswith("#!/bin/sh")

    @respx.mock
    def test_pending_that_is_not_a_list_is_an_unexpected_answer(self, key):
        """A proxy's JSON or a changed shape is named, never a crash."""
        respx.get(f"{API}/api/v1/providers/{PROVIDER}/contracts/pending-provision").mock(
            return_value=ok({"contracts": []}))
        with pytest.raises(errors.UnexpectedAnswer, match="pending-provision"):
            call(key, lambda c: c.pending())

    @respx.mock
    def test_lock_not_acquired_is_a_conflict(self, key):
        """`success: true, acquired: false` (the live API never answers 409) means another agent holds it."""
        respx.post(LOCK_URL).mock(return_value=httpx.Response(200, json={
            "success": True, "data": {"acquired": False, "expiresAtNs": 1}, "error": "Contract already locked by another agent"}))
        with pytest.raises(errors.Conflict):
            call(key, lambda c: c.lock(CID))

    @respx.mock
    def test_lock_acquired_gives_the_expiry(self, key):
        respx.post(LOCK_URL).mock(return_value=ok({"acquired": True, "expiresAtNs": 123}))
        lease = call(key, lambda c: c.lock(CID, renew=True))
        assert lease.expires_at_ns == 123 and lease.first_lock is False

    @pytest.mark.parametrize("message, cls", [
        ("Contract 0f is not in lockable status (status: cancelled)", errors.Gone),
        ("Contract not found: 0f", errors.NotFound),
        ("Agent is not delegated by this provider", errors.Forbidden),
        ("Contract 0f payment not succeeded (status: pending)", errors.Forbidden),
        ("something new", errors.Refused),
    ])
    @respx.mock
    def test_lock_refusals_map_onto_the_error_tree(self, key, message, cls):
        """Each refusal message becomes the error the loop acts on; the message is kept."""
        route = respx.post(LOCK_URL).mock(return_value=refused(message))
        with pytest.raises(cls) as info:
            call(key, lambda c: c.lock(CID))
        assert message in str(info.value) and route.call_count == 1

    @respx.mock
    def test_html_error_page_is_a_server_error_named_by_its_title(self, key):
        """A load balancer's HTML 502 page is retried and reported in one readable line."""
        route = respx.post(LOCK_URL).mock(return_value=httpx.Response(
            502, text="<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"))
        with pytest.raises(errors.ServerError) as info:
            call(key, lambda c: c.lock(CID))
        assert route.call_count == 3
        assert "502 Bad Gateway" in str(info.value) and "<html>" not in str(info.value)

    @respx.mock
    def test_plain_text_401_is_unauthorized(self, key):
        respx.post(LOCK_URL).mock(return_value=httpx.Response(401, text="Invalid signature: Signature verification failed"))
        with pytest.raises(errors.Unauthorized, match="Signature verification failed"):
            call(key, lambda c: c.lock(CID))


class TestStatus:
    @respx.mock
    def test_provisioned_is_sent_only_after_relocking_as_json_text(self, key):
        """Lock first (the server does not check the holder), then the snake_case Instance as a string."""
        lock = respx.post(LOCK_URL).mock(return_value=ok({"acquired": True, "expiresAtNs": 1}))
        put = respx.put(STATUS_URL).mock(return_value=ok("Provisioning status updated"))
        call(key, lambda c: c.report_provisioned(CID, {"externalId": "vm-1", "ipAddress": "203.0.113.5",
                                                       "sshPort": 2222, "provisioner": "script", "extra": {}}))
        assert lock.call_count == 1 and put.call_count == 1
        body = json.loads(put.calls.last.request.content)
        assert body["status"] == "provisioned" and isinstance(body["instanceDetails"], str)
        assert json.loads(body["instanceDetails"]) == {
            "external_id": "vm-1", "ip_address": "203.0.113.5", "ipv6_address": None, "ssh_port": 2222,
            "root_password": None, "additional_details": {"provisioner": "script"}}

    @respx.mock
    def test_provisioned_while_another_agent_holds_the_lock_is_never_sent(self, key):
        respx.post(LOCK_URL).mock(return_value=ok({"acquired": False, "expiresAtNs": 1}))
        put = respx.put(STATUS_URL).mock(return_value=ok("x"))
        with pytest.raises(errors.Conflict):
            call(key, lambda c: c.report_provisioned(CID, {"externalId": "vm-1"}))
        assert put.call_count == 0

    @respx.mock
    def test_accepted_contract_gets_provisioning_first(self, key):
        """accepted -> provisioned is refused by the state machine: send provisioning, then provisioned."""
        respx.post(LOCK_URL).mock(return_value=ok({"acquired": True, "expiresAtNs": 1}))
        put = respx.put(STATUS_URL).mock(side_effect=[
            refused("Invalid status transition: accepted -> provisioned. Valid transitions from 'accepted': [...]"),
            ok("Provisioning status updated"), ok("Provisioning status updated")])
        call(key, lambda c: c.report_provisioned(CID, {"externalId": "vm-1"}))
        sent = [json.loads(c.request.content)["status"] for c in put.calls]
        assert sent == ["provisioned", "provisioning", "provisioned"]

    @pytest.mark.parametrize("answer", [
        refused("Invalid status transition: active -> provisioned. Valid transitions from 'active': [...]"),
        refused("Contract 0f is not in lockable status (status: active)"),
    ])
    @respx.mock
    def test_a_resent_provisioned_report_counts_as_delivered(self, key, answer):
        """After a lost acknowledgement the contract is already active: done, not an error."""
        respx.post(LOCK_URL).mock(return_value=ok({"acquired": True, "expiresAtNs": 1}))
        if "lockable" in answer.json()["error"]:
            respx.post(LOCK_URL).mock(return_value=answer)
            put = respx.put(STATUS_URL).mock(return_value=ok("x"))
        else:
            put = respx.put(STATUS_URL).mock(return_value=answer)
        call(key, lambda c: c.report_provisioned(CID, {"externalId": "vm-1"}))
        assert put.call_count <= 1

    @respx.mock
    def test_a_cancelled_contract_refuses_the_report_as_gone(self, key):
        respx.post(LOCK_URL).mock(return_value=ok({"acquired": True, "expiresAtNs": 1}))
        respx.put(STATUS_URL).mock(return_value=refused(
            "Invalid status transition: cancelled -> provisioned. Valid transitions from 'cancelled': []"))
        with pytest.raises(errors.Gone):
            call(key, lambda c: c.report_provisioned(CID, {"externalId": "vm-1"}))

    @respx.mock
    def test_started_tolerates_a_contract_already_provisioning(self, key):
        """An earlier attempt already moved it to provisioning: nothing to do."""
        put = respx.put(STATUS_URL).mock(return_value=refused(
            "Invalid status transition: provisioning -> provisioning. Valid transitions from 'provisioning': [...]"))
        call(key, lambda c: c.started(CID))
        assert json.loads(put.calls.last.request.content) == {"status": "provisioning"}

    @respx.mock
    def test_failure_is_reported_only_while_holding_the_lock(self, key):
        """provisioning_failed refunds and ends the contract: a stale agent must never send it."""
        respx.post(LOCK_URL).mock(side_effect=[ok({"acquired": True, "expiresAtNs": 1}),
                                               ok({"acquired": False, "expiresAtNs": 1})])
        put = respx.put(STATUS_URL).mock(return_value=ok("Provisioning failed — contract closed and refund initiated"))
        call(key, lambda c: c.report_failed(CID, "clone failed"))
        assert json.loads(put.calls.last.request.content) == {"status": "provisioning_failed",
                                                              "instanceDetails": "clone failed"}
        with pytest.raises(errors.Conflict):
            call(key, lambda c: c.report_failed(CID, "clone failed"))
        assert put.call_count == 1


class TestReconcile:
    @respx.mock
    def test_reconcile_reads_all_four_lists(self, key):
        route = respx.post(f"{API}/api/v1/providers/{PROVIDER}/reconcile").mock(return_value=ok({
            "keep": [{"externalId": "a", "contractId": "c1", "endsAt": 0}],
            "terminate": [{"externalId": "b", "contractId": "c2", "reason": "cancelled"}],
            "unknown": [{"externalId": "c", "message": "No contract ID associated with this instance"}],
            "pause": [{"externalId": "d", "contractId": "c4", "reason": "stripe_dispute:dp_1"}]}))
        answer = call(key, lambda c: c.reconcile([Instance("a", "c1"), Instance("c", None)]))
        assert json.loads(route.calls.last.request.content) == {
            "runningInstances": [{"externalId": "a", "contractId": "c1"}, {"externalId": "c"}]}
        assert [k.external_id for k in answer.keep] == ["a"]
        assert [(t.external_id, t.reason) for t in answer.terminate] == [("b", "cancelled")]
        assert [u.external_id for u in answer.unknown] == ["c"]
        assert [(p.contract_id, p.reason) for p in answer.pause] == [("c4", "stripe_dispute:dp_1")]

    @respx.mock
    def test_terminated_for_an_expired_contract_is_gone(self, key):
        """The server accepts `terminated` only for cancelled contracts: an expired one no longer applies."""
        respx.put(f"{API}/api/v1/providers/{PROVIDER}/contracts/{CID}/terminated").mock(
            return_value=refused(f"Contract not found or not in cancelled status (ID: {CID})"))
        with pytest.raises(errors.Gone):
            call(key, lambda c: c.report_terminated(CID))


def test_contract_from_live_tolerates_missing_fields():
    """Only contract_id is required; the rest falls back to the driver's defaults."""
    c = contract_from_live({"contract_id": CID, "memory_amount": "lots", "cpu_cores": True})
    assert (c.contract_id, c.memory_mb, c.cpu_cores, c.instance_config) == (CID, None, None, None)


def test_instance_details_keep_public_ip_and_node():
    text = instance_details_text({"externalId": "pve1/101", "node": "pve1", "provisioner": "proxmox",
                                  "publicIp": "198.51.100.1", "rootPassword": "s3cret", "extra": {"a": 1}})
    data = json.loads(text)
    assert data["public_ip"] == "198.51.100.1" and data["root_password"] == "s3cret"
    assert data["additional_details"] == {"a": 1, "provisioner": "proxmox", "node": "pve1"}
