"""contract_events: each state change of the code paths writes exactly one event (repeats write none), the
lock start survives renewals and restarts with a new holder, and the timeline folds renewals and says how
each lock ended."""

from __future__ import annotations

import sqlalchemy as sa

from pool_api import actions, claims, contract_events, contracts, locks
from pool_api.dispatch_rules import DispatchRules
from pool_api.pages import timeline
from pool_api.tables import contracts as contracts_table
from tests.pool_api.console_helpers import agent, contracts as make_contracts, offering
from tests.pool_api.test_pages import alice, make_pool  # noqa: F401

A1, A2 = "c1" * 32, "c2" * 32
S = 10**9


def kinds(engine: sa.Engine, cid: str) -> list[tuple[str, str | None]]:
    with engine.begin() as conn:
        return [(e["kind"], e["agentPubkey"]) for e in contract_events.events(conn, cid)]


def lock_since(engine: sa.Engine, cid: str) -> int | None:
    with engine.begin() as conn:
        return conn.execute(sa.select(contracts_table.c.lock_since_ns)
                            .where(contracts_table.c.contract_id == cid)).scalar_one()


class TestWrites:
    def test_each_change_once_and_repeats_never(self, engine: sa.Engine, alice: str) -> None:
        pool = make_pool(engine, alice, "eu")
        one, two = agent(engine, alice, pool, A1, "one", {}), agent(engine, alice, pool, A2, "two", {})
        offering(engine, alice, "vps")
        cid, other = make_contracts(engine, "vps", 2)
        first = one.lock(cid)["lockedAtNs"]
        one.lock(cid)
        assert lock_since(engine, cid) == first  # a renewal keeps the start
        one.failed(cid, "boom")
        one.failed(cid, "boom")  # the same report again: a repeat
        assert lock_since(engine, cid) is None
        one.lock(cid)
        one.release(cid)
        one.release(cid)  # nothing to release any more
        later = two.lock(cid)["lockedAtNs"]
        assert lock_since(engine, cid) == later
        details = {"externalId": "pve/1", "rootPassword": "s3cret"}
        two.provisioned(cid, details)
        two.provisioned(cid, details)  # repeated report
        two.health(cid, "healthy")
        two.health(cid, "healthy")
        two.health(cid, "unknown", "no guest agent")
        with engine.begin() as conn:
            rotation = actions.request_ssh_key_rotation(conn, cid, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv1 a@b")
            actions.report_ssh_key_rotation(conn, two.caller, cid, rotation["requestId"], None)
            actions.report_ssh_key_rotation(conn, two.caller, cid, rotation["requestId"], None)
            contracts.cancel(conn, cid)
            contracts.cancel(conn, cid)
            locks.terminated(conn, two.caller, cid)
            locks.terminated(conn, two.caller, cid)
        assert kinds(engine, cid) == [
            ("created", None), ("locked", A1), ("renewed", A1), ("failed", A1), ("locked", A1), ("released", A1),
            ("locked", A2), ("provisioned", A2), ("health", A2), ("health", A2),
            ("ssh-key-rotation-requested", None), ("ssh-key-rotation-done", A2), ("cancelled", None),
            ("terminated", A2)]
        with engine.begin() as conn:
            provisioned = [e for e in contract_events.events(conn, cid) if e["kind"] == "provisioned"][0]
        assert provisioned["detail"] == {"instanceDetails": {"externalId": "pve/1", "rootPassword": "***"}}
        assert kinds(engine, other) == [("created", None)]

    def test_claim_records_its_locks(self, engine: sa.Engine, alice: str) -> None:
        """The claim endpoint's lock statement records `locked` the first time and `renewed` for its own."""
        pool = make_pool(engine, alice, "eu")
        one = agent(engine, alice, pool, A1, "one", {})
        offering(engine, alice, "vps")
        [cid] = make_contracts(engine, "vps")
        for _ in range(2):
            with engine.begin() as conn:
                got = claims.claim(conn, one.caller, 1, 300, DispatchRules())
            assert [i["contractId"] for i in got.items] == [cid]
        assert kinds(engine, cid) == [("created", None), ("locked", A1), ("renewed", A1)]


def ev(at: int, kind: str, agent: str | None = None, **detail: object) -> dict:
    return {"atNs": at * S, "kind": kind, "agentPubkey": agent, "detail": detail}


class Row:
    """A contracts row as the timeline reads it (only what it reads)."""

    def __init__(self, **values: object) -> None:
        base = dict(created_at_ns=1 * S, status="accepted", payment_status="succeeded", first_locked_at_ns=None,
                    failure_count=0, last_failed_at_ns=None, last_error=None, last_failed_by=None,
                    provisioned_at_ns=None, instance_details=None, provisioned_by=None, health_checked_at_ns=None,
                    health_status=None, health_detail=None, health_agent=None, paused_at_ns=None,
                    resumed_at_ns=None, cancelled_at_ns=None, terminated_at_ns=None, terminated_by=None)
        self.__dict__.update(base | values)


class TestTimeline:
    def test_renewals_fold_and_each_lock_says_how_it_ended(self) -> None:
        events = [ev(1, "created"), ev(2, "locked", "a", expiresAtNs=7 * S), ev(5, "renewed", "a", expiresAtNs=10 * S),
                  ev(8, "renewed", "a", expiresAtNs=13 * S), ev(20, "locked", "b", expiresAtNs=25 * S),
                  ev(21, "locked", "c", expiresAtNs=26 * S), ev(30, "provisioned", "c", instanceDetails={"x": 1}),
                  ev(40, "locked", "d", expiresAtNs=45 * S)]
        out = timeline.build(Row(), events, now=42 * S)
        assert [(e["kind"], e["agent"]) for e in out] == [("created", None), ("locked", "a"), ("locked", "b"),
                                                          ("locked", "c"), ("provisioned", "c"), ("locked", "d")]
        assert out[1]["summary"].startswith("renewed 2 times until ") and out[1]["summary"].endswith("; expired")
        assert out[2]["summary"].endswith("; taken over by c")
        assert out[3]["summary"].endswith("; provisioned")  # its holder reports past the expiry: still its lock
        assert out[4]["details"] == {"x": 1} and out[5]["summary"].endswith("; held now")

    def test_contract_without_history_is_told_from_its_state(self) -> None:
        row = Row(first_locked_at_ns=2 * S, failure_count=2, last_failed_at_ns=3 * S, last_error="full",
                  last_failed_by="a", provisioned_at_ns=4 * S, provisioned_by="b",
                  instance_details={"externalId": "vm", "rootPassword": "pw"}, paused_at_ns=5 * S)
        out = timeline.build(row, [ev(6, "resumed")], now=7 * S)
        assert [(e["kind"], e["derived"]) for e in out] == [("created", True), ("locked", True), ("failed", True),
                                                            ("provisioned", True), ("paused", True),
                                                            ("resumed", False)]
        assert out[2]["summary"] == "2 failure(s) in all; the last: full"
        assert out[3]["details"] == {"externalId": "vm", "rootPassword": "***"}
