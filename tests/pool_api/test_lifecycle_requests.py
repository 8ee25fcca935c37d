"""Tenant requests relayed to agents, against a real `dc-pool-api serve` (PostgreSQL and SQLite): password
resets (sealed to the tenant's X25519 key; no plain password anywhere in the database), SSH key
rotations, idempotent reports, and which agent sees a request (the provisioner, else its pool while the
provisioner is gone)."""

from __future__ import annotations

import base64
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from nacl.public import PrivateKey, PublicKey, SealedBox

from pool_api.db import now_ns
from pool_api.tables import agent_delegations, metadata
from tests.pool_api.helpers import Agent, contract, engine_for, error, new_agent, quick_provider
from tests.pool_api.lifecycle_helpers import World, external_id, make_world
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, data

PASSWORD = "Tenant-Pa55word-7c1e9a"


def ed25519_line(seed: bytes, comment: str) -> str:
    """An OpenSSH ed25519 public key line (wire format: type, then the 32-byte key, each length-prefixed)."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + seed.ljust(32, b"k")[:32]
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


OLD_KEY = ed25519_line(b"old", "old@laptop")
NEW_KEY = ed25519_line(b"new", "new@laptop")
OTHER_KEY = ed25519_line(b"other", "other@laptop")


@pytest.fixture
def world(server: PoolServer, provider: Provider) -> Iterator[World]:
    with make_world(server, provider, "rq") as w:
        yield w


def seal(recipient_hex: str, password: str = PASSWORD) -> str:
    """What the agent does: seal the new password to the tenant's X25519 key."""
    return base64.b64encode(SealedBox(PublicKey(bytes.fromhex(recipient_hex))).encrypt(password.encode())).decode()


def reset(world: World, cid: str, key: PrivateKey) -> str:
    out = data(world.provider.request("POST", f"/contracts/{cid}/reset-password",
                                      {"recipientPublicKey": bytes(key.public_key).hex()}))
    return out["requestId"]


def pending_resets(agent: Agent) -> list[dict]:
    return data(agent.call("GET", "/contracts/pending-password-reset"))


def pending_rotations(agent: Agent) -> list[dict]:
    return data(agent.call("GET", "/contracts/pending-ssh-key-rotation"))


def every_stored_value(server: PoolServer) -> str:
    """Every value of every row of every table, as text (for "never stored" checks)."""
    out = []
    with engine_for(server).connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                out.extend(str(v) for v in row)
    return "\n".join(out)


