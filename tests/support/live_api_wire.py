"""Wire-level behaviour of the live Decent Cloud API, reimplemented for the fake: auth, bodies, envelope.

Sources (decent-stuff/decent-cloud; see docs/decent-cloud-dialect.md for the prose):
- api/src/auth.rs `verify_request_signature`, `AgentAuthenticatedUser`, `ProviderOrAgentAuth`:
  header names, check order, 400 vs 401, plain-text bodies, delegation lookup, no nonce store.
- common/src/api_auth.rs `build_signed_message`: timestamp || nonce || METHOD || /api/v1 path || body.
- common/src/dcc_identity.rs + lib.rs: Ed25519ph, SHA-512 prehash, context b"decent-cloud"
  (verified here with our own tests/support/ed25519ph_ref.py, not the library the agent uses).
- poem-openapi 5.1.16 payload/json.rs, macros.rs, types/error.rs: 415 without a JSON content type,
  400 "parse request payload error: ...", `Vec` fields required, unknown fields ignored.
- api/src/openapi/common.rs `ApiResponse`: {success, data?, error?}, absent keys omitted.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from tests.support import ed25519ph_ref
from tests.support.live_api_store import LiveStore

SIGN_CONTEXT = b"decent-cloud"
MAX_SKEW_NS = 5 * 60 * 1_000_000_000
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
_HEX_CHARS = re.compile(r"[0-9a-fA-F]")
_INT = re.compile(r"[+-]?[0-9]+")
_UUID_FORMS = (
    re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
    re.compile(r"[0-9a-fA-F]{32}"),
    re.compile(r"\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}"),
    re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
)


class WireError(Exception):
    """A framework-level refusal: status code plus plain-text body (never the JSON envelope)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> Response:
        return PlainTextResponse(self.text, status_code=self.status)


class Refusal(Exception):
    """A handler-level refusal: HTTP 200 with success:false and this message."""


def envelope(data: Any = None, error: str | None = None, success: bool = True) -> Response:
    body: dict[str, Any] = {"success": success}
    if data is not None:
        body["data"] = data
    if error is not None:
        body["error"] = error
    return JSONResponse(body, media_type="application/json; charset=utf-8")


def refusal(message: str) -> Response:
    return envelope(error=message, success=False)


def hex_decode(value: str) -> bytes:
    """Rust `hex::decode`: even length, hex digits only (either case); raises ValueError with its message."""
    for index, char in enumerate(value):
        if not _HEX_CHARS.fullmatch(char):
            raise ValueError(f"Invalid character {char!r} at position {index}")
    if len(value) % 2:
        raise ValueError("Odd number of digits")
    return bytes.fromhex(value)


def decode_hex_path(value: str, label: str) -> bytes:
    """common.rs decode_hex_path, as a Refusal."""
    try:
        return hex_decode(value)
    except ValueError as exc:
        raise Refusal(f"Invalid {label} hex: {exc} (value: {value})") from None


def decode_pubkey(value: str) -> bytes:
    """common.rs decode_pubkey, as a Refusal."""
    raw = decode_hex_path(value, "pubkey")
    if len(raw) != 32:
        raise Refusal(f"Public key must be 32 bytes, got {len(raw)} bytes (value: {value})")
    return raw


@dataclass(frozen=True)
class Caller:
    """Who signed: the agent key (None for direct provider auth), its provider, pool and permissions."""

    agent_pubkey: str | None
    provider_pubkey: str
    pool_id: str | None
    permissions: tuple[str, ...]

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Refusal(f"Agent does not have '{permission}' permission")


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    if value is None or not value.isascii():
        return None
    return str(value)


def _verify(pubkey_hex: str, signature_hex: str, timestamp: str, nonce: str, method: str, path: str,
            body: bytes, now_ns: int) -> str:
    """auth.rs verify_request_signature; returns the lowercase pubkey or raises WireError."""
    try:
        pubkey = hex_decode(pubkey_hex)
    except ValueError as exc:
        raise WireError(400, f"Invalid format: Invalid public key hex encoding: {exc}") from None
    if len(pubkey) != 32:
        raise WireError(400, f"Invalid format: Public key must be 32 bytes, got {len(pubkey)}")
    try:
        signature = hex_decode(signature_hex)
    except ValueError as exc:
        raise WireError(400, f"Invalid format: Invalid signature hex encoding: {exc}") from None
    if len(signature) != 64:
        raise WireError(400, f"Invalid format: Signature must be 64 bytes, got {len(signature)}")
    if not _INT.fullmatch(timestamp):
        raise WireError(400, "Invalid format: Invalid timestamp: invalid digit found in string")
    ts = int(timestamp)
    if not I64_MIN <= ts <= I64_MAX:
        raise WireError(400, "Invalid format: Invalid timestamp: number too large to fit in target type")
    if abs(now_ns - ts) > MAX_SKEW_NS:
        raise WireError(401, "Request timestamp expired (max 5 minutes)")
    if not any(form.fullmatch(nonce) for form in _UUID_FORMS):
        raise WireError(400, f"Invalid format: Invalid nonce format (must be UUID v4): invalid UUID: {nonce!r}")
    message = timestamp.encode() + nonce.encode() + method.encode() + path.encode() + body
    if not ed25519ph_ref.verify_ed25519ph(pubkey, message, signature, SIGN_CONTEXT):
        raise WireError(401, "Invalid signature: Signature verification failed: signature error")
    return pubkey.hex()


