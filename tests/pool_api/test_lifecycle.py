"""The contract lifecycle after provisioning against a real `dc-pool-api serve` (PostgreSQL and SQLite):
health reports, pause/resume and what reconcile answers for them, the contract's end (expiry), and
migration 0004 on a database that already holds contracts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pool_api import db, instance_health
from pool_api.auth import Caller
from pool_api.tables import contract_health
from tests.pool_api.helpers import admin_json, contract, engine_for, error, quick_provider
from tests.pool_api.lifecycle_helpers import World, external_id, make_world, reconcile
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, data

HOUR_NS = 3600 * 10**9


@pytest.fixture
def world(server: PoolServer, provider: Provider) -> Iterator[World]:
    with make_world(server, provider, "lc") as w:
        yield w


def health(status: str = "healthy", **fields: object) -> dict[str, object]:
    return {"status": status, "detail": "running, guest agent answered", "latencyMs": 12.5,
            "checkedAtNs": db.now_ns(), **fields}


class TestHealth:
    def test_report_is_kept_and_shown(self, world: World) -> None:
        """The last report appears on the contract (show/list --json) with the reporting agent; history grows."""
        cid = world.provisioned()
        report = health("unhealthy", detail="VM 123 is stopped", latencyMs=None)
        assert data(world.a.call("POST", f"/contracts/{cid}/health", report)) == {"recorded": True}
        expected = {"status": "unhealthy", "detail": "VM 123 is stopped", "latencyMs": None,
                    "checkedAtNs": report["checkedAtNs"], "agentPubkey": world.a.pubkey}
        assert contract(world.server, cid)["health"] == expected
        assert admin_json(world.server, "contract", "show", cid)["health"] == expected
        listed = {c["contractId"]: c for c in admin_json(world.server, "contract", "list")}
        assert listed[cid]["health"] == expected
        later = health("healthy", latencyMs=3)
        data(world.b.call("POST", f"/contracts/{cid}/health", later))  # another agent of the pool may report
        shown = contract(world.server, cid)["health"]
        assert (shown["status"], shown["latencyMs"], shown["agentPubkey"]) == ("healthy", 3.0, world.b.pubkey)
        with engine_for(world.server).connect() as conn:
            assert [h["status"] for h in instance_health.history(conn, cid)] == ["healthy", "unhealthy"]

    def test_refusals(self, server: PoolServer, world: World) -> None:
        """Unknown or another provider's contract 404, another pool's agent 403, bad bodies 422, providers 403."""
        cid = world.provisioned()
        error(world.a.call("POST", "/contracts/nope/health", health()), 404)
        other = quick_provider(server)
        with make_world(server, other, "lco") as ow:
            foreign = ow.provisioned()
            error(world.a.call("POST", f"/contracts/{foreign}/health", health()), 404)
            error(ow.a.call("POST", f"/contracts/{cid}/health", health()), 404)
            assert "path provider" in error(
                ow.a.client.post(f"/providers/{world.provider.pubkey}/contracts/{cid}/health", json=health()), 403)
        assert "pool" in error(world.us.call("POST", f"/contracts/{cid}/health", health()), 403)
        assert "status" in error(world.a.call("POST", f"/contracts/{cid}/health", health("sick")), 422)
        for field, value in (("checkedAtNs", "now"), ("checkedAtNs", -1), ("latencyMs", -1), ("detail", 5)):
            body = {**health(), field: value}
            assert field in error(world.a.call("POST", f"/contracts/{cid}/health", body), 422), field
        error(world.provider.request("POST", f"/contracts/{cid}/health", health()), 403)
        assert contract(server, cid)["health"] is None
        other.close()

    def test_newest_report_wins_and_history_is_bounded(self, world: World) -> None:
        """An older checkedAtNs does not replace a newer one; only the last 100 reports are kept."""
        cid = world.provisioned()
        caller = Caller(role="agent", pubkey=world.a.pubkey, provider_pubkey=world.provider.pubkey,
                        pool_id=world.eu_pool)
        base = db.now_ns()
        with engine_for(world.server).begin() as conn:
            for i in range(instance_health.HEALTH_HISTORY + 5):
                instance_health.record(conn, caller, cid, "healthy", f"check {i}", float(i), base + i)
            instance_health.record(conn, caller, cid, "unhealthy", "late, older report", None, base - 1)
        shown = contract(world.server, cid)["health"]
        assert (shown["detail"], shown["checkedAtNs"]) == (f"check {instance_health.HEALTH_HISTORY + 4}",
                                                           base + instance_health.HEALTH_HISTORY + 4)
        with engine_for(world.server).connect() as conn:
            kept = conn.execute(sa.select(contract_health.c.detail).where(contract_health.c.contract_id == cid)
                                .order_by(contract_health.c.id)).scalars().all()
        assert len(kept) == instance_health.HEALTH_HISTORY
        assert kept[0] == "check 6" and kept[-1] == "late, older report"


class TestPause:
    def test_pause_and_resume_through_reconcile(self, world: World) -> None:
        """A paused contract's instance is under `pause` (never `terminate`); after resume it is kept again."""
        cid = world.provisioned()
        ext = external_id(cid)
        assert reconcile(world.a, (ext, cid))["keep"] == [{"externalId": ext, "contractId": cid}]
        paused = data(world.provider.request("POST", f"/contracts/{cid}/pause"))
        assert (paused["status"], paused["repeated"]) == ("paused", False) and paused["pausedAtNs"]
        assert data(world.provider.request("POST", f"/contracts/{cid}/pause"))["repeated"] is True
        for agent in (world.a, world.b):  # whoever lists it, as in a shared cluster
            out = reconcile(agent, (ext, cid), ("dup-vm", cid))
            assert out["pause"] == [{"externalId": ext, "contractId": cid, "reason": "paused"}]
            assert out["keep"] == [] and out["terminate"] == [
                {"externalId": "dup-vm", "contractId": cid, "reason": "duplicate-instance"}]
        assert contract(world.server, cid)["status"] == "paused"
        # a repeated provisioned report (an agent retrying) is still the same, repeated report
        again = data(world.a.provisioned(cid, {"externalId": ext, "provisioner": "proxmox"}))
        assert again["repeated"] is True
        assert "paused" in error(world.a.lock(cid), 409)
        assert cid not in world.a.pending_ids()
        resumed = data(world.provider.request("POST", f"/contracts/{cid}/resume"))
        assert (resumed["status"], resumed["repeated"]) == ("provisioned", False) and resumed["resumedAtNs"]
        assert data(world.provider.request("POST", f"/contracts/{cid}/resume"))["repeated"] is True
        out = reconcile(world.a, (ext, cid))
        assert out["keep"] == [{"externalId": ext, "contractId": cid}] and out["pause"] == []

    def test_refusals(self, server: PoolServer, world: World) -> None:
        """Only a provisioned contract is paused, only a paused one resumed; others' contracts 404; agents 403."""
        accepted = world.contract()
        assert "provisioned" in error(world.provider.request("POST", f"/contracts/{accepted}/pause"), 409)
        assert "paused" in error(world.provider.request("POST", f"/contracts/{accepted}/resume"), 409)
        cid = world.provisioned()
        error(world.a.call("POST", f"/contracts/{cid}/pause"), 403)
        error(world.provider.request("POST", "/contracts/nope/pause"), 404)
        other = quick_provider(server)
        error(other.request("POST", f"/contracts/{cid}/pause"), 404)
        error(other.client.post(f"/providers/{world.provider.pubkey}/contracts/{cid}/pause"), 403)
        world.server.admin("contract", "cancel", cid)
        assert "cancelled" in error(world.provider.request("POST", f"/contracts/{cid}/pause"), 409)
        other.close()

    def test_cli_pause_resume(self, world: World) -> None:
        """`contract pause` / `contract resume` change the status as the provider endpoints do."""
        cid = world.provisioned()
        assert world.server.admin("contract", "pause", cid).strip() == f"{cid} paused"
        assert "(already)" in world.server.admin("contract", "pause", cid)
        assert contract(world.server, cid)["status"] == "paused"
        assert world.server.admin("contract", "resume", cid).strip() == f"{cid} provisioned"
        with pytest.raises(RuntimeError, match="only a provisioned contract can be paused"):
            world.server.admin("contract", "pause", world.contract())


