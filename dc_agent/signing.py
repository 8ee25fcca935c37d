"""Ed25519 request signing (PROTOCOL.md, "Signed requests") as an `httpx.Auth`.

Every request a client sends through this auth is signed over
`X-Timestamp + X-Nonce + METHOD + PATH + BODY` with a fresh nonce, so retries are signed anew.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from typing import Literal

import httpx
from nacl.signing import SigningKey

Role = Literal["agent", "provider"]
IDENTITY_HEADER: dict[Role, str] = {"agent": "X-Agent-Pubkey", "provider": "X-Public-Key"}


def signature_message(timestamp_ns: str, nonce: str, method: str, path: str, body: bytes) -> bytes:
    """The exact bytes both sides sign and verify: no separators, PATH without host or query."""
    return timestamp_ns.encode() + nonce.encode() + method.upper().encode() + path.encode() + body


def sign_headers(key: SigningKey, role: Role, method: str, path: str, body: bytes,
                 *, timestamp_ns: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The headers that authenticate one request."""
    ts = str(timestamp_ns if timestamp_ns is not None else time.time_ns())
    nonce = nonce or str(uuid.uuid4())
    signature = key.sign(signature_message(ts, nonce, method, path, body)).signature
    return {
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": signature.hex(),
        IDENTITY_HEADER[role]: key.verify_key.encode().hex(),
    }


class Ed25519Auth(httpx.Auth):
    """Signs each request (including each retry) with the agent's or provider's key."""

    requires_request_body = True

    def __init__(self, key: SigningKey, role: Role = "agent") -> None:
        self._key = key
        self._role = role

    @property
    def public_key_hex(self) -> str:
        return self._key.verify_key.encode().hex()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        body = request.content or b""
        request.headers.update(sign_headers(self._key, self._role, request.method, request.url.path, body))
        yield request
