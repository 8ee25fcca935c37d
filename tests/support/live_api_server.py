"""Run the live-API fake (tests/support/live_api.py) as its own process, and drive its /_fake/ controls.

    with running_live_api(tmp_path, lock_ttl_seconds=2) as api:
        provider, pool = api.create_pool(location="europe")
        token = api.setup_token(pool)
        offering = api.create_offering(provider, pool_id=pool)
        [cid] = api.create_contracts(provider, offering)
        api.url        # http://127.0.0.1:PORT (no /api/v1), what the agent's api_url base is
        api.restart()  # same port, same SQLite file: an API outage
        api.contract(cid)["history"]

Modelled on tests/support/pool_server.py.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.postgres import free_port
from tests.support.server_process import start_and_wait, stop_process

REPO = Path(__file__).resolve().parents[2]


class LiveApiServer:
    """One fake process on a fixed port over one SQLite file; start/stop/restart keep both."""

    def __init__(self, state_dir: Path, *, port: int | None = None, lock_ttl_seconds: float | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.state_dir / "live-api.sqlite3"
        self.log_path = self.state_dir / "live-api.log"
        self.port = port or free_port()
        self.lock_ttl_seconds = lock_ttl_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"

    def start(self) -> LiveApiServer:
        """Start the process and block until GET /_fake/health answers (30 s deadline)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        argv = [sys.executable, "-m", "tests.support.live_api", "--host", "127.0.0.1", "--port", str(self.port),
                "--db", str(self.db_path)]
        if self.lock_ttl_seconds is not None:
            argv += ["--lock-ttl-seconds", str(self.lock_ttl_seconds)]
        self.proc = start_and_wait(argv, self.log_path, f"{self.url}/_fake/health", "live API fake",
                                   log_tail=self.log_tail)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; the port is free afterwards."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def restart(self) -> LiveApiServer:
        self.stop()
        return self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        self._http.close()

    # /_fake/ controls
    def _control(self, method: str, path: str, body: dict[str, Any] | None = None,
                 params: dict[str, str] | None = None) -> Any:
        response = self._http.request(method, f"{self.url}/_fake{path}", json=body, params=params)
        if response.status_code != 200:
            raise RuntimeError(f"/_fake{path} answered {response.status_code}: {response.text}")
        return response.json()

    def create_provider(self, pubkey: str | None = None, *, auto_accept: bool = True) -> str:
        """A provider (random pubkey unless given); auto_accept=False keeps contracts at provisioned."""
        return str(self._control("POST", "/providers", {"pubkey": pubkey, "auto_accept": auto_accept})["pubkey"])

    def create_pool(self, *, location: str = "europe", provisioner_type: str = "script", name: str = "pool-1",
                    provider_pubkey: str | None = None, auto_accept: bool = True,
                    pool_id: str | None = None) -> tuple[str, str]:
        """A pool (and its provider unless given); returns (provider_pubkey, pool_id)."""
        out = self._control("POST", "/pools", {"location": location, "provisioner_type": provisioner_type,
                                               "name": name, "provider_pubkey": provider_pubkey,
                                               "auto_accept": auto_accept, "pool_id": pool_id})
        return str(out["provider_pubkey"]), str(out["pool_id"])

    def setup_token(self, pool_id: str, *, label: str | None = None, expires_in_seconds: float = 86_400) -> str:
        """A single-use setup token for `pool_id`."""
        return str(self._control("POST", "/setup-tokens", {"pool_id": pool_id, "label": label,
                                                           "expires_in_seconds": expires_in_seconds})["token"])

    def set_upgrade(self, pool_id: str, version: str | None) -> None:
        """Make heartbeats of the pool's agents answer upgradeToVersion=version (None clears)."""
        self._control("POST", f"/pools/{pool_id}/upgrade", {"version": version})

    def create_offering(self, provider_pubkey: str, *, pool_id: str | None = None,
                        datacenter_country: str | None = "DE", **fields: Any) -> str:
        """An offering; fields: offering_id, cpu_cores, memory_amount ("4 GB"), storage_capacity,
        provisioner_type, provisioner_config (JSON text), post_provision_script. pool_id pins it to a
        pool (agent_pool_id); otherwise the datacenter country's region must equal the pool location."""
        body = {"provider_pubkey": provider_pubkey, "agent_pool_id": pool_id,
                "datacenter_country": datacenter_country, **fields}
        return str(self._control("POST", "/offerings", body)["offering_id"])

    def create_contracts(self, provider_pubkey: str, offering_id: str, n: int = 1, **fields: Any) -> list[str]:
        """n contracts (default accepted, payment succeeded, ending in 30 days); fields: status,
        payment_status, payment_amount_e9s, requester_ssh_pubkey, requester_pubkey, instance_config,
        end_timestamp_ns (None = no end), contract_id (n == 1)."""
        body = {"provider_pubkey": provider_pubkey, "offering_id": offering_id, "count": n, **fields}
        return [str(c) for c in self._control("POST", "/contracts", body)["contract_ids"]]

    def contract(self, contract_id: str) -> dict[str, Any]:
        """The stored row plus `history` (every status PUT, lock, unlock, terminated, password and
        SSH-key report: kind, agent_pubkey, at_ns and what was sent/decided) and `health_checks`."""
        return dict(self._control("GET", f"/contracts/{contract_id}"))

    def contracts(self) -> list[dict[str, Any]]:
        return list(self._control("GET", "/contracts"))

    def update_contract(self, contract_id: str, **fields: Any) -> dict[str, Any]:
        """Overwrite contract columns directly (status, payment_status, end_timestamp_ns, pause_reason, ...)."""
        return dict(self._control("PATCH", f"/contracts/{contract_id}", fields))

    def set_status(self, contract_id: str, status: str, *, pause_reason: str | None = None) -> dict[str, Any]:
        """E.g. "cancelled", "paused" (with pause_reason), "expired"; no state machine."""
        fields: dict[str, Any] = {"status": status}
        if pause_reason is not None:
            fields["pause_reason"] = pause_reason
        return self.update_contract(contract_id, **fields)

    def request_password_reset(self, contract_id: str) -> dict[str, Any]:
        """Queue a tenant's password reset (the contract must have been provisioned)."""
        return dict(self._control("POST", f"/contracts/{contract_id}/password-reset", {}))

    def request_ssh_key_rotation(self, contract_id: str, new_ssh_pubkey: str) -> dict[str, Any]:
        """Queue a tenant's SSH key rotation (the contract must have been provisioned)."""
        return dict(self._control("POST", f"/contracts/{contract_id}/ssh-key-rotation",
                                  {"new_ssh_pubkey": new_ssh_pubkey}))

    def agents(self) -> list[dict[str, Any]]:
        """Delegations with agent_pubkey, provider_pubkey, pool_id, permissions, revoked_at_ns,
        last_heartbeat_ns, last_heartbeat (the last request body) and heartbeats (count)."""
        return list(self._control("GET", "/agents"))

    def revoke_agent(self, agent_pubkey: str) -> bool:
        return bool(self._control("POST", f"/agents/{agent_pubkey}/revoke", {})["revoked"])

    def set_permissions(self, agent_pubkey: str, permissions: list[str]) -> None:
        self._control("PUT", f"/agents/{agent_pubkey}/permissions", {"permissions": permissions})

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Every agent-facing request received: endpoint name, method, agent_pubkey header, http_status, at_ns."""
        return list(self._control("GET", "/requests", params={"endpoint": endpoint} if endpoint else None))

    def inject(self, endpoint: str, kind: str, count: int = 1, *, message: str | None = None,
               status: int | None = None, retry_after: int | None = None, data: Any = None,
               when: str | None = None) -> None:
        """Fault the next `count` requests to `endpoint` (a name from live_api.ENDPOINT_NAMES, e.g.
        "lock", "provisioning", "pending_provision", "heartbeat"). kind: "html502" (nginx 502 page),
        "refuse" (200 success:false, `message`), "http" (`status`, plain-text `message`, optional
        Retry-After), "malformed" (200 success:true with `data` or a wrong-shaped copy of the real one).
        when: "before" (default; the request has no effect) or "after" (default for malformed; the
        request takes effect, its answer is replaced: a lost response)."""
        body: dict[str, Any] = {"endpoint": endpoint, "kind": kind, "count": count}
        for key, value in (("message", message), ("status", status), ("retry_after", retry_after), ("when", when)):
            if value is not None:
                body[key] = value
        if data is not None:
            body["data"] = data
        self._control("POST", "/faults", body)

    def clear_faults(self) -> None:
        self._control("DELETE", "/faults")


@contextlib.contextmanager
def running_live_api(tmp_dir: Path | None = None, *, lock_ttl_seconds: float | None = None,
                     port: int | None = None) -> Iterator[LiveApiServer]:
    """A started fake whose state and log live in `tmp_dir` (a temp dir, removed after, if None)."""
    own = tmp_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="dc-live-api-")) if own else Path(tmp_dir)  # type: ignore[arg-type]
    server = LiveApiServer(state_dir, port=port, lock_ttl_seconds=lock_ttl_seconds)
    try:
        server.start()
        yield server
    finally:
        server.close()
        if own:
            shutil.rmtree(state_dir, ignore_errors=True)
