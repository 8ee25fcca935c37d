"""The run loop's decisions, against an in-process stand-in for pool_api (the server is the fake here,
the Agent is real): lease renewal and loss, durable reporting, 409s, adoption, drain on stop."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dc_agent import errors, log
from dc_agent.api.base import HeartbeatAnswer, HeartbeatInfo, Lease, Offer, ReconcileAnswer, ReconcileItem
from dc_agent.config import Settings
from dc_agent.loop import Agent
from dc_agent.outbox import Entry, Outbox
from dc_agent.state import AgentState
from provisioners.base import Cancelled, Contract, Health, Instance, InstanceDetails

PK = "ab" * 32


class FakeApi:
    """The agent's API interface (dc_agent.api.base.AgentApi) with scriptable answers; records every call."""

    dialect = "fake"
    failures_are_final = False

    def __init__(self, pending: list[str], agent_pubkey: str = "cd" * 32) -> None:
        self.agent_pubkey = agent_pubkey
        self.offered = [{"contractId": cid, "lockedByMe": False} for cid in pending]
        self.calls: list[tuple[str, str]] = []
        self.lock_answers: dict[str, list[Any]] = {}   # per contract: exceptions / "ok", consumed in order
        self.report_answers: list[Any] = []
        self.provisioned: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, str] = {}
        self.doomed: set[str] = set()  # external ids the server's reconcile says to terminate
        self.reconciled: list[list[dict[str, Any]]] = []
        self.track_first_lock = False  # answer firstLockedAtNs as pool_api does (older servers do not)
        self.first_locked: dict[str, int] = {}

    def _next(self, queue: list[Any]) -> None:
        if queue:
            answer = queue.pop(0)
            if isinstance(answer, BaseException):
                raise answer

    async def aclose(self) -> None:
        pass

    async def heartbeat(self, info: HeartbeatInfo, **_: Any) -> HeartbeatAnswer:
        self.calls.append(("heartbeat", ""))
        return HeartbeatAnswer(next_heartbeat_seconds=1)

    async def pending(self) -> list[Offer]:
        self.calls.append(("pending", ""))
        done = set(self.provisioned)
        return [Offer(c["contractId"], c["lockedByMe"], Contract.from_api(c)) for c in self.offered
                if c["contractId"] not in done]

    async def lock(self, cid: str, *, renew: bool = False) -> Lease:
        self.calls.append(("lock", cid))
        self._next(self.lock_answers.setdefault(cid, []))
        now = time.time_ns()
        first = self.first_locked.setdefault(cid, now) if self.track_first_lock else None
        return Lease(expires_at_ns=None, first_lock=first == now)

    async def unlock(self, cid: str, **_: Any) -> None:
        self.calls.append(("unlock", cid))

    async def started(self, cid: str) -> None:
        self.calls.append(("started", cid))

    async def report_provisioned(self, cid: str, details: dict[str, Any]) -> None:
        self.calls.append(("provisioned", cid))
        self._next(self.report_answers)
        self.provisioned[cid] = details

    async def report_failed(self, cid: str, message: str) -> None:
        self.calls.append(("failed", cid))
        self._next(self.report_answers)
        self.failed[cid] = message

    async def reconcile(self, running: list[Instance]) -> ReconcileAnswer:
        self.calls.append(("reconcile", ""))
        self.reconciled.append([{"externalId": r.external_id, "contractId": r.contract_id} for r in running])
        return ReconcileAnswer(
            keep=[ReconcileItem(r.external_id, r.contract_id) for r in running if r.external_id not in self.doomed],
            terminate=[ReconcileItem(r.external_id, r.contract_id, "duplicate-instance") for r in running
                       if r.external_id in self.doomed])

    async def report_terminated(self, cid: str) -> None:
        self.calls.append(("terminated", cid))

    def count(self, name: str, cid: str | None = None) -> int:
        return sum(1 for n, c in self.calls if n == name and (cid is None or c == cid))


