"""The Docker driver's host inventory, in the heartbeat's `resources` shape (:mod:`provisioners.inventory`).

`docker info` gives the CPU count (threads), total memory, the storage driver and the data root. A local
daemon (unix socket) runs on this machine, so the CPU model, physical cores, available memory and the data
root's free space come from /proc and statvfs; for a remote daemon (tcp://) only what `docker info` says is
known, and available memory is reported as the total. The tagged images are the templates (vmid 0: Docker
has no ids of that kind), the default image first, at most MAX_IMAGES.
"""

from __future__ import annotations

from typing import Any

from provisioners.inventory import MiB, cpu_info, filesystem_pool, inventory, memory_info

MAX_IMAGES = 50


def _tags(images: list[dict[str, Any]], default_image: str) -> list[str]:
    tags = sorted({t for img in images or [] for t in (img.get("RepoTags") or []) if t and t != "<none>:<none>"})
    if default_image in tags:
        tags.remove(default_image)
        tags.insert(0, default_image)
    return tags[:MAX_IMAGES]


def docker_inventory(info: dict[str, Any], images: list[dict[str, Any]], *, local: bool,
                     default_image: str) -> dict[str, Any]:
    threads = int(info.get("NCPU") or 0)
    total_mb = int(info.get("MemTotal") or 0) // MiB
    model, cores, mhz, available_mb = None, threads, None, total_mb
    pools = []
    if local:
        cpu, mem = cpu_info(), memory_info()
        model, mhz = cpu["model"], cpu["mhz"]
        cores = min(cpu["cores"], threads) if threads else cpu["cores"]
        available_mb = min(mem["available_mb"], total_mb) if total_mb else mem["available_mb"]
        pool = filesystem_pool(info.get("DockerRootDir") or "/var/lib/docker", name="docker",
                               storage_type=str(info.get("Driver") or "docker"))
        if pool is not None:
            pools.append(pool)
    return inventory(cpu_model=model, cpu_cores=cores, cpu_threads=threads, cpu_mhz=mhz, memory_total_mb=total_mb,
                     memory_available_mb=available_mb, storage_pools=pools,
                     templates=[{"vmid": 0, "name": tag} for tag in _tags(images, default_image)])
