"""Health-based routing (SPEC.md "Future Enhancements" 2): skip agents whose provisions keep failing.

Every `failed` report adds one to the reporting agent's streak (`consecutive_failures`), every
`provisioned` report sets it back to 0. An agent is *unhealthy* while its streak is at least
`unhealthy_after_failures` (default 3) and its last failure is younger than `failure_cooldown_seconds`
(default 600 s: after that it gets one more chance, and one more failure makes it unhealthy again).
An unhealthy agent is *passed over* (claim and pending-provision offer it only the contracts it already
holds) while another agent of its pool is online and healthy; with no such agent it keeps working, since
a contract provisioned late beats one not provisioned.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pool_api.dispatch_rules import DispatchRules
from pool_api.tables import agent_delegations as d


def unhealthy_clause(table: sa.Table | Any, now: int, rules: DispatchRules) -> sa.ColumnElement[bool]:
    """SQL: the delegation row (of `table`, agent_delegations or an alias) is unhealthy at `now`."""
    return sa.and_(table.c.consecutive_failures >= rules.unhealthy_after_failures,
                   sa.func.coalesce(table.c.last_failure_ns, 0) >= now - rules.failure_cooldown_ns)


def is_unhealthy(row: Any, now: int, rules: DispatchRules) -> bool:
    """`unhealthy_clause` for a fetched delegation row."""
    return ((row.consecutive_failures or 0) >= rules.unhealthy_after_failures
            and row.last_failure_ns is not None and row.last_failure_ns >= now - rules.failure_cooldown_ns)


def record_failure(conn: sa.Connection, agent_pubkey: str, now: int) -> None:
    conn.execute(sa.update(d).where(d.c.agent_pubkey == agent_pubkey)
                 .values(consecutive_failures=d.c.consecutive_failures + 1, last_failure_ns=now))


_SUCCESS = (sa.update(d).where(d.c.agent_pubkey == sa.bindparam("p_agent"), d.c.consecutive_failures != 0)
            .values(consecutive_failures=0))  # built once: every provisioned report runs it


def record_success(conn: sa.Connection, agent_pubkey: str) -> None:
    conn.execute(_SUCCESS, {"p_agent": agent_pubkey})