class TestPasswordReset:
    def test_reset_flow_stores_only_ciphertext(self, world: World, tmp_path: Path) -> None:
        """Request -> listed for the provisioning agent -> sealed report -> the tenant opens it; no plain text stored."""
        cid = world.provisioned()
        key = PrivateKey.generate()
        request_id = reset(world, cid, key)
        [item] = [p for p in pending_resets(world.a) if p["contractId"] == cid]
        assert item == {"contractId": cid, "requestId": request_id, "externalId": external_id(cid), "username": None,
                        "recipientPublicKey": bytes(key.public_key).hex(), "requestedAtNs": item["requestedAtNs"]}
        sealed = seal(item["recipientPublicKey"])
        done = data(world.a.call("PUT", f"/contracts/{cid}/password", {"requestId": request_id,
                                                                        "encryptedPassword": sealed}))
        assert (done["status"], done["repeated"]) == ("done", False)
        assert cid not in [p["contractId"] for p in pending_resets(world.a)]
        again = data(world.a.call("PUT", f"/contracts/{cid}/password", {"requestId": request_id,
                                                                         "encryptedPassword": seal(item["recipientPublicKey"])}))
        assert (again["status"], again["repeated"]) == ("done", True)
        stored = every_stored_value(world.server)
        assert sealed in stored and PASSWORD not in stored
        assert PASSWORD.encode().hex() not in stored and base64.b64encode(PASSWORD.encode()).decode() not in stored
        # the tenant's view, through the CLI with the tenant's key file
        key_file = tmp_path / "tenant.key"
        key_file.write_text(bytes(key).hex() + "\n")
        assert world.server.admin("contract", "credentials", cid, "--key-file", str(key_file)).strip() == PASSWORD
        wrong = tmp_path / "wrong.key"
        wrong.write_text(bytes(PrivateKey.generate()).hex())
        with pytest.raises(RuntimeError, match="not the key"):
            world.server.admin("contract", "credentials", cid, "--key-file", str(wrong))

    def test_cli_reset_makes_and_reuses_the_key_file(self, world: World, tmp_path: Path) -> None:
        """`contract reset-password --key-file F` writes a 0600 key once, reuses it; credentials waits for the report."""
        cid = world.provisioned()
        key_file = tmp_path / "tenant.key"
        first = world.server.admin("contract", "reset-password", cid, "--key-file", str(key_file)).strip()
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        written = key_file.read_text()
        with pytest.raises(RuntimeError, match="still pending"):
            world.server.admin("contract", "credentials", cid, "--key-file", str(key_file))
        second = world.server.admin("contract", "reset-password", cid, "--key-file", str(key_file)).strip()
        assert key_file.read_text() == written and second != first
        [item] = [p for p in pending_resets(world.a) if p["contractId"] == cid]
        assert item["requestId"] == second  # the newer request superseded the first
        assert item["recipientPublicKey"] == bytes(PrivateKey(bytes.fromhex(written.strip())).public_key).hex()
        assert "superseded" in error(world.a.call("PUT", f"/contracts/{cid}/password", {
            "requestId": first, "encryptedPassword": seal(item["recipientPublicKey"])}), 409)
        data(world.a.call("PUT", f"/contracts/{cid}/password", {"requestId": second, "error": "guest agent not running"}))
        with pytest.raises(RuntimeError, match="failed on the agent: guest agent not running"):
            world.server.admin("contract", "credentials", cid, "--key-file", str(key_file))

    def test_refusals(self, server: PoolServer, world: World) -> None:
        """Bad keys and bodies 422, unknown requestId 409, paused or open contracts 409, others' contracts 404."""
        cid = world.provisioned()
        key = PrivateKey.generate()
        assert "recipientPublicKey" in error(world.provider.request(
            "POST", f"/contracts/{cid}/reset-password", {"recipientPublicKey": "xyz"}), 422)
        assert "provisioned" in error(world.provider.request(
            "POST", f"/contracts/{world.contract()}/reset-password",
            {"recipientPublicKey": bytes(key.public_key).hex()}), 409)
        request_id = reset(world, cid, key)
        path = f"/contracts/{cid}/password"
        recipient = bytes(key.public_key).hex()
        for body in ({"requestId": request_id}, {"requestId": request_id, "error": "x", "encryptedPassword": seal(recipient)},
                     {"requestId": request_id, "encryptedPassword": "not base64!"},
                     {"requestId": request_id, "encryptedPassword": base64.b64encode(b"short").decode()},
                     {"requestId": request_id, "password": PASSWORD}):
            error(world.a.call("PUT", path, body), 422)
        assert "unknown requestId" in error(world.a.call("PUT", path, {"requestId": "req_nope",
                                                                       "encryptedPassword": seal(recipient)}), 409)
        error(world.provider.request("PUT", path, {"requestId": request_id, "error": "x"}), 403)
        other = quick_provider(server)
        error(other.request("POST", f"/contracts/{cid}/reset-password", {"recipientPublicKey": recipient}), 404)
        with make_world(server, other, "rqo") as ow:
            assert pending_resets(ow.a) == []
            error(ow.a.call("PUT", path, {"requestId": request_id, "error": "x"}), 404)
        assert "pool" in error(world.us.call("PUT", path, {"requestId": request_id, "error": "x"}), 403)
        data(world.provider.request("POST", f"/contracts/{cid}/pause"))
        assert "resume it first" in error(world.provider.request(
            "POST", f"/contracts/{cid}/reset-password", {"recipientPublicKey": recipient}), 409)
        assert cid not in [p["contractId"] for p in pending_resets(world.a)]  # not for a paused contract
        other.close()


