"""Start a server process for a test and wait until it answers; stop it with SIGTERM, then SIGKILL.

Shared by the runners of `dc-pool-api serve` (pool_server.py) and of the live-API fake (live_api_server.py).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0


def start_and_wait(argv: list[str], log_path: Path, health_url: str, what: str, *,
                   env: dict[str, str] | None = None, log_tail: Callable[[], str] = lambda: "",
                   deadline_s: float = START_DEADLINE_S) -> subprocess.Popen[bytes]:
    """Run `argv` (output appended to `log_path`) and block until `health_url` answers 200; raise
    RuntimeError with the log's tail when it exits or does not answer in time."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    finally:
        log.close()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        try:
            if httpx.get(health_url, timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{what} did not answer {health_url} within {deadline_s:.0f} s:\n{log_tail()}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