class Driver:
    """A provisioner that holds each contract until `release` is set (or it is cancelled)."""

    name = "script"

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.provisioned: list[str] = []
        self.cleaned: list[str] = []
        self.terminated: list[str] = []
        self.found: dict[str, InstanceDetails] = {}
        self.started = threading.Event()

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        self.started.set()
        if cancel.wait(self.hold):
            self.cleaned.append(contract.contract_id)
            raise Cancelled("stopped")
        self.provisioned.append(contract.contract_id)
        return InstanceDetails(external_id=f"vm-{contract.contract_id}", provisioner="script", ip_address="192.0.2.1")

    def find(self, contract_id: str) -> InstanceDetails | None:
        return self.found.get(contract_id)

    def list_instances(self) -> list[Instance]:
        return []

    def terminate(self, external_id: str) -> None:
        self.terminated.append(external_id)

    def health(self) -> Health:
        return Health(ok=True, detail="ok")


class Stubborn(Driver):
    """A driver past the point of no return: it ignores cancel and finishes its instance."""

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        cancel.wait(self.hold)
        self.provisioned.append(contract.contract_id)
        return InstanceDetails(external_id=f"vm-{contract.contract_id}", provisioner="script")


def make_agent(tmp_path: Path, api: FakeApi, driver: Driver, **overrides: Any) -> Agent:
    options = dict(poll_interval_seconds=0.05, lock_timeout_seconds=0.3, shutdown_grace_seconds=0.2,
                   reconcile_interval_seconds=300, max_concurrent=2)
    options.update(overrides)
    settings = Settings(config_path=tmp_path / "config.toml", api_url="http://pool.test", provider_pubkey=PK,
                        pool_id="pool", private_key_path=tmp_path / "agent.key", state_dir=tmp_path / "state",
                        provisioner_type="script", **options)
    log.configure("debug", json_output=True, stream=io.StringIO())
    return Agent(settings, api, driver, outbox=Outbox(settings.state_dir), state=AgentState(settings.state_dir),
                 log=log.get())


def run_once(agent: Agent) -> int:
    return asyncio.run(agent.run(once=True))


class TestLease:
    def test_renewal_refused_cancels_the_driver_and_reports_nothing(self, tmp_path):
        """A 409 on renewal means another agent may take over: stop, clean up, report nothing."""
        api = FakeApi(["c1"])
        api.lock_answers["c1"] = ["ok", errors.Conflict("POST lock", 409, "held by another agent")]
        driver = Driver(hold=30)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1)
        run_once(agent)
        assert driver.cleaned == ["c1"] and driver.provisioned == []
        assert api.count("provisioned") == 0 and api.count("failed") == 0 and api.count("unlock") == 0
        assert agent.state.counters["lost_leases"] == 1
        assert len(agent.outbox) == 0

    def test_renewal_network_errors_within_the_lease_do_not_lose_it(self, tmp_path):
        """Renewals that fail on the network while the lease still runs keep the job going."""
        api = FakeApi(["c1"])
        api.lock_answers["c1"] = ["ok", *[errors.Unreachable("POST lock", None, "refused")] * 2]
        driver = Driver(hold=1.0)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1)
        assert run_once(agent) == 0
        assert driver.provisioned == ["c1"] and driver.cleaned == []
        assert "c1" in api.provisioned
        assert agent.state.counters["renewal_errors"] == 2
        assert agent.state.counters["lost_leases"] == 0

    def test_a_lease_that_expires_without_a_renewal_is_lost(self, tmp_path):
        """Once the lease ran out with every renewal failing, another agent may take the contract: stop,
        clean up, report nothing (FIELD-NOTES: a failed renewal is a lost lease once the expiry passed)."""
        api = FakeApi(["c1"])
        api.lock_answers["c1"] = ["ok", *[errors.Unreachable("POST lock", None, "refused")] * 50]
        driver = Driver(hold=30)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1)
        run_once(agent)
        assert driver.cleaned == ["c1"] and driver.provisioned == []
        assert api.count("provisioned") == 0 and api.count("failed") == 0
        assert agent.state.counters["lost_leases"] == 1

    def test_renewals_follow_a_server_lease_shorter_than_configured(self, tmp_path):
        """The server's expiresAtNs wins over lock_timeout_seconds: a 0.3 s server lease with a 30 s
        configured one is still renewed several times a second, so it never lapses."""
        api = FakeApi(["c1"])
        real_lock = api.lock

        async def short_lease(cid: str, *, renew: bool = False) -> Lease:
            await real_lock(cid, renew=renew)
            return Lease(expires_at_ns=time.time_ns() + 300_000_000)

        api.lock = short_lease  # type: ignore[method-assign]
        agent = make_agent(tmp_path, api, Driver(hold=1.0), max_concurrent=1, lock_timeout_seconds=30)
        run_once(agent)
        assert "c1" in api.provisioned
        assert api.count("lock", "c1") >= 5  # about every 0.1 s over 1 s, not every 10 s

    def test_the_lock_is_renewed_while_provisioning(self, tmp_path):
        """Re-lock about every lock_timeout/3 while the driver works."""
        api = FakeApi(["c1"])
        agent = make_agent(tmp_path, api, Driver(hold=1.0), max_concurrent=1)
        run_once(agent)
        assert api.count("lock", "c1") >= 5  # 1 s / 0.1 s, minus scheduling slack
        assert agent.state.counters["renewals"] >= 4


