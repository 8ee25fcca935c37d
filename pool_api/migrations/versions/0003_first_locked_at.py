"""contracts.first_locked_at_ns: when a contract was first locked, so that the first agent to lock it
knows no instance can exist yet and skips its adoption check.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_locked_at_ns', sa.BigInteger(), nullable=True))
    # Contracts that exist at the upgrade may have been locked by the code before it, which did not
    # record the first lock: mark them "maybe held before" (0), so that agents still check for an
    # instance an earlier attempt left. Only contracts created after the upgrade can skip the check.
    op.execute("UPDATE contracts SET first_locked_at_ns = 0 WHERE first_locked_at_ns IS NULL")


def downgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_column('first_locked_at_ns')
