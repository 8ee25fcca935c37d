"""Run the real `dc-pool-api serve` process for tests and benchmarks.

    with running_pool_api(pg_url, lock_ttl_seconds=2) as server:
        server.url            # http://127.0.0.1:PORT (no /api/v1)
        server.admin("contract", "create", "--offering", "off-1")
        server.restart()      # same port, same database

Serve options are passed as keyword arguments (`lock_ttl_seconds=2` -> `--lock-ttl-seconds 2`).
The server logs to `server.log_path` in a temporary directory; the log's tail is included when the
server does not come up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


from tests.support.postgres import free_port
from tests.support.server_process import start_and_wait, stop_process

REPO = Path(__file__).resolve().parents[2]


def pool_api_command() -> list[str]:
    """`.venv/bin/dc-pool-api` next to the running interpreter or in the repo, else `python -m pool_api`."""
    for candidate in (Path(sys.executable).parent / "dc-pool-api", REPO / ".venv" / "bin" / "dc-pool-api"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "pool_api"]


def _option_args(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


class PoolServer:
    def __init__(self, database_url: str, *, port: int | None = None, log_dir: Path | None = None,
                 env: dict[str, str] | None = None, **serve_options: Any) -> None:
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.serve_options = serve_options
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="dc-pool-api-"))
        self.log_path = self.log_dir / "pool-api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"

    def _env(self) -> dict[str, str]:
        """The caller's environment without inherited DC_POOL_API_* settings, plus `env=` given to us."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DC_POOL_API_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        return env

    def start(self) -> PoolServer:
        """Start `serve` and block until GET /api/v1/health answers 200 (30 s deadline)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        argv = [*pool_api_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--database-url", self.database_url, *_option_args(self.serve_options)]
        self.proc = start_and_wait(argv, self.log_path, f"{self.api_url}/health", "dc-pool-api serve",
                                   env=self._env(), log_tail=self.log_tail)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def restart(self) -> PoolServer:
        self.stop()
        return self.start()

    def admin(self, *args: str) -> str:
        """Run `dc-pool-api <args> --database-url URL`; return stdout, raise with stderr on failure."""
        res = subprocess.run([*pool_api_command(), *args, "--database-url", self.database_url],
                             capture_output=True, text=True, env=self._env(), cwd=REPO, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"dc-pool-api {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


@contextlib.contextmanager
def running_pool_api(database_url: str, *, port: int | None = None, env: dict[str, str] | None = None,
                     **serve_options: Any) -> Iterator[PoolServer]:
    """A started `dc-pool-api serve` on `database_url`, stopped (and its temp dir removed) on exit.
    `env` adds environment variables (e.g. DC_POOL_API_HEARTBEAT_SECONDS) for the serve process."""
    server = PoolServer(database_url, port=port, env=env, **serve_options)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