def authenticate(store: LiveStore, headers: Any, method: str, path: str, body: bytes, *,
                 provider_allowed: bool) -> Caller:
    """AgentAuthenticatedUser (provider_allowed=False) or ProviderOrAgentAuth (True)."""
    agent_hex = _header(headers, "X-Agent-Pubkey")
    is_agent = True
    if agent_hex is None:
        if not provider_allowed:
            raise WireError(401, "Missing required header: X-Agent-Pubkey")
        agent_hex = _header(headers, "X-Public-Key")
        is_agent = False
        if agent_hex is None:
            raise WireError(401, "Missing required header: X-Public-Key or X-Agent-Pubkey")
    values = []
    for name in ("X-Signature", "X-Timestamp", "X-Nonce"):
        value = _header(headers, name)
        if value is None:
            raise WireError(401, f"Missing required header: {name}")
        values.append(value)
    pubkey = _verify(agent_hex, values[0], values[1], values[2], method, path, body, time.time_ns())
    if not is_agent:
        return Caller(None, pubkey, None, ())
    delegation = store.active_delegation(pubkey)
    if delegation is None:
        raise WireError(401, f"Invalid signature: No active delegation found for agent key '{pubkey}'")
    return Caller(pubkey, delegation["provider_pubkey"], delegation["pool_id"], tuple(delegation["permissions"]))


# --- request bodies (poem-openapi Object parsing) -------------------------------------------------

Field = tuple[str, Any, bool]  # (wire name, type, required)
_INT_RANGES = {"i64": (I64_MIN, I64_MAX, "integer(int64)"), "i32": (-(2**31), 2**31 - 1, "integer(int32)"),
               "u16": (0, 2**16 - 1, "integer(uint16)"), "u32": (0, 2**32 - 1, "integer(uint32)"),
               "u64": (0, 2**64 - 1, "integer(uint64)")}


@dataclass(frozen=True)
class Obj:
    name: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class ListOf:
    item: Any


def _type_name(kind: Any) -> str:
    if isinstance(kind, Obj):
        return kind.name
    if isinstance(kind, ListOf):
        return f"[{_type_name(kind.item)}]"
    if kind in _INT_RANGES:
        return _INT_RANGES[kind][2]
    return str(kind)


def _parse(kind: Any, value: Any) -> Any:
    expected = f'Expected input type "{_type_name(kind)}", found {json.dumps(value)}.'
    if isinstance(kind, Obj):
        if not isinstance(value, dict):
            raise ValueError(expected)
        out = {}
        for name, field_kind, required in kind.fields:
            raw = value.get(name)
            if raw is None and not required:
                out[name] = None
                continue
            try:
                out[name] = _parse(field_kind, raw)
            except ValueError as exc:
                raise ValueError(f'{exc} (occurred while parsing "{kind.name}")') from None
        return out
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise ValueError(expected)
        return [_parse(kind.item, item) for item in value]
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(expected)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(expected)
        return value
    low, high, _ = _INT_RANGES[kind]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(expected)
    return value


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    if "/" not in mime:
        return False
    major, minor = mime.split("/", 1)
    return major == "application" and (minor == "json" or minor.endswith("+json"))


def parse_body(headers: Any, body: bytes, schema: Obj) -> dict[str, Any]:
    """poem-openapi Json<T>: 415 without a JSON content type, 400 plain text for anything unparsable."""
    content_type = headers.get("content-type")
    if content_type is None:
        raise WireError(415, "the client request does not include the `Content-Type` header")
    if not _is_json_type(content_type):
        raise WireError(415, f"the `Content-Type` requested by the client is not supported: {content_type}")
    try:
        value = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(400, f"parse request payload error: {exc}") from None
    try:
        return dict(_parse(schema, value))
    except ValueError as exc:
        raise WireError(400, f"parse request payload error: {exc}") from None


SETUP_REQUEST = Obj("AgentSetupRequest", (("token", "string", True), ("agentPubkey", "string", True)))
_BANDWIDTH = Obj("VmBandwidthReport", (("gatewaySlug", "string", True), ("contractId", "string", True),
                                       ("bytesIn", "u64", True), ("bytesOut", "u64", True)))
_STORAGE = Obj("StoragePoolInfo", (("name", "string", True), ("totalGb", "u64", True),
                                   ("availableGb", "u64", True), ("storageType", "string", True)))
_GPU = Obj("GpuDeviceInfo", (("pciId", "string", True), ("name", "string", True), ("vendor", "string", True),
                             ("memoryMb", "u32", False)))
_TEMPLATE = Obj("TemplateInfo", (("vmid", "u32", True), ("name", "string", True)))
_RESOURCES = Obj("ResourceInventory", (
    ("cpuModel", "string", False), ("cpuCores", "u32", True), ("cpuThreads", "u32", True), ("cpuMhz", "u32", False),
    ("memoryTotalMb", "u64", True), ("memoryAvailableMb", "u64", True), ("storagePools", ListOf(_STORAGE), True),
    ("gpuDevices", ListOf(_GPU), True), ("templates", ListOf(_TEMPLATE), True)))
HEARTBEAT_REQUEST = Obj("HeartbeatRequest", (
    ("version", "string", False), ("provisionerType", "string", False), ("capabilities", ListOf("string"), False),
    ("activeContracts", "i64", True), ("bandwidthStats", ListOf(_BANDWIDTH), False), ("resources", _RESOURCES, False)))
PROVISIONING_REQUEST = Obj("ProvisioningStatusRequest", (("status", "string", True),
                                                         ("instanceDetails", "string", False)))
RECONCILE_REQUEST = Obj("ReconcileRequest", (("runningInstances", ListOf(Obj("ReconcileRunningInstance", (
    ("externalId", "string", True), ("contractId", "string", False)))), True),))
PASSWORD_REQUEST = Obj("UpdatePasswordRequest", (("newPassword", "string", True),))
HEALTH_REQUEST = Obj("RecordHealthCheckRequest", (("checkedAt", "i64", True), ("status", "string", True),
                                                  ("latencyMs", "i32", False), ("details", "string", False)))
