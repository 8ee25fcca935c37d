"""Alembic environment: always run programmatically with a connection (see pool_api.db.migrate)."""

from alembic import context

from pool_api.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline use is not supported
    raise RuntimeError("pool_api migrations run through `dc-pool-api migrate` or `serve`, with a connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