class TestSshKeyRotation:
    def test_rotation_flow(self, world: World) -> None:
        """Listed with newKey and oldKey; done -> the contract's key is the new one; a repeat is 200."""
        cid = world.provisioned(ssh_pubkey=OLD_KEY)
        out = data(world.provider.request("POST", f"/contracts/{cid}/rotate-ssh-key", {"newKey": f"  {NEW_KEY} "}))
        request_id = out["requestId"]
        [item] = [p for p in pending_rotations(world.a) if p["contractId"] == cid]
        assert item == {"contractId": cid, "requestId": request_id, "externalId": external_id(cid), "newKey": NEW_KEY,
                        "oldKey": OLD_KEY, "requestedAtNs": item["requestedAtNs"]}
        assert "already pending" in error(world.provider.request(
            "POST", f"/contracts/{cid}/rotate-ssh-key", {"newKey": OTHER_KEY}), 409)
        done = data(world.a.call("PUT", f"/contracts/{cid}/ssh-key-rotation", {"requestId": request_id}))
        assert (done["status"], done["repeated"]) == ("done", False)
        assert contract(world.server, cid)["requesterSshPubkey"] == NEW_KEY
        assert data(world.a.call("PUT", f"/contracts/{cid}/ssh-key-rotation", {"requestId": request_id}))["repeated"]
        assert pending_rotations(world.a) == []
        assert "already the contract's" in error(world.provider.request(
            "POST", f"/contracts/{cid}/rotate-ssh-key", {"newKey": NEW_KEY}), 409)

    def test_failure_and_refusals(self, world: World) -> None:
        """A failed rotation keeps the old key; malformed key lines are 422; unknown requestIds 409."""
        cid = world.provisioned(ssh_pubkey=OLD_KEY)
        for bad in ("", "ssh-ed25519", "ssh-foo AAAA", f"{NEW_KEY}\n{OTHER_KEY}", "ssh-ed25519 !!!notbase64",
                    "ssh-rsa " + NEW_KEY.split()[1]):
            assert "newKey" in error(world.provider.request("POST", f"/contracts/{cid}/rotate-ssh-key",
                                                            {"newKey": bad}), 422), bad
        request_id = data(world.provider.request("POST", f"/contracts/{cid}/rotate-ssh-key",
                                                 {"newKey": NEW_KEY}))["requestId"]
        assert "unknown requestId" in error(world.a.call("PUT", f"/contracts/{cid}/ssh-key-rotation",
                                                         {"requestId": "req_other"}), 409)
        failed = data(world.a.call("PUT", f"/contracts/{cid}/ssh-key-rotation",
                                   {"requestId": request_id, "error": "VM is stopped"}))
        assert failed["status"] == "failed"
        assert contract(world.server, cid)["requesterSshPubkey"] == OLD_KEY
        # a done report after the failure is a repeat: the first outcome stays
        assert data(world.a.call("PUT", f"/contracts/{cid}/ssh-key-rotation", {"requestId": request_id}))["status"] == "failed"
        assert contract(world.server, cid)["requesterSshPubkey"] == OLD_KEY

    def test_cli_rotate(self, world: World) -> None:
        """`contract rotate-ssh-key ID --key …` validates the line and queues the rotation."""
        cid = world.provisioned(ssh_pubkey=OLD_KEY)
        with pytest.raises(RuntimeError, match="--key: not an OpenSSH public key line"):
            world.server.admin("contract", "rotate-ssh-key", cid, "--key", "ssh-ed25519 AAAA")
        request_id = world.server.admin("contract", "rotate-ssh-key", cid, "--key", NEW_KEY).strip()
        assert [p["requestId"] for p in pending_rotations(world.a) if p["contractId"] == cid] == [request_id]


class TestWhichAgent:
    def set_last_seen(self, world: World, agent: Agent, value: int | None) -> None:
        with engine_for(world.server).begin() as conn:
            conn.execute(sa.update(agent_delegations).where(agent_delegations.c.agent_pubkey == agent.pubkey)
                         .values(last_seen_ns=value))

    def test_provisioner_first_then_its_pool(self, world: World) -> None:
        """Only the provisioning agent sees a request while it heartbeats; once it is silent for 3 periods
        or revoked, the other agents of its pool see it too, never an agent of another pool."""
        cid = world.provisioned(world.a, ssh_pubkey=OLD_KEY)
        reset(world, cid, PrivateKey.generate())
        data(world.provider.request("POST", f"/contracts/{cid}/rotate-ssh-key", {"newKey": NEW_KEY}))

        def seen_by(agent: Agent) -> tuple[bool, bool]:
            return (cid in [p["contractId"] for p in pending_resets(agent)],
                    cid in [p["contractId"] for p in pending_rotations(agent)])

        assert (seen_by(world.a), seen_by(world.b), seen_by(world.us)) == ((True, True), (False, False), (False, False))
        # the server's heartbeat period is 30 s: silent for 80 s is still there, for 100 s gone
        self.set_last_seen(world, world.a, now_ns() - 80 * 10**9)
        assert seen_by(world.b) == (False, False)
        self.set_last_seen(world, world.a, now_ns() - 100 * 10**9)
        assert (seen_by(world.a), seen_by(world.b), seen_by(world.us)) == ((True, True), (True, True), (False, False))
        world.a.heartbeat()
        assert seen_by(world.b) == (False, False)
        data(world.provider.request("DELETE", f"/agents/{world.a.pubkey}"))
        assert seen_by(world.b) == (True, True)
        late = new_agent(world.provider, world.eu_pool, "late")  # joined the pool after the provisioning
        assert seen_by(late) == (True, True)
        late.close()