class TestReporting:
    def test_a_result_refused_after_an_expired_lease_is_relocked_and_resent(self, tmp_path):
        """403 on report, re-lock succeeds (nobody took it): report again."""
        api = FakeApi(["c1"])
        api.report_answers = [errors.Forbidden("POST provisioned", 403, "not the lock holder")]
        agent = make_agent(tmp_path, api, Driver())
        run_once(agent)
        assert api.count("provisioned", "c1") == 2 and "c1" in api.provisioned
        assert len(agent.outbox) == 0

    def test_a_result_whose_contract_another_agent_took_is_removed_when_the_server_says_so(self, tmp_path):
        """403 on report and 409 on re-lock: the server (reconcile) says our instance is a duplicate: remove it."""
        api = FakeApi(["c1"])
        api.report_answers = [errors.Forbidden("POST provisioned", 403, "not the lock holder")]
        api.lock_answers["c1"] = ["ok", errors.Conflict("POST lock", 409, "held")]
        api.doomed = {"vm-c1"}
        driver = Driver()
        agent = make_agent(tmp_path, api, driver, max_concurrent=1)
        run_once(agent)
        assert api.reconciled == [[{"externalId": "vm-c1", "contractId": "c1"}]]
        assert driver.terminated == ["vm-c1"]
        assert "c1" not in api.provisioned and len(agent.outbox) == 0

    def test_an_instance_another_agent_adopted_is_never_removed(self, tmp_path):
        """403 on report and 409 on re-lock, but the agent that took over adopted this very instance (a shared
        cluster) and the server keeps it: removing it would leave the contract without its VM."""
        api = FakeApi(["c1"])
        api.report_answers = [errors.Forbidden("POST provisioned", 403, "not the lock holder")]
        api.lock_answers["c1"] = ["ok", errors.Conflict("POST lock", 409, "held")]
        driver = Driver()
        agent = make_agent(tmp_path, api, driver, max_concurrent=1)
        run_once(agent)
        assert api.count("reconcile") == 1
        assert driver.terminated == []
        assert len(agent.outbox) == 0 and agent.state.counters["lost_leases"] == 1

    def test_a_lease_lost_after_the_instance_was_made_asks_the_server(self, tmp_path):
        """Renewal refused while a driver that cannot stop finishes anyway: nothing is reported, and the
        instance goes only if the server's reconcile says so."""
        api = FakeApi(["c1", "c2"])
        for cid in ("c1", "c2"):
            api.lock_answers[cid] = ["ok", errors.Conflict("POST lock", 409, "held by another agent")]
        api.doomed = {"vm-c1"}
        agent = make_agent(tmp_path, api, Stubborn(hold=0.5), max_concurrent=2)
        run_once(agent)
        assert api.count("provisioned") == 0 and api.count("failed") == 0
        assert sorted(r[0]["contractId"] for r in api.reconciled) == ["c1", "c2"]
        assert agent.provisioner.terminated == ["vm-c1"]  # c2's instance is kept: the server records it
        assert agent.state.counters["lost_leases"] == 2

    def test_unacknowledged_result_survives_a_restart_and_is_not_provisioned_twice(self, tmp_path):
        """API down at report time: the result stays on disk; the next agent process sends it."""
        api = FakeApi(["c1"])
        api.report_answers = [errors.Unreachable("POST provisioned", None, "refused")]
        driver = Driver()
        first = make_agent(tmp_path, api, driver)
        assert run_once(first) == 1  # unhealthy: a result is still waiting
        assert Outbox(tmp_path / "state").get("c1").kind == "provisioned"
        second = make_agent(tmp_path, api, driver)
        assert run_once(second) == 0
        assert "c1" in api.provisioned and driver.provisioned == ["c1"]
        assert len(Outbox(tmp_path / "state")) == 0

    def test_outbox_entry_is_written_before_the_report(self, tmp_path):
        """At the moment the server hears of the result, it is already durable on disk."""
        api = FakeApi(["c1"])
        seen: list[bool] = []
        original = api.report_provisioned

        async def checking(cid: str, details: dict[str, Any]) -> None:
            seen.append(Outbox(tmp_path / "state").has(cid))
            await original(cid, details)

        api.report_provisioned = checking  # type: ignore[method-assign]
        run_once(make_agent(tmp_path, api, Driver()))
        assert seen == [True]

    def test_failures_are_reported_and_not_retried_at_once(self, tmp_path):
        """A driver failure is reported as failed; the contract waits before another try."""
        api = FakeApi(["c1"])

        class Failing(Driver):
            def provision(self, contract, cancel):
                from provisioners.base import ProvisionError

                raise ProvisionError("no capacity")

        agent = make_agent(tmp_path, api, Failing())
        run_once(agent)
        assert api.failed == {"c1": "no capacity"}
        assert agent.retry_after["c1"] > 0


