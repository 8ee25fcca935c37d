"""Provider web pages: one-time sign-in links and browser sessions (hashes only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('provider_login_links',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('expires_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('used_at_ns', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['provider_pubkey'], ['providers.pubkey'], name=op.f('fk_provider_login_links_provider_pubkey_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_provider_login_links'))
    )
    with op.batch_alter_table('provider_login_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_login_links_expires_at_ns'), ['expires_at_ns'], unique=False)

    op.create_table('provider_sessions',
    sa.Column('session_hash', sa.String(length=64), nullable=False),
    sa.Column('provider_pubkey', sa.String(length=64), nullable=False),
    sa.Column('created_at_ns', sa.BigInteger(), nullable=False),
    sa.Column('expires_at_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['provider_pubkey'], ['providers.pubkey'], name=op.f('fk_provider_sessions_provider_pubkey_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_hash', name=op.f('pk_provider_sessions'))
    )
    with op.batch_alter_table('provider_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_sessions_expires_at_ns'), ['expires_at_ns'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('provider_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_sessions_expires_at_ns'))
    op.drop_table('provider_sessions')
    with op.batch_alter_table('provider_login_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_login_links_expires_at_ns'))
    op.drop_table('provider_login_links')
