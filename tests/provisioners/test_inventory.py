"""Host inventories in the heartbeat's `resources` shape: /proc parsing (provisioners/inventory.py), Proxmox from
fakepve (node status, storage, templates; /proc when node status is refused), Docker from a real dockerd."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from provisioners.inventory import cpu_info, local_host, memory_info
from provisioners.proxmox import ProxmoxProvisioner
from provisioners.proxmox_inventory import gpu_devices, node_cpu_memory
from tests.support.dockerd import docker_daemon  # noqa: F401 - a fixture
from tests.support.fakepve_server import FakePveServer, build

REQUIRED = {"cpuCores", "cpuThreads", "memoryTotalMb", "memoryAvailableMb", "storagePools", "gpuDevices", "templates"}
CPUINFO = "".join(f"""processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
cpu MHz\t\t: 2100.000
physical id\t: {n // 4}
core id\t\t: {(n // 2) % 2}

""" for n in range(8))


class TestProc:
    def test_two_sockets_of_two_cores_with_two_threads(self, tmp_path):
        """Cores are distinct (physical id, core id) pairs; threads are processors; the model and MHz are read."""
        (tmp_path / "cpuinfo").write_text(CPUINFO)
        cpu = cpu_info(tmp_path, tmp_path / "no-sys")
        assert cpu == {"model": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", "cores": 4, "threads": 8, "mhz": 2100}

    def test_arm_board_without_core_ids(self, tmp_path):
        """No core ids (most ARM kernels): cores = threads."""
        (tmp_path / "cpuinfo").write_text("processor\t: 0\n\nprocessor\t: 1\n\nHardware\t: BCM2835\n")
        assert cpu_info(tmp_path, tmp_path)["cores"] == 2 and cpu_info(tmp_path, tmp_path)["model"] == "BCM2835"

    def test_memory_in_mib(self, tmp_path):
        (tmp_path / "meminfo").write_text("MemTotal:       16384000 kB\nMemFree:  1000 kB\nMemAvailable:    8192000 kB\n")
        assert memory_info(tmp_path) == {"total_mb": 16000, "available_mb": 8000}

    def test_this_host_has_every_field(self):
        inv = local_host()
        assert REQUIRED <= set(inv) and inv["cpuThreads"] == os.cpu_count()


class TestProxmox:
    def test_from_the_pve_api(self):
        """Storages that hold images (local-lvm, not local), the template, no GPU (fakepve's PCI class is 'fake')."""
        with FakePveServer(build()) as srv:
            inv = ProxmoxProvisioner(srv.settings()).inventory()
        assert REQUIRED <= set(inv) and inv["cpuModel"] == "fake"
        assert [(p["name"], p["storageType"], p["totalGb"], p["availableGb"]) for p in inv["storagePools"]] == [
            ("local-lvm", "lvmthin", 100, 90)]
        assert inv["templates"] == [{"vmid": 9000, "name": "debian-13-cloud"}] and inv["gpuDevices"] == []

    def test_refused_node_status_falls_back_to_this_host(self, caplog):
        """Without Sys.Audit on the node: CPU and memory of this host, one warning however often it is asked."""
        with FakePveServer(build()) as srv:
            srv.pve.fail("GET", "/nodes/pve1/status", 403, "Permission check failed (/nodes/pve1, Sys.Audit)")
            drv = ProxmoxProvisioner(srv.settings())
            with caplog.at_level(logging.WARNING, logger="provisioners.proxmox_inventory"):
                first, second = drv.inventory(), drv.inventory()
        assert first["cpuThreads"] == os.cpu_count() and first.get("cpuModel") != "fake"
        assert second["templates"] == [{"vmid": 9000, "name": "debian-13-cloud"}]
        warnings = [r.getMessage() for r in caplog.records if "node status" in r.getMessage()]
        assert len(warnings) == 1 and "/proc" in warnings[0]

    def test_node_figures_and_gpu_filter(self):
        """cpuinfo.cores counts one socket; display controllers (class 0x03...) are the GPUs."""
        fig = node_cpu_memory({"cpuinfo": {"model": "EPYC", "cores": 16, "sockets": 2, "cpus": 64, "mhz": "2450.1"},
                               "memory": {"total": 64 * 2**30, "used": 16 * 2**30}})
        assert (fig["cores"], fig["threads"], fig["mhz"], fig["total_mb"], fig["available_mb"]) == (32, 64, 2450,
                                                                                                    65536, 49152)
        gpus = gpu_devices([{"id": "0000:01:00.0", "class": "0x030000", "device_name": "AD102", "vendor_name": "NVIDIA"},
                            {"id": "0000:00:1f.0", "class": "0x060100", "device_name": "ISA bridge"}])
        assert gpus == [{"pciId": "0000:01:00.0", "name": "AD102", "vendor": "NVIDIA"}]


def test_docker_inventory(docker_daemon):  # noqa: F811 - the fixture
    """docker info's CPUs and memory, the daemon's data root as a pool, the default image among the templates."""
    from provisioners.docker import DockerProvisioner

    drv = DockerProvisioner(docker_daemon.settings())
    inv = drv.inventory()
    with docker_daemon.api() as api:
        info = api.info()
    assert REQUIRED <= set(inv) and inv["cpuThreads"] == info["NCPU"]
    assert inv["memoryTotalMb"] == info["MemTotal"] // 2**20
    assert inv["templates"][0] == {"vmid": 0, "name": docker_daemon.settings()["default_image"]}
    assert [p["name"] for p in inv["storagePools"]] == ["docker"] and inv["storagePools"][0]["storageType"] == info["Driver"]
    assert Path(info["DockerRootDir"]).exists()
