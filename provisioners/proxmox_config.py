"""The `[provisioner.proxmox]` table, checked once when the driver is built.

Every error names the key and the fix; none repeats a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioners.base import ConfigError
from provisioners.config_values import config_error, positive_seconds

SECTION = "[provisioner.proxmox]"
TOKEN_ID = re.compile(r"^[^\s@!:]+@[^\s@!:]+![A-Za-z][A-Za-z0-9._-]*$")
NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
STORAGE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")
BRIDGE = re.compile(r"^[A-Za-z0-9._-]+$")
POOL_ID = re.compile(r"^[A-Za-z0-9._/-]+$")
VMID_MIN, VMID_MAX = 100, 999_999_999

KNOWN = {
    "api_url", "api_token_id", "api_token_secret", "api_token_secret_file", "node", "template_vmid",
    "storage", "bridge", "verify_tls", "ca_cert", "full_clone", "ip_timeout_seconds",
    "task_timeout_seconds", "api_timeout_seconds", "poll_interval_seconds", "vmid_range", "ciuser",
    "ipconfig0", "pool", "max_parallel_clones", "shutdown_timeout_seconds",
    # Not the driver's: `type` (a flat [provisioner] table) and `state_dir` (added by the agent); ignored.
    "type", "state_dir",
}


def _err(key: str, problem: str, fix: str) -> ConfigError:
    return config_error(SECTION, key, problem, fix)


@dataclass(frozen=True)
class ProxmoxSettings:
    api_url: str
    host: str
    port: int
    token_user: str  # user@realm
    token_name: str
    token_secret: str
    node: str
    template_vmid: int
    storage: str | None
    bridge: str | None
    verify: bool | str  # False, True (system CAs) or a CA bundle path
    full_clone: bool
    ip_timeout: float
    task_timeout: float
    api_timeout: float
    poll_interval: float
    vmid_range: tuple[int, int] | None
    ciuser: str | None
    ipconfig0: str
    pool: str | None
    max_parallel_clones: int
    shutdown_timeout: float = 120.0  # a pause's ACPI shutdown, before the VM is stopped hard

    @property
    def token_id(self) -> str:
        return f"{self.token_user}!{self.token_name}"

    def __repr__(self) -> str:  # never print the secret
        return f"ProxmoxSettings(api_url={self.api_url!r}, token_id={self.token_id!r}, node={self.node!r})"


def _str(settings: dict[str, Any], key: str, *, required: bool = False, pattern: re.Pattern[str] | None = None,
         fix: str = "") -> str | None:
    value = settings.get(key)
    if value is None or value == "":
        if required:
            raise _err(key, "is missing", fix or "set it")
        return None
    if not isinstance(value, str):
        raise _err(key, f"must be a string, not {type(value).__name__}", fix or "quote the value")
    if pattern is not None and not pattern.match(value):
        raise _err(key, f"{value!r} is not valid", fix)
    return value


def _bool(settings: dict[str, Any], key: str, default: bool) -> bool:
    value = settings.get(key, default)
    if not isinstance(value, bool):
        raise _err(key, f"must be true or false, not {value!r}", f"write {key} = true or {key} = false")
    return value


def _int(value: Any, key: str, fix: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _err(key, f"must be an integer, not {value!r}", fix)
    try:
        number = int(value)
    except ValueError:
        raise _err(key, f"must be an integer, not {value!r}", fix) from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise _err(key, f"{number} is out of range", fix)
    return number


def _seconds(settings: dict[str, Any], key: str, default: float) -> float:
    return positive_seconds(SECTION, settings, key, default)


def _path(value: str, config_path: Path | None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and config_path is not None:
        path = config_path.parent / path
    return path


def parse_vmid_range(value: Any) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    fix = "write vmid_range = [10000, 19999] (first and last VMID the agent may use)"
    if isinstance(value, str):
        parts = value.replace(" ", "").split("-")
        if len(parts) != 2:
            raise _err("vmid_range", f"{value!r} is not a range", fix)
        value = parts
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _err("vmid_range", f"{value!r} is not a range", fix)
    lo = _int(value[0], "vmid_range", fix, lo=VMID_MIN, hi=VMID_MAX)
    hi = _int(value[1], "vmid_range", fix, lo=VMID_MIN, hi=VMID_MAX)
    if lo > hi:
        raise _err("vmid_range", f"first VMID {lo} is above last VMID {hi}", fix)
    return lo, hi


def parse_settings(settings: dict[str, Any], config_path: Path | None = None) -> ProxmoxSettings:
    if not isinstance(settings, dict):
        raise ConfigError(f"{SECTION} must be a table of settings")
    unknown = sorted(set(settings) - KNOWN)
    if unknown:
        raise _err(unknown[0], "is not a setting of the proxmox driver",
                   "remove it or fix its spelling (known: " + ", ".join(sorted(KNOWN - {"type", "state_dir"})) + ")")

    api_url = _str(settings, "api_url", required=True, fix='e.g. api_url = "https://pve1.example.net:8006"')
    assert api_url is not None
    parts = urlsplit(api_url)
    if parts.scheme != "https" or not parts.hostname:
        raise _err("api_url", f"{api_url!r} is not an https:// URL",
                   'e.g. api_url = "https://pve1.example.net:8006" (the PVE API is HTTPS only)')
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise _err("api_url", f"{api_url!r} has a path, query or user part",
                   "give only scheme, host and port; the driver adds /api2/json")
    try:
        port = parts.port or 8006
    except ValueError:
        raise _err("api_url", f"{api_url!r} has an invalid port", "e.g. https://pve1.example.net:8006") from None
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"

    token_id = _str(settings, "api_token_id", required=True, pattern=TOKEN_ID,
                    fix='write it as user@realm!tokenname, e.g. api_token_id = "dc-agent@pve!provisioning"')
    assert token_id is not None
    token_user, _, token_name = token_id.partition("!")

    secret = settings.get("api_token_secret")
    secret_file = settings.get("api_token_secret_file")
    if secret not in (None, "") and secret_file not in (None, ""):
        raise _err("api_token_secret", "is set together with api_token_secret_file", "keep only one of the two")
    if secret_file not in (None, ""):
        if not isinstance(secret_file, str):
            raise _err("api_token_secret_file", "must be a path string", 'e.g. "/etc/dc-agent/pve-token"')
        path = _path(secret_file, config_path)
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _err("api_token_secret_file", f"cannot read {str(path)!r} ({exc.strerror or exc})",
                       "create the file with the token secret, readable by the agent only") from None
        if not secret:
            raise _err("api_token_secret_file", f"{str(path)!r} is empty", "put the token secret in it")
    elif secret in (None, ""):
        raise _err("api_token_secret", "is missing",
                   "set api_token_secret, or api_token_secret_file to a file holding the secret")
    elif not isinstance(secret, str):
        raise _err("api_token_secret", "must be a string", "quote the value")

    node = _str(settings, "node", required=True, pattern=NODE_NAME,
                fix='the PVE node the VMs run on, e.g. node = "pve1"')
    assert node is not None
    if "template_vmid" not in settings:
        raise _err("template_vmid", "is missing", "set the VMID of the cloud-init template, e.g. template_vmid = 9000")
    template = _int(settings["template_vmid"], "template_vmid", "e.g. template_vmid = 9000",
                    lo=VMID_MIN, hi=VMID_MAX)
    full_clone = _bool(settings, "full_clone", True)
    storage = _str(settings, "storage", required=full_clone, pattern=STORAGE_ID,
                   fix='the storage for the cloned disks, e.g. storage = "local-lvm"')
    if storage is not None and not full_clone:
        raise _err("storage", "is set but full_clone = false (a linked clone stays on the template's storage)",
                   "remove storage, or set full_clone = true")
    bridge = _str(settings, "bridge", pattern=BRIDGE, fix='e.g. bridge = "vmbr0"')

    verify_tls = _bool(settings, "verify_tls", True)
    verify: bool | str = verify_tls
    ca_cert = _str(settings, "ca_cert", fix='path of the PVE CA certificate (PEM), e.g. "/etc/pve/pve-root-ca.pem"')
    if ca_cert is not None:
        if not verify_tls:
            raise _err("ca_cert", "is set but verify_tls = false", "remove one of the two (verification is safer)")
        ca_path = _path(ca_cert, config_path)
        if not ca_path.is_file():
            raise _err("ca_cert", f"{str(ca_path)!r} does not exist",
                       "copy the cluster CA (/etc/pve/pve-root-ca.pem on a node) there, or fix the path")
        verify = str(ca_path)

    ipconfig0 = _str(settings, "ipconfig0", fix='e.g. ipconfig0 = "ip=dhcp,ip6=auto"') or "ip=dhcp"
    max_clones = _int(settings.get("max_parallel_clones", 2), "max_parallel_clones",
                      "e.g. max_parallel_clones = 2", lo=1, hi=64)

    return ProxmoxSettings(
        api_url=f"https://{host}:{port}",
        host=host,
        port=port,
        token_user=token_user,
        token_name=token_name,
        token_secret=secret,
        node=node,
        template_vmid=template,
        storage=storage,
        bridge=bridge,
        verify=verify,
        full_clone=full_clone,
        ip_timeout=_seconds(settings, "ip_timeout_seconds", 300),
        task_timeout=_seconds(settings, "task_timeout_seconds", 900),
        api_timeout=_seconds(settings, "api_timeout_seconds", 30),
        poll_interval=_seconds(settings, "poll_interval_seconds", 2),
        vmid_range=parse_vmid_range(settings.get("vmid_range")),
        ciuser=_str(settings, "ciuser", fix='e.g. ciuser = "debian"'),
        ipconfig0=ipconfig0,
        pool=_str(settings, "pool", pattern=POOL_ID, fix='a PVE resource pool, e.g. pool = "dc-vms"'),
        max_parallel_clones=max_clones,
        shutdown_timeout=_seconds(settings, "shutdown_timeout_seconds", 120),
    )
