"""The daemon: heartbeat, poll, lock, provision, renew, report, reconcile, drain.

Named steps (compare arq's poll → start → run → finish):

* :meth:`Agent._heartbeat_loop`: its own task, at the server's `nextHeartbeatSeconds`, until exit
  (also while draining, so a draining agent never looks lost).
* :meth:`Agent.poll_once`: pending contracts, ordered by a hash of (agent key, contract) so that the
  agents of one pool do not all fight for the oldest; lock (409 = another agent has it: skip, count);
  start up to `max_concurrent` jobs. Runs every `poll_interval_seconds` and at once when a job ends.
* :meth:`Agent._run_job`: `find()` (adopt an instance made before a crash) else `provision()` in a
  worker thread, while :meth:`Agent._renew` re-locks every `lock_timeout_seconds / 3`. A renewal that
  fails on the network is not a lost lease (the lease may still be valid, and the server decides);
  a renewal the server refuses (409/403/404/410) is: the driver is cancelled, cleans up, and nothing
  is reported.
* :meth:`Agent._finish`: the result goes to the durable outbox (fsynced) before it is reported;
  :meth:`Agent._deliver` reports it and forgets it only once the server acknowledged it.
* :meth:`Agent._reconcile_loop`: every `reconcile_interval_seconds`, POST /reconcile with the driver's
  instances; terminate what the server says to, then PUT terminated.
* Signals: the first SIGTERM/SIGINT stops taking contracts and lets running ones finish for
  `shutdown_grace_seconds`, then cancels them (the driver cleans up) and releases their locks; a
  second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dc_agent import __version__
from dc_agent.client import ApiClient, RetryPolicy
from dc_agent.config import Settings
from dc_agent.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    ServerError,
    Unauthorized,
    Unreachable,
)
from dc_agent.outbox import Entry, Outbox
from dc_agent.state import AgentState
from provisioners.base import Cancelled, Contract, InstanceDetails, ProvisionError, Provisioner

LEASE_REFUSED = (Conflict, Forbidden, NotFound, Gone)
FINAL_FLUSH_SECONDS = 10.0  # last resend of waiting results before exit; keeps a stop within TimeoutStopSec
TRANSIENT = (Unreachable, ServerError, Unauthorized)


def _sd() -> Any:
    """dc_agent.sdnotify when present (systemd notifications; every call a no-op outside systemd)."""
    try:
        from dc_agent import sdnotify
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return sdnotify


def _first_lock(lock: Any) -> bool:
    """The server says this lock is the first ever taken on the contract (firstLockedAtNs == lockedAtNs)."""
    if not isinstance(lock, dict):
        return False
    first, now = lock.get("firstLockedAtNs"), lock.get("lockedAtNs")
    return isinstance(first, int) and first == now


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
    task: asyncio.Task[None] | None = None


class Agent:
    def __init__(self, settings: Settings, client: ApiClient, provisioner: Provisioner, *,
                 outbox: Outbox, state: AgentState, log: Any) -> None:
        self.settings = settings
        self.client = client
        self.provisioner = provisioner
        self.outbox = outbox
        self.state = state
        self.log = log
        self.pubkey = client.agent_pubkey
        self.jobs: dict[str, Job] = {}
        self.retry_after: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.delivering: set[str] = set()
        self.pending_terminated: set[str] = set()
        self.stopping = False
        self.forced = False
        self.heartbeat_ok: bool | None = None
        self.poll_ok: bool | None = None
        self.unfinished_threads = False
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._outbox_wake: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_concurrent + 4, thread_name_prefix="driver")
        self._background: list[asyncio.Task[None]] = []

    # -- helpers ------------------------------------------------------------------------------------

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _rank(self, contract_id: str) -> bytes:
        return hashlib.sha256(f"{self.pubkey}:{contract_id}".encode()).digest()

    @property
    def free_slots(self) -> int:
        return self.settings.max_concurrent - len(self.jobs)

    def _save_state(self, force: bool = False) -> None:
        self.state.in_progress = {
            cid: {"phase": job.phase, "seconds": round(time.monotonic() - job.started, 1),
                  "leaseSecondsLeft": round(job.lease_expires - time.monotonic(), 1)}
            for cid, job in self.jobs.items()
        }
        try:
            self.state.outbox_backlog = len(self.outbox)
            self.state.save(force=force)
        except OSError as exc:  # a full disk must not stop provisioning; status will be stale
            self.log.warning("cannot write status file", error=str(exc))

    # -- lifecycle ----------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)

    def request_stop(self, why: str = "stop requested") -> None:
        """First call: drain. Second call: cancel running contracts now. Safe to call any number of times."""
        assert self._stop is not None and self._force is not None and self._wake is not None
        if not self.stopping:
            self.stopping = True
            self.state.draining = True
            self.log.info("stopping: no new contracts; running ones may finish",
                          signal=why, running=len(self.jobs), grace_seconds=self.settings.shutdown_grace_seconds)
            sd = _sd()
            if sd:
                sd.notify_stopping()
            self._stop.set()
            self._wake.set()
        elif not self.forced:
            self.forced = True
            self.log.warning("second stop request: cancelling running contracts now", signal=why,
                             running=len(self.jobs))
            for job in self.jobs.values():
                job.stopped_for_shutdown = True
                job.cancel.set()
            self._force.set()

    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or one cycle with `once`); the exit status for the process."""
        self._wake, self._stop, self._force, self._outbox_wake = (asyncio.Event(), asyncio.Event(),
                                                                  asyncio.Event(), asyncio.Event())
        self.state.agent_pubkey = self.pubkey
        self.state.version = __version__
        self.state.label = self.settings.label
        self._install_signals()
        await self._recover_orphans()
        self.log.info("agent started", version=__version__, pool_id=self.settings.pool_id,
                      provisioner=self.settings.provisioner_type, max_concurrent=self.settings.max_concurrent,
                      outbox_backlog=len(self.outbox), agent_pubkey=self.pubkey)
        try:
            if once:
                return await self._run_once()
            sd = _sd()
            if sd:
                sd.notify_ready()
            heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
            self._background = [
                asyncio.create_task(self._outbox_loop(), name="outbox"),
                asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                asyncio.create_task(self._housekeeping_loop(), name="housekeeping"),
            ]
            await self._poll_loop()
            await self._drain()
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            heartbeat.cancel()  # last: keep heartbeating while draining
            await asyncio.gather(heartbeat, return_exceptions=True)
            self.log.info("agent stopped", outbox_backlog=len(self.outbox), forced=self.forced)
            return 1 if self.forced else 0
        finally:
            self._save_state(force=True)
            self._executor.shutdown(wait=not self.unfinished_threads, cancel_futures=True)

    async def _run_once(self) -> int:
        await self._heartbeat_once()
        await self._flush_outbox()
        await self.poll_once()
        while self.jobs:
            await asyncio.gather(*(j.task for j in list(self.jobs.values()) if j.task), return_exceptions=True)
        ok = bool(self.heartbeat_ok) and bool(self.poll_ok) and len(self.outbox) == 0
        self.log.info("one cycle done", healthy=ok, outbox_backlog=len(self.outbox))
        return 0 if ok else 1

    async def _recover_orphans(self) -> None:
        recover = getattr(self.provisioner, "recover_orphans", None)
        if recover is None:
            return
        try:
            stopped = await self._in_thread(recover)
        except Exception as exc:  # noqa: BLE001 - recovery is best effort
            self.log.warning("could not check for runs left by a previous agent process", error=str(exc))
            return
        for cid in stopped:
            self.log.warning("stopped a provisioning run left by a previous agent process; "
                             "the contract will be adopted or provisioned again", contract_id=cid)

    async def _poll_loop(self) -> None:
        assert self._wake is not None and self._stop is not None
        while not self.stopping:
            self._wake.clear()
            await self._until_stopped(self.poll_once())
            self._save_state()
            interval = self.settings.poll_interval_seconds
            timeout = interval * random.uniform(0.9, 1.1)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _until_stopped(self, work: Any) -> None:
        """Run `work` unless a stop request comes first: then it is cancelled (a poll in flight must not
        hold up a stop; a lock it may have taken lapses by itself)."""
        assert self._stop is not None
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, stop, return_exceptions=True)

    async def _drain(self) -> None:
        assert self._force is not None
        tasks = [j.task for j in self.jobs.values() if j.task]
        if tasks and not self.forced:
            force_wait = asyncio.create_task(self._force.wait())
            deadline = time.monotonic() + self.settings.shutdown_grace_seconds
            while any(not t.done() for t in tasks) and not self.forced and time.monotonic() < deadline:
                await asyncio.wait([*[t for t in tasks if not t.done()], force_wait],
                                   timeout=max(0.0, deadline - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
            force_wait.cancel()
        remaining = [j for j in self.jobs.values() if j.task and not j.task.done()]
        if remaining:
            self.log.warning("grace period over: cancelling running contracts", running=len(remaining))
            for job in remaining:
                job.stopped_for_shutdown = True
                job.cancel.set()
            limit = 5.0 if self.forced else 60.0
            done, pending = await asyncio.wait([j.task for j in remaining if j.task], timeout=limit)
            if pending:
                self.unfinished_threads = True
                self.log.error("some drivers did not stop in time; exiting anyway", contracts=[
                    j.contract.contract_id for j in remaining if j.task in pending])
        if not self.forced and len(self.outbox):
            with contextlib.suppress(asyncio.TimeoutError):  # the rest stays on disk for the next start
                await asyncio.wait_for(self._flush_outbox(), timeout=FINAL_FLUSH_SECONDS)

    # -- heartbeat ------------------------------------------------------------------------------------

    async def _heartbeat_once(self) -> float:
        try:
            data = await self.client.heartbeat(version=__version__, provisioner_type=self.settings.provisioner_type,
                                               active_contracts=len(self.jobs),
                                               capacity={"maxConcurrent": self.settings.max_concurrent,
                                                         "freeSlots": max(0, self.free_slots)})
        except ApiError as exc:
            self.state.count("heartbeat_errors")
            self.state.last_error = str(exc)
            if self.heartbeat_ok is not False:
                self.log.warning("heartbeat failed", error=str(exc))
            self.heartbeat_ok = False
            return min(10.0, self.settings.poll_interval_seconds * 2)
        if self.heartbeat_ok is False:
            self.log.info("API reachable again")
            if self._outbox_wake:
                self._outbox_wake.set()
            if self._wake:
                self._wake.set()
        self.heartbeat_ok = True
        self.state.count("heartbeats")
        self.state.last_heartbeat_ns = time.time_ns()
        try:
            interval = float(data.get("nextHeartbeatSeconds") or 30)
        except (TypeError, ValueError):
            interval = 30.0
        interval = max(1.0, min(interval, 300.0))
        self.state.heartbeat_interval_seconds = interval
        return interval

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                interval = await self._heartbeat_once()
            except Exception:  # noqa: BLE001 - heartbeats go on until exit, whatever happened
                self.log.exception("heartbeat failed unexpectedly")
                interval = 10.0
            sd = _sd()
            if sd:
                sd.notify_status(self._status_line())
            await asyncio.sleep(interval)

    def _status_line(self) -> str:
        api = {True: "API ok", False: "API unreachable", None: "API not yet contacted"}[self.heartbeat_ok]
        return (f"{api}; {len(self.jobs)}/{self.settings.max_concurrent} contracts in progress; "
                f"outbox {len(self.outbox)}" + ("; draining" if self.stopping else ""))

    async def _housekeeping_loop(self) -> None:
        """Every second: status.json; at systemd's watchdog interval: WATCHDOG=1 (proof the loop runs)."""
        sd = _sd()
        watchdog = sd.watchdog_interval_seconds() if sd else None
        tick = min(1.0, watchdog) if watchdog else 1.0
        last_ping = float("-inf")
        while True:
            now = time.monotonic()
            if sd and watchdog and now - last_ping >= watchdog:
                sd.notify_watchdog()
                last_ping = now
            self._save_state()
            await asyncio.sleep(tick)

    # -- polling and locking --------------------------------------------------------------------------

    async def poll_once(self) -> None:
        if self.free_slots <= 0 or self.stopping:
            return
        try:
            pending = await self.client.pending_contracts()
        except ApiError as exc:
            self.poll_ok = False
            self.state.count("poll_errors")
            self.state.last_error = str(exc)
            self.log.warning("could not fetch pending contracts", error=str(exc))
            return
        self.poll_ok = True
        self.state.count("polls")
        self.state.last_poll_ns = time.time_ns()
        now = time.monotonic()
        candidates = []
        for item in pending:
            cid = str(item.get("contractId", ""))
            if not cid or cid in self.jobs or cid in self.delivering or self.outbox.has(cid):
                continue
            if self.retry_after.get(cid, 0) > now:
                continue
            candidates.append(item)
        candidates.sort(key=lambda c: (not c.get("lockedByMe"), self._rank(str(c["contractId"]))))
        for item in candidates:
            if self.free_slots <= 0 or self.stopping:
                break
            cid = str(item["contractId"])
            clog = self.log.bind(contract_id=cid)
            sent = time.monotonic()
            try:
                lock = await self.client.lock(cid)
            except Conflict:
                self.state.count("lock_conflicts")
                self.state.conflicts_by_contract[cid] += 1
                clog.debug("another agent holds the lock; skipped")
                continue
            except (Forbidden, NotFound, Gone, BadRequest) as exc:
                clog.warning("lock refused", error=str(exc))
                self.retry_after[cid] = now + self.settings.poll_interval_seconds * 4
                continue
            except ApiError as exc:
                clog.warning("lock failed; will retry at the next poll", error=str(exc))
                break
            self.state.count("locks_acquired")
            try:
                contract = Contract.from_api(item)
            except (KeyError, TypeError, ValueError) as exc:
                clog.error("pending contract has an unexpected shape; releasing it", error=str(exc))
                with contextlib.suppress(ApiError):
                    await self.client.unlock(cid)
                continue
            job = Job(contract=contract, log=clog, lease_expires=sent + self._lease_seconds(lock, sent),
                      first_lock=_first_lock(lock))
            self.jobs[cid] = job
            job.task = asyncio.create_task(self._run_job(job), name=f"job-{cid}")
        self._save_state(force=True)

    def _lease_seconds(self, lock: dict[str, Any], sent_monotonic: float) -> float:
        """Seconds the lease lasts from when the request was sent (the server's expiry if given)."""
        expires = lock.get("expiresAtNs") if isinstance(lock, dict) else None
        if isinstance(expires, (int, float)) and expires > 0:
            left = (expires - time.time_ns()) / 1e9 + (time.monotonic() - sent_monotonic)
            if 0 < left < 24 * 3600:
                return min(left, self.settings.lock_timeout_seconds)
        return self.settings.lock_timeout_seconds

    # -- one contract -------------------------------------------------------------------------------------

    def _work(self, job: Job) -> tuple[InstanceDetails, bool]:
        """In a worker thread: adopt an existing instance, else provision. (details, adopted)."""
        if not job.first_lock:  # someone held it before (maybe this agent, before a crash): adopt, not redo
            job.phase = "find"
            found = self.provisioner.find(job.contract.contract_id)
            if found is not None:
                return found, True
        if job.cancel.is_set():
            raise Cancelled("cancelled before provisioning started")
        job.phase = "provision"
        return self.provisioner.provision(job.contract, job.cancel), False

    async def _run_job(self, job: Job) -> None:
        cid = job.contract.contract_id
        job.log.info("provisioning", provisioner=self.settings.provisioner_type)
        renewer = asyncio.create_task(self._renew(job), name=f"renew-{cid}")
        details: InstanceDetails | None = None
        error: str | None = None
        adopted = False
        try:
            try:
                details, adopted = await self._in_thread(self._work, job)
            except Cancelled as exc:
                error = f"cancelled: {exc}"
            except ProvisionError as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - a driver bug must not kill the agent
                job.log.exception("driver raised an unexpected error")
                error = f"internal error in the {self.settings.provisioner_type} driver: {type(exc).__name__}: {exc}"
            finally:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
            await self._finish(job, details, error, adopted)
        finally:
            self.jobs.pop(cid, None)
            self._save_state(force=True)
            if self._wake:
                self._wake.set()  # poll at once when a job finishes

    async def _finish(self, job: Job, details: InstanceDetails | None, error: str | None, adopted: bool) -> None:
        cid = job.contract.contract_id
        if job.lost:
            self.state.count("lost_leases")
            if details is not None:
                job.log.warning("lease lost after the instance was made; asking the server whether it stays",
                                external_id=details.external_id)
                await self._settle_instance(cid, details.external_id, job.log)
            else:
                job.log.warning("lease lost; provisioning stopped and cleaned up; nothing reported")
            return
        if details is None and job.stopped_for_shutdown:
            self.state.count("cancelled_on_shutdown")
            job.log.info("cancelled by shutdown; releasing the lock", error=error)
            policy = RetryPolicy(attempts=1, budget_seconds=3) if self.forced else None
            try:
                await self.client.unlock(cid, policy_override=policy)
            except ApiError as exc:
                job.log.warning("could not release the lock; it expires by itself", error=str(exc))
            return
        if details is not None:
            entry = Entry(contract_id=cid, kind="provisioned", instance_details=details.to_api())
            if adopted:
                self.state.count("adopted")
                job.log.info("adopted an instance made before a restart", external_id=details.external_id)
        else:
            entry = Entry(contract_id=cid, kind="failed", error_message=(error or "unknown error")[:2000])
        job.phase = "reporting"
        try:
            await self._in_thread(self.outbox.put, entry)
        except OSError as exc:  # disk full or read-only: the result is not durable, report it at once anyway
            job.log.error("could not write the result to the outbox; reporting it without a durable copy",
                          error=str(exc))
            self.state.count("outbox_write_errors")
        await self._deliver(entry, job.log)

    async def _settle_instance(self, cid: str, external_id: str, log: Any) -> None:
        """An instance this agent made for a contract it no longer holds: the server decides its fate.

        Removing it at once is not safe: in a cluster that several agents share, the agent that took the
        contract over may have adopted this very instance through find() and reported it, and it is then
        the contract's only instance. The server knows which instance it recorded, so the instance goes
        through reconcile (one instance, now); if the server cannot be asked, the periodic reconcile decides.
        """
        answer = await self._reconcile([{"externalId": external_id, "contractId": cid}], skip=set())
        if answer is None:
            log.warning("could not ask the server about the instance; the next reconcile decides",
                        external_id=external_id)
        elif any(str(k.get("externalId")) == external_id for k in answer.get("keep") or []):
            log.info("instance kept: the server records it for this contract, or another agent is still "
                     "provisioning the contract", external_id=external_id)

    def _renew_delay(self, job: Job) -> float:
        """Every lock_timeout/3, or sooner when the server's lease is shorter than the configured one."""
        left = job.lease_expires - time.monotonic()
        return max(0.1, min(self.settings.renew_interval_seconds, left / 3))

    async def _renew(self, job: Job) -> None:
        """Re-lock while the driver works; stop the driver when the server refuses, or when the lease ran
        out without a successful renewal (another agent may take the contract from then on)."""
        cid = job.contract.contract_id
        delay = self._renew_delay(job)
        while True:
            await asyncio.sleep(delay)
            sent = time.monotonic()
            try:
                lock = await self.client.lock(cid, policy="renew")
            except LEASE_REFUSED as exc:
                job.lost = True
                job.cancel.set()
                job.log.warning("lease refused by the server; stopping this contract", error=str(exc))
                return
            except ApiError as exc:
                self.state.count("renewal_errors")
                left = job.lease_expires - time.monotonic()
                if left <= 0:
                    job.lost = True
                    job.cancel.set()
                    job.log.warning("lease expired without a successful renewal; stopping this contract, "
                                    "another agent may take it now", error=str(exc))
                    return
                job.log.warning("lease renewal failed; still ours until the lease expires",
                                error=str(exc), lease_seconds_left=round(left, 1))
                delay = max(0.1, min(self.settings.renew_interval_seconds / 2, 5.0, left / 2))
                continue
            self.state.count("renewals")
            job.lease_expires = sent + self._lease_seconds(lock, sent)
            delay = self._renew_delay(job)

    # -- reporting ------------------------------------------------------------------------------------------

    async def _deliver(self, entry: Entry, log: Any = None) -> bool:
        """Report one outbox entry; True once the server acknowledged it (or it no longer applies)."""
        cid = entry.contract_id
        log = log or self.log.bind(contract_id=cid)
        if cid in self.delivering:
            return False
        self.delivering.add(cid)
        try:
            return await self._deliver_locked(entry, log, relocked=False)
        finally:
            self.delivering.discard(cid)

    async def _deliver_locked(self, entry: Entry, log: Any, *, relocked: bool) -> bool:
        cid = entry.contract_id
        try:
            if entry.kind == "provisioned":
                await self.client.report_provisioned(cid, entry.instance_details or {})
            else:
                await self.client.report_failed(cid, entry.error_message or "failed")
        except TRANSIENT as exc:
            self.state.count("report_errors")
            log.warning("report not delivered; kept in the outbox and resent", kind=entry.kind, error=str(exc))
            return False
        except (Forbidden, Conflict) as exc:
            if entry.kind == "failed":
                log.info("failure report refused (lock no longer ours); dropped", error=str(exc))
                await self._in_thread(self.outbox.done, cid)
                return True
            if not relocked:  # our lease ran out while the report waited: take it again if nobody else did
                try:
                    await self.client.lock(cid)
                except LEASE_REFUSED:
                    pass
                except ApiError as lock_exc:
                    log.warning("report refused and re-lock failed; kept in the outbox", error=str(lock_exc))
                    return False
                else:
                    return await self._deliver_locked(entry, log, relocked=True)
            external = (entry.instance_details or {}).get("externalId")
            self.state.count("lost_leases")
            log.warning("another agent took this contract while the report waited; asking the server whether "
                        "our instance stays", external_id=external, error=str(exc))
            await self._in_thread(self.outbox.done, cid)
            if external:
                await self._settle_instance(cid, str(external), log)
            return True
        except (NotFound, Gone) as exc:
            log.warning("contract no longer exists on the server; result dropped (reconcile cleans up)",
                        kind=entry.kind, error=str(exc))
            await self._in_thread(self.outbox.done, cid)
            return True
        except BadRequest as exc:
            log.error("server rejected the report as malformed; kept aside in the outbox", error=str(exc))
            rejected = self.outbox.path_for(cid)
            with contextlib.suppress(OSError):
                rejected.rename(rejected.with_suffix(".rejected"))
            return True
        await self._in_thread(self.outbox.done, cid)
        self.state.count("reports_sent")
        if entry.kind == "provisioned":
            self.state.count("provisioned")
            self.failures.pop(cid, None)
            details = entry.instance_details or {}
            log.info("provisioned", external_id=details.get("externalId"), ip_address=details.get("ipAddress"))
        else:
            self.state.count("failed")
            fails = self.failures[cid] = self.failures.get(cid, 0) + 1
            backoff = min(self.settings.poll_interval_seconds * (2 ** fails), 600.0)
            self.retry_after[cid] = time.monotonic() + backoff
            log.warning("provisioning failed; reported", error=entry.error_message, retry_in_seconds=backoff)
        return True

    async def _flush_outbox(self) -> int:
        """Try to deliver every entry not owned by a running job; the number still left."""
        for entry in await self._in_thread(self.outbox.entries):
            if entry.contract_id in self.jobs:
                continue
            await self._deliver(entry)
        return len(self.outbox)

    async def _outbox_loop(self) -> None:
        assert self._outbox_wake is not None
        delay = 2.0
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox_wake.wait(), timeout=delay)
            self._outbox_wake.clear()
            try:
                left = await self._flush_outbox()
            except Exception:  # noqa: BLE001 - a bad pass must not end resending for good
                self.log.exception("outbox pass failed; trying again")
                left = 1
            delay = 2.0 if left == 0 else min(delay * 2, 10.0)

    # -- reconcile -------------------------------------------------------------------------------------------

    async def reconcile_once(self) -> None:
        try:
            instances = await self._in_thread(self.provisioner.list_instances)
        except Exception as exc:  # noqa: BLE001
            self.state.count("reconcile_errors")
            self.log.warning("reconcile: the driver could not list its instances", error=str(exc))
            return
        running = [{"externalId": i.external_id, "contractId": i.contract_id} for i in instances]
        busy = set(self.jobs) | {e.contract_id for e in await self._in_thread(self.outbox.entries)}
        await self._reconcile(running, skip=busy)

    async def _reconcile(self, running: list[dict[str, Any]], *, skip: set[str]) -> dict[str, Any] | None:
        """Ask the server which of `running` to remove and remove them (never those of contracts in `skip`,
        which this agent is still provisioning or reporting). The server's answer, or None if it was not asked."""
        try:
            answer = await self.client.reconcile(running)
        except ApiError as exc:
            self.state.count("reconcile_errors")
            self.log.warning("reconcile failed", error=str(exc))
            return None
        self.state.count("reconciles")
        for cid in list(self.pending_terminated):  # terminated earlier, report not yet acknowledged
            try:
                await self.client.report_terminated(cid)
            except (Conflict, NotFound, Gone):
                self.pending_terminated.discard(cid)  # no longer applies
            except ApiError:
                continue
            self.pending_terminated.discard(cid)
        for item in answer.get("terminate") or []:
            external = str(item.get("externalId", ""))
            cid = item.get("contractId")
            if not external or (cid is not None and str(cid) in skip):
                continue
            clog = self.log.bind(contract_id=cid, external_id=external)
            try:
                await self._in_thread(self.provisioner.terminate, external)
            except Exception as exc:  # noqa: BLE001
                self.state.count("reconcile_errors")
                clog.warning("reconcile: could not terminate", error=str(exc))
                continue
            self.state.count("terminated")
            clog.info("terminated", reason=item.get("reason"))
            if cid is not None and item.get("reason") == "cancelled":  # the contract's instance is gone: say so
                try:
                    await self.client.report_terminated(str(cid))
                except (Conflict, NotFound, Gone) as exc:
                    clog.info("reconcile: terminated report no longer applies", error=str(exc))
                except ApiError as exc:
                    clog.warning("reconcile: terminated, but the report failed (resent next reconcile)",
                                 error=str(exc))
                    self.pending_terminated.add(str(cid))
        unknown = answer.get("unknown") or []
        if unknown:
            self.log.info("reconcile: instances the server does not know", count=len(unknown),
                          external_ids=[u.get("externalId") for u in unknown][:20])
        return answer

    async def _reconcile_loop(self) -> None:
        interval = self.settings.reconcile_interval_seconds
        await asyncio.sleep(min(30.0, interval) * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.reconcile_once()
            except Exception:  # noqa: BLE001 - try again at the next interval
                self.state.count("reconcile_errors")
                self.log.exception("reconcile pass failed")
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
