"""Heartbeats: their own task, at the server's `nextHeartbeatSeconds`, until the process exits (a draining
agent keeps heartbeating, so it never looks lost)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from dc_agent import __version__
from dc_agent.api.base import HeartbeatInfo
from dc_agent.errors import ApiError
from provisioners.base import capabilities

if TYPE_CHECKING:
    from dc_agent.loop import Agent

DEFAULT_INTERVAL = 30.0


class Heartbeats:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.upgrade_seen: str | None = None

    def info(self) -> HeartbeatInfo:
        a = self.agent
        return HeartbeatInfo(version=__version__, provisioner_type=a.settings.provisioner_type,
                             active_contracts=len(a.jobs), max_concurrent=a.settings.max_concurrent,
                             free_slots=max(0, a.free_slots), capabilities=capabilities(a.provisioner))

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
            a.log.info("the server asks for an upgrade; not acted on (upgrade it with your package tooling)",
                       upgrade_to_version=answer.upgrade_to_version, version=__version__)
        interval = answer.next_heartbeat_seconds or DEFAULT_INTERVAL
        interval = max(1.0, min(interval, 300.0))
        a.state.heartbeat_interval_seconds = interval
        return interval

    async def loop(self) -> None:
        a = self.agent
        while True:
            try:
                interval = await self.once()
            except Exception:  # noqa: BLE001 - heartbeats go on until exit, whatever happened
                a.log.exception("heartbeat failed unexpectedly")
                interval = 10.0
            sd = a.sd()
            if sd:
                sd.notify_status(self.status_line())
            await asyncio.sleep(interval)

    def status_line(self) -> str:
        a = self.agent
        api = {True: "API ok", False: "API unreachable", None: "API not yet contacted"}[a.heartbeat_ok]
        return (f"{api}; {len(a.jobs)}/{a.settings.max_concurrent} contracts in progress; "
                f"outbox {len(a.outbox)}" + ("; draining" if a.stopping else ""))
