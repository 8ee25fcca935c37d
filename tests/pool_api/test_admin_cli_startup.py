"""The admin commands skip the migration step when the schema is at head (one read of alembic_version, the
head taken from the migration files without Alembic), and still migrate an older database."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from pool_api import db
from tests.support.pool_server import REPO

PUBKEY = "ab" * 32


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -X importtime -m pool_api ARGS`: the import log on stderr says whether Alembic was loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC_POOL_API_")}
    env["DC_POOL_API_DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "pool_api", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


def imported(res: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}


HEAVY = ("alembic", "fastapi", "uvicorn", "jinja2", "nacl", "structlog", "rich")


def heavy(res: subprocess.CompletedProcess[str]) -> list[str]:
    """The heavy packages the command loaded (none should be, at head)."""
    return sorted({m for m in imported(res) if m.split(".")[0] in HEAVY})


def revision(url: str) -> str:
    engine = db.create_engine(url)
    try:
        return db.current_revision(engine)
    finally:
        engine.dispose()


def test_head_revision_matches_alembic() -> None:
    assert db.head_revision() == ScriptDirectory.from_config(db.alembic_config()).get_current_head()


def test_admin_command_skips_migrations_at_head(sqlite_url: str) -> None:
    """At head: no Alembic, FastAPI, uvicorn, Jinja2, PyNaCl or structlog on the way; the commands still work."""
    first = run_cli(sqlite_url, "provider", "add", "--pubkey", PUBKEY)  # a fresh file: migrates
    assert first.returncode == 0 and "alembic" in imported(first)
    assert revision(sqlite_url) == db.head_revision()
    again = run_cli(sqlite_url, "provider", "add", "--pubkey", PUBKEY, "--name", "renamed")
    assert again.returncode == 0 and again.stdout.strip() == PUBKEY
    assert heavy(again) == []
    listing = run_cli(sqlite_url, "contract", "list")
    assert listing.returncode == 0 and heavy(listing) == []
    engine = db.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT name FROM providers")).scalar_one() == "renamed"
    finally:
        engine.dispose()


def test_old_database_is_still_migrated(sqlite_url: str) -> None:
    """A database at the previous revision is brought to head by the next admin command."""
    engine = db.create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            command.upgrade(db.alembic_config(conn), "0006")
            conn.commit()
    finally:
        engine.dispose()
    assert revision(sqlite_url) == "0006"
    res = run_cli(sqlite_url, "provider", "add", "--pubkey", PUBKEY)
    assert res.returncode == 0 and "alembic" in imported(res)
    assert revision(sqlite_url) == db.head_revision()
    engine = db.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:  # migration 0007's table and columns are there
            assert conn.execute(sa.text("SELECT count(*) FROM contract_events")).scalar_one() == 0
            assert conn.execute(sa.text("SELECT status FROM offerings")).all() == []
    finally:
        engine.dispose()
