"""Provisioning drivers behind one interface (:mod:`provisioners.base`).

Drivers are imported only when used, so that `dc-agent --help` never pays for proxmoxer
or the docker SDK.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from provisioners.base import (
    Cancelled,
    ConfigError,
    Contract,
    Health,
    Instance,
    InstanceDetails,
    InstanceHealth,
    Lifecycle,
    ProvisionError,
    Provisioner,
    Unsupported,
    capabilities,
)

DRIVERS: dict[str, str] = {
    "proxmox": "provisioners.proxmox:ProxmoxProvisioner",
    "script": "provisioners.script:ScriptProvisioner",
    "manual": "provisioners.manual:ManualProvisioner",
    "docker": "provisioners.docker:DockerProvisioner",
}


def load(kind: str, settings: dict[str, Any], *, config_path: Path | None = None) -> Provisioner:
    """Build the driver `kind` from its `[provisioner.<kind>]` table.

    Each driver class takes `(settings, config_path=...)` and raises ConfigError naming the key.
    """
    try:
        target = DRIVERS[kind]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ConfigError(f"[provisioner] type = {kind!r} is not a known driver; use one of: {known}") from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(settings, config_path=config_path)


__all__ = [
    "Cancelled",
    "ConfigError",
    "Contract",
    "DRIVERS",
    "Health",
    "Instance",
    "InstanceDetails",
    "InstanceHealth",
    "Lifecycle",
    "ProvisionError",
    "Provisioner",
    "Unsupported",
    "capabilities",
    "load",
]
