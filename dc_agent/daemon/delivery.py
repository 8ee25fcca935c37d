"""Delivery: a finished result is written and fsynced to the outbox before it is reported, and resent (after
an outage, after a restart) until the server acknowledges it.

A report refused because the lease ran out meanwhile first re-locks the contract; if another agent took it,
the server decides about this agent's instance through reconcile (:meth:`Reconciler.settle_instance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from dc_agent.daemon.lease import LEASE_REFUSED
from dc_agent.errors import ApiError, BadRequest, Conflict, Forbidden, Gone, NotFound, ServerError, Unauthorized, \
    Unreachable
from dc_agent.outbox import Entry

if TYPE_CHECKING:
    from dc_agent.loop import Agent

TRANSIENT = (Unreachable, ServerError, Unauthorized)
FINAL_FLUSH_SECONDS = 10.0  # last resend of waiting results before exit; keeps a stop within TimeoutStopSec


class Delivery:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    async def deliver(self, entry: Entry, log: Any = None) -> bool:
        """Report one outbox entry; True once the server acknowledged it (or it no longer applies)."""
        a = self.agent
        cid = entry.contract_id
        log = log or a.log.bind(contract_id=cid)
        if cid in a.delivering:
            return False
        a.delivering.add(cid)
        try:
            return await self._deliver(entry, log, relocked=False)
        finally:
            a.delivering.discard(cid)

    async def _deliver(self, entry: Entry, log: Any, *, relocked: bool) -> bool:
        a = self.agent
        cid = entry.contract_id
        try:
            if entry.kind == "provisioned":
                await a.client.report_provisioned(cid, entry.instance_details or {})
            else:
                await a.client.report_failed(cid, entry.error_message or "failed")
        except TRANSIENT as exc:
            a.state.count("report_errors")
            log.warning("report not delivered; kept in the outbox and resent", kind=entry.kind, error=str(exc))
            return False
        except (Forbidden, Conflict) as exc:
            if entry.kind == "failed":
                log.info("failure report refused (lock no longer ours); dropped", error=str(exc))
                await a.in_thread(a.outbox.done, cid)
                return True
            if not relocked:  # our lease ran out while the report waited: take it again if nobody else did
                try:
                    await a.client.lock(cid)
                except LEASE_REFUSED:
                    pass
                except ApiError as lock_exc:
                    log.warning("report refused and re-lock failed; kept in the outbox", error=str(lock_exc))
                    return False
                else:
                    return await self._deliver(entry, log, relocked=True)
            external = (entry.instance_details or {}).get("externalId")
            a.state.count("lost_leases")
            log.warning("another agent took this contract while the report waited; asking the server whether "
                        "our instance stays", external_id=external, error=str(exc))
            await a.in_thread(a.outbox.done, cid)
            if external:
                await a.reconciler.settle_instance(cid, str(external), log)
            return True
        except (NotFound, Gone) as exc:
            log.warning("contract no longer exists on the server; result dropped (reconcile cleans up)",
                        kind=entry.kind, error=str(exc))
            await a.in_thread(a.outbox.done, cid)
            return True
        except BadRequest as exc:
            log.error("server rejected the report; kept aside in the outbox", error=str(exc))
            rejected = a.outbox.path_for(cid)
            with contextlib.suppress(OSError):
                rejected.rename(rejected.with_suffix(".rejected"))
            return True
        await a.in_thread(a.outbox.done, cid)
        a.state.count("reports_sent")
        if entry.kind == "provisioned":
            a.state.count("provisioned")
            a.failures.pop(cid, None)
            details = entry.instance_details or {}
            if details.get("externalId"):
                await a.in_thread(lambda: a.registry.record(cid, str(details["externalId"]), ssh_key=entry.ssh_key))
            log.info("provisioned", external_id=details.get("externalId"), ip_address=details.get("ipAddress"))
        else:
            a.state.count("failed")
            fails = a.failures[cid] = a.failures.get(cid, 0) + 1
            backoff = a.failure_backoff(fails)
            a.retry_after[cid] = time.monotonic() + backoff
            log.warning("provisioning failed; reported", error=entry.error_message, retry_in_seconds=backoff)
        return True

    async def flush(self) -> int:
        """Try to deliver every entry not owned by a running job; the number still left."""
        a = self.agent
        for entry in await a.in_thread(a.outbox.entries):
            if entry.contract_id in a.jobs:
                continue
            await self.deliver(entry)
        return len(a.outbox)

    async def loop(self) -> None:
        a = self.agent
        assert a.outbox_wake is not None
        delay = 2.0
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(a.outbox_wake.wait(), timeout=delay)
            a.outbox_wake.clear()
            try:
                left = await self.flush()
            except Exception:  # noqa: BLE001 - a bad pass must not end resending for good
                a.log.exception("outbox pass failed; trying again")
                left = 1
            delay = 2.0 if left == 0 else min(delay * 2, 10.0)