class TestPolling:
    def test_409_is_skipped_quietly_and_counted(self, tmp_path):
        """A contract another agent locked is skipped; the free slots go to the next ones."""
        api = FakeApi(["c1", "c2", "c3"])
        api.lock_answers["c1"] = [errors.Conflict("POST lock", 409, "held")]
        api.lock_answers["c2"] = []
        api.lock_answers["c3"] = []
        agent = make_agent(tmp_path, api, Driver(), max_concurrent=2)
        run_once(agent)
        assert set(api.provisioned) == {"c2", "c3"}
        assert agent.state.counters["lock_conflicts"] == 1
        assert agent.state.conflicts_by_contract == {"c1": 1}

    def test_an_existing_instance_is_adopted_not_made_twice(self, tmp_path):
        """find() answering means a crash came between making and reporting: report that instance."""
        api = FakeApi(["c1"])
        driver = Driver()
        driver.found["c1"] = InstanceDetails(external_id="vm-old", provisioner="script")
        agent = make_agent(tmp_path, api, driver)
        run_once(agent)
        assert driver.provisioned == [] and api.provisioned["c1"]["externalId"] == "vm-old"
        assert agent.state.counters["adopted"] == 1

    def test_the_first_lock_ever_skips_the_adoption_check(self, tmp_path):
        """firstLockedAtNs == lockedAtNs: nobody held the contract before, so no instance can exist and
        find() (a process start for a script driver, an API scan for Proxmox) is skipped."""
        api = FakeApi(["c1", "c2"])
        api.track_first_lock = True
        api.first_locked["c2"] = 1  # c2 was held before (say by an agent that crashed): look first
        driver = Driver()
        driver.found["c1"] = driver.found["c2"] = InstanceDetails(external_id="vm-old", provisioner="script")
        asked: list[str] = []
        real_find = driver.find
        driver.find = lambda cid: asked.append(cid) or real_find(cid)  # type: ignore[method-assign]
        agent = make_agent(tmp_path, api, driver, max_concurrent=2)
        run_once(agent)
        assert asked == ["c2"]
        assert driver.provisioned == ["c1"] and api.provisioned["c2"]["externalId"] == "vm-old"

    def test_agents_order_candidates_differently(self, tmp_path):
        """Ordering by hash(agent key, contract) spreads agents over the queue; own locks come first."""
        ids = [f"c{i}" for i in range(20)]
        a = make_agent(tmp_path / "a", FakeApi(ids, agent_pubkey="01" * 32), Driver())
        b = make_agent(tmp_path / "b", FakeApi(ids, agent_pubkey="02" * 32), Driver())
        assert sorted(ids, key=a.dispatcher.rank) != sorted(ids, key=b.dispatcher.rank)
        assert sorted(ids, key=a.dispatcher.rank)[0] != sorted(ids, key=b.dispatcher.rank)[0] or \
               sorted(ids, key=a.dispatcher.rank)[1] != sorted(ids, key=b.dispatcher.rank)[1]


