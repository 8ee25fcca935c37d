"""Initial schema: providers, agent pools, setup tokens, delegations, offerings, contracts, nonces.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 12:25:35.484052
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('providers',
    sa.Column('pubkey', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pubkey', name=op.f('pk_providers'))
    )
    op.create_table('request_nonces',
    sa.Column('pubkey', sa.String(length=64), nullable=False),
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('seen_at_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pubkey', 'nonce', name=op.f('pk_request_nonces'))
    )
    with op.batch_alter_table('request_nonces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_request_nonces_seen_at_ns'), ['seen_at_ns'], unique=False)

    op.create_table('agent_pools',
    sa.Column('pool_id', sa.String(length=64), nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('location', sa.String(length=16), nullable=False),
    sa.Column('provisioner_type', sa.String(length=16), nullable=False),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['provider_pubkey'], ['providers.pubkey'], name=op.f('fk_agent_pools_provider_pubkey_providers')),
    sa.PrimaryKeyConstraint('pool_id', name=op.f('pk_agent_pools')),
    sa.UniqueConstraint('provider_pubkey', 'name', name=op.f('uq_agent_pools_provider_pubkey_name'))
    )
    op.create_table('agent_delegations',
    sa.Column('agent_pubkey', sa.String(length=64), nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('pool_id', sa.String(length=64), nullable=True),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('permissions', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('revoked_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('last_seen_ns', sa.BigInteger(), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('provisioner_type', sa.String(length=16), nullable=True),
    sa.Column('active_contracts', sa.Integer(), nullable=True),
    sa.Column('capacity', sa.JSON(none_as_null=True), nullable=True),
    sa.ForeignKeyConstraint(['pool_id'], ['agent_pools.pool_id'], name=op.f('fk_agent_delegations_pool_id_agent_pools'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['provider_pubkey'], ['providers.pubkey'], name=op.f('fk_agent_delegations_provider_pubkey_providers')),
    sa.PrimaryKeyConstraint('agent_pubkey', name=op.f('pk_agent_delegations'))
    )
    with op.batch_alter_table('agent_delegations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agent_delegations_pool_id'), ['pool_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_agent_delegations_provider_pubkey'), ['provider_pubkey'], unique=False)

    op.create_table('agent_setup_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('token_prefix', sa.String(length=64), nullable=False),
    sa.Column('pool_id', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('expires_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('used_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('used_by_agent', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['pool_id'], ['agent_pools.pool_id'], name=op.f('fk_agent_setup_tokens_pool_id_agent_pools'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_agent_setup_tokens'))
    )
    with op.batch_alter_table('agent_setup_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agent_setup_tokens_expires_at_ns'), ['expires_at_ns'], unique=False)
        batch_op.create_index(batch_op.f('ix_agent_setup_tokens_pool_id'), ['pool_id'], unique=False)

    op.create_table('offerings',
    sa.Column('offering_id', sa.String(length=128), nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('product_type', sa.String(length=32), nullable=False),
    sa.Column('datacenter_country', sa.String(length=64), nullable=False),
    sa.Column('region', sa.String(length=16), nullable=True),
    sa.Column('provisioner_type', sa.String(length=16), nullable=True),
    sa.Column('provisioner_config', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('agent_pool_id', sa.String(length=64), nullable=True),
    sa.Column('price', sa.Float(), nullable=True),
    sa.Column('cpu_cores', sa.Integer(), nullable=True),
    sa.Column('memory_mb', sa.BigInteger(), nullable=True),
    sa.Column('storage_gb', sa.BigInteger(), nullable=True),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['agent_pool_id'], ['agent_pools.pool_id'], name=op.f('fk_offerings_agent_pool_id_agent_pools'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['provider_pubkey'], ['providers.pubkey'], name=op.f('fk_offerings_provider_pubkey_providers')),
    sa.PrimaryKeyConstraint('offering_id', name=op.f('pk_offerings'))
    )
    with op.batch_alter_table('offerings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_offerings_provider_pubkey_agent_pool_id'), ['provider_pubkey', 'agent_pool_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_offerings_provider_pubkey_region'), ['provider_pubkey', 'region'], unique=False)

    op.create_table('contracts',
    sa.Column('contract_id', sa.String(length=64), nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('offering_id', sa.String(length=128), nullable=False),
    sa.Column('requester_ssh_pubkey', sa.Text(), nullable=True),
    sa.Column('instance_config', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('payment_status', sa.String(length=16), nullable=False),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('lock_agent', sa.String(length=64), nullable=True),
    sa.Column('lock_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('lock_expires_ns', sa.BigInteger(), nullable=True),
    sa.Column('provisioned_by', sa.String(length=64), nullable=True),
    sa.Column('provisioned_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('instance_details', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('failure_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_failed_by', sa.String(length=64), nullable=True),
    sa.Column('last_failed_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('cancelled_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('terminated_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('terminated_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['offering_id'], ['offerings.offering_id'], name=op.f('fk_contracts_offering_id_offerings')),
    sa.ForeignKeyConstraint(['provider_pubkey'], ['providers.pubkey'], name=op.f('fk_contracts_provider_pubkey_providers')),
    sa.PrimaryKeyConstraint('contract_id', name=op.f('pk_contracts'))
    )
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contracts_lock_expires_ns'), ['lock_expires_ns'], unique=False)
        batch_op.create_index(batch_op.f('ix_contracts_offering_id'), ['offering_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_contracts_provider_pubkey_status_created_at_ns'), ['provider_pubkey', 'status', 'created_at_ns'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contracts_provider_pubkey_status_created_at_ns'))
        batch_op.drop_index(batch_op.f('ix_contracts_offering_id'))
        batch_op.drop_index(batch_op.f('ix_contracts_lock_expires_ns'))

    op.drop_table('contracts')
    with op.batch_alter_table('offerings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_offerings_provider_pubkey_region'))
        batch_op.drop_index(batch_op.f('ix_offerings_provider_pubkey_agent_pool_id'))

    op.drop_table('offerings')
    with op.batch_alter_table('agent_setup_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_setup_tokens_pool_id'))
        batch_op.drop_index(batch_op.f('ix_agent_setup_tokens_expires_at_ns'))

    op.drop_table('agent_setup_tokens')
    with op.batch_alter_table('agent_delegations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_delegations_provider_pubkey'))
        batch_op.drop_index(batch_op.f('ix_agent_delegations_pool_id'))

    op.drop_table('agent_delegations')
    op.drop_table('agent_pools')
    with op.batch_alter_table('request_nonces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_request_nonces_seen_at_ns'))

    op.drop_table('request_nonces')
    op.drop_table('providers')
