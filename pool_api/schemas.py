"""Request bodies (camelCase on the wire, strict types, bounded sizes so nothing reaches the database
that it cannot hold: huge numbers, unknown enum values and wrong types are 422 naming the field)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

Region = Literal["europe", "na", "latam", "apac", "mena", "ssa", "cis"]
ProvisionerType = Literal["proxmox", "docker", "script", "manual"]

MAX_INT32 = 2**31 - 1
MAX_BIG = 2**53  # fits BIGINT and survives a JSON round-trip through float-only clients


class Body(BaseModel):
    model_config = ConfigDict(strict=True, alias_generator=to_camel, populate_by_name=True,
                              str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """PostgreSQL text cannot hold NUL characters: refuse them as bad input."""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


Name = Field(min_length=1, max_length=200)


MAX_FALLBACK_AFTER = 7 * 86400  # pool_api.fallback.MAX_FALLBACK_AFTER_SECONDS


class PoolCreate(Body):
    name: str = Name
    location: Region
    provisioner_type: ProvisionerType
    fallback_pool_id: str | None = Field(default=None, max_length=64)  # pool_api.fallback
    fallback_after_seconds: int = Field(default=300, ge=0, le=MAX_FALLBACK_AFTER)


class PoolUpdate(Body):
    """Fields left out stay as they are; `fallbackPoolId: null` (or "") removes the fallback."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    location: Region | None = None
    provisioner_type: ProvisionerType | None = None
    fallback_pool_id: str | None = Field(default=None, max_length=64)
    fallback_after_seconds: int | None = Field(default=None, ge=0, le=MAX_FALLBACK_AFTER)

    def changes(self) -> dict[str, object]:
        """The columns to update: the fields given, with an explicit null or "" fallbackPoolId as a removal."""
        out = self.model_dump(exclude_none=True)
        if "fallback_pool_id" in self.model_fields_set and not self.fallback_pool_id:
            out["fallback_pool_id"] = None
        return out


class TokenCreate(Body):
    label: str | None = Field(default=None, max_length=200)
    expires_in_hours: int = Field(default=24, ge=1, le=24 * 365)


class SetupRequest(Body):
    token: str = Field(min_length=1, max_length=256)
    agent_pubkey: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class OfferingFields(Body):
    name: str = Name
    product_type: str = Field(default="compute", min_length=1, max_length=32)
    datacenter_country: str = Field(max_length=64)
    provisioner_type: ProvisionerType | None = None
    agent_pool_id: str | None = Field(default=None, max_length=64)
    price: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    cpu_cores: int | None = Field(default=None, ge=0, le=1_000_000)
    memory_mb: int | None = Field(default=None, ge=0, le=MAX_BIG)
    storage_gb: int | None = Field(default=None, ge=0, le=MAX_BIG)
    provisioner_config: dict[str, Any] | None = None
    status: Literal["active", "inactive"] = "active"  # inactive: no new contracts (pool_api.contracts)


class OfferingCreate(OfferingFields):
    offering_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")


MAX_INVENTORY_BYTES = 64 * 1024


class HeartbeatRequest(Body):
    version: str = Field(max_length=64)
    provisioner_type: ProvisionerType | None = None
    active_contracts: int = Field(default=0, ge=0, le=MAX_INT32)
    capacity: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None  # the host inventory (ResourceInventory field names), stored as sent
    provisioners: list[dict[str, Any]] | None = Field(default=None, max_length=32)  # [{name, type, healthy, ...}]

    @field_validator("resources", "provisioners")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        import json

        if value is not None and len(json.dumps(value)) > MAX_INVENTORY_BYTES:
            raise ValueError(f"must be at most {MAX_INVENTORY_BYTES} bytes of JSON")
        return value


class ClaimRequest(Body):
    """POST .../contracts/claim (pool_api.claims): at most `max` contracts; wait up to `waitSeconds` for one;
    the agent's free slots now (the capacity rule); contracts it does not want (those it is running)."""

    max: int = Field(ge=1, le=32)
    wait_seconds: float = Field(default=0, ge=0, le=60, allow_inf_nan=False)
    free_slots: int | None = Field(default=None, ge=0, le=MAX_INT32)
    exclude: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=list, max_length=200)


class InstanceDetails(Body):
    """PROTOCOL.md "Instance details". A report marks the contract provisioned for good, so a malformed
    one is refused (422) rather than stored where the agent's real report could no longer replace it."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=256)
    ip_address: str | None = Field(default=None, max_length=64)
    ipv6_address: str | None = Field(default=None, max_length=64)
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    root_password: str | None = Field(default=None, max_length=1024)
    provisioner: str | None = Field(default=None, max_length=64)
    node: str | None = Field(default=None, max_length=256)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)  # ValueError names the field via pydantic
        return value

    @field_validator("ipv6_address")
    @classmethod
    def _ipv6(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv6Address(value)
        return value

    def stored(self) -> dict[str, Any]:
        """The camelCase form kept with the contract: exactly the fields the agent sent."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class ProvisionedRequest(Body):
    instance_details: InstanceDetails


class FailedRequest(Body):
    error_message: str = Field(max_length=10_000)


class RunningInstance(Body):
    external_id: str = Field(min_length=1, max_length=256)
    contract_id: str | None = Field(default=None, max_length=128)


class ReconcileRequest(Body):
    running_instances: list[RunningInstance] = Field(max_length=10_000)


# --- the contract lifecycle after provisioning (pool_api.instance_health, pool_api.actions) ---

MAX_NS = 2**63 - 1
HEX64 = r"^[0-9a-fA-F]{64}$"
SEALED_OVERHEAD = 48  # a SealedBox ciphertext: 32-byte ephemeral key + 16-byte MAC + the message


class HealthReport(Body):
    status: Literal["healthy", "unhealthy", "unknown"]
    detail: str | None = Field(default=None, max_length=2000)
    latency_ms: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    checked_at_ns: int = Field(ge=0, le=MAX_NS)


class PasswordResetRequest(Body):
    recipient_public_key: str = Field(pattern=HEX64)


class SshKeyRotationRequest(Body):
    new_key: str = Field(min_length=1, max_length=16 * 1024)

    @field_validator("new_key")
    @classmethod
    def _key_line(cls, value: str) -> str:
        from pool_api.sshkey import key_line_problem, normalize_key_line

        problem = key_line_problem(value)
        if problem:
            raise ValueError(f"not an OpenSSH public key line: {problem}")
        return normalize_key_line(value)


class _Outcome(Body):
    """A report on a request: its id, and `error` when the agent could not do it."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    error: str | None = Field(default=None, min_length=1, max_length=10_000)


class PasswordReport(_Outcome):
    encrypted_password: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("encrypted_password")
    @classmethod
    def _sealed(cls, value: str | None) -> str | None:
        import base64
        import binascii

        if value is None:
            return value
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64 (a SealedBox ciphertext)") from None
        if len(raw) <= SEALED_OVERHEAD:
            raise ValueError("too short for a SealedBox ciphertext of a password")
        return value

    @model_validator(mode="after")
    def _one_outcome(self) -> "PasswordReport":
        if (self.encrypted_password is None) == (self.error is None):
            raise ValueError("send either encryptedPassword or error (exactly one)")
        return self


class SshKeyRotationReport(_Outcome):
    pass
