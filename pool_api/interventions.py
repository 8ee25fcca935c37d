"""The provider's safe actions on a contract in flight (the console's Release and Retry now).

Each is one conditional UPDATE whose WHERE clause is the rule, plus its event in the same transaction;
when it does not apply, the row is read to say why (409). Another provider's contract is 404.

- release: free the lock whoever holds it (an agent that hung, or died with a long TTL left). The agent, if
  it is still working, is told "not the lock holder" on its report, locks again and reports; meanwhile
  another agent may take the contract, and reconcile removes a duplicate instance.
- retry now: a contract that is still open (accepted or provisioning, paid, not ended) and not locked gets
  failureCount 0 (it leaves the "stuck" filter) and is offered to every agent of its pool at once. The last
  error stays on the contract and in the history. An agent's own local backoff is its own to keep.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api import contract_events, wakeups
from pool_api.contracts import PROVISIONABLE, has_ended, not_ended
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.tables import contracts as c


def owned_contract(conn: sa.Connection, provider_pubkey: str, contract_id: str) -> Any:
    """The contract row of this provider; 404 for an unknown one or another provider's (no existence leak)."""
    row = conn.execute(sa.select(c).where(c.c.contract_id == contract_id, c.c.provider_pubkey == provider_pubkey)).first()
    if row is None:
        raise ApiError(404, "unknown contract")
    return row


def release_lock(conn: sa.Connection, provider_pubkey: str, contract_id: str, holder: str) -> dict[str, Any]:
    """Free the lock that `holder` (the agent the confirm page showed) holds; 409 when the lock changed hands."""
    owned_contract(conn, provider_pubkey, contract_id)
    now = now_ns()
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, c.c.lock_agent == holder)
        .values(lock_agent=None, lock_at_ns=None, lock_expires_ns=None, lock_since_ns=None, updated_at_ns=now)
    ).rowcount
    if got == 1:
        contract_events.record(conn, contract_id, "provider-released", detail={"agent": holder}, at_ns=now)
        wakeups.notify(conn, provider_pubkey)  # waiting claims look again once this commits
        return {"contractId": contract_id, "released": True}
    row = owned_contract(conn, provider_pubkey, contract_id)
    if row.lock_agent is None:
        raise ApiError(409, "the contract is not locked any more: nothing to release")
    raise ApiError(409, "the lock changed hands since the confirmation page: another agent holds it now; "
                        "look at the contract again")


def retry_now(conn: sa.Connection, provider_pubkey: str, contract_id: str) -> dict[str, Any]:
    """Reset the failure count of an open, unlocked contract (see the module docstring)."""
    before = owned_contract(conn, provider_pubkey, contract_id)
    now = now_ns()
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, c.c.status.in_(PROVISIONABLE),
                           c.c.payment_status == "succeeded", not_ended(now),
                           sa.or_(c.c.lock_agent.is_(None), c.c.lock_expires_ns < now))
        .values(failure_count=0, lock_agent=None, lock_at_ns=None, lock_expires_ns=None, lock_since_ns=None,
                updated_at_ns=now)
    ).rowcount
    if got == 1:
        contract_events.record(conn, contract_id, "provider-retry", detail={"failureCount": before.failure_count},
                               at_ns=now)
        wakeups.notify(conn, provider_pubkey)
        return {"contractId": contract_id, "retried": True}
    row = owned_contract(conn, provider_pubkey, contract_id)
    if row.status not in PROVISIONABLE:
        raise ApiError(409, f"only an open contract can be retried; this one is {row.status}")
    if row.payment_status != "succeeded":
        raise ApiError(409, f"the contract is not paid (payment {row.payment_status}): no agent would take it")
    if has_ended(row, now):
        raise ApiError(409, f"the contract ended (endsAtNs {row.ends_at_ns})")
    raise ApiError(409, "an agent holds the contract's lock: release the lock first, or wait for it to expire")
