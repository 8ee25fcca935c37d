"""Engine construction and schema migrations.

PostgreSQL (`postgresql+psycopg://…`) is the real deployment; SQLite is the embedded default. On
SQLite every connection gets WAL, a busy timeout and foreign keys, and every transaction starts
with BEGIN IMMEDIATE so two writers queue on the busy timeout instead of failing on a stale snapshot.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(?:['\"]([^'\"]+)['\"]|None)", re.M)
SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x64C0_7001  # pg_advisory_lock key serialising concurrent `serve` start-ups


def now_ns() -> int:
    return time.time_ns()


def default_sqlite_path() -> Path:
    """/var/lib/dc-pool-api/pool.db for root, else $XDG_STATE_HOME (~/.local/state)/dc-pool-api/pool.db."""
    if os.geteuid() == 0:
        return Path("/var/lib/dc-pool-api/pool.db")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dc-pool-api" / "pool.db"


def default_database_url() -> str:
    return f"sqlite:///{default_sqlite_path()}"


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// / postgres:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> sa.Engine:
    url = normalize_url(url)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                                  pool_size=16, max_overflow=32)
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True, pool_timeout=30)


def _configure_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine, conn: sa.Connection) -> Iterator[None]:
    """One migrator at a time: an advisory lock on PostgreSQL, a lock file next to a SQLite file."""
    if engine.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
        return
    database = engine.url.database
    if is_sqlite(engine) and database and database != ":memory:":
        with open(f"{database}.migrate-lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    yield


def alembic_config(conn: sa.Connection | None = None):  # noqa: ANN201
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe when several processes start at once)."""
    from alembic import command

    with engine.connect() as conn:
        with _migration_lock(engine, conn):
            command.upgrade(alembic_config(conn), "head")
            conn.commit()


@functools.cache
def head_revision() -> str:
    """The newest revision id, read from the `revision` / `down_revision` lines of the migration files
    (no Alembic import: the admin commands check it on every call)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found is None:
            continue
        revisions.add(found[1])
        down = _DOWN_REVISION.search(text)
        if down is not None and down[1]:
            parents.add(down[1])
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"{MIGRATIONS_DIR / 'versions'}: expected one head revision, found {sorted(heads)}")
    return heads.pop()


def current_revision(engine: sa.Engine) -> str | None:
    """The database's Alembic revision (one SELECT), or None for a database that was never migrated."""
    with engine.connect() as conn:
        try:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.DBAPIError:
            return None  # no alembic_version table yet


def migrate_if_needed(engine: sa.Engine) -> bool:
    """Migrate unless the schema is already at the head revision; True when the migrations ran."""
    if current_revision(engine) == head_revision():
        return False
    migrate(engine)
    return True
