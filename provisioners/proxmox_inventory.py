"""The Proxmox driver's host inventory: what the PVE API says of the node, in the heartbeat's `resources` shape
(:mod:`provisioners.inventory`).

- CPU and memory: `GET /nodes/{node}/status` (needs Sys.Audit on /nodes/{node}, which the least-privilege
  roles of the README leave out). Refused, they come from the agent's own /proc (the agent is meant to run
  on the node), and the caller is told once why.
- storage: `GET /nodes/{node}/storage`, the active, enabled storages that hold VM images (`images` content).
- templates: the VM templates in `/cluster/resources` that the token can see.
- GPUs: `GET /nodes/{node}/hardware/pci`, display controllers (PCI class 0x03xxxx); it needs Sys.Audit or
  Sys.Modify on `/`, and without them the list is empty.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from proxmoxer import ResourceException

from provisioners.inventory import cpu_info, inventory, memory_info, storage_pool

log = logging.getLogger(__name__)
MiB = 1024**2
PVE_ERRORS = (ResourceException, requests.RequestException)


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def node_cpu_memory(status: dict[str, Any]) -> dict[str, Any]:
    """CPU and memory from a node status answer (cpuinfo.cores counts one socket: times sockets)."""
    cpu = status.get("cpuinfo") or {}
    mem = status.get("memory") or {}
    sockets = max(1, _int(cpu.get("sockets")))
    total = _int(mem.get("total"))
    available = _int(mem.get("available")) or max(0, total - _int(mem.get("used")))
    return {"model": cpu.get("model"), "cores": _int(cpu.get("cores")) * sockets, "threads": _int(cpu.get("cpus")),
            "mhz": _int(cpu.get("mhz")) or None, "total_mb": total // MiB, "available_mb": available // MiB}


def storage_pools(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [storage_pool(str(s.get("storage")), _int(s.get("total")), _int(s.get("avail")), str(s.get("type") or "unknown"))
            for s in items or []
            if s.get("storage") and _int(s.get("active", 1)) and _int(s.get("enabled", 1))
            and "images" in str(s.get("content") or "").split(",")]


def gpu_devices(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in items or []:
        if not str(d.get("class") or "").lower().startswith("0x03") or not d.get("id"):
            continue
        out.append({"pciId": str(d["id"]), "name": str(d.get("device_name") or d.get("device") or "unknown GPU"),
                    "vendor": str(d.get("vendor_name") or d.get("vendor") or "unknown")})
    return out


def templates(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = {int(r["vmid"]): str(r.get("name") or f"template-{r['vmid']}")
             for r in resources or [] if r.get("template") and r.get("vmid") is not None}
    return [{"vmid": vmid, "name": name} for vmid, name in sorted(found.items())]


def node_inventory(api: Any, node: str, refused: set[str]) -> dict[str, Any]:
    """The node's inventory. `refused` collects the parts the token may not read (the caller logs each once);
    a part that cannot be read leaves its array empty rather than failing the whole inventory."""

    def read(what: str, call: Any) -> Any:
        try:
            return call()
        except PVE_ERRORS as exc:
            if what not in refused:
                refused.add(what)
                log.warning("proxmox inventory: cannot read %s (%s)%s", what, exc,
                            "; CPU and memory come from this host's /proc" if what == "node status" else "")
            return None

    status = read("node status", lambda: api.nodes(node).status.get())
    if isinstance(status, dict):
        host = node_cpu_memory(status)
    else:
        cpu, mem = cpu_info(), memory_info()
        host = {"model": cpu["model"], "cores": cpu["cores"], "threads": cpu["threads"], "mhz": cpu["mhz"],
                **mem}
    stores = read("node storage", lambda: api.nodes(node).storage.get()) or []
    vms = read("templates", lambda: api.cluster.resources.get(type="vm")) or []
    pci = read("PCI devices", lambda: api.nodes(node).hardware.pci.get(**{"pci-class-blacklist": ""})) or []
    return inventory(cpu_model=host["model"], cpu_cores=host["cores"], cpu_threads=host["threads"],
                     cpu_mhz=host["mhz"], memory_total_mb=host["total_mb"], memory_available_mb=host["available_mb"],
                     storage_pools=storage_pools(stores), gpu_devices=gpu_devices(pci), templates=templates(vms))
