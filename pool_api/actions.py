"""Tenant requests on a running instance, relayed to agents: password resets and SSH key rotations.

The provider (for the tenant) asks; the request waits in `contract_requests` as `pending` until an agent
lists it, acts on the instance and reports `done` or `failed`. Which agents see a pending request: the
one that provisioned the contract; another agent of the contract's pool (the pool its offering routes
to) only while that one is gone (revoked, unknown, or no heartbeat for 3 heartbeat periods).

Password resets: the tenant's X25519 public key travels with the request; the agent seals the new
password to it (PyNaCl SealedBox) and reports only the ciphertext, which is all pool_api ever stores. A
new reset supersedes a pending one (its requestId is then 409). SSH key rotations: one at a time per
contract (a second while one is pending is 409, since the agent may be installing the first); when
done, the contract's requester key becomes the new key.

Reports are one conditional UPDATE on the pending request: the same requestId again is 200
`repeated: true` (the first outcome stays), an unknown or superseded requestId 409.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import sqlalchemy as sa

from pool_api import contract_events
from pool_api.auth import Caller
from pool_api.contracts import agent_pool, get_contract, has_ended, load_for_agent, not_ended
from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.routing import routes_to_clause
from pool_api.tables import agent_delegations as d
from pool_api.tables import contract_requests as r
from pool_api.tables import contracts as c
from pool_api.tables import offerings as o

Kind = Literal["password-reset", "ssh-key-rotation"]
PASSWORD_RESET: Kind = "password-reset"
SSH_KEY_ROTATION: Kind = "ssh-key-rotation"


def _new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def _claim_running(conn: sa.Connection, contract_id: str, provider_pubkey: str | None, what: str) -> Any:
    """Lock the contract row (so concurrent requests on it queue) if it is provisioned and not ended."""
    row = get_contract(conn, contract_id)
    if provider_pubkey is not None and row.provider_pubkey != provider_pubkey:
        raise ApiError(404, "unknown contract")
    now = now_ns()
    got = conn.execute(
        sa.update(c).where(c.c.contract_id == contract_id, c.c.status == "provisioned", not_ended(now))
        .values(updated_at_ns=now)
    ).rowcount
    if got == 0:
        row = get_contract(conn, contract_id)
        if has_ended(row, now):
            raise ApiError(409, f"contract ended (endsAtNs {row.ends_at_ns}): no {what}")
        hint = ": resume it first" if row.status == "paused" else ""
        raise ApiError(409, f"{what} needs a provisioned (running) contract; this one is {row.status}{hint}")
    return get_contract(conn, contract_id)


def request_password_reset(conn: sa.Connection, contract_id: str, recipient_public_key: str,
                           provider_pubkey: str | None = None) -> dict[str, Any]:
    """A new pending reset for `recipient_public_key` (X25519, hex); a pending older one is superseded."""
    _claim_running(conn, contract_id, provider_pubkey, "password reset")
    now = now_ns()
    conn.execute(sa.update(r).where(r.c.contract_id == contract_id, r.c.kind == PASSWORD_RESET, r.c.status == "pending")
                 .values(status="superseded", completed_at_ns=now))
    request_id = _new_request_id()
    conn.execute(sa.insert(r).values(request_id=request_id, contract_id=contract_id, kind=PASSWORD_RESET,
                                     status="pending", recipient_public_key=recipient_public_key.lower(),
                                     requested_at_ns=now))
    contract_events.record(conn, contract_id, "password-reset-requested", detail={"requestId": request_id}, at_ns=now)
    return {"requestId": request_id, "contractId": contract_id, "requestedAtNs": now}


def request_ssh_key_rotation(conn: sa.Connection, contract_id: str, new_key: str,
                             provider_pubkey: str | None = None) -> dict[str, Any]:
    """A pending rotation to `new_key` (a checked OpenSSH key line); 409 while another one is pending."""
    row = _claim_running(conn, contract_id, provider_pubkey, "SSH key rotation")
    pending = conn.execute(sa.select(r.c.request_id).where(
        r.c.contract_id == contract_id, r.c.kind == SSH_KEY_ROTATION, r.c.status == "pending")).scalar()
    if pending is not None:
        raise ApiError(409, f"an SSH key rotation is already pending for this contract (requestId {pending}); "
                            "wait until the agent reports it")
    if (row.requester_ssh_pubkey or "").strip() == new_key:
        raise ApiError(409, "newKey is already the contract's SSH key")
    now = now_ns()
    request_id = _new_request_id()
    conn.execute(sa.insert(r).values(request_id=request_id, contract_id=contract_id, kind=SSH_KEY_ROTATION,
                                     status="pending", new_key=new_key, requested_at_ns=now))
    contract_events.record(conn, contract_id, "ssh-key-rotation-requested", detail={"requestId": request_id}, at_ns=now)
    return {"requestId": request_id, "contractId": contract_id, "requestedAtNs": now}


# --- what an agent sees ---------------------------------------------------------------------------

def _visible_to(caller: Caller, conn: sa.Connection, stale_before_ns: int) -> sa.ColumnElement[bool]:
    """The agent provisioned the contract, or it is of the agent's pool and its provisioner is gone."""
    mine = c.c.provisioned_by == caller.pubkey
    provisioner = d.alias("provisioner")
    gone = ~sa.exists().where(provisioner.c.agent_pubkey == c.c.provisioned_by,
                              provisioner.c.revoked_at_ns.is_(None),
                              provisioner.c.last_seen_ns >= stale_before_ns)
    if caller.pool_id is None:  # a legacy agent acts for all of its provider's contracts
        return sa.or_(mine, gone)
    pool = agent_pool(conn, caller)
    if pool is None:
        return mine
    return sa.or_(mine, sa.and_(routes_to_clause(o, pool._mapping), gone))