class TestShutdown:
    def _run_until_started(self, agent: Agent, driver: Driver, stops: int) -> tuple[int, float]:
        async def scenario() -> tuple[int, float]:
            task = asyncio.create_task(agent.run())
            while not driver.started.is_set():
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            began = loop.time()
            for _ in range(stops):
                agent.request_stop("test")
            code = await asyncio.wait_for(task, 30)
            return code, loop.time() - began

        return asyncio.run(scenario())

    def test_stop_waits_the_grace_then_cancels_and_releases_the_lock(self, tmp_path):
        """Past shutdown_grace_seconds the driver is cancelled, the lock released, nothing reported."""
        api = FakeApi(["c1"])
        driver = Driver(hold=30)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1, shutdown_grace_seconds=0.5)
        code, took = self._run_until_started(agent, driver, stops=1)
        assert code == 0 and 0.4 < took < 10
        assert driver.cleaned == ["c1"] and api.count("unlock", "c1") == 1
        assert api.count("provisioned") == 0 and api.count("failed") == 0
        assert agent.state.counters["cancelled_on_shutdown"] == 1

    def test_a_job_that_finishes_within_the_grace_is_reported(self, tmp_path):
        """Draining lets a running contract finish and report."""
        api = FakeApi(["c1"])
        driver = Driver(hold=0.3)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1, shutdown_grace_seconds=10)
        code, _ = self._run_until_started(agent, driver, stops=1)
        assert code == 0 and "c1" in api.provisioned and api.count("unlock") == 0

    def test_second_stop_cancels_at_once(self, tmp_path):
        """A second signal does not wait for the grace period."""
        api = FakeApi(["c1"])
        driver = Driver(hold=30)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1, shutdown_grace_seconds=60)
        code, took = self._run_until_started(agent, driver, stops=2)
        assert code == 1 and took < 10
        assert driver.cleaned == ["c1"] and api.count("unlock", "c1") == 1

    def test_heartbeats_continue_while_draining(self, tmp_path):
        """A draining agent keeps heartbeating, so it never looks lost."""
        api = FakeApi(["c1"])
        driver = Driver(hold=30)
        agent = make_agent(tmp_path, api, driver, max_concurrent=1, shutdown_grace_seconds=2.5)

        async def scenario() -> int:
            task = asyncio.create_task(agent.run())
            while not driver.started.is_set():
                await asyncio.sleep(0.01)
            agent.request_stop("test")
            before = api.count("heartbeat")
            await asyncio.wait_for(task, 30)
            return api.count("heartbeat") - before

        assert asyncio.run(scenario()) >= 2


