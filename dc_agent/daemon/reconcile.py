"""Reconcile: every `reconcile_interval_seconds` the driver's instances go to the server, which answers
what to keep, terminate, pause; the agent removes what it must (never an instance of a contract it is
still provisioning or reporting) and reports `terminated` for a cancelled or ended contract's instance.
Paused and kept instances go to :mod:`aftercare` (stop for a pause, start again once kept); a paused
contract's instance is never destroyed."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from dc_agent.api.base import ReconcileAnswer
from dc_agent.errors import ApiError, Conflict, Gone, NotFound
from provisioners.base import Instance

if TYPE_CHECKING:
    from dc_agent.loop import Agent

REPORT_TERMINATED_FOR = ("cancelled", "expired", "ended")


class Reconciler:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.pending_terminated: set[str] = set()

    async def once(self) -> None:
        a = self.agent
        try:
            instances = await a.in_thread(a.provisioner.list_instances)
        except Exception as exc:  # noqa: BLE001
            a.state.count("reconcile_errors")
            a.log.warning("reconcile: the driver could not list its instances", error=str(exc))
            return
        busy = set(a.jobs) | {e.contract_id for e in await a.in_thread(a.outbox.entries)}
        await self.reconcile(list(instances), skip=busy)

    async def settle_instance(self, cid: str, external_id: str, log: Any) -> None:
        """An instance this agent made for a contract it no longer holds: the server decides its fate.

        Removing it at once is not safe: in a cluster that several agents share, the agent that took the
        contract over may have adopted this very instance through find() and reported it, and it is then
        the contract's only instance. The server knows which instance it recorded, so the instance goes
        through reconcile (one instance, now); if the server cannot be asked, the periodic reconcile decides.
        """
        answer = await self.reconcile([Instance(external_id, cid)], skip=set())
        if answer is None:
            log.warning("could not ask the server about the instance; the next reconcile decides",
                        external_id=external_id)
        elif any(k.external_id == external_id for k in answer.keep):
            log.info("instance kept: the server records it for this contract, or another agent is still "
                     "provisioning the contract", external_id=external_id)

    async def _report_terminated(self, cid: str, clog: Any) -> None:
        try:
            await self.agent.client.report_terminated(cid)
        except (Conflict, NotFound, Gone) as exc:
            clog.info("reconcile: terminated report no longer applies", error=str(exc))
        except ApiError as exc:
            clog.warning("reconcile: terminated, but the report failed (resent next reconcile)", error=str(exc))
            self.pending_terminated.add(cid)

    async def reconcile(self, running: list[Instance], *, skip: set[str]) -> ReconcileAnswer | None:
        """Ask the server which of `running` to remove and remove them (never those of contracts in `skip`).
        The server's answer, or None if it was not asked."""
        a = self.agent
        try:
            answer = await a.client.reconcile(running)
        except ApiError as exc:
            a.state.count("reconcile_errors")
            a.log.warning("reconcile failed", error=str(exc))
            return None
        a.state.count("reconciles")
        for cid in list(self.pending_terminated):  # terminated earlier, report not yet acknowledged
            self.pending_terminated.discard(cid)
            await self._report_terminated(cid, a.log.bind(contract_id=cid))
        for item in answer.terminate:
            cid = item.contract_id
            if cid is not None and cid in skip:
                continue
            clog = a.log.bind(contract_id=cid, external_id=item.external_id)
            try:
                await a.in_thread(a.provisioner.terminate, item.external_id)
            except Exception as exc:  # noqa: BLE001
                a.state.count("reconcile_errors")
                clog.warning("reconcile: could not terminate", error=str(exc))
                continue
            a.state.count("terminated")
            a.aftercare.terminated(cid, item.external_id)
            clog.info("terminated", reason=item.reason)
            if cid is not None and item.reason in REPORT_TERMINATED_FOR:
                await self._report_terminated(cid, clog)
        ours = {i.external_id for i in running}
        for item in answer.pause:
            if item.external_id in ours and item.contract_id not in skip:
                await a.aftercare.pause(item)
        for item in answer.keep:
            if item.external_id in ours and item.contract_id not in skip:
                await a.aftercare.kept(item)
        if answer.unknown:
            a.log.info("reconcile: instances the server does not know", count=len(answer.unknown),
                       external_ids=[u.external_id for u in answer.unknown][:20])
        return answer

    async def loop(self) -> None:
        a = self.agent
        interval = a.settings.reconcile_interval_seconds
        await asyncio.sleep(min(30.0, interval) * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.once()
            except Exception:  # noqa: BLE001 - try again at the next interval
                a.state.count("reconcile_errors")
                a.log.exception("reconcile pass failed")
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
