"""Dispatch: get contracts to work on and start a job for each, as many as there are free slots.

Two ways, chosen by what the server offers (its heartbeat answer says `claim: true`):

* claim (pool_api): one call locks up to `free slots` contracts for this agent and long-polls until one
  arrives, so a contract is picked up the moment it is paid and two agents never fight for one;
* poll (the live API, older servers): fetch the pending list every `poll_interval_seconds` (with jitter, and
  at once when a job ends) and lock candidates one by one. Candidates are ordered by a hash of (agent key,
  contract id), so the agents of one pool do not all fight for the oldest; a contract this agent already
  holds comes first; a `Conflict` just means another agent has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from typing import TYPE_CHECKING

from dc_agent.errors import ApiError, BadRequest, Conflict, Forbidden, Gone, NotFound

if TYPE_CHECKING:
    from dc_agent.loop import Agent


class Dispatcher:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def rank(self, contract_id: str) -> bytes:
        return hashlib.sha256(f"{self.agent.pubkey}:{contract_id}".encode()).digest()

    async def poll_once(self) -> None:
        a = self.agent
        if a.free_slots <= 0 or a.stopping:
            return
        try:
            offers = await a.client.pending()
        except ApiError as exc:
            a.poll_ok = False
            a.state.count("poll_errors")
            a.state.last_error = str(exc)
            a.log.warning("could not fetch pending contracts", error=str(exc))
            return
        a.poll_ok = True
        a.state.count("polls")
        a.state.last_poll_ns = time.time_ns()
        now = time.monotonic()
        candidates = [o for o in offers
                      if o.contract_id not in a.jobs and o.contract_id not in a.delivering
                      and not a.outbox.has(o.contract_id) and a.retry_after.get(o.contract_id, 0) <= now]
        candidates.sort(key=lambda o: (not o.locked_by_me, self.rank(o.contract_id)))
        for offer in candidates:
            if a.free_slots <= 0 or a.stopping:
                break
            cid = offer.contract_id
            clog = a.log.bind(contract_id=cid)
            sent = time.monotonic()
            try:
                lease = await a.client.lock(cid)
            except Conflict:
                a.state.count("lock_conflicts")
                a.state.conflicts_by_contract[cid] += 1
                clog.debug("another agent holds the lock; skipped")
                continue
            except (Forbidden, NotFound, Gone, BadRequest) as exc:
                clog.warning("lock refused", error=str(exc))
                a.retry_after[cid] = now + a.settings.poll_interval_seconds * 4
                continue
            except ApiError as exc:
                clog.warning("lock failed; will retry at the next poll", error=str(exc))
                break
            a.state.count("locks_acquired")
            if offer.contract is None:
                clog.error("pending contract has an unexpected shape; releasing it", error=offer.problem)
                a.retry_after[cid] = now + a.settings.poll_interval_seconds * 4
                with contextlib.suppress(ApiError):
                    await a.client.unlock(cid)
                continue
            a.start_job(offer.contract, clog, a.leases.expiry(lease, sent), first_lock=lease.first_lock)
        a.save_state(force=True)

    def claim_wait_seconds(self) -> float:
        """How long one claim may wait on the server: well inside the HTTP timeout."""
        return max(0.0, min(25.0, self.agent.settings.request_timeout_seconds - 5.0))

    async def claim_once(self, wait_seconds: float | None = None) -> int | None:
        """One claim (long-polling `wait_seconds`, default :meth:`claim_wait_seconds`): the number of contracts
        claimed, None when it failed (the loop then waits before the next)."""
        a = self.agent
        if a.free_slots <= 0 or a.stopping:
            return 0
        now = time.monotonic()
        backing_off = [cid for cid, t in a.retry_after.items() if t > now]
        busy = [*a.jobs, *a.delivering]
        try:
            wait = self.claim_wait_seconds() if wait_seconds is None else wait_seconds
            claimed = await a.client.claim(a.free_slots, wait, free_slots=a.free_slots,
                                           exclude=sorted(set(backing_off) | set(busy)))
        except ApiError as exc:
            a.poll_ok = False
            a.state.count("poll_errors")
            a.state.last_error = str(exc)
            a.log.warning("could not claim contracts", error=str(exc))
            return None
        a.poll_ok = True
        a.state.count("polls")
        a.state.last_poll_ns = time.time_ns()
        for offer, lease in claimed:
            cid = offer.contract_id
            clog = a.log.bind(contract_id=cid)
            if cid in a.jobs or cid in a.delivering or a.outbox.has(cid):
                continue  # ours already (a re-claim renewed it); the running job or the outbox carries on
            sent = time.monotonic()
            if offer.contract is None or a.retry_after.get(cid, 0) > now or a.free_slots <= 0:
                if offer.contract is None:
                    clog.error("claimed contract has an unexpected shape; releasing it", error=offer.problem)
                    a.retry_after[cid] = now + a.settings.poll_interval_seconds * 4
                with contextlib.suppress(ApiError):
                    await a.client.unlock(cid)
                continue
            a.state.count("locks_acquired")
            a.start_job(offer.contract, clog, a.leases.expiry(lease, sent), first_lock=lease.first_lock)
        a.save_state(force=True)
        return len(claimed)

    async def loop(self) -> None:
        a = self.agent
        assert a.wake is not None
        # The first heartbeat says whether the server offers claim: wait for it (briefly), so the first
        # contracts are claimed rather than raced for through the pending list.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(a.until_stopped(a.heartbeats.first_answer.wait()),
                                   timeout=min(10.0, a.settings.request_timeout_seconds))
        while not a.stopping:
            a.wake.clear()
            if a.claim_supported and a.free_slots > 0:
                began = time.monotonic()
                claimed = await a.until_stopped(self.claim_once())
                a.save_state()
                if claimed or (claimed == 0 and time.monotonic() - began >= 1.0):
                    continue  # a long poll: ask again at once
                # failed, or answered at once with nothing (a server that does not wait): do not spin
            else:
                await a.until_stopped(self.poll_once())
                a.save_state()
            timeout = a.settings.poll_interval_seconds * random.uniform(0.9, 1.1)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(a.wake.wait(), timeout=timeout)
