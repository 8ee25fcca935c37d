"""Pure helpers of the Proxmox driver: how a contract is written into a VM, and which guest address counts.

No I/O here, so all of it is tested without a cluster.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Any

AGENT_TAG = "dc-agent"
CONTRACT_TAG_PREFIX = "dc-contract-"
DESCRIPTION_MARKER = "dc-agent contract: "
ATTEMPT_MARKER = "dc-agent attempt: "
NAME_PREFIX = "dc-"
NAME_MAX = 63  # one DNS label

# PVE's pve-tag format is [a-z0-9_][a-z0-9_+.-]* (case-insensitive); we write lowercase only.
_TAG_SAFE = re.compile(r"[a-z0-9_.-]")
_TAG_SPLIT = re.compile(r"[;,\s]+")
# Interfaces whose addresses are never the VM's own: loopback, container and VM bridges, overlays.
SKIP_INTERFACE_PREFIXES = ("lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "lxcbr", "lxdbr",
                           "podman", "kube", "weave", "vxlan", "tailscale", "zt")


# --------------------------------------------------------------------------- contract marks


def contract_tag(contract_id: str) -> str:
    """`dc-contract-<id>` in PVE's tag charset, reversibly: other bytes become `+xx` (lowercase hex)."""
    out = []
    for ch in contract_id:
        if _TAG_SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"+{byte:02x}" for byte in ch.encode("utf-8"))
    return CONTRACT_TAG_PREFIX + "".join(out)


def contract_from_tag(tag: str) -> str | None:
    """The contract id of a `dc-contract-…` tag, or None for any other tag."""
    tag = tag.strip().lower()
    if not tag.startswith(CONTRACT_TAG_PREFIX) or len(tag) == len(CONTRACT_TAG_PREFIX):
        return None
    body = tag[len(CONTRACT_TAG_PREFIX):]
    raw = bytearray()
    i = 0
    while i < len(body):
        if body[i] == "+":
            try:
                raw.append(int(body[i + 1:i + 3], 16))
            except ValueError:
                return None
            i += 3
        else:
            raw.extend(body[i].encode())
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def split_tags(value: Any) -> list[str]:
    return [t for t in _TAG_SPLIT.split(str(value or "")) if t]


def merge_tags(existing: Any, *extra: str) -> str:
    """The tag list with `extra` added (existing ones kept, in order, without duplicates)."""
    seen: dict[str, None] = {}
    for tag in [*split_tags(existing), *extra]:
        seen.setdefault(tag.lower(), None)
    return ";".join(seen)


def contract_of_tags(value: Any) -> str | None:
    """The contract id recorded in a VM's tags when it is ours (has the `dc-agent` tag), else None."""
    tags = [t.lower() for t in split_tags(value)]
    if AGENT_TAG not in tags:
        return None
    for tag in tags:
        found = contract_from_tag(tag)
        if found is not None:
            return found
    return None


def vm_name(contract_id: str) -> str:
    """A DNS-label VM name made from the contract id: `dc-<id>` lowercased, other characters as `-`."""
    body = re.sub(r"[^a-z0-9-]+", "-", contract_id.lower()).strip("-")
    body = re.sub(r"-{2,}", "-", body)
    name = (NAME_PREFIX + body)[:NAME_MAX].rstrip("-")
    return name if name != NAME_PREFIX.rstrip("-") else "dc-contract"


def description(contract_id: str, attempt: str) -> str:
    """The VM's description: the contract, and the provisioning attempt that owns the VM now."""
    return (f"{DESCRIPTION_MARKER}{contract_id}\n{ATTEMPT_MARKER}{attempt}\n\n"
            "Made by dc-agent for a Decent Cloud contract. dc-agent destroys it when the contract ends.")


def _description_field(text: Any, marker: str) -> str | None:
    for line in str(text or "").splitlines():
        if line.startswith(marker):
            return line[len(marker):].strip()
    return None


def contract_of_description(text: Any) -> str | None:
    return _description_field(text, DESCRIPTION_MARKER)


def attempt_of_description(text: Any) -> str | None:
    return _description_field(text, ATTEMPT_MARKER)


def encode_sshkeys(keys: str) -> str:
    """cloud-init `sshkeys` as the PVE API wants it: one key a line, strictly percent-encoded."""
    lines = [line.strip() for line in keys.replace("\r\n", "\n").split("\n")]
    return urllib.parse.quote("\n".join(line for line in lines if line), safe="")


# --------------------------------------------------------------------------- config values


def net_mac(value: Any) -> str | None:
    """The MAC of a netN value such as `virtio=BC:24:11:4D:16:43,bridge=vmbr0`."""
    for part in str(value or "").split(","):
        key, _, val = part.partition("=")
        if key in ("macaddr",) or (val and re.fullmatch(r"(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", val)):
            return val.lower()
    return None


