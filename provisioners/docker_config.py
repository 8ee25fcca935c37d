"""The `[provisioner.docker]` table, checked once when the driver is built (no Docker import here).

Every error names the key and the fix.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioners.base import ConfigError
from provisioners.config_values import config_error, positive_seconds

SECTION = "[provisioner.docker]"
OUR_LABEL_PREFIX = "dc-agent."
IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
DEFAULT_BASE_URL = "unix:///var/run/docker.sock"
UNUSABLE_NETWORKS = {"host", "none"}  # no port publishing there; SSH could not be reached

KNOWN = {
    "base_url", "default_image", "host_ip", "public_ip", "network", "pull_timeout_seconds",
    "api_timeout_seconds", "stop_timeout_seconds", "ssh_port", "labels", "agent_label",
    # Not the driver's: `type` (a flat [provisioner] table) and `state_dir` (added by the agent); ignored.
    "type", "state_dir",
}


def _err(key: str, problem: str, fix: str) -> ConfigError:
    return config_error(SECTION, key, problem, fix)


@dataclass(frozen=True)
class DockerSettings:
    base_url: str
    default_image: str
    host_ip: str  # where the SSH port is published (docker-proxy / iptables listen there)
    public_ip: str  # what tenants connect to: reported as ipAddress (or ipv6Address)
    network: str
    pull_timeout: float
    api_timeout: float
    stop_timeout: int
    ssh_port: int  # inside the container
    labels: dict[str, str] = field(default_factory=dict)
    agent_label: str = ""

    @property
    def public_is_ipv6(self) -> bool:
        return ipaddress.ip_address(self.public_ip).version == 6


def _str(settings: dict[str, Any], key: str, default: str | None, fix: str) -> str | None:
    value = settings.get(key, default)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise _err(key, f"must be a string, not {type(value).__name__}", fix)
    return value.strip()


def _ip(settings: dict[str, Any], key: str, default: str | None, fix: str) -> str | None:
    value = _str(settings, key, default, fix)
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise _err(key, f"{value!r} is not an IP address", fix) from None


def _seconds(settings: dict[str, Any], key: str, default: float) -> float:
    return positive_seconds(SECTION, settings, key, default)


def _port(settings: dict[str, Any], key: str, default: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _err(key, f"must be a TCP port (1-65535), not {value!r}", f"e.g. {key} = {default}")
    return value


def _labels(settings: dict[str, Any]) -> dict[str, str]:
    value = settings.get("labels", {})
    fix = 'e.g. labels = { "com.example.team" = "cloud" }'
    if not isinstance(value, dict):
        raise _err("labels", "must be a table of strings", fix)
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key) or not isinstance(val, str):
            raise _err("labels", f"{key!r} = {val!r} is not a label (a name and a string value)", fix)
        if key.startswith(OUR_LABEL_PREFIX):
            raise _err("labels", f"{key!r} uses the driver's own prefix {OUR_LABEL_PREFIX!r}", "pick another name")
        out[key] = val
    return out


def parse_image(value: Any, where: str) -> str:
    """An image reference (`name[:tag][@digest]`), or ProvisionError-worthy ValueError naming `where`."""
    if not isinstance(value, str) or not IMAGE_REF.match(value.strip()):
        raise ValueError(f"{where} has an invalid image {value!r} (expected e.g. registry.example.net/ssh:1)")
    return value.strip()


def parse_settings(settings: dict[str, Any], config_path: Path | None = None) -> DockerSettings:
    del config_path  # no relative paths among these settings
    if not isinstance(settings, dict):
        raise ConfigError(f"{SECTION} must be a table of settings")
    unknown = sorted(set(settings) - KNOWN)
    if unknown:
        raise _err(unknown[0], "is not a setting of the docker driver",
                   "remove it or fix its spelling (known: " + ", ".join(sorted(KNOWN - {"type", "state_dir"})) + ")")

    base_url = _str(settings, "base_url", DEFAULT_BASE_URL, 'e.g. base_url = "unix:///var/run/docker.sock"')
    assert base_url is not None
    if not base_url.startswith(("unix://", "tcp://")):
        raise _err("base_url", f"{base_url!r} is neither unix:// nor tcp://",
                   'use the daemon\'s socket, e.g. base_url = "unix:///var/run/docker.sock"')

    image_fix = 'e.g. default_image = "registry.example.net/dc/debian-ssh:12" (see the README\'s image contract)'
    raw_image = _str(settings, "default_image", None, image_fix)
    if raw_image is None:
        raise _err("default_image", "is missing", image_fix)
    try:
        default_image = parse_image(raw_image, "default_image")
    except ValueError:
        raise _err("default_image", f"{raw_image!r} is not an image reference", image_fix) from None

    host_ip = _ip(settings, "host_ip", "0.0.0.0", 'e.g. host_ip = "203.0.113.7" or "0.0.0.0" (all addresses)')
    assert host_ip is not None
    unspecified = ipaddress.ip_address(host_ip).is_unspecified
    public_ip = _ip(settings, "public_ip", None if unspecified else host_ip,
                    'e.g. public_ip = "203.0.113.7" (the address tenants reach this host at)')
    if public_ip is None:
        raise _err("public_ip", f"is missing while host_ip = {host_ip!r} (every address)",
                   'set public_ip = "203.0.113.7", the address tenants reach this host at, or set host_ip to it')
    if ipaddress.ip_address(public_ip).is_unspecified:
        raise _err("public_ip", f"{public_ip!r} is not an address tenants can connect to", "give the host's address")

    network = _str(settings, "network", "bridge", 'e.g. network = "dc-tenants" (a bridge network)')
    assert network is not None
    if network in UNUSABLE_NETWORKS or network.startswith("container:") or not NETWORK_NAME.match(network):
        raise _err("network", f"{network!r} cannot publish the SSH port",
                   'use a bridge network: "bridge" (the default) or one made with `docker network create`')

    agent_label = _str(settings, "agent_label", None, 'e.g. agent_label = "docker-host-1"') or socket.gethostname()
    stop_timeout = _seconds(settings, "stop_timeout_seconds", 10)
    return DockerSettings(
        base_url=base_url,
        default_image=default_image,
        host_ip=host_ip,
        public_ip=public_ip,
        network=network,
        pull_timeout=_seconds(settings, "pull_timeout_seconds", 600),
        api_timeout=_seconds(settings, "api_timeout_seconds", 60),
        stop_timeout=max(1, round(stop_timeout)),
        ssh_port=_port(settings, "ssh_port", 22),
        labels=_labels(settings),
        agent_label=agent_label,
    )
