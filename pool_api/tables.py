"""The schema (SPEC.md "Database Schema", adapted): one MetaData, one Table per concept.

Keys are lowercase hex TEXT, times are integer nanoseconds (BIGINT), JSON columns hold objects.
The Alembic revision in `migrations/versions/` creates exactly these tables; a test compares them.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

Json = sa.JSON(none_as_null=True)

providers = sa.Table(
    "providers", metadata,
    sa.Column("pubkey", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200)),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
)

agent_pools = sa.Table(
    "agent_pools", metadata,
    sa.Column("pool_id", sa.String(64), primary_key=True),
    sa.Column("provider_pubkey", sa.String(64), sa.ForeignKey("providers.pubkey"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("location", sa.String(16), nullable=False),
    sa.Column("provisioner_type", sa.String(16), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    # Pool priorities (migration 0005): this pool's contracts also go to the fallback pool's agents once this
    # pool has had no online agent for fallback_after_seconds (pool_api.fallback).
    sa.Column("fallback_pool_id", sa.String(64), sa.ForeignKey("agent_pools.pool_id", ondelete="SET NULL")),
    sa.Column("fallback_after_seconds", sa.Integer, nullable=False, server_default="300"),
    sa.UniqueConstraint("provider_pubkey", "name"),
)

agent_setup_tokens = sa.Table(
    "agent_setup_tokens", metadata,
    # SHA-256 hex of the token: the token itself is shown once and never stored.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("token_prefix", sa.String(64), nullable=False),
    sa.Column("pool_id", sa.String(64), sa.ForeignKey("agent_pools.pool_id", ondelete="CASCADE"), nullable=False),
    sa.Column("label", sa.String(200)),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
    sa.Column("used_at_ns", sa.BigInteger),
    sa.Column("used_by_agent", sa.String(64)),
    sa.Index(None, "pool_id"),
    sa.Index(None, "expires_at_ns"),
)

agent_delegations = sa.Table(
    "agent_delegations", metadata,
    sa.Column("agent_pubkey", sa.String(64), primary_key=True),
    sa.Column("provider_pubkey", sa.String(64), sa.ForeignKey("providers.pubkey"), nullable=False),
    # NULL = legacy agent: sees all of its provider's contracts.
    sa.Column("pool_id", sa.String(64), sa.ForeignKey("agent_pools.pool_id", ondelete="SET NULL")),
    sa.Column("label", sa.String(200)),
    sa.Column("permissions", Json),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("revoked_at_ns", sa.BigInteger),
    sa.Column("last_seen_ns", sa.BigInteger),
    sa.Column("version", sa.String(64)),
    sa.Column("provisioner_type", sa.String(16)),
    sa.Column("active_contracts", sa.Integer),
    sa.Column("capacity", Json),
    # Dispatch (migration 0005): the latest capacity (heartbeat or claim), the streak of failed provisions
    # (reset by a provisioned report), and until when a claim of this agent waits (pool_api.claims).
    sa.Column("max_concurrent", sa.Integer),
    sa.Column("free_slots", sa.Integer),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_failure_ns", sa.BigInteger),
    sa.Column("claim_waiting_until_ns", sa.BigInteger),
    # Host inventory (migration 0006): the latest heartbeat's `resources` (the live API's ResourceInventory
    # field names) plus its `provisioners` list, shown on the agent page (pool_api.agent_detail).
    sa.Column("inventory", Json),
    sa.Index(None, "provider_pubkey"),
    sa.Index(None, "pool_id"),
)

offerings = sa.Table(
    "offerings", metadata,
    sa.Column("offering_id", sa.String(128), primary_key=True),
    sa.Column("provider_pubkey", sa.String(64), sa.ForeignKey("providers.pubkey"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("product_type", sa.String(32), nullable=False),
    sa.Column("datacenter_country", sa.String(64), nullable=False),
    # country_to_region(datacenter_country), stored so pending-provision can filter in SQL.
    sa.Column("region", sa.String(16)),
    sa.Column("provisioner_type", sa.String(16)),
    sa.Column("provisioner_config", Json),
    sa.Column("agent_pool_id", sa.String(64), sa.ForeignKey("agent_pools.pool_id", ondelete="SET NULL")),
    sa.Column("price", sa.Float),
    sa.Column("cpu_cores", sa.Integer),
    sa.Column("memory_mb", sa.BigInteger),
    sa.Column("storage_gb", sa.BigInteger),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),  # active | inactive (0007)
    sa.Index(None, "provider_pubkey", "agent_pool_id"),
    sa.Index(None, "provider_pubkey", "region"),
)

contracts = sa.Table(
    "contracts", metadata,
    sa.Column("contract_id", sa.String(64), primary_key=True),
    sa.Column("provider_pubkey", sa.String(64), sa.ForeignKey("providers.pubkey"), nullable=False),
    sa.Column("offering_id", sa.String(128), sa.ForeignKey("offerings.offering_id"), nullable=False),
    sa.Column("requester_ssh_pubkey", sa.Text),
    sa.Column("instance_config", Json),
    # requested | accepted | provisioning | provisioned | paused | cancelled | terminated
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("payment_status", sa.String(16), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
    sa.Column("lock_agent", sa.String(64)),
    sa.Column("lock_at_ns", sa.BigInteger),
    sa.Column("lock_expires_ns", sa.BigInteger),
    sa.Column("lock_since_ns", sa.BigInteger),  # the current holder's unbroken lock began (renewals keep it; 0007)
    sa.Column("first_locked_at_ns", sa.BigInteger),  # set by the first lock ever taken (migration 0003)
    sa.Column("provisioned_by", sa.String(64)),
    sa.Column("provisioned_at_ns", sa.BigInteger),
    sa.Column("instance_details", Json),
    sa.Column("failure_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("last_failed_by", sa.String(64)),
    sa.Column("last_failed_at_ns", sa.BigInteger),
    sa.Column("cancelled_at_ns", sa.BigInteger),
    sa.Column("terminated_at_ns", sa.BigInteger),
    sa.Column("terminated_by", sa.String(64)),
    # Lifecycle after provisioning (migration 0004): the contract's end (None = open-ended), pauses, and the
    # last health report (its history is in contract_health).
    sa.Column("ends_at_ns", sa.BigInteger),
    sa.Column("paused_at_ns", sa.BigInteger),
    sa.Column("resumed_at_ns", sa.BigInteger),
    sa.Column("health_status", sa.String(16)),
    sa.Column("health_detail", sa.Text),
    sa.Column("health_latency_ms", sa.Float),
    sa.Column("health_checked_at_ns", sa.BigInteger),
    sa.Column("health_agent", sa.String(64)),
    # Sticky re-provisioning (migration 0005): the agent of the latest lock keeps first pick of the contract
    # until sticky_until_ns (its lock's expiry + one TTL) while it is online; cleared by release and failed.
    sa.Column("sticky_agent", sa.String(64)),
    sa.Column("sticky_until_ns", sa.BigInteger),
    # pending-provision: provider + status, oldest first.
    sa.Index(None, "provider_pubkey", "status", "created_at_ns"),
    sa.Index(None, "offering_id"),
    # the lock-expiry sweep
    sa.Index(None, "lock_expires_ns"),
)

# Every health report of an instance, the newest HEALTH_HISTORY per contract (older ones are deleted on insert).
contract_health = sa.Table(
    "contract_health", metadata,
    # BIGINT on PostgreSQL; INTEGER on SQLite, where only an INTEGER primary key autoincrements (rowid).
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("contract_id", sa.String(64), sa.ForeignKey("contracts.contract_id", ondelete="CASCADE"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("latency_ms", sa.Float),
    sa.Column("checked_at_ns", sa.BigInteger, nullable=False),
    sa.Column("agent_pubkey", sa.String(64), nullable=False),
    sa.Column("received_at_ns", sa.BigInteger, nullable=False),
    sa.Index(None, "contract_id", "id"),
)

# The history of each contract (migration 0007), append-only, written in the same transaction as the state
# change it records (pool_api.contract_events has the kinds); the provider's contract page shows it.
contract_events = sa.Table(
    "contract_events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("contract_id", sa.String(64), sa.ForeignKey("contracts.contract_id", ondelete="CASCADE"), nullable=False),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("agent_pubkey", sa.String(64)),
    sa.Column("detail", Json),
    sa.Index(None, "contract_id", "id"),
)

# What the tenant asked of a running instance, relayed to an agent: a password reset (the agent answers
# with the new password sealed to recipient_public_key; only that ciphertext is stored) or an SSH key
# rotation. status: pending -> done | failed; a newer password reset supersedes a pending one.
contract_requests = sa.Table(
    "contract_requests", metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("contract_id", sa.String(64), sa.ForeignKey("contracts.contract_id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # password-reset | ssh-key-rotation
    sa.Column("status", sa.String(16), nullable=False),  # pending | done | failed | superseded
    sa.Column("recipient_public_key", sa.String(64)),  # X25519, hex (password-reset)
    sa.Column("new_key", sa.Text),  # OpenSSH public key line (ssh-key-rotation)
    sa.Column("encrypted_password", sa.Text),  # base64 SealedBox ciphertext, never the password
    sa.Column("error", sa.Text),
    sa.Column("requested_at_ns", sa.BigInteger, nullable=False),
    sa.Column("completed_at_ns", sa.BigInteger),
    sa.Column("completed_by", sa.String(64)),
    sa.Index(None, "contract_id", "kind", "status"),
    sa.Index(None, "kind", "status"),
)

# One row per provision outcome (migration 0005), for the pools' success rate and provisioning times:
# outcome provisioned (duration_ns = first lock -> provisioned) or failed; pool_id is the reporting agent's
# pool. Rows older than EVENT_RETENTION (pool_api.provision_stats) are deleted by the hourly job.
provision_events = sa.Table(
    "provision_events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("provider_pubkey", sa.String(64), nullable=False),
    sa.Column("pool_id", sa.String(64)),
    sa.Column("agent_pubkey", sa.String(64), nullable=False),
    sa.Column("contract_id", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("duration_ns", sa.BigInteger),
    sa.Index(None, "pool_id", "at_ns"),
    sa.Index(None, "at_ns"),
)

request_nonces = sa.Table(
    "request_nonces", metadata,
    sa.Column("pubkey", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at_ns", sa.BigInteger, nullable=False),
    sa.Index(None, "seen_at_ns"),
)

# Provider web pages (pool_api/pages): one-time sign-in links and browser sessions. Only SHA-256
# hashes of the link token and of the session cookie are stored.
provider_login_links = sa.Table(
    "provider_login_links", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("provider_pubkey", sa.String(64), sa.ForeignKey("providers.pubkey", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
    sa.Column("used_at_ns", sa.BigInteger),
    sa.Index(None, "expires_at_ns"),
)

provider_sessions = sa.Table(
    "provider_sessions", metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),
    sa.Column("provider_pubkey", sa.String(64), sa.ForeignKey("providers.pubkey", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
    sa.Index(None, "expires_at_ns"),
)
