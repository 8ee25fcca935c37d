"""The contract lifecycle after provisioning: an optional end (expiry), pauses, health reports (the last on
the contract, a bounded history in contract_health), and tenant requests relayed to agents (password
resets, SSH key rotations) in contract_requests.

Every new contracts column is nullable with no default: contracts that exist at the upgrade keep their
status, have no end, no pause and no health report yet.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

CONTRACT_COLUMNS = (
    ('ends_at_ns', sa.BigInteger()),
    ('paused_at_ns', sa.BigInteger()),
    ('resumed_at_ns', sa.BigInteger()),
    ('health_status', sa.String(length=16)),
    ('health_detail', sa.Text()),
    ('health_latency_ms', sa.Float()),
    ('health_checked_at_ns', sa.BigInteger()),
    ('health_agent', sa.String(length=64)),
)


def upgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        for name, type_ in CONTRACT_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))

    op.create_table('contract_health',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('contract_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('checked_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('agent_pubkey', sa.String(length=64), nullable=False),
    sa.Column('received_at_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['contract_id'], ['contracts.contract_id'], name=op.f('fk_contract_health_contract_id_contracts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contract_health'))
    )
    with op.batch_alter_table('contract_health', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contract_health_contract_id_id'), ['contract_id', 'id'], unique=False)

    op.create_table('contract_requests',
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('contract_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('recipient_public_key', sa.String(length=64), nullable=True),
    sa.Column('new_key', sa.Text(), nullable=True),
    sa.Column('encrypted_password', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('requested_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('completed_at_ns', sa.BigInteger(), nullable=True),
    sa.Column('completed_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['contract_id'], ['contracts.contract_id'], name=op.f('fk_contract_requests_contract_id_contracts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_contract_requests'))
    )
    with op.batch_alter_table('contract_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contract_requests_contract_id_kind_status'), ['contract_id', 'kind', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_contract_requests_kind_status'), ['kind', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('contract_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contract_requests_kind_status'))
        batch_op.drop_index(batch_op.f('ix_contract_requests_contract_id_kind_status'))
    op.drop_table('contract_requests')
    with op.batch_alter_table('contract_health', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contract_health_contract_id_id'))
    op.drop_table('contract_health')
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        for name, _type in reversed(CONTRACT_COLUMNS):
            batch_op.drop_column(name)
