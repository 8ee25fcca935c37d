"""Fixtures: a real `dc-pool-api serve` on PostgreSQL and on SQLite, a registered provider, agents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pool_server import PoolServer, running_pool_api
from tests.support.provider import Provider


@pytest.fixture
def server(db_url: str) -> Iterator[PoolServer]:
    """`dc-pool-api serve` on a fresh database (runs once on PostgreSQL, once on SQLite)."""
    with running_pool_api(db_url) as s:
        yield s


@pytest.fixture
def provider(server: PoolServer) -> Iterator[Provider]:
    p = Provider.register(server, name="acme")
    try:
        yield p
    finally:
        p.close()
