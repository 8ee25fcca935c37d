"""The signed HTTP plumbing both dialects share.

* one `httpx.AsyncClient` per process, with timeouts and TLS verification (`ca_cert` for a private CA);
* every request signed by the dialect's signer (:mod:`dc_agent.signing`; each retry is signed anew);
* retries with exponential backoff and jitter on connection errors, timeouts and 5xx, never on 4xx, with a
  policy chosen per call (a result report retries longer than a heartbeat);
* answers unwrapped from the `{success, data, error}` envelope; failures mapped onto :mod:`dc_agent.errors`,
  naming the endpoint and the status (`success: false` on a 2xx answer is :class:`Refused`).
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential,
                      wait_random)

from dc_agent import __version__
from dc_agent.errors import ApiError, ConfigFileError, Refused, Unreachable, error_for_status
from dc_agent.signing import SignedRequestAuth, Signer

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
    "claim": RetryPolicy(attempts=1, budget_seconds=90),  # a long poll: the loop itself calls again
    "renew": RetryPolicy(attempts=2, budget_seconds=10),
    "unlock": RetryPolicy(attempts=3, budget_seconds=10),
    "unlock-quick": RetryPolicy(attempts=1, budget_seconds=3),
    "report": RetryPolicy(attempts=5, budget_seconds=30),
    "reconcile": RetryPolicy(attempts=3, budget_seconds=30),
    "setup": RetryPolicy(attempts=3, budget_seconds=15),
    "status": RetryPolicy(attempts=1, budget_seconds=10),
}


def ssl_context(ca_cert: str | None) -> ssl.SSLContext | bool:
    """Verification on by default; `ca_cert` adds a private CA (a bad file is a config error)."""
    if not ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigFileError(f"[agent] ca_cert = {ca_cert!r}: cannot load it as a PEM CA bundle ({exc})") from None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.retryable


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def unwrap(endpoint: str, response: httpx.Response) -> Any:
    """The envelope's `data` for a 2xx answer, else the mapped agent error."""
    body = _decode(response)
    if response.is_success:
        if isinstance(body, dict) and "success" in body:
            if body.get("success") is False:
                raise Refused(endpoint, response.status_code, str(body.get("error") or "refused without a reason"))
            return body.get("data")
        return body
    raise error_for_status(endpoint, response.status_code, body)


def transport_error(endpoint: str, exc: httpx.TransportError) -> Unreachable:
    kind = type(exc).__name__
    return Unreachable(endpoint, None, f"{kind}: {str(exc) or kind}")


def user_agent() -> dict[str, str]:
    return {"User-Agent": f"dc-agent/{__version__}"}


class SignedHttp:
    """Signed JSON calls to `<api_url>/api/v1`, with per-call retry policies."""

    def __init__(self, api_url: str, signer: Signer, *, timeout: float = 30.0, ca_cert: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 policies: dict[str, RetryPolicy] | None = None, redact_in_endpoint: str = "") -> None:
        self.api_url = api_url.rstrip("/")
        self.policies = {**POLICIES, **(policies or {})}
        self._auth = SignedRequestAuth(signer, "agent")
        self._redact = redact_in_endpoint
        self._http = httpx.AsyncClient(
            base_url=self.api_url + API_PREFIX,
            auth=self._auth,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            verify=ssl_context(ca_cert),
            headers=user_agent(),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def public_key_hex(self) -> str:
        return self._auth.public_key_hex

    async def aclose(self) -> None:
        await self._http.aclose()

    def endpoint(self, method: str, path: str) -> str:
        """`METHOD /path` for messages, with the provider key shortened to `{pk}`."""
        return f"{method} {path.replace(self._redact, '{pk}') if self._redact else path}"

    async def call(self, method: str, path: str, body: Any = None, *, policy: str,
                   policy_override: RetryPolicy | None = None) -> Any:
        endpoint = self.endpoint(method, path)
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
                    raise transport_error(endpoint, exc) from None
                return unwrap(endpoint, response)
        raise AssertionError("unreachable")  # pragma: no cover


class SignedClient:
    """What every dialect's client shares: one signed HTTP session as `self.http`, the agent's key, close.
    A dialect names its signature scheme in `signer` (a class taking the agent's PyNaCl key)."""

    signer: Any = None

    def __init__(self, api_url: str, key: Any, provider_pubkey: str, *, timeout: float = 30.0,
                 ca_cert: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 policies: dict[str, RetryPolicy] | None = None) -> None:
        self.provider_pubkey = provider_pubkey
        self.http = SignedHttp(api_url, type(self).signer(key), timeout=timeout, ca_cert=ca_cert,
                               transport=transport, policies=policies, redact_in_endpoint=provider_pubkey)

    @property
    def agent_pubkey(self) -> str:
        return self.http.public_key_hex

    async def aclose(self) -> None:
        await self.http.aclose()


def register(api_url: str, token: str, agent_pubkey: str, *, ca_cert: str | None = None, timeout: float = 30.0,
             transport: httpx.BaseTransport | None = None, retry_wait: float = 0.5) -> dict[str, Any]:
    """`POST /agents/setup` (unsigned, the same in both dialects). Only connection failures are retried: a
    token is single-use, so an answered request is never repeated."""
    endpoint = "POST /agents/setup"
    api_url = api_url.rstrip("/")
    body = json.dumps({"token": token, "agentPubkey": agent_pubkey}, separators=(",", ":")).encode()
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)), verify=ssl_context(ca_cert),
                      headers=user_agent(), transport=transport) as http:
        last: Unreachable | None = None
        for attempt in range(3):
            try:
                response = http.post(api_url + API_PREFIX + "/agents/setup", content=body,
                                     headers={"Content-Type": "application/json"})
            except httpx.ConnectError as exc:  # nothing reached the server: safe to retry
                last = transport_error(endpoint, exc)
                time.sleep(retry_wait * (2 ** attempt))
                continue
            except httpx.TransportError as exc:
                raise transport_error(endpoint, exc) from None
            data = unwrap(endpoint, response)
            return data if isinstance(data, dict) else {}
        assert last is not None
        raise last
