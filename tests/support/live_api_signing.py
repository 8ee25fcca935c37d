"""A signed client for the live Decent Cloud API, for tests that act as an agent (e.g. a rival agent).

Signs as the real server expects (common/src/api_auth.rs, common/src/dcc_identity.rs): Ed25519ph over
timestamp || nonce || METHOD || path || body with context b"decent-cloud", using pycryptodome (the
fake verifies with the independent tests/support/ed25519ph_ref.py). `scheme` lets tests send the
wrong kinds of signature the server refuses.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from Crypto.Hash import SHA512
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

CONTEXT = b"decent-cloud"


class AgentKey:
    """An Ed25519 key (random seed unless given) that signs live-API requests."""

    def __init__(self, seed: bytes | None = None) -> None:
        self.seed = seed or os.urandom(32)
        self._key = ECC.construct(curve="Ed25519", seed=self.seed)
        self.pubkey_hex = self._key.public_key().export_key(format="raw").hex()

    def sign(self, message: bytes, scheme: str = "ph") -> bytes:
        """scheme: "ph" (what the server wants), "plain" (Ed25519), "ph-nocontext", "ph-wrongcontext"."""
        if scheme == "plain":
            return eddsa.new(self._key, "rfc8032").sign(message)
        context = {"ph": CONTEXT, "ph-nocontext": b"", "ph-wrongcontext": b"decent-cloud-x"}[scheme]
        return eddsa.new(self._key, "rfc8032", context=context).sign(SHA512.new(message))

    def headers(self, method: str, path: str, body: bytes = b"", *, scheme: str = "ph",
                timestamp_ns: int | None = None, nonce: str | None = None) -> dict[str, str]:
        timestamp = str(time.time_ns() if timestamp_ns is None else timestamp_ns)
        nonce = nonce or str(uuid.uuid4())
        message = timestamp.encode() + nonce.encode() + method.encode() + path.encode() + body
        return {"X-Agent-Pubkey": self.pubkey_hex, "X-Signature": self.sign(message, scheme).hex(),
                "X-Timestamp": timestamp, "X-Nonce": nonce}


def signed_request(client: httpx.Client, key: AgentKey, method: str, url: str, payload: Any = None, *,
                   content_type: str | None = "application/json", scheme: str = "ph",
                   timestamp_ns: int | None = None) -> httpx.Response:
    """Send `payload` (JSON-encoded unless bytes; None = no body) signed by `key` to a full URL."""
    if payload is None:
        body = b""
    elif isinstance(payload, bytes):
        body = payload
    else:
        body = json.dumps(payload).encode()
    path = urlsplit(url).path
    headers = key.headers(method, path, body, scheme=scheme, timestamp_ns=timestamp_ns)
    if payload is not None and content_type is not None:
        headers["Content-Type"] = content_type
    return client.request(method, url, content=body or None, headers=headers)
