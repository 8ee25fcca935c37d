"""Request signing as an `httpx.Auth`, with the signature scheme as a plug-in.

Both APIs sign the same message, `X-Timestamp + X-Nonce + METHOD + PATH + BODY` (PATH with `/api/v1`, no
query), and send the same headers; they differ only in the signature scheme:

* pool_api: pure Ed25519 (:class:`Ed25519Signer`, PyNaCl);
* the live Decent Cloud API: Ed25519ph (the SHA-512 of the message is signed, RFC 8032 section 5.1) with the
  context `b"decent-cloud"` (:class:`Ed25519phSigner`, PyCryptodome; PyNaCl cannot make these).

Every request sent through :class:`SignedRequestAuth` gets a fresh timestamp and nonce, so retries are
signed anew.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from typing import Literal, Protocol

import httpx
from nacl.signing import SigningKey

from dc_common.signing import signature_message

Role = Literal["agent", "provider"]
IDENTITY_HEADER: dict[Role, str] = {"agent": "X-Agent-Pubkey", "provider": "X-Public-Key"}
DECENT_CLOUD_CONTEXT = b"decent-cloud"
__all__ = ["DECENT_CLOUD_CONTEXT", "Ed25519Auth", "Ed25519Signer", "Ed25519phSigner", "SignedRequestAuth",
           "Signer", "sign_headers", "signature_message"]


class Signer(Protocol):
    """One signature scheme over one key."""

    @property
    def public_key_hex(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


class Ed25519Signer:
    """Pure Ed25519 (pool_api)."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @property
    def public_key_hex(self) -> str:
        return self._key.verify_key.encode().hex()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


class Ed25519phSigner:
    """Ed25519ph with a context (the live Decent Cloud API): the signature covers SHA-512(message)."""

    def __init__(self, key: SigningKey, context: bytes = DECENT_CLOUD_CONTEXT) -> None:
        from Crypto.PublicKey import ECC
        from Crypto.Signature import eddsa

        self._public_hex = key.verify_key.encode().hex()
        self._signer = eddsa.new(ECC.construct(curve="Ed25519", seed=key.encode()), mode="rfc8032",
                                 context=context)

    @property
    def public_key_hex(self) -> str:
        return self._public_hex

    def sign(self, message: bytes) -> bytes:
        from Crypto.Hash import SHA512

        return self._signer.sign(SHA512.new(message))


def sign_headers(signer: Signer | SigningKey, role: Role, method: str, path: str, body: bytes,
                 *, timestamp_ns: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The headers that authenticate one request (a bare PyNaCl key signs pure Ed25519)."""
    if isinstance(signer, SigningKey):
        signer = Ed25519Signer(signer)
    ts = str(timestamp_ns if timestamp_ns is not None else time.time_ns())
    nonce = nonce or str(uuid.uuid4())
    signature = signer.sign(signature_message(ts, nonce, method, path, body))
    return {
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": signature.hex(),
        IDENTITY_HEADER[role]: signer.public_key_hex,
    }


class SignedRequestAuth(httpx.Auth):
    """Signs each request (including each retry) as `role` with `signer`."""

    requires_request_body = True

    def __init__(self, signer: Signer, role: Role = "agent") -> None:
        self._signer = signer
        self._role = role

    @property
    def public_key_hex(self) -> str:
        return self._signer.public_key_hex

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        body = request.content or b""
        request.headers.update(sign_headers(self._signer, self._role, request.method, request.url.path, body))
        yield request


class Ed25519Auth(SignedRequestAuth):
    """Pure Ed25519 signing with a PyNaCl key (pool_api; provider requests in tests and the demo)."""

    def __init__(self, key: SigningKey, role: Role = "agent") -> None:
        super().__init__(Ed25519Signer(key), role)
