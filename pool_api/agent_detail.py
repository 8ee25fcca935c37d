"""One agent as the console shows it: what its heartbeat said, and how its contracts are doing.

The heartbeat's free-form parts (capacity, and the host inventory and provisioner list where the schema has
them) are shown as stored, secrets masked. Errors are the last failures this agent reported; health is
that of the running or paused contracts it provisioned.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dc_common.redact import redact_mapping
from pool_api.contracts import HAS_INSTANCE, health_json
from pool_api.errors import ApiError
from pool_api.pools import agent_json
from pool_api.tables import agent_delegations as d
from pool_api.tables import agent_pools as p
from pool_api.tables import contracts as c

DIALECT = "pool-api"  # every agent of this server speaks its dialect (the live API's agents: decent-cloud)
LAST_ERRORS = 10
HEALTH_ROWS = 50


def _shown(value: Any) -> Any:
    return redact_mapping(value) if isinstance(value, dict) else value


def agent_detail(conn: sa.Connection, provider_pubkey: str, agent_pubkey: str, online_window_ns: int,
                 now: int) -> dict[str, Any]:
    """The agent of this provider (404 for an unknown one or another provider's), with errors and health."""
    row = conn.execute(sa.select(d, p.c.name.label("pool_name")).select_from(d.outerjoin(p, p.c.pool_id == d.c.pool_id))
                       .where(d.c.agent_pubkey == agent_pubkey.lower(), d.c.provider_pubkey == provider_pubkey)).first()
    if row is None:
        raise ApiError(404, "unknown agent")
    m = row._mapping
    out = agent_json(row, now, online_window_ns)
    inventory = m.get("inventory")
    provisioners = m.get("provisioners")
    if provisioners is None and isinstance(inventory, dict):
        provisioners = inventory.get("provisioners")
    out.update(poolName=m["pool_name"], dialect=DIALECT, capacity=_shown(m["capacity"]),
               inventory=_shown(inventory),
               provisioners=[_shown(x) for x in provisioners] if isinstance(provisioners, list) else None)
    errors = conn.execute(
        sa.select(c.c.contract_id, c.c.offering_id, c.c.status, c.c.failure_count, c.c.last_error, c.c.last_failed_at_ns)
        .where(c.c.provider_pubkey == provider_pubkey, c.c.last_failed_by == row.agent_pubkey)
        .order_by(c.c.last_failed_at_ns.desc(), c.c.contract_id).limit(LAST_ERRORS)
    ).all()
    out["lastErrors"] = [{"contractId": r.contract_id, "offeringId": r.offering_id, "status": r.status,
                          "failureCount": r.failure_count, "error": r.last_error, "atNs": r.last_failed_at_ns}
                         for r in errors]
    mine = sa.and_(c.c.provider_pubkey == provider_pubkey, c.c.provisioned_by == row.agent_pubkey,
                   c.c.status.in_(HAS_INSTANCE))
    counts = conn.execute(sa.select(c.c.health_status, sa.func.count()).where(mine).group_by(c.c.health_status)).all()
    out["healthCounts"] = {status or "none": int(n) for status, n in counts}
    worst_first = sa.case((c.c.health_status == "unhealthy", 0), (c.c.health_status == "unknown", 1),
                          (c.c.health_status.is_(None), 2), else_=3)
    rows = conn.execute(sa.select(c).where(mine).order_by(worst_first, c.c.contract_id).limit(HEALTH_ROWS)).all()
    out["contracts"] = [{"contractId": r.contract_id, "offeringId": r.offering_id, "status": r.status,
                         "health": health_json(r._mapping)} for r in rows]
    out["locks"] = conn.execute(sa.select(sa.func.count()).where(
        c.c.provider_pubkey == provider_pubkey, c.c.lock_agent == row.agent_pubkey, c.c.lock_expires_ns >= now)
    ).scalar_one()
    return out
