"""The instances this agent looks after, kept in `<state_dir>/instances.json` (0600, written atomically).

An entry is added when the server acknowledged a `provisioned` report (or reconcile showed one of the
driver's instances that the server keeps), and removed when the instance is terminated. Health checks,
pause/resume and tenant actions work from it: the server's lists do not always name the instance (the live
API never does), and a contract is looked after by the agent that provisioned it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from dc_common.fsutil import atomic_write

FILE = "instances.json"


class InstanceRegistry:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict) and v.get("externalId")} \
            if isinstance(data, dict) else {}

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self._data, sort_keys=True).encode(), mode=0o600)

    def record(self, contract_id: str, external_id: str, *, ssh_key: str | None = None) -> None:
        with self._lock:
            old = self._data.get(contract_id, {})
            if old.get("externalId") == external_id and (ssh_key is None or old.get("sshKey") == ssh_key):
                return
            self._data[contract_id] = {**old, "externalId": external_id, "sinceNs": old.get("sinceNs", time.time_ns()),
                                       **({"sshKey": ssh_key} if ssh_key else {})}
            self._save()

    def update(self, contract_id: str, **fields: Any) -> None:
        with self._lock:
            if contract_id not in self._data:
                return
            self._data[contract_id].update(fields)
            self._save()

    def forget(self, contract_id: str) -> None:
        with self._lock:
            if self._data.pop(contract_id, None) is not None:
                self._save()

    def get(self, contract_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._data.get(contract_id)
            return dict(entry) if entry else None

    def by_external_id(self, external_id: str) -> str | None:
        with self._lock:
            return next((cid for cid, e in self._data.items() if e.get("externalId") == external_id), None)

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(cid, dict(e)) for cid, e in self._data.items()]

    def __len__(self) -> int:
        return len(self._data)
