"""Pause and resume a provisioned contract (the tenant's or the provider's choice).

A pause keeps the contract and its instance: reconcile lists the instance under `pause`, so the agent
stops it and keeps its disk; a resume makes the contract provisioned again, reconcile lists the
instance under `keep`, and the agent starts what it stopped. Each change is one conditional UPDATE;
asking for the state the contract is already in is 200 `repeated: true`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api import contract_events
from pool_api.contracts import contract_json, get_contract, has_ended, not_ended
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.tables import contracts as c


def _owned(conn: sa.Connection, contract_id: str, provider_pubkey: str | None) -> Any:
    """The contract; 404 when unknown or (for a provider) another provider's."""
    row = get_contract(conn, contract_id)
    if provider_pubkey is not None and row.provider_pubkey != provider_pubkey:
        raise ApiError(404, "unknown contract")
    return row


def _answer(row: Any, repeated: bool) -> dict[str, Any]:
    out = contract_json(row)
    return {"contractId": out["contractId"], "status": out["status"], "pausedAtNs": out["pausedAtNs"],
            "resumedAtNs": out["resumedAtNs"], "repeated": repeated}


def _switch(conn: sa.Connection, contract_id: str, provider_pubkey: str | None, *, source: str, target: str,
            stamp: str, verb: str) -> dict[str, Any]:
    """source -> target with `stamp` = now, for a contract that has not ended; already target: a repeat."""
    _owned(conn, contract_id, provider_pubkey)
    now = now_ns()
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, c.c.status == source, not_ended(now))
        .values(status=target, updated_at_ns=now, **{stamp: now})
    ).rowcount
    if got == 1:
        contract_events.record(conn, contract_id, verb, at_ns=now)  # "paused" / "resumed"
    row = get_contract(conn, contract_id)
    if got == 1 or (row.status == target and not has_ended(row, now)):
        return _answer(row, repeated=got == 0)
    if has_ended(row, now):
        raise ApiError(409, f"contract ended (endsAtNs {row.ends_at_ns}); it cannot be {verb}")
    raise ApiError(409, f"only a {source} contract can be {verb} (this one is {row.status})")


def pause(conn: sa.Connection, contract_id: str, provider_pubkey: str | None = None) -> dict[str, Any]:
    """provisioned -> paused; only a provisioned contract that has not ended can be paused."""
    return _switch(conn, contract_id, provider_pubkey, source="provisioned", target="paused", stamp="paused_at_ns",
                   verb="paused")


def resume(conn: sa.Connection, contract_id: str, provider_pubkey: str | None = None) -> dict[str, Any]:
    """paused -> provisioned; resuming a provisioned contract is a repeat."""
    return _switch(conn, contract_id, provider_pubkey, source="paused", target="provisioned", stamp="resumed_at_ns",
                   verb="resumed")
