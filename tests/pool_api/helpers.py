"""Small helpers shared by the pool_api integration tests."""

from __future__ import annotations

import functools
import json as jsonlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from nacl.signing import SigningKey

from dc_agent.signing import sign_headers
from tests.support.pool_server import PoolServer
from tests.support.provider import Provider, agent_client, data, make_agent
from tests.support.wait import wait_until


def hexkey(key: SigningKey) -> str:
    return key.verify_key.encode().hex()


def signed_request(server: PoolServer, method: str, path: str, body: bytes = b"", *, key: SigningKey | None = None,
                   role: str = "agent", extra_headers: dict[str, str] | None = None, **sign_kw: Any) -> httpx.Response:
    """Send exactly `body` to `/api/v1{path}`, signed by `key` (no key: unsigned)."""
    full = f"/api/v1{path}"
    headers = {"content-type": "application/json"}
    if key is not None:
        signed = sign_headers(key, role, method, full, body, **sign_kw)  # type: ignore[arg-type]
        headers.update({k.lower(): v for k, v in signed.items()})
    headers.update({k.lower(): v for k, v in (extra_headers or {}).items()})
    return httpx.request(method, server.url + full, content=body, headers=headers, timeout=30)


def error(response: httpx.Response, status: int) -> str:
    """Assert a refusal in the envelope with `status`; return its message."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body = response.json()
    assert body["success"] is False and body["data"] is None and isinstance(body["error"], str) and body["error"], body
    return body["error"]


@dataclass
class Agent:
    key: SigningKey
    client: httpx.Client
    provider: Provider
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def pubkey(self) -> str:
        return hexkey(self.key)

    def call(self, method: str, path_after_provider: str, json: Any = None) -> httpx.Response:
        return self.client.request(method, f"/providers/{self.provider.pubkey}{path_after_provider}", json=json)

    def lock(self, cid: str) -> httpx.Response:
        return self.call("POST", f"/contracts/{cid}/lock")

    def unlock(self, cid: str) -> httpx.Response:
        return self.call("DELETE", f"/contracts/{cid}/lock")

    def provisioned(self, cid: str, details: dict[str, Any] | None = None) -> httpx.Response:
        return self.call("POST", f"/contracts/{cid}/provisioned",
                         {"instanceDetails": details or {"externalId": f"vm-{cid[:6]}", "provisioner": "proxmox"}})

    def failed(self, cid: str, message: str = "clone failed") -> httpx.Response:
        return self.call("POST", f"/contracts/{cid}/failed", {"errorMessage": message})

    def pending(self) -> list[dict[str, Any]]:
        return data(self.call("GET", "/contracts/pending-provision"))

    def pending_ids(self) -> list[str]:
        return [c["contractId"] for c in self.pending()]

    def heartbeat(self, **fields: Any) -> dict[str, Any]:
        body = {"version": "0.1.0", "provisionerType": "proxmox", "activeContracts": 0, **fields}
        return data(self.call("POST", "/heartbeat", body))

    def close(self) -> None:
        self.client.close()


def new_agent(provider: Provider, pool_id: str, label: str | None = None, server: Any = None) -> Agent:
    """Register an agent in `pool_id`; its client talks to `server` (default: the provider's server)."""
    key, setup = make_agent(provider, pool_id, label=label)
    return Agent(key=key, client=agent_client(server or provider.server, key), provider=provider, setup=setup)


def admin_json(server: PoolServer, *args: str) -> Any:
    return jsonlib.loads(server.admin(*args, "--json"))


wait_for = functools.partial(wait_until, timeout=30.0, interval=0.2)


# --- direct database access (fast stand-ins for the admin CLI; the CLI itself is tested in test_flow) ---

_ENGINES: dict[str, Any] = {}


def engine_for(server: PoolServer):  # noqa: ANN201
    """A cached engine on the server's database, configured like the server's (SQLite pragmas)."""
    from pool_api.db import create_engine

    if server.database_url not in _ENGINES:
        _ENGINES[server.database_url] = create_engine(server.database_url)
    return _ENGINES[server.database_url]


def make_contracts(server: PoolServer, offering_id: str, count: int = 1, **kw: Any) -> list[str]:
    """What `dc-pool-api contract create` does, in-process: paid, accepted contracts (kw: status, payment_status)."""
    from pool_api.contracts import create_contracts

    with engine_for(server).begin() as conn:
        return create_contracts(conn, offering_id, count=count, **kw)


def contract(server: PoolServer, contract_id: str) -> dict[str, Any]:
    """What `dc-pool-api contract show --json` prints, in-process."""
    from pool_api.contracts import contract_json, get_contract

    with engine_for(server).connect() as conn:
        return contract_json(get_contract(conn, contract_id))


def cancel(server: PoolServer, contract_id: str) -> None:
    from pool_api.contracts import cancel as cancel_contract

    with engine_for(server).begin() as conn:
        cancel_contract(conn, contract_id)


def quick_provider(server: PoolServer) -> Provider:
    """What `Provider.register` does (`dc-pool-api provider add`), in-process."""
    import sqlalchemy as sa

    from pool_api.db import now_ns
    from pool_api.tables import providers

    key = SigningKey.generate()
    with engine_for(server).begin() as conn:
        conn.execute(sa.insert(providers).values(pubkey=hexkey(key), name="test", created_at_ns=now_ns()))
    return Provider(server, key)


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
