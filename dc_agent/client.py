"""The one HTTP client the agent uses to talk to pool_api (PROTOCOL.md).

* one `httpx.AsyncClient` per process, with timeouts and TLS verification (`ca_cert` for a private CA);
* every request signed by :class:`dc_agent.signing.Ed25519Auth` (each retry is signed anew);
* retries with exponential backoff and jitter on connection errors, timeouts and 5xx, never on 4xx,
  with a policy chosen per call (a result report retries longer than a heartbeat);
* answers unwrapped from the `{success, data, error}` envelope; failures mapped onto
  :mod:`dc_agent.errors` in :func:`_raise_for`, naming the endpoint and the status.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from nacl.signing import SigningKey
from tenacity import (AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential,
                      wait_random)

from dc_agent import __version__
from dc_agent.errors import ApiError, Unreachable, error_for_status
from dc_agent.signing import Ed25519Auth

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of call is retried: at most `attempts` tries within `budget_seconds`."""

    attempts: int
    budget_seconds: float
    initial_wait: float = 0.5
    max_wait: float = 8.0


POLICIES: dict[str, RetryPolicy] = {
    "heartbeat": RetryPolicy(attempts=2, budget_seconds=10),
    "poll": RetryPolicy(attempts=2, budget_seconds=10),
    "lock": RetryPolicy(attempts=3, budget_seconds=15),
    "renew": RetryPolicy(attempts=2, budget_seconds=10),
    "unlock": RetryPolicy(attempts=3, budget_seconds=10),
    "report": RetryPolicy(attempts=5, budget_seconds=30),
    "reconcile": RetryPolicy(attempts=3, budget_seconds=30),
    "setup": RetryPolicy(attempts=3, budget_seconds=15),
    "status": RetryPolicy(attempts=1, budget_seconds=10),
}


def _ssl_context(ca_cert: str | None) -> ssl.SSLContext | bool:
    if not ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as exc:
        from dc_agent.errors import ConfigFileError

        raise ConfigFileError(f"[agent] ca_cert = {ca_cert!r}: cannot load it as a PEM CA bundle ({exc})") from None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.retryable


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _raise_for(endpoint: str, response: httpx.Response) -> Any:
    """Return the envelope's `data` for a 2xx answer, else raise the mapped agent error."""
    body = _decode(response)
    if response.is_success:
        if isinstance(body, dict) and "success" in body:
            if body.get("success") is False:
                raise error_for_status(endpoint, 500 if response.status_code < 400 else response.status_code, body)
            return body.get("data")
        return body
    raise error_for_status(endpoint, response.status_code, body)


def _transport_error(endpoint: str, exc: httpx.TransportError) -> Unreachable:
    kind = type(exc).__name__
    text = str(exc) or kind
    return Unreachable(endpoint, None, f"{kind}: {text}")


