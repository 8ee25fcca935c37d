"""SQLite state of the live-API fake (tests/support/live_api.py), so a restart keeps everything.

One file, one connection, autocommit: the fake serves from one event loop, so statements never
interleave, and every statement is on disk when it returns (a test may SIGKILL the process).
Contract ids, pubkeys and agent keys are stored as lowercase hex, as the server prints them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS providers (
    pubkey TEXT PRIMARY KEY,
    auto_accept INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS pools (
    pool_id TEXT PRIMARY KEY,
    provider_pubkey TEXT NOT NULL,
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    provisioner_type TEXT NOT NULL,
    upgrade_to_version TEXT,
    created_at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS setup_tokens (
    token TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    label TEXT,
    expires_at_ns INTEGER NOT NULL,
    used_at_ns INTEGER,
    used_by_agent TEXT
);
CREATE TABLE IF NOT EXISTS delegations (
    agent_pubkey TEXT PRIMARY KEY,
    provider_pubkey TEXT NOT NULL,
    pool_id TEXT,
    permissions TEXT NOT NULL,
    label TEXT,
    revoked_at_ns INTEGER,
    created_at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS heartbeats (
    agent_pubkey TEXT PRIMARY KEY,
    provider_pubkey TEXT NOT NULL,
    last_heartbeat_ns INTEGER NOT NULL,
    last_body TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offerings (
    offering_id TEXT NOT NULL,
    provider_pubkey TEXT NOT NULL,
    cpu_cores INTEGER,
    memory_amount TEXT,
    storage_capacity TEXT,
    provisioner_type TEXT,
    provisioner_config TEXT,
    post_provision_script TEXT,
    agent_pool_id TEXT,
    datacenter_country TEXT,
    PRIMARY KEY (provider_pubkey, offering_id)
);
CREATE TABLE IF NOT EXISTS contracts (
    contract_id TEXT PRIMARY KEY,
    provider_pubkey TEXT NOT NULL,
    offering_id TEXT NOT NULL,
    requester_pubkey TEXT NOT NULL,
    requester_ssh_pubkey TEXT NOT NULL,
    requester_contact TEXT NOT NULL,
    instance_config TEXT,
    status TEXT NOT NULL,
    payment_status TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    payment_amount_e9s INTEGER NOT NULL,
    end_timestamp_ns INTEGER,
    created_at_ns INTEGER NOT NULL,
    status_updated_at_ns INTEGER,
    provisioning_instance_details TEXT,
    provisioning_completed_at_ns INTEGER,
    has_provisioning_details INTEGER NOT NULL DEFAULT 0,
    root_password TEXT,
    provisioning_failure_reason TEXT,
    refunded INTEGER NOT NULL DEFAULT 0,
    lock_agent TEXT,
    lock_at_ns INTEGER,
    lock_expires_ns INTEGER,
    terminated_at_ns INTEGER,
    pause_reason TEXT,
    password_reset_requested_at_ns INTEGER,
    pending_ssh_pubkey TEXT,
    ssh_key_rotation_requested_at_ns INTEGER
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    contract_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    agent_pubkey TEXT,
    at_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS health_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    contract_id TEXT NOT NULL,
    checked_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    latency_ms INTEGER,
    details TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    method TEXT NOT NULL,
    agent_pubkey TEXT,
    http_status INTEGER NOT NULL,
    at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    kind TEXT NOT NULL,
    remaining INTEGER NOT NULL,
    spec TEXT NOT NULL
);
"""

CONTRACT_ROW_COLUMNS = (
    "contract_id", "provider_pubkey", "offering_id", "requester_pubkey", "requester_ssh_pubkey",
    "requester_contact", "instance_config", "status", "payment_status", "payment_method",
    "payment_amount_e9s", "end_timestamp_ns", "created_at_ns",
)
# Columns the control endpoint may overwrite directly (no state machine: that is the point).
CONTRACT_MUTABLE = frozenset({
    "status", "payment_status", "end_timestamp_ns", "pause_reason", "requester_ssh_pubkey",
    "instance_config", "payment_amount_e9s", "lock_agent", "lock_expires_ns",
})


