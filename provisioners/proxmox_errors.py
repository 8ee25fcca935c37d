"""How the Proxmox driver reads PVE's failures: task errors, missing VMs, held locks, transient trouble.

Shared by provisioning (provisioners.proxmox) and the lifecycle actions (provisioners.proxmox_lifecycle).
Messages name the step and PVE's answer, never a credential.
"""

from __future__ import annotations

import requests
from proxmoxer import ResourceException

from provisioners.base import ProvisionError

_MSG_MAX = 300


class TaskFailed(ProvisionError):
    """A PVE task ended with an exit status other than OK."""

    def __init__(self, what: str, exitstatus: str) -> None:
        super().__init__(f"{what} failed: task exit status: {exitstatus}")
        self.exitstatus = exitstatus


class GuestAgentTimeout(ProvisionError):
    """The guest agent never answered, or never reported an address, within ip_timeout_seconds."""


class VmGone(ProvisionError):
    """The VM does not exist (any more)."""


def short_message(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MSG_MAX else text[: _MSG_MAX - 1] + "…"


def describe(exc: BaseException) -> str:
    """An API failure in a line fit for the marketplace: status and PVE's message, never credentials."""
    if isinstance(exc, ResourceException):
        return short_message(str(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed (check ca_cert / verify_tls)"
    if isinstance(exc, requests.exceptions.Timeout):
        return "the Proxmox API did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot connect to the Proxmox API"
    return short_message(f"{type(exc).__name__}: {exc}")


def _text(exc: BaseException) -> str:
    return str(exc).lower()


def is_gone(exc: BaseException) -> bool:
    """PVE's answer for a VMID without a config: "Configuration file '…/100.conf' does not exist"."""
    text = _text(exc)
    return isinstance(exc, ResourceException) and (
        exc.status_code == 404 or ("configuration file" in text and "does not exist" in text))


def is_lock_wait(exc: BaseException) -> bool:
    """A config or storage lock held by someone else ("can't lock file … got timeout", "VM is locked")."""
    text = _text(exc)
    return isinstance(exc, ResourceException) and exc.status_code >= 500 and (
        "can't lock file" in text or "vm is locked" in text or ("lock" in text and "got timeout" in text))


def is_taken(exc: BaseException) -> bool:
    return isinstance(exc, ResourceException) and "already exists" in _text(exc)


def is_transient(exc: BaseException) -> bool:
    """Worth polling again: network trouble or a server-side hiccup, not a refusal."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, requests.RequestException):
        return True
    return isinstance(exc, ResourceException) and exc.status_code >= 500
