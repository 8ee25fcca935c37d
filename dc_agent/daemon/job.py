"""One contract from lock to result: adopt an instance an earlier attempt made (`find`), else provision, in a
worker thread while :mod:`lease` keeps the lock; then the result goes to :mod:`delivery` (or, when the lease
was lost, to the server's judgement through reconcile).

Where a failure report ends the contract for good (the live API refunds the tenant), a failed attempt is first
retried here, within the lease and at most `failure_retries` times, before it is reported.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dc_agent.errors import ApiError
from dc_agent.outbox import Entry
from provisioners.base import Cancelled, Contract, InstanceDetails, ProvisionError

if TYPE_CHECKING:
    from dc_agent.loop import Agent

LOCAL_RETRY_WAIT_SECONDS = 5.0


@dataclass
class Job:
    contract: Contract
    log: Any
    lease_expires: float
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    first_lock: bool = False  # nobody held the contract before: no instance can exist, skip find()
    stopped_for_shutdown: bool = False
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    attempts: int = 0
    task: asyncio.Task[None] | None = None


class JobRunner:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def work(self, job: Job) -> tuple[InstanceDetails, bool]:
        """In a worker thread: adopt an existing instance, else provision. (details, adopted)."""
        driver = self.agent.provisioner
        if not job.first_lock or job.attempts:  # someone held it before (maybe us, before a crash): adopt
            job.phase = "find"
            found = driver.find(job.contract.contract_id)
            if found is not None:
                return found, True
        if job.cancel.is_set():
            raise Cancelled("cancelled before provisioning started")
        job.phase = "provision"
        job.attempts += 1
        return driver.provision(job.contract, job.cancel), False

    def _may_retry(self, job: Job, exc: ProvisionError) -> bool:
        a = self.agent
        if not a.client.failures_are_final or not getattr(exc, "retryable", True):
            return False
        if job.attempts > a.settings.failure_retries or job.cancel.is_set() or a.stopping:
            return False
        return job.lease_expires - time.monotonic() > LOCAL_RETRY_WAIT_SECONDS * 2

    async def run(self, job: Job) -> None:
        a = self.agent
        cid = job.contract.contract_id
        job.log.info("provisioning", provisioner=job.contract.provisioner_type or a.settings.provisioner_type)
        renewer = asyncio.create_task(a.leases.keep(job), name=f"renew-{cid}")
        details: InstanceDetails | None = None
        error: str | None = None
        adopted = False
        try:
            try:
                try:
                    await a.client.started(cid)
                except ApiError as exc:  # best effort: the result report still goes out
                    job.log.info("could not mark the contract as provisioning", error=str(exc))
                while True:
                    try:
                        details, adopted = await a.in_thread(self.work, job)
                        break
                    except Cancelled as exc:
                        error = f"cancelled: {exc}"
                        break
                    except ProvisionError as exc:
                        error = str(exc) or type(exc).__name__
                        if not self._may_retry(job, exc):
                            break
                        job.log.warning("provisioning failed; trying again before reporting a final failure",
                                        error=error, attempt=job.attempts, retries=a.settings.failure_retries)
                        await asyncio.sleep(LOCAL_RETRY_WAIT_SECONDS * job.attempts)
                        error = None
            except Exception as exc:  # noqa: BLE001 - a driver bug must not kill the agent
                job.log.exception("driver raised an unexpected error")
                error = f"internal error in the {a.settings.provisioner_type} driver: {type(exc).__name__}: {exc}"
            finally:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
            await self.finish(job, details, error, adopted)
            if a.metrics is not None and not job.lost and not job.stopped_for_shutdown:
                a.metrics.observe("provisioned" if details is not None else "failed", time.monotonic() - job.started)
        finally:
            a.jobs.pop(cid, None)
            a.save_state(force=True)
            a.wake_poll()  # poll at once when a job finishes

    async def finish(self, job: Job, details: InstanceDetails | None, error: str | None, adopted: bool) -> None:
        a = self.agent
        cid = job.contract.contract_id
        if job.lost:
            a.state.count("lost_leases")
            if details is not None:
                job.log.warning("lease lost after the instance was made; asking the server whether it stays",
                                external_id=details.external_id)
                await a.reconciler.settle_instance(cid, details.external_id, job.log)
            else:
                job.log.warning("lease lost; provisioning stopped and cleaned up; nothing reported")
            return
        if details is None and job.stopped_for_shutdown:
            a.state.count("cancelled_on_shutdown")
            job.log.info("cancelled by shutdown; releasing the lock", error=error)
            try:
                await a.client.unlock(cid, quick=a.forced)
            except ApiError as exc:
                job.log.warning("could not release the lock; it expires by itself", error=str(exc))
            return
        if details is not None:
            entry = Entry(contract_id=cid, kind="provisioned", instance_details=details.to_api(),
                          ssh_key=job.contract.requester_ssh_pubkey)
            if adopted:
                a.state.count("adopted")
                job.log.info("adopted an instance made before a restart", external_id=details.external_id)
        else:
            entry = Entry(contract_id=cid, kind="failed", error_message=(error or "unknown error")[:2000])
        job.phase = "reporting"
        try:
            await a.in_thread(a.outbox.put, entry)
        except OSError as exc:  # disk full or read-only: the result is not durable, report it at once anyway
            job.log.error("could not write the result to the outbox; reporting it without a durable copy",
                          error=str(exc))
            a.state.count("outbox_write_errors")
        await a.delivery.deliver(entry, job.log)
