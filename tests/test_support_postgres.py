"""The PostgreSQL fixture itself: a real server that answers queries."""

import sqlalchemy as sa


def test_database_is_real_and_empty(pg_url: str) -> None:
    """A fresh database answers SELECT and has no tables of ours."""
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1 + 1")).scalar_one() == 2
        assert conn.execute(sa.text("select count(*) from pg_tables where schemaname='public'")).scalar_one() == 0
    engine.dispose()
