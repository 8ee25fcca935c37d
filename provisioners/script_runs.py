"""The script driver's running provisions, recorded so that the next agent start can stop orphans.

A run starts in its own session, so a SIGKILLed (or OOM-killed) agent leaves it running; where setpriv
is missing nothing else stops it. Each provision run is recorded (pid and kernel start time) in
`<state_dir>/running/`, and every process a run starts carries `DC_AGENT_RUN_DIR` in its environment,
which also finds a run the agent died before recording.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from provisioners.process import kill_group, proc_start_time

MARK_VARIABLE = "DC_AGENT_RUN_DIR"


class RunRecords:
    """Records of this driver's provision runs in `runs_dir`, and the recovery that stops them."""

    def __init__(self, runs_dir: Path, kill_grace: float) -> None:
        self.runs_dir = runs_dir
        self.kill_grace = kill_grace

    def mark(self) -> dict[str, str]:
        """The environment entry that marks every process of a run, children included."""
        return {MARK_VARIABLE: str(self.runs_dir)}

    def record(self, contract_id: str, pid: int) -> Callable[[], None]:
        """Record the run of `contract_id` as process `pid`; the returned function removes the record."""
        from dc_common.fsutil import atomic_write  # small, stdlib-only

        path = self.runs_dir / f"{hashlib.sha256(contract_id.encode()).hexdigest()[:12]}-{pid}.json"
        atomic_write(path, json.dumps({"contractId": contract_id, "pid": pid,
                                       "start": proc_start_time(pid)}).encode(), durable=False)
        return lambda: path.unlink(missing_ok=True)

    def recover(self) -> list[str]:
        """Kill every recorded or marked run still alive; the contract ids whose run was stopped.

        Called once at agent start, while the agent holds the state directory: any run still alive
        then belongs to an agent process that is gone.
        """
        groups: dict[int, str] = {}
        if self.runs_dir.exists():
            for path in self.runs_dir.glob("*.json"):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    path.unlink(missing_ok=True)
                    continue
                pid = int(record.get("pid") or 0)
                if pid and record.get("start") and proc_start_time(pid) == record.get("start"):
                    groups[pid] = str(record.get("contractId"))
                path.unlink(missing_ok=True)
        groups.update(self._marked_groups())
        for pgid in groups:
            kill_group(pgid, self.kill_grace)
        return sorted({cid for cid in groups.values() if cid})

    def _marked_groups(self) -> dict[int, str]:
        """Process groups of live processes carrying this driver's run mark."""
        mark = f"{MARK_VARIABLE}={self.runs_dir}".encode()
        found: dict[int, str] = {}
        me = os.getpid()
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                pgid = os.getpgid(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
            if mark not in environ or pgid == os.getpgid(0):
                continue
            contract = next((v.split(b"=", 1)[1].decode(errors="replace") for v in environ
                             if v.startswith(b"DC_AGENT_CONTRACT_ID=")), "")
            found.setdefault(pgid, contract)
        return found
