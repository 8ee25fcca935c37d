"""Migration 0005 (dispatch) on a database at 0004 that holds a pool, an agent and a contract (PostgreSQL and
SQLite): existing rows get no capacity, no failures, no fallback (delay 300 s) and no sticky agent; it
downgrades and upgrades again."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from pool_api import db

P, A = "ab" * 32, "cd" * 32


def test_upgrade_0004_to_0005_keeps_rows_and_defaults(db_url: str) -> None:
    cfg = db.alembic_config()
    engine = db.create_engine(db_url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            conn.execute(sa.text("INSERT INTO providers (pubkey, created_at_ns) VALUES (:p, 1)"), {"p": P})
            conn.execute(sa.text("INSERT INTO agent_pools (pool_id, provider_pubkey, name, location, provisioner_type, "
                                 "created_at_ns) VALUES ('pool_1', :p, 'eu', 'europe', 'proxmox', 1)"), {"p": P})
            conn.execute(sa.text("INSERT INTO agent_delegations (agent_pubkey, provider_pubkey, pool_id, created_at_ns) "
                                 "VALUES (:a, :p, 'pool_1', 1)"), {"a": A, "p": P})
            conn.execute(sa.text("INSERT INTO offerings (offering_id, provider_pubkey, name, product_type, "
                                 "datacenter_country, created_at_ns) VALUES ('o', :p, 'o', 'compute', 'DE', 1)"), {"p": P})
            conn.execute(sa.text("INSERT INTO contracts (contract_id, provider_pubkey, offering_id, status, payment_status, "
                                 "created_at_ns, updated_at_ns, failure_count) VALUES ('c', :p, 'o', 'accepted', "
                                 "'succeeded', 1, 1, 0)"), {"p": P})
            command.upgrade(cfg, "0005")
            agent = conn.execute(sa.text("SELECT consecutive_failures, free_slots, max_concurrent, last_failure_ns, "
                                         "claim_waiting_until_ns FROM agent_delegations")).one()
            assert tuple(agent) == (0, None, None, None, None)
            assert tuple(conn.execute(sa.text("SELECT fallback_pool_id, fallback_after_seconds FROM agent_pools")).one()) \
                == (None, 300)
            assert tuple(conn.execute(sa.text("SELECT sticky_agent, sticky_until_ns FROM contracts")).one()) == (None, None)
            assert conn.execute(sa.text("SELECT count(*) FROM provision_events")).scalar_one() == 0
            command.downgrade(cfg, "0004")
            assert "fallback_pool_id" not in {c["name"] for c in sa.inspect(conn).get_columns("agent_pools")}
            command.upgrade(cfg, "0005")
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0005"
    finally:
        engine.dispose()
