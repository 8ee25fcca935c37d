"""Heartbeats: their own task, at the server's `nextHeartbeatSeconds`, until the process exits (a draining
agent keeps heartbeating, so it never looks lost)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from dc_agent import __version__
from dc_agent.api.base import HeartbeatInfo
from dc_agent.daemon.inventory import InventoryCollector
from dc_agent.errors import ApiError
from provisioners.base import capabilities

if TYPE_CHECKING:
    from dc_agent.loop import Agent

DEFAULT_INTERVAL = 30.0


class Heartbeats:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.upgrade_seen: str | None = None
        self.first_answer = asyncio.Event()  # the first heartbeat was answered or failed: dispatch may start
        self.nudge: asyncio.Event | None = None
        self.inventory = InventoryCollector(agent.provisioner, agent.log, on_first=self._nudge_soon)

    def _nudge_soon(self) -> None:
        """From the inventory thread: send a heartbeat now that there is an inventory to send."""
        loop, nudge = getattr(self, "_loop", None), self.nudge
        if loop is not None and nudge is not None:
            loop.call_soon_threadsafe(nudge.set)

    def info(self) -> HeartbeatInfo:
        a = self.agent
        return HeartbeatInfo(version=__version__, provisioner_type=a.settings.provisioner_type,
                             active_contracts=len(a.jobs), max_concurrent=a.settings.max_concurrent,
                             free_slots=max(0, a.free_slots), capabilities=capabilities(a.provisioner),
                             resources=self.inventory.resources, provisioners=self.inventory.provisioners)

    async def once(self) -> float:
        """One heartbeat; the seconds until the next."""
        a = self.agent
        try:
            answer = await a.client.heartbeat(self.info())
        except ApiError as exc:
            a.state.count("heartbeat_errors")
            a.state.last_error = str(exc)
            if a.heartbeat_ok is not False:
                a.log.warning("heartbeat failed", error=str(exc))
            a.heartbeat_ok = False
            return min(10.0, a.settings.poll_interval_seconds * 2)
        if a.heartbeat_ok is False:
            a.log.info("API reachable again")
            a.wake_outbox()
            a.wake_poll()
        a.heartbeat_ok = True
        if answer.claim != a.claim_supported:
            a.claim_supported = answer.claim
            a.log.info("dispatch: " + ("the server offers claim; long-polling instead of polling" if answer.claim
                                       else "polling for pending contracts"))
            a.wake_poll()
        a.state.count("heartbeats")
        a.state.last_heartbeat_ns = time.time_ns()
        if answer.upgrade_to_version and answer.upgrade_to_version != self.upgrade_seen:
            self.upgrade_seen = answer.upgrade_to_version
            await self._upgrade(answer.upgrade_to_version)
        interval = answer.next_heartbeat_seconds or DEFAULT_INTERVAL
        interval = max(1.0, min(interval, 300.0))
        a.state.heartbeat_interval_seconds = interval
        return interval

    async def _upgrade(self, version: str) -> None:
        """`upgradeToVersion`: with auto_upgrade, start `dc-agent upgrade` detached (dc_agent.autoupgrade)."""
        a = self.agent
        if version == __version__:
            return
        if not a.settings.auto_upgrade:
            a.log.info("the server asks for an upgrade; not acted on ([agent] auto_upgrade is off: run "
                       "`dc-agent upgrade --version V`)", upgrade_to_version=version, version=__version__)
            return
        from dc_agent import autoupgrade

        try:
            why_not = await a.in_thread(autoupgrade.launch, version, a.settings.config_path, a.settings.state_dir)
        except OSError as exc:
            a.log.warning("could not start the upgrade", upgrade_to_version=version, error=str(exc))
            return
        if why_not:
            a.log.info("the server asks for an upgrade; not started", upgrade_to_version=version, reason=why_not)
        else:
            a.log.warning("upgrading: `dc-agent upgrade` started; it restarts the agent when done",
                          upgrade_to_version=version, version=__version__,
                          log=str(a.settings.state_dir / "upgrade" / f"upgrade-{version}.log"))

    async def loop(self) -> None:
        a = self.agent
        self._loop = asyncio.get_running_loop()
        self.nudge = asyncio.Event()
        self.inventory.start()
        try:
            while True:
                self.nudge.clear()
                try:
                    interval = await self.once()
                except Exception:  # noqa: BLE001 - heartbeats go on until exit, whatever happened
                    a.log.exception("heartbeat failed unexpectedly")
                    interval = 10.0
                self.first_answer.set()
                sd = a.sd()
                if sd:
                    sd.notify_status(self.status_line())
                try:
                    await asyncio.wait_for(self.nudge.wait(), interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.inventory.stop()

    def status_line(self) -> str:
        a = self.agent
        api = {True: "API ok", False: "API unreachable", None: "API not yet contacted"}[a.heartbeat_ok]
        return (f"{api}; {len(a.jobs)}/{a.settings.max_concurrent} contracts in progress; "
                f"outbox {len(a.outbox)}" + ("; draining" if a.stopping else ""))
