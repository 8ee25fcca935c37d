"""Dispatch without polling (issue 11): agent capacity, failure streaks and claim waits on agent_delegations;
pool fallbacks on agent_pools; sticky re-provisioning on contracts; provision_events for the pools'
success rates and provisioning times.

Existing rows: agents have no capacity and no failures yet, pools no fallback (delay 300 s), contracts no
sticky agent, and there are no events (the pages' 24 h figures start at the upgrade).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

DELEGATION_COLUMNS = (
    ('max_concurrent', sa.Integer(), None),
    ('free_slots', sa.Integer(), None),
    ('consecutive_failures', sa.Integer(), '0'),
    ('last_failure_ns', sa.BigInteger(), None),
    ('claim_waiting_until_ns', sa.BigInteger(), None),
)
CONTRACT_COLUMNS = (
    ('sticky_agent', sa.String(length=64)),
    ('sticky_until_ns', sa.BigInteger()),
)
FALLBACK_FK = 'fk_agent_pools_fallback_pool_id_agent_pools'


def upgrade() -> None:
    with op.batch_alter_table('agent_delegations', schema=None) as batch_op:
        for name, type_, default in DELEGATION_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, server_default=default, nullable=default is None))

    with op.batch_alter_table('agent_pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fallback_pool_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('fallback_after_seconds', sa.Integer(), server_default='300', nullable=False))
        batch_op.create_foreign_key(batch_op.f(FALLBACK_FK), 'agent_pools', ['fallback_pool_id'], ['pool_id'],
                                    ondelete='SET NULL')

    with op.batch_alter_table('contracts', schema=None) as batch_op:
        for name, type_ in CONTRACT_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))

    op.create_table('provision_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('pool_id', sa.String(length=64), nullable=True),
    sa.Column('agent_pubkey', sa.String(length=64), nullable=False),
    sa.Column('contract_id', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('at_ns', sa.BigInteger(), nullable=False),
    sa.Column('duration_ns', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provision_events'))
    )
    with op.batch_alter_table('provision_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provision_events_at_ns'), ['at_ns'], unique=False)
        batch_op.create_index(batch_op.f('ix_provision_events_pool_id_at_ns'), ['pool_id', 'at_ns'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('provision_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provision_events_pool_id_at_ns'))
        batch_op.drop_index(batch_op.f('ix_provision_events_at_ns'))
    op.drop_table('provision_events')
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        for name, _type in reversed(CONTRACT_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('agent_pools', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(FALLBACK_FK), type_='foreignkey')
        batch_op.drop_column('fallback_after_seconds')
        batch_op.drop_column('fallback_pool_id')
    with op.batch_alter_table('agent_delegations', schema=None) as batch_op:
        for name, _type, _default in reversed(DELEGATION_COLUMNS):
            batch_op.drop_column(name)