def now_ns() -> int:
    return time.time_ns()


class LiveStore:
    """All persistent state of the fake; methods are plain reads and writes, the rules live in live_api."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = self.conn.execute(sql, args).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    def _update(self, table: str, key: str, key_value: str, fields: dict[str, Any]) -> int:
        if not fields:
            return 0
        sets = ", ".join(f"{name} = ?" for name in fields)
        cur = self.conn.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (*fields.values(), key_value))
        return cur.rowcount

    # providers, pools, tokens, delegations
    def upsert_provider(self, pubkey: str, auto_accept: bool) -> None:
        self.conn.execute("INSERT INTO providers (pubkey, auto_accept) VALUES (?, ?) "
                          "ON CONFLICT(pubkey) DO UPDATE SET auto_accept = excluded.auto_accept",
                          (pubkey, int(auto_accept)))

    def provider_auto_accept(self, pubkey: str) -> bool:
        row = self._one("SELECT auto_accept FROM providers WHERE pubkey = ?", pubkey)
        return True if row is None else bool(row["auto_accept"])

    def insert_pool(self, pool: dict[str, Any]) -> None:
        self.conn.execute("INSERT INTO pools (pool_id, provider_pubkey, name, location, provisioner_type, "
                          "upgrade_to_version, created_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (pool["pool_id"], pool["provider_pubkey"], pool["name"], pool["location"],
                           pool["provisioner_type"], pool.get("upgrade_to_version"), now_ns()))

    def pool(self, pool_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM pools WHERE pool_id = ?", pool_id)

    def set_pool_upgrade(self, pool_id: str, version: str | None) -> int:
        return self._update("pools", "pool_id", pool_id, {"upgrade_to_version": version})

    def insert_token(self, token: str, pool_id: str, label: str | None, expires_at_ns: int) -> None:
        self.conn.execute("INSERT INTO setup_tokens (token, pool_id, label, expires_at_ns) VALUES (?, ?, ?, ?)",
                          (token, pool_id, label, expires_at_ns))

    def consume_token(self, token: str, agent_pubkey: str) -> tuple[dict[str, Any] | None, str | None]:
        """Mark an unused, unexpired token used (agent_pools.rs validate_and_use_setup_token)."""
        now = now_ns()
        cur = self.conn.execute("UPDATE setup_tokens SET used_at_ns = ?, used_by_agent = ? "
                                "WHERE token = ? AND used_at_ns IS NULL AND expires_at_ns > ?",
                                (now, agent_pubkey, token, now))
        if cur.rowcount == 1:
            return self._one("SELECT * FROM setup_tokens WHERE token = ?", token), None
        row = self._one("SELECT * FROM setup_tokens WHERE token = ?", token)
        if row is None:
            return None, "Invalid setup token"
        if row["used_at_ns"] is not None:
            return None, "Setup token already used"
        if row["expires_at_ns"] <= now:
            return None, "Setup token expired"
        return None, "Setup token validation failed"

    def upsert_delegation(self, agent_pubkey: str, provider_pubkey: str, pool_id: str | None,
                          permissions: list[str], label: str | None) -> None:
        self.conn.execute(
            "INSERT INTO delegations (agent_pubkey, provider_pubkey, pool_id, permissions, label, created_at_ns) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(agent_pubkey) DO UPDATE SET "
            "provider_pubkey = excluded.provider_pubkey, pool_id = excluded.pool_id, "
            "permissions = excluded.permissions, label = excluded.label, revoked_at_ns = NULL",
            (agent_pubkey, provider_pubkey, pool_id, json.dumps(permissions), label, now_ns()))

    def active_delegation(self, agent_pubkey: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM delegations WHERE agent_pubkey = ? AND revoked_at_ns IS NULL", agent_pubkey)
        if row is not None:
            row["permissions"] = json.loads(row["permissions"])
        return row

    def revoke_delegation(self, agent_pubkey: str) -> int:
        return self.conn.execute("UPDATE delegations SET revoked_at_ns = ? WHERE agent_pubkey = ? "
                                 "AND revoked_at_ns IS NULL", (now_ns(), agent_pubkey)).rowcount

    def set_permissions(self, agent_pubkey: str, permissions: list[str]) -> int:
        return self._update("delegations", "agent_pubkey", agent_pubkey, {"permissions": json.dumps(permissions)})

    def record_heartbeat(self, agent_pubkey: str, provider_pubkey: str, body: Any) -> None:
        self.conn.execute(
            "INSERT INTO heartbeats (agent_pubkey, provider_pubkey, last_heartbeat_ns, last_body, count) "
            "VALUES (?, ?, ?, ?, 1) ON CONFLICT(agent_pubkey) DO UPDATE SET "
            "provider_pubkey = excluded.provider_pubkey, last_heartbeat_ns = excluded.last_heartbeat_ns, "
            "last_body = excluded.last_body, count = heartbeats.count + 1",
            (agent_pubkey, provider_pubkey, now_ns(), json.dumps(body)))

    def agents(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT d.agent_pubkey, d.provider_pubkey, d.pool_id, d.permissions, d.label, "
                         "d.revoked_at_ns, h.last_heartbeat_ns, h.last_body, COALESCE(h.count, 0) AS heartbeats "
                         "FROM delegations d LEFT JOIN heartbeats h ON h.agent_pubkey = d.agent_pubkey "
                         "ORDER BY d.created_at_ns")
        for row in rows:
            row["permissions"] = json.loads(row["permissions"])
            row["last_heartbeat"] = json.loads(row.pop("last_body")) if row["last_body"] is not None else None
        return rows

    # offerings and contracts
    def insert_offering(self, offering: dict[str, Any]) -> None:
        cols = ("offering_id", "provider_pubkey", "cpu_cores", "memory_amount", "storage_capacity",
                "provisioner_type", "provisioner_config", "post_provision_script", "agent_pool_id",
                "datacenter_country")
        self.conn.execute(f"INSERT INTO offerings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          tuple(offering.get(c) for c in cols))

    def insert_contract(self, contract: dict[str, Any]) -> None:
        cols = CONTRACT_ROW_COLUMNS
        self.conn.execute(f"INSERT INTO contracts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          tuple(contract[c] for c in cols))

    def contract(self, contract_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM contracts WHERE contract_id = ?", contract_id)

    def contracts(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM contracts ORDER BY created_at_ns, contract_id")

    def update_contract(self, contract_id: str, **fields: Any) -> int:
        return self._update("contracts", "contract_id", contract_id, fields)

    def try_lock(self, contract_id: str, agent: str, ttl_ns: int) -> bool:
        """provisioning.rs acquire_provisioning_lock: free, own, or expired lock on a lockable contract."""
        now = now_ns()
        cur = self.conn.execute(
            "UPDATE contracts SET lock_agent = ?, lock_at_ns = ?, lock_expires_ns = ? "
            "WHERE contract_id = ? AND status IN ('accepted', 'provisioning') AND payment_status = 'succeeded' "
            "AND (lock_agent IS NULL OR lock_agent = ? OR lock_expires_ns < ?)",
            (agent, now, now + ttl_ns, contract_id, agent, now))
        return cur.rowcount == 1

    def unlock(self, contract_id: str, agent: str) -> bool:
        cur = self.conn.execute("UPDATE contracts SET lock_agent = NULL, lock_at_ns = NULL, lock_expires_ns = NULL "
                                "WHERE contract_id = ? AND lock_agent = ?", (contract_id, agent))
        return cur.rowcount == 1

    def pending_candidates(self, provider_pubkey: str, pool_id: str) -> list[dict[str, Any]]:
        """provisioning.rs get_pending_provision_contracts_for_pool, before the location filter."""
        return self._all(
            "SELECT c.contract_id, c.offering_id, c.requester_ssh_pubkey, c.instance_config, "
            "o.cpu_cores, o.memory_amount, o.storage_capacity, o.provisioner_type, o.provisioner_config, "
            "o.post_provision_script, o.agent_pool_id, o.datacenter_country "
            "FROM contracts c LEFT JOIN offerings o "
            "ON c.offering_id = o.offering_id AND c.provider_pubkey = o.provider_pubkey "
            "WHERE c.provider_pubkey = ? AND c.status IN ('accepted', 'provisioning') "
            "AND c.payment_status = 'succeeded' AND (c.lock_agent IS NULL OR c.lock_expires_ns < ?) "
            "AND (o.agent_pool_id = ? OR o.agent_pool_id IS NULL) ORDER BY c.created_at_ns, c.contract_id",
            provider_pubkey, now_ns(), pool_id)

    def pending_password_resets(self, provider_pubkey: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM contracts WHERE provider_pubkey = ? AND status IN ('provisioned', 'active') "
                         "AND has_provisioning_details = 1 AND password_reset_requested_at_ns IS NOT NULL "
                         "ORDER BY password_reset_requested_at_ns", provider_pubkey)

    def pending_ssh_rotations(self, provider_pubkey: str) -> list[dict[str, Any]]:
        return self._all("SELECT contract_id, pending_ssh_pubkey FROM contracts WHERE provider_pubkey = ? "
                         "AND status IN ('provisioned', 'active') AND pending_ssh_pubkey IS NOT NULL "
                         "AND ssh_key_rotation_requested_at_ns IS NOT NULL "
                         "ORDER BY ssh_key_rotation_requested_at_ns", provider_pubkey)

    # history, health checks, faults
    def add_history(self, contract_id: str, kind: str, agent_pubkey: str | None, body: dict[str, Any]) -> None:
        self.conn.execute("INSERT INTO history (contract_id, kind, agent_pubkey, at_ns, body) VALUES (?, ?, ?, ?, ?)",
                          (contract_id, kind, agent_pubkey, now_ns(), json.dumps(body)))

    def history(self, contract_id: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT kind, agent_pubkey, at_ns, body FROM history WHERE contract_id = ? ORDER BY id",
                         contract_id)
        return [{"kind": r["kind"], "agent_pubkey": r["agent_pubkey"], "at_ns": r["at_ns"], **json.loads(r["body"])}
                for r in rows]

    def add_health_check(self, contract_id: str, checked_at: int, status: str, latency_ms: int | None,
                         details: str | None) -> tuple[int, int]:
        created = now_ns()
        cur = self.conn.execute("INSERT INTO health_checks (contract_id, checked_at, status, latency_ms, details, "
                                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                                (contract_id, checked_at, status, latency_ms, details, created))
        return int(cur.lastrowid or 0), created

    def health_checks(self, contract_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM health_checks WHERE contract_id = ? ORDER BY id", contract_id)

    def add_fault(self, endpoint: str, kind: str, count: int, spec: dict[str, Any]) -> None:
        self.conn.execute("INSERT INTO faults (endpoint, kind, remaining, spec) VALUES (?, ?, ?, ?)",
                          (endpoint, kind, count, json.dumps(spec)))

    def take_fault(self, endpoint: str, when: str) -> dict[str, Any] | None:
        """The oldest armed fault for `endpoint` at stage `when`, with one use consumed."""
        for row in self._all("SELECT * FROM faults WHERE endpoint = ? AND remaining > 0 ORDER BY id", endpoint):
            spec = json.loads(row["spec"])
            if spec.get("when", "before") != when:
                continue
            self.conn.execute("UPDATE faults SET remaining = remaining - 1 WHERE id = ?", (row["id"],))
            return {"kind": row["kind"], **spec}
        return None

    def log_request(self, endpoint: str, method: str, agent_header: str | None, http_status: int) -> None:
        self.conn.execute("INSERT INTO requests (endpoint, method, agent_pubkey, http_status, at_ns) "
                          "VALUES (?, ?, ?, ?, ?)", (endpoint, method, agent_header, http_status, now_ns()))

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        if endpoint is None:
            return self._all("SELECT endpoint, method, agent_pubkey, http_status, at_ns FROM requests ORDER BY id")
        return self._all("SELECT endpoint, method, agent_pubkey, http_status, at_ns FROM requests "
                         "WHERE endpoint = ? ORDER BY id", endpoint)

    def clear_faults(self) -> None:
        self.conn.execute("DELETE FROM faults")
