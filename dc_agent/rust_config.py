"""The Rust dc-agent 0.6's `dc-agent.toml` mapped onto our configuration: the pure mapping, no I/O.

The Rust file (dc-agent/src/config.rs) has `[api]`, `[polling]`, `[provisioner]` (its driver's keys in a
nested `[provisioner.<type>]` table, or flat in `[provisioner]`), `[[additional_provisioners]]` and
`[gateway]`. :func:`translate` maps every key that has an equivalent and lists each one that has not,
with why, so that nothing is dropped silently. Its agent key (`[api] agent_secret_key`) is either 64
hex characters inline or the path of a file holding them (what the Rust `setup token` writes:
`~/.dc-agent/agent.key`, a 32-byte Ed25519 seed as hex, no newline); :func:`seed_from_text` reads both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUST_DEFAULT_CONFIG = Path("/etc/dc-agent/dc-agent.toml")  # the Rust agent's --config default
PLACEHOLDERS = ("YOUR-PROXMOX-HOST", "REPLACE-WITH-YOUR", "YOUR_TOKEN", "CHANGEME", "YOUR-API", "EXAMPLE.COM")
HEX = set("0123456789abcdefABCDEF")

PROXMOX_KEYS = ("api_url", "api_token_id", "api_token_secret", "node", "template_vmid", "storage", "pool",
                "verify_ssl", "ip_wait_attempts", "ip_wait_interval_secs")
SCRIPT_KEYS = ("provision", "terminate", "health_check", "timeout_seconds")
MANUAL_KEYS = ("notification_webhook",)
DOCKER_KEYS = ("socket_path", "network", "default_image", "ssh_port")
DIGITALOCEAN_KEYS = ("api_token", "default_size", "default_region", "default_image")
# Keys of each type as they may appear flat in [provisioner] (RawProvisionerConfig).
FLAT_KEYS = {"proxmox": PROXMOX_KEYS, "script": SCRIPT_KEYS, "manual": MANUAL_KEYS,
             "docker": ("socket_path", "network", "default_image"),
             "digitalocean": ("api_token", "do_size", "do_region", "do_image")}
NESTED_KEYS = {"proxmox": PROXMOX_KEYS, "script": SCRIPT_KEYS, "manual": MANUAL_KEYS, "docker": DOCKER_KEYS,
               "digitalocean": DIGITALOCEAN_KEYS}
NO_DRIVER = {"digitalocean": "dc-agent has no DigitalOcean driver: keep the Rust agent on this machine"}
RUST_DOCKER_IMAGE = "ghcr.io/decent-stuff/dc-agent-ssh:latest"  # the Rust docker driver's default image
WHY = {
    "api.provider_secret_key": "ignored, as by the Rust agent: agent_secret_key is set and wins",
    "polling.health_check_interval_seconds": "dc-agent does not schedule instance health checks from its "
                                             "config (the Rust agent ran them only for drivers that list VMs)",
    "polling.orphan_grace_period_seconds": "no local orphan timer: reconcile asks the API which instances "
                                           "to keep, and removes only what it says to terminate",
    "polling.orphan_tracker_path": "no orphan tracker file: dc-agent keeps its state in [agent] state_dir",
    "gateway": "dc-agent has no gateway (Caddy reverse proxy, port forwarding, DNS records through the API): "
               "its instances need their own public address",
    "notification_webhook": "dc-agent's manual driver has no webhook: poll "
                                               "`dc-agent manual list --json` from your notifier instead",
}


class RustConfigError(ValueError):
    """The Rust file cannot be imported; the message names the Rust key and the fix."""


@dataclass(frozen=True)
class Unmapped:
    """A Rust key with no equivalent in dc-agent, and why."""

    key: str
    why: str


@dataclass
class Translation:
    """What :func:`translate` made of a Rust config."""

    agent: dict[str, Any]  # our [agent] table, without state_dir (the importer's choice)
    provisioner_type: str
    provisioner: dict[str, Any]  # our [provisioner.<type>] table
    secret_key: str  # [api] agent_secret_key: 64 hex characters inline, or a key file's path
    extra_provisioners: dict[str, dict[str, Any]] = field(default_factory=dict)  # [provisioners.<name>], with type
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (Rust key, our key)
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # choices made for the operator to know


def seed_from_text(text: str) -> bytes:
    """The 32-byte seed from a Rust key (inline or a key file's text); ValueError says what it is instead.

    The Rust agent accepts exactly this: surrounding whitespace, then 64 hex characters.
    """
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        raise ValueError("it is a PEM file; the Rust agent reads a 32-byte Ed25519 seed as 64 hex characters")
    if not stripped or set(stripped) - HEX:
        raise ValueError("it is not hex; the Rust agent reads a 32-byte Ed25519 seed as 64 hex characters")
    if len(stripped) % 2:
        raise ValueError(f"it has an odd number of hex characters ({len(stripped)}); expected 64")
    if len(stripped) != 64:
        raise ValueError(f"it holds {len(stripped) // 2} bytes, not a 32-byte seed"
                         + (" (a 64-byte seed+public key pair?)" if len(stripped) == 128 else "")
                         + "; the Rust agent reads only 64 hex characters")
    return bytes.fromhex(stripped)


def is_inline_key(value: str) -> bool:
    """Whether `agent_secret_key` is the key itself (the Rust agent tries that first) rather than a path."""
    stripped = value.strip()
    return len(stripped) == 64 and not set(stripped) - HEX


def _table(data: dict[str, Any], name: str, *, required: bool) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        if required:
            raise RustConfigError(f"[{name}] is missing: is this the Rust agent's dc-agent.toml "
                                  f"(default {RUST_DEFAULT_CONFIG})?")
        return {}
    if not isinstance(value, dict):
        raise RustConfigError(f"{name} must be a table ([{name}])")
    return value


def _string(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RustConfigError(f"{where}{key} is missing or empty; the Rust agent needs it too: fix the file first")
    upper = value.upper()
    for pattern in PLACEHOLDERS:
        if pattern in upper:
            raise RustConfigError(f"{where}{key} still holds the placeholder {pattern!r} (the Rust agent refuses "
                                  f"it too): fill it in, then import again")
    return value.strip()


def _seconds(table: dict[str, Any], key: str, where: str) -> int:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RustConfigError(f"{where}{key} = {value!r}: the Rust agent reads a whole number of seconds")
    return value


class _Mapper:
    """Collects the mapped and unmapped keys while one file is translated."""

    def __init__(self) -> None:
        self.mapped: list[tuple[str, str]] = []
        self.unmapped: list[Unmapped] = []
        self.notes: list[str] = []

    def map(self, rust_key: str, ours: str) -> None:
        self.mapped.append((rust_key, ours))

    def skip(self, rust_key: str, why: str) -> None:
        self.unmapped.append(Unmapped(rust_key, why))


def translate(rust: dict[str, Any], *, public_ip: str | None = None) -> Translation:
    """Our config from the Rust dc-agent.toml `rust` (as read by tomllib); raises RustConfigError.

    `public_ip` is the address tenants reach this host at, which our docker driver needs and the Rust
    one never had (it reported the container's bridge address); default: `[gateway] public_ip`.
    """
    m = _Mapper()
    api = _table(rust, "api", required=True)
    agent: dict[str, Any] = {"api_url": _string(api, "endpoint", "[api] "), "api_dialect": "decent-cloud"}
    m.map("api.endpoint", "[agent] api_url")
    agent["provider_pubkey"] = _string(api, "provider_pubkey", "[api] ").lower()
    m.map("api.provider_pubkey", "[agent] provider_pubkey")
    if api.get("agent_secret_key"):
        secret = _string(api, "agent_secret_key", "[api] ")
        m.map("api.agent_secret_key", "[keys] private_key_path (the key file, rewritten in our format)")
        if api.get("provider_secret_key"):
            m.skip("api.provider_secret_key", WHY["api.provider_secret_key"])
    elif api.get("provider_secret_key"):
        raise RustConfigError("[api] provider_secret_key is the Rust agent's legacy sign-in as the provider itself; "
                              "dc-agent signs as an agent key delegated to a pool. Register this machine as an "
                              "agent first (a setup token from the provider's pool page; the Rust agent's "
                              "`dc-agent setup token --token TOKEN` writes agent_secret_key), then import again")
    else:
        raise RustConfigError("[api] agent_secret_key is missing: the file names no agent key to import")
    if api.get("pool_id"):
        agent["pool_id"] = _string(api, "pool_id", "[api] ")
        m.map("api.pool_id", "[agent] pool_id")
    for key in sorted(set(api) - {"endpoint", "provider_pubkey", "agent_secret_key", "provider_secret_key", "pool_id"}):
        m.skip(f"api.{key}", "not a key of the Rust agent's [api] (it would refuse this file)")

    polling = _table(rust, "polling", required=True)
    if "interval_seconds" in polling:
        agent["poll_interval_seconds"] = _seconds(polling, "interval_seconds", "[polling] ")
        m.map("polling.interval_seconds", "[agent] poll_interval_seconds")
    health_option = _health_option()
    if "health_check_interval_seconds" in polling and health_option:
        agent[health_option] = _seconds(polling, "health_check_interval_seconds", "[polling] ")
        m.map("polling.health_check_interval_seconds", f"[agent] {health_option}")
    for key in sorted(set(polling) - {"interval_seconds"} - ({"health_check_interval_seconds"} if health_option else set())):
        m.skip(f"polling.{key}", WHY.get(f"polling.{key}", "not a key of the Rust agent's [polling]"))

    kind, table, where = _provisioner(_table(rust, "provisioner", required=True), m)
    gateway = _table(rust, "gateway", required=False)
    if kind == "docker":
        ours = _docker(table, where, m, public_ip, gateway)
    else:
        ours = {"proxmox": _proxmox, "script": _script, "manual": _manual}[kind](table, where, m)
    if kind == "script":
        agent["max_concurrent"] = 1  # the Rust agent ran one provision at a time; its scripts may rely on it
        m.notes.append("[agent] max_concurrent = 1: the Rust agent ran one script at a time; raise it once your "
                       "scripts are safe to run side by side")

    extras: dict[str, dict[str, Any]] = {}
    for index, extra in enumerate(rust.get("additional_provisioners") or []):
        if not isinstance(extra, dict):
            raise RustConfigError(f"additional_provisioners[{index}] must be a table with a type")
        extra_kind, extra_table, extra_where = _provisioner(extra, m, where=f"additional_provisioners[{index}]")
        if extra_kind == "docker":
            settings = _docker(extra_table, extra_where, m, public_ip, gateway)
        else:
            settings = {"proxmox": _proxmox, "script": _script, "manual": _manual}[extra_kind](
                extra_table, extra_where, m)
        name = extra_kind if extra_kind != kind and extra_kind not in extras else f"{extra_kind}{index + 2}"
        extras[name] = {"type": extra_kind, **settings}
        m.map(f"additional_provisioners[{index}]", f"[provisioners.{name}] (a contract of type {extra_kind!r} "
              "goes to it; dc-agent routes by the offering's provisioner type as the Rust agent did)")
    for key in sorted(gateway):
        if not (kind == "docker" and key == "public_ip" and public_ip is None):
            m.skip(f"gateway.{key}", WHY["gateway"])
    for key in sorted(set(rust) - {"api", "polling", "provisioner", "additional_provisioners", "gateway"}):
        m.skip(key, "not a table of the Rust agent's config (it would refuse this file)")
    return Translation(agent=agent, provisioner_type=kind, provisioner=ours, extra_provisioners=extras,
                       secret_key=secret,
                       mapped=m.mapped, unmapped=m.unmapped, notes=m.notes)


def _health_option() -> str | None:
    """Our [agent] option for the instance health-check interval, once the agent has one."""
    from dc_agent.config import AGENT_OPTIONS  # light: stdlib and dc_agent.errors only

    return next((name for name in ("health_interval_seconds", "health_check_interval_seconds")
                 if name in AGENT_OPTIONS), None)


def _provisioner(section: dict[str, Any], m: _Mapper, *, where: str = "provisioner"
                 ) -> tuple[str, dict[str, Any], str]:
    """The driver type, its keys and where they were: the nested table if present (as the Rust agent
    prefers), else the flat keys of `where` ([provisioner] or an [[additional_provisioners]] entry)."""
    kind = section.get("type")
    if not isinstance(kind, str):
        raise RustConfigError(f"[{where}] type is missing (proxmox, script, manual, docker or digitalocean)")
    if kind in NO_DRIVER:
        raise RustConfigError(f"[{where}] type = {kind!r}: {NO_DRIVER[kind]}")
    if kind not in FLAT_KEYS:
        raise RustConfigError(f"[{where}] type = {kind!r} is not a Rust agent provisioner "
                              "(proxmox, script, manual, docker, digitalocean)")
    nested = section.get(kind)
    flat = {k: v for k, v in section.items() if k != "type" and not isinstance(v, dict)}
    for name, value in section.items():
        if isinstance(value, dict) and name != kind:
            for key in sorted(value):
                m.skip(f"{where}.{name}.{key}", f"ignored, as by the Rust agent: [{where}] type = {kind!r}")
    if isinstance(nested, dict):
        for key in sorted(flat):
            m.skip(f"{where}.{key}", f"ignored, as by the Rust agent: [{where}.{kind}] is used instead")
        table = dict(nested)
        for key in sorted(set(table) - set(NESTED_KEYS[kind])):
            m.skip(f"{where}.{kind}.{key}", f"not a key of the Rust agent's [{where}.{kind}] "
                                                "(it would refuse this file)")
            table.pop(key)
        return kind, table, f"{where}.{kind}"
    table = {k: v for k, v in flat.items() if k in FLAT_KEYS[kind]}
    for key in sorted(set(flat) - set(table)):
        known = any(key in keys for keys in FLAT_KEYS.values())
        m.skip(f"{where}.{key}", f"ignored, as by the Rust agent: " +
               (f"a key of another provisioner type than {kind!r}" if known else "not one of its keys"))
    return kind, table, where


def _proxmox(table: dict[str, Any], where: str, m: _Mapper) -> dict[str, Any]:
    prefix = f"[{where}] "
    ours: dict[str, Any] = {}
    for key in ("api_url", "api_token_id", "api_token_secret", "node"):
        ours[key] = _string(table, key, prefix)
        m.map(f"{where}.{key}", f"[provisioner.proxmox] {key}")
    vmid = table.get("template_vmid")
    if isinstance(vmid, bool) or not isinstance(vmid, int):
        raise RustConfigError(f"{prefix}template_vmid is missing or not a number; the Rust agent needs it too")
    ours["template_vmid"] = vmid
    m.map(f"{where}.template_vmid", "[provisioner.proxmox] template_vmid")
    # The Rust agent always makes full clones, onto `storage` (default local-lvm); ours needs it said.
    ours["storage"] = _string(table, "storage", prefix) if "storage" in table else "local-lvm"
    m.map(f"{where}.storage", "[provisioner.proxmox] storage" + ("" if "storage" in table else
                                                               " = \"local-lvm\" (the Rust default)"))
    if table.get("pool"):
        ours["pool"] = _string(table, "pool", prefix)
        m.map(f"{where}.pool", "[provisioner.proxmox] pool")
    if "verify_ssl" in table:
        if not isinstance(table["verify_ssl"], bool):
            raise RustConfigError(f"{prefix}verify_ssl must be true or false")
        ours["verify_tls"] = table["verify_ssl"]
        m.map(f"{where}.verify_ssl", "[provisioner.proxmox] verify_tls")
    if "ip_wait_attempts" in table or "ip_wait_interval_secs" in table:
        attempts = _seconds(table, "ip_wait_attempts", prefix) if "ip_wait_attempts" in table else 12
        interval = _seconds(table, "ip_wait_interval_secs", prefix) if "ip_wait_interval_secs" in table else 10
        ours["ip_timeout_seconds"] = max(1, attempts * interval)
        for key in ("ip_wait_attempts", "ip_wait_interval_secs"):
            if key in table:
                m.map(f"{where}.{key}", "[provisioner.proxmox] ip_timeout_seconds (attempts x interval)")
    return ours


def _script(table: dict[str, Any], where: str, m: _Mapper) -> dict[str, Any]:
    prefix = f"[{where}] "
    ours: dict[str, Any] = {"protocol": "rust"}
    # The Rust agent runs each script by its path alone (no shell, no arguments): a one-element argv.
    for rust_key, our_key in (("provision", "command"), ("terminate", "terminate_command"),
                              ("health_check", "health_command")):
        path = _string(table, rust_key, prefix)
        if "/" in path and not path.startswith(("/", "~")):  # relative to the Rust service's directory, /
            path = str(Path("/", path))
            m.notes.append(f"{where}.{rust_key} was relative: now {path} (the Rust service ran from /)")
        ours[our_key] = [path]
        m.map(f"{where}.{rust_key}", f"[provisioner.script] {our_key} (protocol = \"rust\")")
    # One timeout for all of its scripts (default 300 s), for ours both the provision and the other commands.
    timeout = _seconds(table, "timeout_seconds", prefix) if "timeout_seconds" in table else 300
    ours["timeout_seconds"] = ours["query_timeout_seconds"] = max(1, timeout)
    m.map(f"{where}.timeout_seconds", "[provisioner.script] timeout_seconds and query_timeout_seconds"
          + ("" if "timeout_seconds" in table else " = 300 (the Rust default)"))
    return ours


def _docker(table: dict[str, Any], where: str, m: _Mapper, public_ip: str | None,
            gateway: dict[str, Any]) -> dict[str, Any]:
    prefix = f"[{where}] "
    ours: dict[str, Any] = {}
    socket_path = table.get("socket_path")
    if socket_path:  # "" (or none) is the default socket, for both agents
        ours["base_url"] = "unix://" + _string(table, "socket_path", prefix)
        m.map(f"{where}.socket_path", "[provisioner.docker] base_url (unix://…)")
    if table.get("network"):
        ours["network"] = _string(table, "network", prefix)
        m.map(f"{where}.network", "[provisioner.docker] network")
    ours["default_image"] = _string(table, "default_image", prefix) if "default_image" in table else RUST_DOCKER_IMAGE
    m.map(f"{where}.default_image", "[provisioner.docker] default_image" +
          ("" if "default_image" in table else f' = "{RUST_DOCKER_IMAGE}" (the Rust default)'))
    if "ssh_port" in table:
        ours["ssh_port"] = table["ssh_port"]
        m.map(f"{where}.ssh_port", "[provisioner.docker] ssh_port")
    if public_ip:
        ours["public_ip"] = public_ip
        m.map("--public-ip", "[provisioner.docker] public_ip")
    elif gateway.get("public_ip"):
        ours["public_ip"] = _string(gateway, "public_ip", "[gateway] ")
        m.map("gateway.public_ip", "[provisioner.docker] public_ip (the address tenants reach)")
    else:
        raise RustConfigError("[provisioner] type = 'docker': dc-agent's docker driver reports the address tenants "
                              "reach this host at (the Rust one reported the container's bridge address) and the "
                              "file has none ([gateway] public_ip): import again with --public-ip ADDRESS")
    return ours


def _manual(table: dict[str, Any], where: str, m: _Mapper) -> dict[str, Any]:
    if table.get("notification_webhook"):
        m.skip(f"{where}.notification_webhook", WHY["notification_webhook"])
    return {}
