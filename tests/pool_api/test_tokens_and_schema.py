"""Token lifecycle and the migrated schema, on the database functions directly (PostgreSQL and SQLite)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from pool_api import db, tokens
from pool_api.envelope import ApiError
from pool_api.tables import agent_pools, agent_setup_tokens, metadata, providers

NOW = 1_800_000_000 * 10**9


@pytest.fixture
def pool(engine: sa.Engine) -> SimpleNamespace:
    values = dict(pool_id="pool_1", provider_pubkey="ab" * 32, name="eu", location="europe",
                  provisioner_type="proxmox", created_at_ns=NOW)
    with engine.begin() as conn:
        conn.execute(sa.insert(providers).values(pubkey="ab" * 32, created_at_ns=NOW))
        conn.execute(sa.insert(agent_pools).values(**values))
    return SimpleNamespace(**values)


class TestSchema:
    def test_migration_matches_tables(self, engine: sa.Engine) -> None:
        """The Alembic revision creates exactly tables.py's schema (no autogenerate differences)."""
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []

    def test_migrate_is_idempotent(self, engine: sa.Engine) -> None:
        """Running the migrations again on a migrated database is a no-op."""
        db.migrate(engine)
        head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == head


class TestTokenLifecycle:
    def test_token_format_and_hash_storage(self, engine: sa.Engine, pool: SimpleNamespace) -> None:
        """Tokens are apt_<location>_<32 hex> (128 bits); only their SHA-256 is stored."""
        with engine.begin() as conn:
            token, entry = tokens.create_token(conn, pool, "node-1", 24, now=NOW)
            stored = conn.execute(sa.select(agent_setup_tokens)).one()
        assert re.fullmatch(r"apt_europe_[0-9a-f]{32}", token)
        assert stored.token_hash == tokens.token_hash(token) == entry["tokenId"]
        assert token not in {str(v) for v in stored}
        assert entry["expiresAtNs"] == NOW + 24 * tokens.HOUR_NS

    def test_consume_once(self, engine: sa.Engine, pool: SimpleNamespace) -> None:
        """A token is consumed once; a second use is 410 and unknown tokens are 404."""
        with engine.begin() as conn:
            token, _ = tokens.create_token(conn, pool, None, 1, now=NOW)
            assert tokens.consume(conn, token, "cd" * 32, now=NOW + 1) == "pool_1"
            assert tokens.list_pending(conn, "pool_1", now=NOW + 2) == []
        for candidate, status in ((token, 410), ("apt_europe_" + "0" * 32, 404)):
            with pytest.raises(ApiError) as err, engine.begin() as conn:
                tokens.consume(conn, candidate, "ef" * 32, now=NOW + 2)
            assert err.value.status == status

    def test_expired_token_is_410(self, engine: sa.Engine, pool: SimpleNamespace) -> None:
        """After expiresInHours the token is refused with 410 and no longer listed."""
        with engine.begin() as conn:
            token, _ = tokens.create_token(conn, pool, None, 1, now=NOW)
            assert len(tokens.list_pending(conn, "pool_1", now=NOW)) == 1
            assert tokens.list_pending(conn, "pool_1", now=NOW + tokens.HOUR_NS) == []
        with pytest.raises(ApiError) as err, engine.begin() as conn:
            tokens.consume(conn, token, "cd" * 32, now=NOW + tokens.HOUR_NS)
        assert err.value.status == 410 and "expired" in err.value.message

    def test_sweep_deletes_expired_unused_only(self, engine: sa.Engine, pool: SimpleNamespace) -> None:
        """The hourly sweep removes expired unused tokens, keeps used and live ones, and is idempotent."""
        with engine.begin() as conn:
            expired, _ = tokens.create_token(conn, pool, "expired", 1, now=NOW)
            used, _ = tokens.create_token(conn, pool, "used", 1, now=NOW)
            live, _ = tokens.create_token(conn, pool, "live", 48, now=NOW)
            tokens.consume(conn, used, "cd" * 32, now=NOW + 1)
        later = NOW + 2 * tokens.HOUR_NS
        with engine.begin() as conn:
            assert tokens.sweep_expired(conn, now=later) == 1
            assert tokens.sweep_expired(conn, now=later) == 0
            labels = set(conn.execute(sa.select(agent_setup_tokens.c.label)).scalars())
        assert labels == {"used", "live"}

    def test_delete_by_token_or_id(self, engine: sa.Engine, pool: SimpleNamespace) -> None:
        """A provider deletes a token by the token itself or its tokenId; another provider cannot."""
        with engine.begin() as conn:
            t1, _ = tokens.create_token(conn, pool, None, 1, now=NOW)
            t2, e2 = tokens.create_token(conn, pool, None, 1, now=NOW)
            with pytest.raises(ApiError):
                tokens.delete_token(conn, "ff" * 32, t1)
            tokens.delete_token(conn, pool.provider_pubkey, t1)
            tokens.delete_token(conn, pool.provider_pubkey, e2["tokenId"])
            assert tokens.list_pending(conn, "pool_1", now=NOW) == []


def test_upgrade_to_0003_marks_existing_contracts_as_maybe_locked_before(pg_url: str) -> None:
    """Contracts from before the first-lock column may have been locked by older code: after the upgrade
    their first lock does not count as the first ever (firstLockedAtNs 0), so agents still run find()."""
    from alembic import command

    from pool_api import db

    cfg = db.alembic_config()
    engine = db.create_engine(pg_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(sa.text("INSERT INTO providers (pubkey, created_at_ns) VALUES (:p, 1)"), {"p": "ab" * 32})
        conn.execute(sa.text("INSERT INTO offerings (offering_id, provider_pubkey, name, product_type, "
                             "datacenter_country, created_at_ns) VALUES ('o', :p, 'o', 'compute', 'DE', 1)"),
                     {"p": "ab" * 32})
        conn.execute(sa.text("INSERT INTO contracts (contract_id, provider_pubkey, offering_id, status, payment_status, "
                             "created_at_ns, updated_at_ns) VALUES ('old', :p, 'o', 'accepted', 'succeeded', 1, 1)"),
                     {"p": "ab" * 32})
        command.upgrade(cfg, "head")
        assert conn.execute(sa.text("SELECT first_locked_at_ns FROM contracts WHERE contract_id='old'")).scalar_one() == 0
    engine.dispose()
