"""The signed-request message, the one definition both sides use (PROTOCOL: "Signed requests")."""

from __future__ import annotations


def signature_message(timestamp_ns: str, nonce: str, method: str, path: str, body: bytes) -> bytes:
    """The exact bytes signed and verified: `X-Timestamp + X-Nonce + METHOD + PATH + BODY`, no separators,
    PATH with `/api/v1` and without host or query string, BODY the raw request body."""
    return timestamp_ns.encode() + nonce.encode() + method.upper().encode() + path.encode() + body
