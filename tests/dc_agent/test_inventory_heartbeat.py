"""The host inventory in the heartbeat (dc_agent/daemon/inventory.py): collected off the loop from every
provisioner, failures logged once, and sent as `resources` (the live API's ResourceInventory, which the fake
of the live API parses with the server's own field types) plus the provisioner list."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from dc_agent.daemon.inventory import InventoryCollector
from provisioners.multi import MultiProvisioner, Member
from provisioners.docker import DockerProvisioner
from provisioners.script import ScriptProvisioner
from tests.dc_agent.fleet import EXAMPLE, wait_until
from tests.dc_agent.test_live_integration import live_pool


class Recorder:
    """A logger that keeps what it was told (the collector's only output besides its results)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))


def script(tmp_path: Path) -> ScriptProvisioner:
    return ScriptProvisioner({"command": [sys.executable, str(EXAMPLE), "provision", "--dir", str(tmp_path)]})


class TestCollector:
    def test_a_plain_driver_describes_this_host(self, tmp_path):
        """The script driver's inventory is this machine's: CPUs and memory from /proc, / as a storage pool."""
        collector = InventoryCollector(script(tmp_path), Recorder())
        collector.collect_once()
        res = collector.resources
        assert res is not None and res["cpuThreads"] >= 1 and res["cpuCores"] >= 1
        assert 0 < res["memoryAvailableMb"] <= res["memoryTotalMb"]
        assert [p["name"] for p in res["storagePools"]] == ["/"] and res["gpuDevices"] == res["templates"] == []
        (item,) = collector.provisioners or []
        assert {k: v for k, v in item.items() if k != "detail"} == {
            "name": "script", "type": "script", "default": True, "capabilities": ["provision"], "healthy": True}
        assert "is executable" in item["detail"]

    def test_a_failing_driver_is_logged_once_and_the_others_still_count(self, tmp_path):
        """A Docker provisioner without a daemon: one warning however often it fails, the script's figures
        still sent, and the provisioner listed as unhealthy."""
        broken = DockerProvisioner({"base_url": f"unix://{tmp_path}/no-docker.sock", "api_timeout_seconds": 2,
                                    "default_image": "busybox:1", "host_ip": "127.0.0.1"})
        driver = MultiProvisioner([Member("script", "script", script(tmp_path), default=True),
                                   Member("box", "docker", broken)])
        log = Recorder()
        collector = InventoryCollector(driver, log)
        collector.collect_once()
        collector.collect_once()
        warnings = [line for line in log.lines if line[0] == "warning"]
        assert len(warnings) == 1 and "provisioner box" in warnings[0][1], log.lines
        assert collector.resources is not None and collector.resources["cpuThreads"] >= 1
        by_name = {p["name"]: p for p in collector.provisioners or []}
        assert by_name["script"]["healthy"] is True and by_name["box"]["healthy"] is False
        assert by_name["box"]["type"] == "docker" and not by_name["box"]["default"]


def test_live_heartbeat_carries_resources_and_the_provisioners(tmp_path):
    """A real agent with two provisioners against the fake live API: the stored heartbeat has `resources` the
    server's schema accepts, and each provisioner as a `provisioner:<name>:<type>` capability."""
    with live_pool(tmp_path) as fleet:
        agent = fleet.agents[0]
        for other in fleet.agents[1:]:
            fleet.agents.remove(other)
        data = tomllib.loads(agent.config.read_text())
        spare = dict(fleet.script_settings("spare"))
        spare["command"] = [sys.executable, str(EXAMPLE), "provision", "--dir", str(tmp_path / "spare")]
        data["provisioners"] = {"spare": {"type": "script", **spare}}
        agent.config.write_text(tomli_w.dumps(data))
        agent.start()

        def sent() -> dict[str, Any] | None:
            fleet.assert_alive()
            beats = [a["last_heartbeat"] for a in fleet.server.agents() if a.get("last_heartbeat")]
            return next((b for b in beats if b.get("resources")), None)

        beat = wait_until(sent, 60, "a heartbeat with resources")
        res = beat["resources"]
        assert res["cpuThreads"] >= 1 and res["memoryTotalMb"] > 0 and res["storagePools"][0]["name"] == "/"
        assert {"provisioner:script:script", "provisioner:spare:script"} <= set(beat["capabilities"])
        assert beat["provisionerType"] == "script"
