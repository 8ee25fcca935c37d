"""The host inventory a heartbeat carries as `resources`, in the live API's field names (ResourceInventory:
cpuModel?, cpuCores, cpuThreads, cpuMhz?, memoryTotalMb, memoryAvailableMb, storagePools, gpuDevices,
templates; docs/decent-cloud-dialect.md 3.2).

This module reads the local machine (stdlib only: /proc, /sys, os.statvfs), for drivers whose instances
live on the agent's own host (script, manual, a local Docker); drivers that know better (Proxmox node
status) build the same shape with :func:`inventory` from their own figures. Units: memory in MiB, storage
in GiB (rounded down), as the live API's own agent reports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MiB = 1024**2
GiB = 1024**3
PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def inventory(*, cpu_model: str | None, cpu_cores: int, cpu_threads: int, cpu_mhz: int | None,
              memory_total_mb: int, memory_available_mb: int, storage_pools: list[dict[str, Any]] | None = None,
              gpu_devices: list[dict[str, Any]] | None = None,
              templates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One ResourceInventory as the wire wants it: optional fields left out when unknown, arrays always there."""
    out: dict[str, Any] = {"cpuCores": max(0, int(cpu_cores)), "cpuThreads": max(0, int(cpu_threads)),
                           "memoryTotalMb": max(0, int(memory_total_mb)),
                           "memoryAvailableMb": max(0, int(memory_available_mb)),
                           "storagePools": list(storage_pools or []), "gpuDevices": list(gpu_devices or []),
                           "templates": list(templates or [])}
    if cpu_model:
        out["cpuModel"] = str(cpu_model).strip()
    if cpu_mhz:
        out["cpuMhz"] = int(cpu_mhz)
    return out


def storage_pool(name: str, total_bytes: int, available_bytes: int, storage_type: str) -> dict[str, Any]:
    return {"name": name, "totalGb": max(0, int(total_bytes)) // GiB,
            "availableGb": max(0, int(available_bytes)) // GiB, "storageType": storage_type}


def filesystem_pool(path: str | os.PathLike[str], name: str | None = None,
                    storage_type: str = "filesystem") -> dict[str, Any] | None:
    """The file system holding `path` as a storage pool (space an unprivileged user may use), or None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return storage_pool(name or str(path), st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, storage_type)


def cpu_info(proc: Path = PROC, sys_cpu: Path = SYS_CPU) -> dict[str, Any]:
    """{model, cores, threads, mhz} from /proc/cpuinfo (cores: distinct physical id + core id pairs, or the
    thread count where the kernel does not say, as on most ARM boards); the maximum clock from cpufreq."""
    model: str | None = None
    mhz: int | None = None
    threads = 0
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    try:
        text = (proc / "cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            threads += 1
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key == "cpu mhz" and mhz is None:
            mhz = _int(value)
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not line.strip() and core:
            cores.add((physical, core))
            physical = core = ""
    threads = threads or os.cpu_count() or 0
    try:
        mhz = (_int((sys_cpu / "cpu0" / "cpufreq" / "cpuinfo_max_freq").read_text()) or 0) // 1000 or mhz
    except OSError:
        pass
    return {"model": model, "cores": len(cores) or threads, "threads": threads, "mhz": mhz}


def memory_info(proc: Path = PROC) -> dict[str, int]:
    """{total_mb, available_mb} from /proc/meminfo (MemAvailable, or MemFree on very old kernels)."""
    fields: dict[str, int] = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            number = _int(value.split()[0]) if value.split() else None
            if number is not None:
                fields[key.strip()] = number * 1024  # kB
    except OSError:
        pass
    available = fields.get("MemAvailable", fields.get("MemFree", 0))
    return {"total_mb": fields.get("MemTotal", 0) // MiB, "available_mb": available // MiB}


def local_host(storage_paths: tuple[str, ...] = ("/",), proc: Path = PROC) -> dict[str, Any]:
    """This machine's inventory: CPU and memory from /proc, the file systems of `storage_paths` as pools."""
    cpu, mem = cpu_info(proc), memory_info(proc)
    pools = [p for p in (filesystem_pool(path) for path in storage_paths) if p is not None]
    return inventory(cpu_model=cpu["model"], cpu_cores=cpu["cores"], cpu_threads=cpu["threads"], cpu_mhz=cpu["mhz"],
                     memory_total_mb=mem["total_mb"], memory_available_mb=mem["available_mb"], storage_pools=pools)


def merge(primary: dict[str, Any] | None, others: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One inventory for an agent with several drivers: CPU and memory of `primary` (the default driver's;
    the first other one when it has none), the storage pools, GPUs and templates of all, without repeats."""
    parts = [p for p in [primary, *others] if p]
    if not parts:
        return None
    out = {k: v for k, v in parts[0].items() if k not in ("storagePools", "gpuDevices", "templates")}
    for key, ident in (("storagePools", ("name",)), ("gpuDevices", ("pciId",)), ("templates", ("vmid", "name"))):
        seen: set[tuple[Any, ...]] = set()
        out[key] = []
        for part in parts:
            for item in part.get(key) or []:
                mark = tuple(item.get(k) for k in ident)
                if mark not in seen:
                    seen.add(mark)
                    out[key].append(item)
    return out