def pending_for_agent(conn: sa.Connection, caller: Caller, kind: Kind, stale_after_ns: int,
                      limit: int = 500, now: int | None = None) -> list[dict[str, Any]]:
    """Pending requests of `kind` this agent should carry out, oldest first."""
    now = now_ns() if now is None else now
    q = (
        sa.select(r, c.c.instance_details, c.c.requester_ssh_pubkey)
        .select_from(r.join(c, c.c.contract_id == r.c.contract_id).join(o, o.c.offering_id == c.c.offering_id))
        .where(r.c.kind == kind, r.c.status == "pending", c.c.provider_pubkey == caller.provider_pubkey,
               c.c.status == "provisioned", not_ended(now), _visible_to(caller, conn, now - stale_after_ns))
        .order_by(r.c.requested_at_ns, r.c.request_id)
        .limit(limit)
    )
    out = []
    for row in conn.execute(q):
        details = row.instance_details if isinstance(row.instance_details, dict) else {}
        item: dict[str, Any] = {"contractId": row.contract_id, "requestId": row.request_id,
                                "externalId": details.get("externalId")}
        if kind == PASSWORD_RESET:
            item.update(username=None, recipientPublicKey=row.recipient_public_key)
        else:
            item.update(newKey=row.new_key, oldKey=row.requester_ssh_pubkey)
        item["requestedAtNs"] = row.requested_at_ns
        out.append(item)
    return out


# --- reports --------------------------------------------------------------------------------------

def _report(conn: sa.Connection, caller: Caller, contract_id: str, kind: Kind, request_id: str,
            values: dict[str, Any], on_done: Any = None) -> dict[str, Any]:
    load_for_agent(conn, caller, contract_id)
    now = now_ns()
    status = "failed" if values.get("error") is not None else "done"
    got = conn.execute(
        sa.update(r).where(r.c.request_id == request_id, r.c.contract_id == contract_id, r.c.kind == kind,
                           r.c.status == "pending")
        .values(status=status, completed_at_ns=now, completed_by=caller.pubkey, **values)
        .returning(r.c.new_key)
    ).first()
    if got is not None:
        outcome = {"requestId": request_id, **(contract_events.failed_detail(values["error"]) if status == "failed" else {})}
        contract_events.record(conn, contract_id, f"{kind}-{status}", agent=caller.pubkey, detail=outcome, at_ns=now)
        if status == "done" and on_done is not None:
            on_done(got)
        return {"contractId": contract_id, "requestId": request_id, "status": status, "repeated": False}
    row = conn.execute(sa.select(r).where(r.c.request_id == request_id, r.c.contract_id == contract_id,
                                          r.c.kind == kind)).first()
    if row is None:
        raise ApiError(409, f"unknown requestId {request_id!r} for this contract's {kind}")
    if row.status == "superseded":
        raise ApiError(409, f"requestId {request_id!r} was superseded by a newer {kind} request")
    return {"contractId": contract_id, "requestId": request_id, "status": row.status, "repeated": True}


def report_password(conn: sa.Connection, caller: Caller, contract_id: str, request_id: str,
                    encrypted_password: str | None, error: str | None) -> dict[str, Any]:
    """The agent set the new password (`encrypted_password`, sealed to the tenant) or could not (`error`)."""
    values = {"encrypted_password": encrypted_password} if error is None else {"error": error}
    return _report(conn, caller, contract_id, PASSWORD_RESET, request_id, values)


def report_ssh_key_rotation(conn: sa.Connection, caller: Caller, contract_id: str, request_id: str,
                            error: str | None) -> dict[str, Any]:
    """The agent installed the new key (the contract's requester key becomes it) or could not (`error`)."""
    def adopt_key(row: Any) -> None:
        conn.execute(sa.update(c).where(c.c.contract_id == contract_id)
                     .values(requester_ssh_pubkey=row.new_key, updated_at_ns=now_ns()))

    values = {} if error is None else {"error": error}
    return _report(conn, caller, contract_id, SSH_KEY_ROTATION, request_id, values, on_done=adopt_key)


def latest_password_reset(conn: sa.Connection, contract_id: str) -> Any:
    """The newest password reset of the contract that is not superseded (pending, done or failed), or None."""
    get_contract(conn, contract_id)
    return conn.execute(
        sa.select(r).where(r.c.contract_id == contract_id, r.c.kind == PASSWORD_RESET, r.c.status != "superseded")
        .order_by(r.c.requested_at_ns.desc(), r.c.request_id.desc()).limit(1)
    ).first()