def with_bridge(value: str, bridge: str) -> str:
    """The netN value with its bridge set (model and MAC kept)."""
    parts = [p for p in value.split(",") if p and not p.startswith("bridge=")]
    return ",".join(parts[:1] + [f"bridge={bridge}"] + parts[1:])


_DRIVE = re.compile(r"^(?:ide|sata|scsi|virtio)\d+$")
_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def boot_disk(config: dict[str, Any]) -> tuple[str, int] | None:
    """(key, size in bytes) of the disk the VM boots from: the first disk of `boot`, else the first disk."""
    def is_disk(key: str) -> bool:
        return bool(_DRIVE.match(key)) and "media=cdrom" not in str(config.get(key, "")) \
            and not str(config.get(key, "")).startswith(("none", "cdrom"))

    order = str(config.get("boot", ""))
    keys: list[str] = []
    if order.startswith("order="):
        keys = [k for k in order[len("order="):].split(";") if k in config]
    keys += sorted((k for k in config if _DRIVE.match(k)),
                   key=lambda k: (("scsi", "virtio", "sata", "ide").index(re.sub(r"\d", "", k)),
                                  int(re.sub(r"\D", "", k))))
    for key in keys:
        if is_disk(key):
            found = _SIZE.search(str(config[key]))
            size = int(float(found.group(1)) * _UNITS[found.group(2)]) if found else 0
            return key, size
    return None


def wants_ipv4(ipconfig0: str) -> bool:
    """False when ipconfig0 sets up IPv6 only (then an IPv6 address is enough)."""
    keys = {part.partition("=")[0] for part in ipconfig0.split(",")}
    return "ip" in keys or "ip6" not in keys


# --------------------------------------------------------------------------- guest addresses


def _usable(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified
                or addr.is_reserved)


def pick_addresses(interfaces: Any, mac: str | None) -> tuple[str | None, str | None]:
    """(IPv4, IPv6) of the VM from the agent's network-get-interfaces answer.

    The interface with net0's MAC comes first; loopback, link-local, docker and other bridge interfaces
    are skipped. For IPv6 a global address wins over a unique-local one.
    """
    if not isinstance(interfaces, list):
        return None, None
    ifaces = [i for i in interfaces if isinstance(i, dict)]
    ifaces = [i for i in ifaces if not str(i.get("name", "")).startswith(SKIP_INTERFACE_PREFIXES)]
    if mac:
        ifaces.sort(key=lambda i: str(i.get("hardware-address", "")).lower() != mac)
    v4: str | None = None
    v6: list[ipaddress.IPv6Address] = []
    for iface in ifaces:
        for entry in iface.get("ip-addresses") or []:
            if not isinstance(entry, dict):
                continue
            try:
                addr = ipaddress.ip_address(str(entry.get("ip-address", "")).split("%")[0])
            except ValueError:
                continue
            if not _usable(addr):
                continue
            if addr.version == 4 and v4 is None:
                v4 = str(addr)
            elif addr.version == 6:
                v6.append(addr)
    # Global unicast (2000::/3) before unique-local (fc00::/7); the first of each kind in interface order.
    v6.sort(key=lambda a: a in ipaddress.ip_network("fc00::/7"))
    return v4, (str(v6[0]) if v6 else None)


# --------------------------------------------------------------------------- SSH keys in the guest

_KEY_TYPE = re.compile(r"^(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9-]+@openssh\.com)$")
USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")


def authorized_keys_path(user: str) -> str:
    """Where `user`'s keys live on a cloud image: /root/.ssh/… for root, else /home/<user>/.ssh/…."""
    return "/root/.ssh/authorized_keys" if user == "root" else f"/home/{user}/.ssh/authorized_keys"


def key_identity(line: str) -> tuple[str, str] | None:
    """(type, base64 key) of an authorized_keys or public key line (options and comment ignored), else None."""
    fields = line.split()
    for i, field in enumerate(fields[:-1]):
        if _KEY_TYPE.match(field):
            return field, fields[i + 1]
    return None


def replace_key(text: str, new_key: str, old_keys: str | None) -> str:
    """The authorized_keys (or cloud-init sshkeys) text with every line of `old_keys` removed and `new_key`
    present once at the end; other lines (the tenant's own keys, comments) are kept in order."""
    new_id = key_identity(new_key)
    drop = {key_identity(line) for line in (old_keys or "").splitlines()} - {None}
    kept = []
    for line in text.replace("\r\n", "\n").split("\n"):
        ident = key_identity(line)
        if ident is not None and (ident in drop or ident == new_id):
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, new_key.strip()]) + "\n"


def key_line_problem(line: str) -> str | None:
    """Why `line` is not a single OpenSSH public key line, or None."""
    if not line or not line.strip():
        return "the new key is empty"
    if any(ch in line for ch in "\r\n\x00"):
        return "the new key must be a single line"
    if key_identity(line) is None:
        return "the new key is not an OpenSSH public key line ('<type> <base64> [comment]')"
    return None
