"""The live server's contract status machine (common/src/contract_status.rs), for the fake.

Stored spelling is the Rust Display form (`provisioningfailed`, not `provisioning_failed`);
refusal texts carry the Rust Debug names of the allowed targets, as the server prints them
(api/src/database/contracts/rental.rs, update_contract_status).
"""

from __future__ import annotations

# Display spelling -> Debug name
DEBUG_NAMES = {
    "requested": "Requested", "pending": "Pending", "accepted": "Accepted", "provisioning": "Provisioning",
    "provisioned": "Provisioned", "active": "Active", "paused": "Paused", "rejected": "Rejected",
    "cancelled": "Cancelled", "expired": "Expired", "provisioningfailed": "ProvisioningFailed",
}
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "requested": ("pending", "accepted", "rejected", "cancelled", "expired"),
    "pending": ("accepted", "rejected", "cancelled", "expired"),
    "accepted": ("provisioning", "provisioningfailed", "rejected", "cancelled"),
    "provisioning": ("provisioned", "provisioningfailed", "cancelled"),
    "provisioned": ("active", "paused", "cancelled"),
    "active": ("paused", "cancelled", "expired"),
    "paused": ("active", "provisioned", "cancelled", "expired"),
    "rejected": (), "cancelled": (), "expired": (), "provisioningfailed": (),
}
_ALIASES = {"canceled": "cancelled", "provisioning_failed": "provisioningfailed"}


def parse_status(value: str) -> str:
    """ContractStatus::from_str (case-insensitive, two aliases); ValueError with the server's text."""
    lowered = value.lower()
    lowered = _ALIASES.get(lowered, lowered)
    if lowered not in TRANSITIONS:
        raise ValueError(
            f"Invalid contract status '{value}'. Valid statuses: requested, pending, accepted, provisioning, "
            "provisioned, active, paused, rejected, cancelled, expired, provisioningfailed")
    return lowered


def transition_error(current: str, target: str) -> str | None:
    """None when current -> target is allowed, else the refusal message."""
    allowed = TRANSITIONS[current]
    if target in allowed:
        return None
    names = ", ".join(DEBUG_NAMES[s] for s in allowed)
    return (f"Invalid status transition: {current} -> {target}. "
            f"Valid transitions from '{current}': [{names}]")