class TestSystemdNotify:
    def test_ready_watchdog_status_and_stopping_reach_notify_socket(self, tmp_path, monkeypatch):
        """Under systemd the loop sends READY=1 at start, WATCHDOG=1 at the interval, STATUS, STOPPING=1."""
        import os
        import socket

        path = str(tmp_path / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        api = FakeApi([])
        agent = make_agent(tmp_path, api, Driver())
        messages: list[str] = []

        async def scenario() -> None:
            task = asyncio.create_task(agent.run())
            while sum(m == "WATCHDOG=1" for m in messages) < 3:
                await asyncio.sleep(0.05)
                while True:
                    try:
                        messages.append(sock.recv(4096).decode())
                    except BlockingIOError:
                        break
            agent.request_stop("test")
            await asyncio.wait_for(task, 30)

        asyncio.run(scenario())
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        sock.close()
        assert messages[0] == "READY=1"
        assert any(m.startswith("STATUS=API ok") for m in messages), messages
        assert "STOPPING=1" in messages


class ClaimApi(FakeApi):
    """A server that offers claim: each call hands out what is free, as pool_api's claim does."""

    def __init__(self, pending: list[str]) -> None:
        super().__init__(pending)
        self.claims: list[dict[str, Any]] = []
        self.held: set[str] = set()

    async def heartbeat(self, info: HeartbeatInfo, **_: Any) -> HeartbeatAnswer:
        self.calls.append(("heartbeat", ""))
        return HeartbeatAnswer(next_heartbeat_seconds=1, claim=True)

    async def claim(self, max_contracts: int, wait_seconds: float, *, free_slots: int,
                    exclude: list[str]) -> list[tuple[Offer, Lease]]:
        self.claims.append({"max": max_contracts, "wait": wait_seconds, "exclude": list(exclude)})
        out = []
        for c in self.offered:
            cid = c["contractId"]
            if cid in self.provisioned or cid in exclude or cid in self.held or len(out) >= max_contracts:
                continue
            self.held.add(cid)
            out.append((Offer(cid, False, Contract.from_api(c)), Lease(first_lock=True)))
        return out


class TestClaim:
    def test_claim_takes_up_to_the_free_slots_and_skips_the_pending_list(self, tmp_path):
        """With claim offered, one call locks as many contracts as there are free slots; no pending list,
        no lock calls, no conflicts."""
        api = ClaimApi(["c1", "c2", "c3"])
        agent = make_agent(tmp_path, api, Driver(), max_concurrent=2)
        agent.claim_supported = True
        assert run_once(agent) == 0
        assert sorted(api.provisioned) == ["c1", "c2"]
        assert api.claims[0]["max"] == 2 and api.claims[0]["wait"] == 0
        assert api.count("pending") == 0 and api.count("lock") == 0  # renewals would show as lock calls

    def test_contracts_backing_off_are_excluded_from_the_claim(self, tmp_path):
        """A contract that failed recently is not claimed again before its backoff ends."""
        api = ClaimApi(["c1", "c2"])
        agent = make_agent(tmp_path, api, Driver(), max_concurrent=2)
        agent.claim_supported = True
        agent.retry_after["c1"] = time.monotonic() + 3600
        run_once(agent)
        assert api.claims[0]["exclude"] == ["c1"]
        assert list(api.provisioned) == ["c2"]

    def test_the_heartbeat_switches_dispatch_to_claim(self, tmp_path):
        api = ClaimApi([])
        agent = make_agent(tmp_path, api, Driver())

        async def beat() -> bool:
            agent.wake = asyncio.Event()
            await agent.heartbeats.once()
            return agent.claim_supported
        assert asyncio.run(beat()) is True
