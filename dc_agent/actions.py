"""Durable queue of tenant actions (password reset, SSH key rotation) in `<state_dir>/actions/`.

Each request is written (0600, fsynced) before the driver is called, with the new password already chosen,
and marked `applied` once the driver succeeded; it is deleted only when the server acknowledged the report.
After a crash the agent therefore reports a reset it already did with the same password, and redoes an
unfinished one with the same password (the drivers' calls are idempotent): never a second password.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dc_agent.api.base import PASSWORD, ActionRequest
from dc_common.fsutil import atomic_write, ensure_dir

PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 24


def new_password() -> str:
    """24 characters from [A-Za-z0-9] (about 143 bits): safe in any shell, form or chpasswd line."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


@dataclass
class ActionEntry:
    request: ActionRequest
    password: str | None = None  # PASSWORD only; kept 0600 until reported, never logged
    external_id: str | None = None
    applied: bool = False
    error: str | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        r = self.request
        return hashlib.sha256(f"{r.kind}\0{r.contract_id}\0{r.request_id}".encode()).hexdigest()[:32]


class ActionQueue:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "actions"

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def add(self, request: ActionRequest) -> ActionEntry:
        """The entry for `request`: the stored one if it exists, else a new one written durably first."""
        entry = ActionEntry(request, password=new_password() if request.kind == PASSWORD else None)
        existing = self.get(entry.key)
        if existing is not None:
            return existing
        self.save(entry)
        return entry

    def get(self, key: str) -> ActionEntry | None:
        try:
            data = json.loads(self._path(key).read_text())
            return ActionEntry(request=ActionRequest(**data.pop("request")), **data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, entry: ActionEntry) -> None:
        ensure_dir(self.dir)
        atomic_write(self._path(entry.key), json.dumps(asdict(entry), sort_keys=True).encode(), mode=0o600)

    def done(self, entry: ActionEntry) -> None:
        self._path(entry.key).unlink(missing_ok=True)

    def entries(self) -> list[ActionEntry]:
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            entry = self.get(path.stem)
            if entry is not None:
                out.append(entry)
        return out

    def __len__(self) -> int:
        return len(list(self.dir.glob("*.json"))) if self.dir.is_dir() else 0
