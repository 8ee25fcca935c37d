"""What a running agent knows about itself, written to `<state_dir>/status.json` for `dc-agent status`.

Also the state directory's process lock: one `dc-agent run` per state directory (two would share and
fight over one outbox).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dc_agent.errors import ConfigFileError
from dc_common.fsutil import atomic_write, ensure_dir

STATUS_FILE = "status.json"
REFRESH_SECONDS = 5.0  # an unchanged status.json is rewritten this often (for its updatedNs)
LOCK_FILE = "agent.lock"

COUNTERS = (
    "polls", "poll_errors", "heartbeats", "heartbeat_errors", "locks_acquired", "lock_conflicts",
    "provisioned", "failed", "adopted", "lost_leases", "renewals", "renewal_errors", "reports_sent",
    "report_errors", "cancelled_on_shutdown", "reconciles", "terminated", "reconcile_errors",
    "outbox_write_errors", "health_reports", "health_report_errors", "paused", "resumed", "pause_errors",
    "actions_done", "action_errors",
)


@dataclass
class AgentState:
    state_dir: Path
    agent_pubkey: str = ""
    label: str | None = None
    version: str = ""
    dialect: str = ""
    started_ns: int = field(default_factory=time.time_ns)
    last_poll_ns: int | None = None
    last_heartbeat_ns: int | None = None
    heartbeat_interval_seconds: float | None = None
    last_error: str | None = None
    draining: bool = False
    in_progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    conflicts_by_contract: Counter[str] = field(default_factory=Counter)
    outbox_backlog: int = 0
    _last_save: float = 0.0
    _last_write: float = float("-inf")
    _last_written: dict[str, Any] | None = None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "agentPubkey": self.agent_pubkey,
            "label": self.label,
            "version": self.version,
            "apiDialect": self.dialect,
            "startedNs": self.started_ns,
            "updatedNs": time.time_ns(),
            "lastPollNs": self.last_poll_ns,
            "lastHeartbeatNs": self.last_heartbeat_ns,
            "heartbeatIntervalSeconds": self.heartbeat_interval_seconds,
            "lastError": self.last_error,
            "draining": self.draining,
            "inProgress": self.in_progress,
            "outboxBacklog": self.outbox_backlog,
            "counters": {name: self.counters.get(name, 0) for name in COUNTERS},
            "conflictsByContract": dict(self.conflicts_by_contract),
        }

    def save(self, *, force: bool = True) -> None:
        """Write status.json (atomically; not fsynced: it is a report, not a record).

        A status equal to the one last written (but for `updatedNs`) is rewritten only every
        REFRESH_SECONDS: an idle agent's loop calls this every second, and `dc-agent status` needs only a
        fresh `updatedNs` (it calls a loop stuck after 30 s)."""
        now = time.monotonic()
        if not force and now - self._last_save < 0.5:
            return
        self._last_save = now
        snapshot = self.snapshot()
        updated = snapshot.pop("updatedNs")
        if snapshot == self._last_written and now - self._last_write < REFRESH_SECONDS:
            return
        self._last_written, self._last_write = snapshot, now
        atomic_write(Path(self.state_dir) / STATUS_FILE, json.dumps({**snapshot, "updatedNs": updated},
                                                                    sort_keys=True).encode(),
                     mode=0o600, durable=False)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateDirLock:
    """An exclusive flock on `<state_dir>/agent.lock`, held for the life of `dc-agent run`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = ensure_dir(Path(state_dir)) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise ConfigFileError(f"{self.path.parent}: another `dc-agent run` (pid {holder}) uses this state "
                                  "directory; stop it first, or give this agent its own [agent] state_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def held_by_other(self) -> int | None:
        """The pid of a running agent holding the lock, else None (does not take the lock)."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(self.path.read_text().strip() or 0) or -1
            except ValueError:
                return -1
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
