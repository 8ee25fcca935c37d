"""Durable results: a finished contract's result is on disk before it is reported, until acknowledged.

One JSON file per contract in `<state_dir>/outbox/`. :meth:`Outbox.put` writes and fsyncs the file
and its directory; :meth:`Outbox.done` removes it after the server acknowledged the report. After an
API outage or a restart the loop resends every entry still there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dc_common.fsutil import atomic_write, ensure_dir, remove_durably

Kind = Literal["provisioned", "failed"]


@dataclass
class Entry:
    """One result waiting to be acknowledged."""

    contract_id: str
    kind: Kind
    instance_details: dict[str, Any] | None = None
    error_message: str | None = None
    ssh_key: str | None = None  # the tenant's key at provisioning (the old key of a later rotation)
    created_ns: int = field(default_factory=time.time_ns)
    attempts: int = 0


def _file_name(contract_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in contract_id)[:80]
    digest = hashlib.sha256(contract_id.encode()).hexdigest()[:12]
    return f"{safe}-{digest}.json"


class Outbox:
    def __init__(self, state_dir: Path) -> None:
        self.dir = ensure_dir(Path(state_dir) / "outbox")

    def path_for(self, contract_id: str) -> Path:
        return self.dir / _file_name(contract_id)

    def put(self, entry: Entry) -> None:
        """Durably record `entry` (replacing an older one of the same contract)."""
        atomic_write(self.path_for(entry.contract_id), json.dumps(asdict(entry), sort_keys=True).encode())

    def get(self, contract_id: str) -> Entry | None:
        return self._read(self.path_for(contract_id))

    def has(self, contract_id: str) -> bool:
        return self.path_for(contract_id).exists()

    def done(self, contract_id: str) -> None:
        """The server acknowledged the report (or it no longer applies): forget it durably."""
        remove_durably(self.path_for(contract_id))

    def entries(self) -> list[Entry]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            entry = self._read(path)
            if entry is not None:
                out.append(entry)
        return sorted(out, key=lambda e: e.created_ns)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*.json"))

    @staticmethod
    def _read(path: Path) -> Entry | None:
        try:
            raw = path.read_text()
        except OSError:
            return None  # gone (delivered meanwhile), or unreadable for now: the next pass tries again
        try:
            data = json.loads(raw)
            entry = Entry(**{k: v for k, v in data.items() if k in Entry.__dataclass_fields__})
            if not isinstance(entry.contract_id, str) or entry.kind not in ("provisioned", "failed"):
                raise ValueError("not an outbox entry")
        except Exception:  # noqa: BLE001 - any other shape is not ours to send: set it aside for a person
            # A torn file cannot exist (atomic rename), so this is damage or a stray file.
            with contextlib.suppress(OSError):
                path.rename(path.with_suffix(".corrupt"))
            return None
        return entry
