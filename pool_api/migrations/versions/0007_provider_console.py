"""The provider's console (issue 13): contract_events, an append-only history of each contract (locks and
renewals, failures, provisioned, health changes, pauses, requests, provider actions), written in the same
transaction as the state change; contracts.lock_since_ns, when the current holder's unbroken lock began
(renewals keep it), for the "stuck" filter; offerings.status, active or inactive.

Existing rows: contracts have no events (the pages show what their current state says), no lock start
(the lock's last renewal stands in for it), and every offering is active.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('contract_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('contract_id', sa.String(length=64), nullable=False),
    sa.Column('at_ns', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('agent_pubkey', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.JSON(none_as_null=True), nullable=True),
    sa.ForeignKeyConstraint(['contract_id'], ['contracts.contract_id'], name=op.f('fk_contract_events_contract_id_contracts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contract_events'))
    )
    with op.batch_alter_table('contract_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contract_events_contract_id_id'), ['contract_id', 'id'], unique=False)

    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lock_since_ns', sa.BigInteger(), nullable=True))

    with op.batch_alter_table('offerings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='active', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('offerings', schema=None) as batch_op:
        batch_op.drop_column('status')
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_column('lock_since_ns')
    with op.batch_alter_table('contract_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contract_events_contract_id_id'))
    op.drop_table('contract_events')
