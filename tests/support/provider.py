"""A signed provider client (and agent helpers) for tests and benchmarks.

    provider = Provider.register(server)                    # new key + `dc-pool-api provider add`
    pool = provider.create_pool("eu", "europe", "proxmox")
    token = provider.create_token(pool["poolId"])
    key, setup = make_agent(provider, pool["poolId"])       # POST /agents/setup with a new agent key
    agent = agent_client(server, key)                       # httpx.Client signed as that agent
    agent.post(f"/providers/{provider.pubkey}/heartbeat", json={...})

As a pytest fixture:

    @pytest.fixture
    def provider(server):
        with Provider.register(server) as p:
            yield p
"""

from __future__ import annotations

from typing import Any

import httpx
from nacl.signing import SigningKey

from dc_agent.signing import Ed25519Auth


def _base(server: Any) -> str:
    url = server if isinstance(server, str) else server.url
    return url.rstrip("/") + "/api/v1"


def data(response: httpx.Response, status: int | tuple[int, ...] = (200, 201)) -> Any:
    """The envelope's data, asserting the status and `success`."""
    wanted = (status,) if isinstance(status, int) else status
    assert response.status_code in wanted, f"{response.request.method} {response.request.url.path}: " \
                                           f"{response.status_code} {response.text}"
    body = response.json()
    assert body["success"] is True and body["error"] is None, body
    return body["data"]


def agent_client(server: Any, key: SigningKey, timeout: float = 30.0) -> httpx.Client:
    """An httpx client for `server`'s /api/v1 that signs every request as the agent `key`."""
    return httpx.Client(base_url=_base(server), auth=Ed25519Auth(key, role="agent"), timeout=timeout)


class Provider:
    def __init__(self, server: Any, key: SigningKey) -> None:
        self.server = server
        self.key = key
        self.client = httpx.Client(base_url=_base(server), auth=Ed25519Auth(key, role="provider"), timeout=30.0)

    @classmethod
    def register(cls, server: Any, name: str | None = None) -> Provider:
        """A new provider key, registered with `dc-pool-api provider add` on the server's database."""
        key = SigningKey.generate()
        args = ["provider", "add", "--pubkey", key.verify_key.encode().hex()]
        if name:
            args += ["--name", name]
        server.admin(*args)
        return cls(server, key)

    @property
    def pubkey(self) -> str:
        return self.key.verify_key.encode().hex()

    def request(self, method: str, path_after_provider: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        """A signed request to /api/v1/providers/{pubkey}{path_after_provider}."""
        return self.client.request(method, f"/providers/{self.pubkey}{path_after_provider}", json=json, **kwargs)

    def create_pool(self, name: str, location: str, provisioner_type: str = "proxmox") -> dict[str, Any]:
        return data(self.request("POST", "/pools", {"name": name, "location": location,
                                                    "provisionerType": provisioner_type}))

    def create_token(self, pool_id: str, label: str | None = None, expires_in_hours: int = 24) -> str:
        body: dict[str, Any] = {"expiresInHours": expires_in_hours}
        if label is not None:
            body["label"] = label
        return data(self.request("POST", f"/pools/{pool_id}/setup-tokens", body))["token"]

    def create_offering(self, offering_id: str, country: str, provisioner_type: str | None = None,
                        pool_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """POST /offerings; extra fields in camelCase (cpuCores=2) or snake_case (cpu_cores=2)."""
        body: dict[str, Any] = {"offeringId": offering_id, "name": fields.pop("name", offering_id),
                                "datacenterCountry": country}
        if provisioner_type is not None:
            body["provisionerType"] = provisioner_type
        if pool_id is not None:
            body["agentPoolId"] = pool_id
        for key, value in fields.items():
            head, *rest = key.split("_")
            body[head + "".join(w.title() for w in rest)] = value
        return data(self.request("POST", "/offerings", body))

    def create_contract(self, offering_id: str, count: int = 1, *extra: str) -> list[str]:
        """`dc-pool-api contract create` (the marketplace stand-in); returns the new ids."""
        out = self.server.admin("contract", "create", "--offering", offering_id, "--count", str(count), *extra)
        return out.split()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def make_agent(provider: Provider, pool_id: str, label: str | None = None) -> tuple[SigningKey, dict[str, Any]]:
    """Register a new agent key in `pool_id` through a fresh token and POST /agents/setup."""
    token = provider.create_token(pool_id, label=label)
    key = SigningKey.generate()
    response = httpx.post(f"{_base(provider.server)}/agents/setup",
                          json={"token": token, "agentPubkey": key.verify_key.encode().hex()}, timeout=30.0)
    return key, data(response)
