"""agent_delegations.inventory: what the agent's latest heartbeat said of its host (the live API's
ResourceInventory field names: CPU, memory, storage pools, GPUs, templates) and of its provisioners
(name, type, health), shown on the pool page.

Existing agents have no inventory until their next heartbeat (NULL: the page shows nothing).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agent_delegations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('inventory', sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agent_delegations', schema=None) as batch_op:
        batch_op.drop_column('inventory')