class TestExpiry:
    def test_ended_contract_is_never_offered(self, world: World) -> None:
        """A contract whose end passed is not in pending-provision and cannot be locked."""
        ended = world.contract(ends_at_ns=db.now_ns() - 1)
        running = world.contract(ends_at_ns=db.now_ns() + HOUR_NS)
        ids = world.a.pending_ids()
        assert running in ids and ended not in ids
        assert "ended" in error(world.a.lock(ended), 409)

    def test_expired_instance_is_terminated_then_contract_terminated(self, world: World) -> None:
        """Once its end passed, a contract's instance is under terminate (expired), then `terminated` ends it."""
        cid = world.provisioned(ends_at_ns=db.now_ns() + HOUR_NS)
        paused = world.provisioned()
        data(world.provider.request("POST", f"/contracts/{paused}/pause"))
        ext = external_id(cid)
        assert reconcile(world.a, (ext, cid))["keep"] == [{"externalId": ext, "contractId": cid}]
        assert "not cancelled or ended" in error(world.a.call("PUT", f"/contracts/{cid}/terminated"), 409)
        past = db.now_ns() - 1
        world.set_contract(cid, ends_at_ns=past)
        world.set_contract(paused, ends_at_ns=past)
        out = reconcile(world.a, (ext, cid), (external_id(paused), paused))
        assert out["terminate"] == [{"externalId": ext, "contractId": cid, "reason": "expired"},
                                    {"externalId": external_id(paused), "contractId": paused, "reason": "expired"}]
        assert out["keep"] == out["pause"] == []
        done = data(world.a.call("PUT", f"/contracts/{cid}/terminated"))
        assert (done["status"], done["repeated"]) == ("terminated", False)
        assert data(world.a.call("PUT", f"/contracts/{cid}/terminated"))["repeated"] is True
        shown = contract(world.server, cid)
        assert (shown["status"], shown["endsAtNs"], shown["terminatedBy"]) == ("terminated", past, world.a.pubkey)
        assert reconcile(world.a, (ext, cid))["terminate"][0]["reason"] == "terminated"
        assert "ended" in error(world.provider.request("POST", f"/contracts/{paused}/resume"), 409)

    def test_cancelled_contract_still_terminates(self, world: World) -> None:
        """The cancel path is unchanged: cancelled -> terminate (cancelled) -> terminated."""
        cid = world.provisioned(ends_at_ns=db.now_ns() + HOUR_NS)
        world.server.admin("contract", "cancel", cid)
        assert reconcile(world.a, (external_id(cid), cid))["terminate"][0]["reason"] == "cancelled"
        assert data(world.a.call("PUT", f"/contracts/{cid}/terminated"))["status"] == "terminated"

    def test_cli_contract_end(self, world: World) -> None:
        """`contract create --duration-hours` / `--ends-at-ns` set endsAtNs, shown by show and list."""
        before = db.now_ns()
        [cid] = world.provider.create_contract(world.de, 1, "--duration-hours", "2")
        shown = admin_json(world.server, "contract", "show", cid)
        assert before + 2 * HOUR_NS <= shown["endsAtNs"] <= db.now_ns() + 2 * HOUR_NS
        [fixed] = world.provider.create_contract(world.de, 1, "--ends-at-ns", "1900000000000000000")
        assert f"ends=1900000000000000000" in world.server.admin("contract", "list")
        assert contract(world.server, fixed)["endsAtNs"] == 1_900_000_000_000_000_000
        with pytest.raises(RuntimeError, match="only one"):
            world.provider.create_contract(world.de, 1, "--duration-hours", "1", "--ends-at-ns", "5")


