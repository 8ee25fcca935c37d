"""Fixtures: real `dc-pool-api serve` processes on PostgreSQL and on SQLite, providers, agents.

`server` is one server per test module and database kind (tests use their own providers, so they
do not see each other's data); `fresh_server` gives a test its own database and serve options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import sqlalchemy as sa

from pool_api import db
from tests.pool_api.helpers import dispose_engines, quick_provider
from tests.support.pool_server import PoolServer, running_pool_api
from tests.support.postgres import PostgresCluster
from tests.support.provider import Provider


def _database(kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              stack: ExitStack) -> str:
    if kind == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        url = cluster.create_database()
        stack.callback(cluster.drop_database, url)
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('pool-db') / 'pool.db'}"


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolServer]:
    """One `dc-pool-api serve` per module and database kind."""
    with ExitStack() as stack:
        url = _database(request.param, request, tmp_path_factory, stack)
        yield stack.enter_context(running_pool_api(url))


@pytest.fixture
def fresh_server(request: pytest.FixtureRequest, db_url: str) -> Iterator[Callable[..., PoolServer]]:
    """Start `dc-pool-api serve` on this test's own database with the given serve options."""
    with ExitStack() as stack:
        def start(**options: Any) -> PoolServer:
            return stack.enter_context(running_pool_api(db_url, **options))
        yield start


@pytest.fixture(scope="session", autouse=True)
def _dispose_test_engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.fixture
def provider(server: PoolServer) -> Iterator[Provider]:
    """A provider registered on the module's server (in-process; test_flow covers `provider add`)."""
    p = quick_provider(server)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh, migrated database (PostgreSQL and SQLite, through `db_url`)."""
    engine = db.create_engine(db_url)
    db.migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()
