"""After provisioning: health checks, pause and resume, password resets and SSH key rotations.

* Health: every `health_interval_seconds` each instance in the registry (:mod:`dc_agent.instances`) is
  checked through the driver and the result reported (paused instances and contracts still being
  provisioned are skipped).
* Pause/resume: reconcile hands over the server's `pause` list (stop the instance, keep its disk) and its
  `keep` list (start an instance this agent stopped for a pause). Nothing is ever destroyed for a pause.
* Tenant actions: every `actions_interval_seconds` the pending lists are read; each request goes through
  the durable queue (:mod:`dc_agent.actions`) before the driver is called, so it runs once and is reported
  once, across restarts.
* A driver that cannot do something (`Unsupported`) gives one clear log line and, where the API can carry
  it, a failure report; repeated failures back off exponentially (cap one hour).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from dc_agent.actions import ActionEntry, ActionQueue
from dc_agent.api.base import PASSWORD, SSH_KEY, ReconcileItem
from dc_agent.daemon.delivery import TRANSIENT
from dc_agent.errors import ApiError
from dc_agent.instances import InstanceRegistry
from provisioners.base import InstanceHealth, ProvisionError, Unsupported

if TYPE_CHECKING:
    from dc_agent.loop import Agent

BACKOFF_CAP_SECONDS = 3600.0


def driver_call(driver: Any, method: str, what: str) -> Any:
    """`driver.method`, or a function raising Unsupported for a driver written before the lifecycle existed
    (the Provisioner protocol does not require these methods; provisioners.base.Lifecycle has them)."""
    fn = getattr(driver, method, None)
    if fn is not None:
        return fn

    def unsupported(*_: Any) -> Any:
        raise Unsupported(f"the {getattr(driver, 'name', 'configured')} driver cannot {what}")
    return unsupported


class Aftercare:
    def __init__(self, agent: "Agent", registry: InstanceRegistry, queue: ActionQueue) -> None:
        self.agent = agent
        self.registry = registry
        self.queue = queue
        self.said: set[tuple[str, str]] = set()  # (what, contract) logged once
        self.next_try: dict[str, float] = {}  # action key -> monotonic time
        self.pending_errors: dict[str, bool] = {}
        self.unreported_failures: dict[str, int] = {}  # action key -> failures the API could not be told of

    def _once(self, what: str, cid: str, log: Any, message: str, **fields: Any) -> None:
        if (what, cid) not in self.said:
            self.said.add((what, cid))
            log.warning(message, **fields)

    def backoff(self, failures: int) -> float:
        """No wait for the first `max_consecutive_failures` failures, then doubling from the action
        interval up to one hour."""
        limit = self.agent.settings.max_consecutive_failures
        if failures < limit:
            return self.agent.settings.actions_interval_seconds
        return min(self.agent.settings.actions_interval_seconds * 2 ** (failures - limit + 1), BACKOFF_CAP_SECONDS)

    # -- health ----------------------------------------------------------------------------------------

    async def check_all(self) -> int:
        """Check and report every instance this agent looks after; the number reported."""
        a = self.agent
        reported = 0
        for cid, entry in self.registry.items():
            if cid in a.jobs or entry.get("pausedByAgent"):
                continue
            clog = a.log.bind(contract_id=cid, external_id=entry["externalId"])
            started = time.monotonic()
            try:
                check = driver_call(a.provisioner, "check_instance", "check health")
                health = await a.in_thread(check, entry["externalId"])
            except Exception as exc:  # noqa: BLE001 - a check that fails says "unknown", it does not stop the rest
                health = InstanceHealth("unknown", f"health check failed: {type(exc).__name__}: {exc}"[:300])
            if health.latency_ms is None:
                health = InstanceHealth(health.status, health.detail, round((time.monotonic() - started) * 1000, 1))
            try:
                await a.client.report_health(cid, health, time.time_ns())
            except ApiError as exc:
                a.state.count("health_report_errors")
                clog.warning("health report not delivered", error=str(exc))
                continue
            reported += 1
            a.state.count("health_reports")
            if health.status != "healthy":
                clog.info("instance not healthy", status=health.status, detail=health.detail)
        return reported

    async def health_loop(self) -> None:
        interval = self.agent.settings.health_interval_seconds
        await asyncio.sleep(min(30.0, interval) * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001
                self.agent.log.exception("health pass failed")
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    # -- pause and resume (from reconcile) -------------------------------------------------------------

    async def pause(self, item: ReconcileItem) -> None:
        a = self.agent
        cid = item.contract_id
        if cid is None or cid in a.jobs:
            return
        entry = self.registry.get(cid)
        if entry and entry.get("pausedByAgent"):
            return
        clog = a.log.bind(contract_id=cid, external_id=item.external_id)
        try:
            await a.in_thread(driver_call(a.provisioner, "stop", "stop (pause) an instance"), item.external_id)
        except Unsupported as exc:
            self._once("pause", cid, clog, "the server asks to pause this instance, but the driver cannot: "
                       "left running", error=str(exc))
            return
        except Exception as exc:  # noqa: BLE001
            a.state.count("pause_errors")
            clog.warning("could not stop the instance for a pause; trying again at the next reconcile",
                         error=str(exc))
            return
        self.registry.record(cid, item.external_id)
        self.registry.update(cid, pausedByAgent=True)
        a.state.count("paused")
        clog.info("paused: instance stopped, disk kept", reason=item.reason)

    async def kept(self, item: ReconcileItem) -> None:
        """The server keeps this instance: start it if this agent stopped it for a pause; look after it."""
        a = self.agent
        cid = item.contract_id
        if cid is None or cid in a.jobs:
            return
        entry = self.registry.get(cid)
        if entry is None:
            self.registry.record(cid, item.external_id)  # e.g. provisioned before an import or a lost state dir
            return
        if not entry.get("pausedByAgent") or entry.get("externalId") != item.external_id:
            return
        clog = a.log.bind(contract_id=cid, external_id=item.external_id)
        try:
            await a.in_thread(driver_call(a.provisioner, "start", "start (resume) an instance"), item.external_id)
        except Exception as exc:  # noqa: BLE001
            a.state.count("pause_errors")
            clog.warning("could not start the instance after its pause ended; trying again at the next reconcile",
                         error=str(exc))
            return
        self.registry.update(cid, pausedByAgent=False)
        a.state.count("resumed")
        clog.info("resumed: instance started again")

    def terminated(self, cid: str | None, external_id: str) -> None:
        if cid is not None and (self.registry.get(cid) or {}).get("externalId") == external_id:
            self.registry.forget(cid)

    # -- tenant actions --------------------------------------------------------------------------------

    async def _external_id(self, entry: ActionEntry) -> str | None:
        req = entry.request
        if entry.external_id:
            return entry.external_id
        known = req.external_id or (self.registry.get(req.contract_id) or {}).get("externalId")
        if known:
            return str(known)
        found = await self.agent.in_thread(self.agent.provisioner.find, req.contract_id)
        return found.external_id if found is not None else None

    async def _apply(self, entry: ActionEntry, log: Any) -> None:
        a = self.agent
        req = entry.request
        external = await self._external_id(entry)
        if external is None:
            raise ProvisionError("no instance of this contract is known to this agent's driver", retryable=False)
        entry.external_id = external
        if req.kind == PASSWORD:
            assert entry.password is not None
            await a.in_thread(driver_call(a.provisioner, "set_password", "reset a password"), external,
                              entry.password, req.username)
        else:
            if not req.new_key:
                raise ProvisionError("the rotation request carries no new key", retryable=False)
            old = req.old_key or (self.registry.get(req.contract_id) or {}).get("sshKey")
            await a.in_thread(driver_call(a.provisioner, "rotate_ssh_key", "rotate SSH keys"), external,
                              req.new_key, old)

    async def carry_out(self, entry: ActionEntry) -> bool:
        """Apply (unless already applied) and report one action; True when it is finished with."""
        a = self.agent
        req = entry.request
        what = "password reset" if req.kind == PASSWORD else "SSH key rotation"
        log = a.log.bind(contract_id=req.contract_id, action=req.kind, request_id=req.request_id)
        if not entry.applied and entry.error is None:
            entry.attempts += 1
            try:
                await self._apply(entry, log)
            except ProvisionError as exc:
                entry.error = str(exc) or type(exc).__name__
                a.state.count("action_errors")
                log.warning(f"{what} failed", error=entry.error, attempt=entry.attempts)
                if getattr(exc, "retryable", True) and entry.attempts < a.settings.max_consecutive_failures:
                    await a.in_thread(self.queue.save, entry)
                    entry.error = None  # try again at a later pass (same password)
                    self.next_try[entry.key] = time.monotonic() + self.backoff(entry.attempts)
                    return False
            except Exception as exc:  # noqa: BLE001 - a driver bug: report it as a failure, do not stop the loop
                entry.error = f"internal error in the driver: {type(exc).__name__}: {exc}"
                log.exception(f"{what}: the driver raised an unexpected error")
            else:
                entry.applied = True
                log.info(f"{what} applied", external_id=entry.external_id)
            await a.in_thread(self.queue.save, entry)
        try:
            if entry.applied:
                accepted = await a.client.report_action(req, password=entry.password)
            else:
                accepted = await a.client.report_action(req, error=entry.error)
        except TRANSIENT as exc:
            log.warning(f"{what} not reported yet; kept and resent", error=str(exc))
            self.next_try[entry.key] = time.monotonic() + a.settings.actions_interval_seconds
            return False
        except (ApiError, ValueError) as exc:
            log.warning(f"{what}: the server refused the report; dropped", error=str(exc))
            accepted = True
        if not accepted:  # the API cannot take a failure report: the request stays listed there; back off
            fails = self.unreported_failures[entry.key] = self.unreported_failures.get(entry.key, 0) + 1
            self.next_try[entry.key] = time.monotonic() + self.backoff(a.settings.max_consecutive_failures + fails - 1)
            self._once("unreportable", entry.key, log, f"{what} failed and this API has no failure report; "
                       "the request stays pending on the server and is retried later", error=entry.error)
            await a.in_thread(self.queue.done, entry)
            return True
        await a.in_thread(self.queue.done, entry)
        self.unreported_failures.pop(entry.key, None)
        if entry.applied:
            a.state.count("actions_done")
            if req.kind == SSH_KEY and req.new_key:
                self.registry.update(req.contract_id, sshKey=req.new_key)
            log.info(f"{what} reported")
        return True

    async def actions_once(self) -> None:
        a = self.agent
        now = time.monotonic()
        queued = await a.in_thread(self.queue.entries)
        for entry in queued:  # unfinished from before (a restart): same password, report what was done
            if self.next_try.get(entry.key, 0) <= now and entry.request.contract_id not in a.jobs:
                await self.carry_out(entry)
        for kind in (PASSWORD, SSH_KEY):
            try:
                requests = await a.client.pending_actions(kind)
            except ApiError as exc:
                if not self.pending_errors.get(kind):
                    a.log.warning("could not read pending tenant requests", action=kind, error=str(exc))
                self.pending_errors[kind] = True
                continue
            self.pending_errors[kind] = False
            for req in requests:
                entry = await a.in_thread(self.queue.add, req)
                if self.next_try.get(entry.key, 0) > time.monotonic() or req.contract_id in a.jobs:
                    continue
                await self.carry_out(entry)

    async def actions_loop(self) -> None:
        interval = self.agent.settings.actions_interval_seconds
        await asyncio.sleep(min(5.0, interval) * random.uniform(0.2, 1.0))
        while True:
            try:
                await self.actions_once()
            except Exception:  # noqa: BLE001
                self.agent.log.exception("tenant action pass failed")
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