def test_upgrade_from_0003_keeps_existing_contracts(db_url: str) -> None:
    """A database at 0003 with contracts upgrades to 0004: statuses kept, no end, no health, new tables usable."""
    from alembic import command

    cfg = db.alembic_config()
    engine = db.create_engine(db_url)
    p = "ab" * 32
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003")
            conn.execute(sa.text("INSERT INTO providers (pubkey, created_at_ns) VALUES (:p, 1)"), {"p": p})
            conn.execute(sa.text("INSERT INTO offerings (offering_id, provider_pubkey, name, product_type, "
                                 "datacenter_country, created_at_ns) VALUES ('o', :p, 'o', 'compute', 'DE', 1)"), {"p": p})
            for cid, status in (("old-open", "accepted"), ("old-running", "provisioned")):
                conn.execute(sa.text(
                    "INSERT INTO contracts (contract_id, provider_pubkey, offering_id, status, payment_status, "
                    "created_at_ns, updated_at_ns, instance_details, failure_count, first_locked_at_ns) VALUES "
                    "(:c, :p, 'o', :s, 'succeeded', 1, 1, :d, 0, 0)"),
                    {"c": cid, "p": p, "s": status, "d": json.dumps({"externalId": "pve1/100"})})
            command.upgrade(cfg, "0004")
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0004"
            rows = conn.execute(sa.text("SELECT contract_id, status, ends_at_ns, paused_at_ns, health_status "
                                        "FROM contracts ORDER BY contract_id")).all()
            assert [tuple(r) for r in rows] == [("old-open", "accepted", None, None, None),
                                               ("old-running", "provisioned", None, None, None)]
            assert conn.execute(sa.text("SELECT count(*) FROM contract_requests")).scalar_one() == 0
            command.upgrade(cfg, "head")  # and the code of today works on those contracts
            caller = Caller(role="agent", pubkey="cd" * 32, provider_pubkey=p, pool_id=None)
            assert instance_health.record(conn, caller, "old-running", "healthy", None, 1.0, 5) == {"recorded": True}
            assert conn.execute(sa.text("SELECT health_status FROM contracts WHERE contract_id = 'old-running'")
                                ).scalar_one() == "healthy"
    finally:
        engine.dispose()
