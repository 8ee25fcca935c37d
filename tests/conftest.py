"""Shared fixtures: a PostgreSQL cluster per test session and a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresCluster, start_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """SQLAlchemy URL of an empty PostgreSQL database that is dropped after the test."""
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'pool.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request) -> str:
    """Each test that takes this runs on PostgreSQL and on the embedded SQLite default."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("sqlite_url")
