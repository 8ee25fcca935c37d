"""Stopping: the first SIGTERM/SIGINT stops taking contracts and lets running ones finish for
`shutdown_grace_seconds`, then cancels them (the driver cleans up) and releases their locks; a second signal
cancels at once. Heartbeats go on until the very end (FIELD-NOTES: a draining agent must not look lost)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

from dc_agent.daemon.delivery import FINAL_FLUSH_SECONDS

if TYPE_CHECKING:
    from dc_agent.loop import Agent


class Shutdown:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request, sig.name)

    def request(self, why: str = "stop requested") -> None:
        """First call: drain. Second call: cancel running contracts now. Safe to call any number of times."""
        a = self.agent
        assert a.stop_event is not None and a.force_event is not None
        if not a.stopping:
            a.stopping = True
            a.state.draining = True
            a.log.info("stopping: no new contracts; running ones may finish",
                       signal=why, running=len(a.jobs), grace_seconds=a.settings.shutdown_grace_seconds)
            sd = a.sd()
            if sd:
                sd.notify_stopping()
            a.stop_event.set()
            a.wake_poll()
        elif not a.forced:
            a.forced = True
            a.log.warning("second stop request: cancelling running contracts now", signal=why, running=len(a.jobs))
            for job in a.jobs.values():
                job.stopped_for_shutdown = True
                job.cancel.set()
            a.force_event.set()

    async def drain(self) -> None:
        a = self.agent
        assert a.force_event is not None
        tasks = [j.task for j in a.jobs.values() if j.task]
        if tasks and not a.forced:
            force_wait = asyncio.create_task(a.force_event.wait())
            deadline = time.monotonic() + a.settings.shutdown_grace_seconds
            while any(not t.done() for t in tasks) and not a.forced and time.monotonic() < deadline:
                await asyncio.wait([*[t for t in tasks if not t.done()], force_wait],
                                   timeout=max(0.0, deadline - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
            force_wait.cancel()
        remaining = [j for j in a.jobs.values() if j.task and not j.task.done()]
        if remaining:
            a.log.warning("grace period over: cancelling running contracts", running=len(remaining))
            for job in remaining:
                job.stopped_for_shutdown = True
                job.cancel.set()
            limit = 5.0 if a.forced else 60.0
            done, pending = await asyncio.wait([j.task for j in remaining if j.task], timeout=limit)
            if pending:
                a.unfinished_threads = True
                a.log.error("some drivers did not stop in time; exiting anyway", contracts=[
                    j.contract.contract_id for j in remaining if j.task in pending])
        if not a.forced and len(a.outbox):
            with contextlib.suppress(asyncio.TimeoutError):  # the rest stays on disk for the next start
                await asyncio.wait_for(a.delivery.flush(), timeout=FINAL_FLUSH_SECONDS)
