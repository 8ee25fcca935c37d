"""The daemon: :class:`Agent` holds what its rooms share and wires them (see :mod:`dc_agent.daemon`).

    heartbeat ─┐
    dispatch ──┼─ job ── lease          (one task per held contract, renewing while the driver works)
               │    └── delivery        (outbox: durable until the server acknowledges)
    reconcile ─┴─ aftercare             (health, pause/resume, password resets, key rotations)
    shutdown: drain on the first signal, cancel on the second

The rooms talk to the server only through `client` (:class:`dc_agent.api.AgentApi`, whichever dialect), and
to the instances only through `provisioner` (:class:`provisioners.Provisioner`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from dc_agent import __version__
from dc_agent.api.base import AgentApi
from dc_agent.actions import ActionQueue
from dc_agent.config import Settings
from dc_agent.daemon.aftercare import Aftercare
from dc_agent.daemon.delivery import Delivery
from dc_agent.daemon.dispatch import Dispatcher
from dc_agent.daemon.heartbeat import Heartbeats
from dc_agent.daemon.job import Job, JobRunner
from dc_agent.daemon.lease import LeaseKeeper
from dc_agent.daemon.reconcile import Reconciler
from dc_agent.daemon.shutdown import Shutdown
from dc_agent.instances import InstanceRegistry
from dc_agent.outbox import Outbox
from dc_agent.state import AgentState
from provisioners.base import Contract, Provisioner


class Agent:
    def __init__(self, settings: Settings, client: AgentApi, provisioner: Provisioner, *,
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
        self.stopping = False
        self.forced = False
        self.heartbeat_ok: bool | None = None
        self.poll_ok: bool | None = None
        self.claim_supported = False  # the server's heartbeat offers `claim` (dispatch without polling)
        self.unfinished_threads = False
        self.wake: asyncio.Event | None = None
        self.stop_event: asyncio.Event | None = None
        self.force_event: asyncio.Event | None = None
        self.outbox_wake: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_concurrent + 4, thread_name_prefix="driver")
        self._background: list[asyncio.Task[None]] = []
        self.heartbeats = Heartbeats(self)
        self.dispatcher = Dispatcher(self)
        self.leases = LeaseKeeper(self)
        self.runner = JobRunner(self)
        self.delivery = Delivery(self)
        self.reconciler = Reconciler(self)
        self.registry = InstanceRegistry(settings.state_dir)
        self.aftercare = Aftercare(self, self.registry, ActionQueue(settings.state_dir))
        self.shutdown = Shutdown(self)
        self.metrics: Any = None  # dc_agent.metrics.AgentMetrics when [agent] metrics_listen is set

    # -- shared helpers -------------------------------------------------------------------------------

    @staticmethod
    def sd() -> Any:
        """dc_agent.sdnotify (systemd notifications; every call a no-op outside systemd)."""
        from dc_agent import sdnotify

        return sdnotify

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def free_slots(self) -> int:
        return self.settings.max_concurrent - len(self.jobs)

    def failure_backoff(self, failures: int) -> float:
        """Seconds before a contract that failed `failures` times in a row is tried again: the poll
        interval for the first `max_consecutive_failures`, then doubling up to one hour."""
        limit, base = self.settings.max_consecutive_failures, self.settings.poll_interval_seconds
        return base if failures < limit else min(base * 2 ** (failures - limit + 1), 3600.0)

    def wake_poll(self) -> None:
        if self.wake:
            self.wake.set()

    def wake_outbox(self) -> None:
        if self.outbox_wake:
            self.outbox_wake.set()

    def start_job(self, contract: Contract, log: Any, lease_expires: float, *, first_lock: bool) -> Job:
        job = Job(contract=contract, log=log, lease_expires=lease_expires, first_lock=first_lock)
        self.jobs[contract.contract_id] = job
        job.task = asyncio.create_task(self.runner.run(job), name=f"job-{contract.contract_id}")
        return job

    def save_state(self, force: bool = False) -> None:
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

    async def until_stopped(self, work: Any) -> Any:
        """Run `work` unless a stop request comes first: then it is cancelled (a poll in flight must not
        hold up a stop; a lock it may have taken lapses by itself). `work`'s result, or None."""
        assert self.stop_event is not None
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, stop, return_exceptions=True)
        return task.result() if task.done() and not task.cancelled() and task.exception() is None else None

    # -- the public surface ------------------------------------------------------------------------------

    def request_stop(self, why: str = "stop requested") -> None:
        """First call: drain. Second call: cancel running contracts now. Safe to call any number of times."""
        self.shutdown.request(why)

    async def poll_once(self) -> None:
        await self.dispatcher.poll_once()

    async def reconcile_once(self) -> None:
        await self.reconciler.once()

    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or one cycle with `once`); the exit status for the process."""
        self.wake, self.stop_event, self.force_event, self.outbox_wake = (
            asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event())
        self.state.agent_pubkey = self.pubkey
        self.state.version = __version__
        self.state.label = self.settings.label
        self.state.dialect = self.client.dialect
        self.shutdown.install_signals()
        self._start_metrics()
        await self._recover_orphans()
        self.log.info("agent started", version=__version__, pool_id=self.settings.pool_id,
                      api_dialect=self.client.dialect, provisioner=self.settings.provisioner_type,
                      max_concurrent=self.settings.max_concurrent, outbox_backlog=len(self.outbox),
                      agent_pubkey=self.pubkey)
        try:
            if once:
                return await self._run_once()
            self.sd().notify_ready()
            heartbeat = asyncio.create_task(self.heartbeats.loop(), name="heartbeat")
            self._background = [
                asyncio.create_task(self.delivery.loop(), name="outbox"),
                asyncio.create_task(self.reconciler.loop(), name="reconcile"),
                asyncio.create_task(self._housekeeping_loop(), name="housekeeping"),
                asyncio.create_task(self.aftercare.health_loop(), name="health"),
                asyncio.create_task(self.aftercare.actions_loop(), name="actions"),
            ]
            await self.dispatcher.loop()
            await self.shutdown.drain()
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            heartbeat.cancel()  # last: keep heartbeating while draining
            await asyncio.gather(heartbeat, return_exceptions=True)
            self.log.info("agent stopped", outbox_backlog=len(self.outbox), forced=self.forced)
            return 1 if self.forced else 0
        finally:
            self.save_state(force=True)
            if self.metrics is not None:
                self.metrics.close()
            self._executor.shutdown(wait=not self.unfinished_threads, cancel_futures=True)

    def _start_metrics(self) -> None:
        if not self.settings.metrics_listen:
            return
        from dc_agent.metrics import AgentMetrics

        metrics = AgentMetrics(self)
        try:
            host, port = metrics.serve(self.settings.metrics_listen)
        except OSError as exc:  # a busy port must not stop provisioning
            self.log.error("cannot serve metrics; running without them", listen=self.settings.metrics_listen,
                           error=str(exc))
            return
        self.metrics = metrics
        self.log.info("metrics served", url=f"http://{host}:{port}/metrics")

    async def _run_once(self) -> int:
        await self.heartbeats.once()
        await self.delivery.flush()
        if self.claim_supported:
            await self.dispatcher.claim_once(wait_seconds=0)
        else:
            await self.dispatcher.poll_once()
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
            stopped = await self.in_thread(recover)
        except Exception as exc:  # noqa: BLE001 - recovery is best effort
            self.log.warning("could not check for runs left by a previous agent process", error=str(exc))
            return
        for cid in stopped:
            self.log.warning("stopped a provisioning run left by a previous agent process; "
                             "the contract will be adopted or provisioned again", contract_id=cid)

    async def _housekeeping_loop(self) -> None:
        """Every second: status.json; at systemd's watchdog interval: WATCHDOG=1 (proof the loop runs)."""
        sd = self.sd()
        watchdog = sd.watchdog_interval_seconds()
        tick = min(1.0, watchdog) if watchdog else 1.0
        last_ping = float("-inf")
        while True:
            now = time.monotonic()
            if watchdog and now - last_ping >= watchdog:
                sd.notify_watchdog()
                last_ping = now
            self.save_state()
            await asyncio.sleep(tick)
