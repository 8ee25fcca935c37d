"""Lease renewal: while a driver works, re-lock every `lock_timeout_seconds / 3` (sooner when the server's
lease is shorter). A renewal that fails on the network is not a lost lease while the lease still runs (the
server decides, FIELD-NOTES); the server's refusal, or the expiry passing unrenewed, loses it: the driver
is cancelled, removes what it made, and nothing is reported."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from dc_agent.api.base import Lease
from dc_agent.errors import ApiError, Conflict, Forbidden, Gone, NotFound

if TYPE_CHECKING:
    from dc_agent.loop import Agent
    from dc_agent.daemon.job import Job

LEASE_REFUSED = (Conflict, Forbidden, NotFound, Gone)


def lease_seconds(lock_timeout: float, lease: Lease, sent_monotonic: float) -> float:
    """Seconds the lease lasts from when the request was sent (the server's expiry if given, capped by
    the configured lock timeout)."""
    if lease.expires_at_ns and lease.expires_at_ns > 0:
        left = (lease.expires_at_ns - time.time_ns()) / 1e9 + (time.monotonic() - sent_monotonic)
        if 0 < left < 24 * 3600:
            return min(left, lock_timeout)
    return lock_timeout


class LeaseKeeper:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def expiry(self, lease: Lease, sent_monotonic: float) -> float:
        """The monotonic time the lease runs out."""
        return sent_monotonic + lease_seconds(self.agent.settings.lock_timeout_seconds, lease, sent_monotonic)

    def delay(self, job: "Job") -> float:
        left = job.lease_expires - time.monotonic()
        return max(0.1, min(self.agent.settings.renew_interval_seconds, left / 3))

    async def keep(self, job: "Job") -> None:
        """Renew until cancelled; on loss set `job.lost` and cancel the driver."""
        a = self.agent
        delay = self.delay(job)
        while True:
            await asyncio.sleep(delay)
            sent = time.monotonic()
            try:
                lease = await a.client.lock(job.contract.contract_id, renew=True)
            except LEASE_REFUSED as exc:
                job.lost = True
                job.cancel.set()
                job.log.warning("lease refused by the server; stopping this contract", error=str(exc))
                return
            except ApiError as exc:
                a.state.count("renewal_errors")
                left = job.lease_expires - time.monotonic()
                if left <= 0:
                    job.lost = True
                    job.cancel.set()
                    job.log.warning("lease expired without a successful renewal; stopping this contract, "
                                    "another agent may take it now", error=str(exc))
                    return
                job.log.warning("lease renewal failed; still ours until the lease expires",
                                error=str(exc), lease_seconds_left=round(left, 1))
                delay = max(0.1, min(a.settings.renew_interval_seconds / 2, 5.0, left / 2))
                continue
            a.state.count("renewals")
            job.lease_expires = self.expiry(lease, sent)
            delay = self.delay(job)
