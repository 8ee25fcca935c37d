"""An ephemeral PostgreSQL cluster for tests and benchmarks.

PostgreSQL refuses to run as root, so as root the cluster is created and started as the `postgres`
user in a temporary directory that user owns. It listens on 127.0.0.1 on a free port, with trust
authentication for local connections only. `stop()` removes everything it made.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


def find_bin_dir() -> Path:
    """PG_BIN, else the newest /usr/lib/postgresql/*/bin, else the directory of `initdb` on PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return Path(candidates[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL binaries not found: install postgresql or set PG_BIN to the bin directory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresCluster:
    bin_dir: Path
    base_dir: Path
    port: int
    user: str

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, sql: str) -> None:
        subprocess.run(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            check=True, capture_output=True, text=True,
        )

    def stop(self) -> None:
        _as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.base_dir / "data"), "-m", "immediate", "-w", "stop"],
                  check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _as_owner(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=check, capture_output=True, text=True, cwd="/")


def start_cluster() -> PostgresCluster:
    bin_dir = find_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="dc-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        user = "postgres"
    else:
        import getpass

        user = getpass.getuser()
    data = base / "data"
    res = _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8",
                     "--no-sync", "--no-instructions"], check=False)
    if res.returncode != 0:
        raise RuntimeError(f"initdb failed: {res.stderr.strip()}")
    port = free_port()
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 "
            "-c shared_buffers=128MB")
    res = _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts, "-w",
                     "-t", "60", "start"], check=False)
    if res.returncode != 0:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()} {log[-2000:]}")
    return PostgresCluster(bin_dir=bin_dir, base_dir=base, port=port, user=user)