class ApiClient:
    """Signed calls of one agent. Create one per process; close with :meth:`aclose`."""

    def __init__(self, api_url: str, key: SigningKey, provider_pubkey: str, *, timeout: float = 30.0,
                 ca_cert: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 policies: dict[str, RetryPolicy] | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.provider_pubkey = provider_pubkey
        self.policies = {**POLICIES, **(policies or {})}
        self._auth = Ed25519Auth(key, "agent")
        self._http = httpx.AsyncClient(
            base_url=self.api_url + API_PREFIX,
            auth=self._auth,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            verify=_ssl_context(ca_cert),
            headers={"User-Agent": f"dc-agent/{__version__}"},
            transport=transport,
            follow_redirects=False,
        )

    @property
    def agent_pubkey(self) -> str:
        return self._auth.public_key_hex

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing -----------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None, *, policy: str,
                    policy_override: RetryPolicy | None = None) -> Any:
        endpoint = f"{method} {path.replace(self.provider_pubkey, '{pk}')}"
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        rp = policy_override or self.policies[policy]

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(rp.attempts) | stop_after_delay(rp.budget_seconds),
            wait=wait_exponential(multiplier=rp.initial_wait, max=rp.max_wait) + wait_random(0, rp.initial_wait),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                try:
                    response = await self._http.request(method, path, content=content, headers=headers)
                except httpx.TransportError as exc:
                    raise _transport_error(endpoint, exc) from None
                return _raise_for(endpoint, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pk(self) -> str:
        return f"/providers/{self.provider_pubkey}"

    @staticmethod
    def _id(contract_id: str) -> str:
        return quote(str(contract_id), safe="")

    # -- agent endpoints ------------------------------------------------------------------------------

    async def heartbeat(self, *, version: str, provisioner_type: str, active_contracts: int,
                        capacity: dict[str, Any] | None = None, policy: str = "heartbeat") -> dict[str, Any]:
        body: dict[str, Any] = {"version": version, "provisionerType": provisioner_type,
                                "activeContracts": active_contracts}
        if capacity is not None:
            body["capacity"] = capacity
        return await self._call("POST", f"{self._pk()}/heartbeat", body, policy=policy) or {}

    async def pending_contracts(self) -> list[dict[str, Any]]:
        data = await self._call("GET", f"{self._pk()}/contracts/pending-provision", policy="poll")
        if isinstance(data, dict):  # tolerate {"contracts": [...]}
            data = data.get("contracts", [])
        return list(data or [])

    async def lock(self, contract_id: str, *, policy: str = "lock") -> dict[str, Any]:
        return await self._call("POST", f"{self._pk()}/contracts/{self._id(contract_id)}/lock",
                                policy=policy) or {}

    async def unlock(self, contract_id: str, *, policy_override: RetryPolicy | None = None) -> None:
        await self._call("DELETE", f"{self._pk()}/contracts/{self._id(contract_id)}/lock", policy="unlock",
                         policy_override=policy_override)

    async def report_provisioned(self, contract_id: str, instance_details: dict[str, Any]) -> Any:
        return await self._call("POST", f"{self._pk()}/contracts/{self._id(contract_id)}/provisioned",
                                {"instanceDetails": instance_details}, policy="report")

    async def report_failed(self, contract_id: str, error_message: str) -> Any:
        return await self._call("POST", f"{self._pk()}/contracts/{self._id(contract_id)}/failed",
                                {"errorMessage": error_message}, policy="report")

    async def reconcile(self, running: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._call("POST", f"{self._pk()}/reconcile", {"runningInstances": running},
                                policy="reconcile") or {}

    async def report_terminated(self, contract_id: str) -> Any:
        return await self._call("PUT", f"{self._pk()}/contracts/{self._id(contract_id)}/terminated",
                                policy="report")


def register(api_url: str, token: str, agent_pubkey: str, *, ca_cert: str | None = None, timeout: float = 30.0,
             transport: httpx.BaseTransport | None = None, retry_wait: float = 0.5) -> dict[str, Any]:
    """`POST /agents/setup` (unsigned). Only connection failures are retried: a token is single-use,
    so an answered request is never repeated."""
    import time

    endpoint = "POST /agents/setup"
    api_url = api_url.rstrip("/")
    body = json.dumps({"token": token, "agentPubkey": agent_pubkey}, separators=(",", ":")).encode()
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)), verify=_ssl_context(ca_cert),
                      headers={"User-Agent": f"dc-agent/{__version__}"}, transport=transport) as http:
        last: Unreachable | None = None
        for attempt in range(3):
            try:
                response = http.post(api_url + API_PREFIX + "/agents/setup", content=body,
                                     headers={"Content-Type": "application/json"})
            except httpx.ConnectError as exc:  # nothing reached the server: safe to retry
                last = _transport_error(endpoint, exc)
                time.sleep(retry_wait * (2 ** attempt))
                continue
            except httpx.TransportError as exc:
                raise _transport_error(endpoint, exc) from None
            return _raise_for(endpoint, response) or {}
        assert last is not None
        raise last
