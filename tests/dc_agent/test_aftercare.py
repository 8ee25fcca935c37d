"""Aftercare decisions against a scriptable API stand-in (the Agent and its rooms are real): a password reset
survives a restart with the same password and is applied once, pause stops and a later keep starts, a
driver without the capability gives a failure report (or, where the API has none, backs off), health is
reported for the instances the agent looks after, and repeated failures back off up to an hour."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from dc_agent import errors
from dc_agent.actions import ActionQueue
from dc_agent.api.base import PASSWORD, SSH_KEY, ActionRequest, ReconcileAnswer, ReconcileItem
from provisioners.base import InstanceHealth, Unsupported
from tests.dc_agent.test_loop import Driver, FakeApi, make_agent


class LifecycleApi(FakeApi):
    def __init__(self) -> None:
        super().__init__([])
        self.requests: dict[str, list[ActionRequest]] = {PASSWORD: [], SSH_KEY: []}
        self.reports: list[tuple[str, str | None, str | None]] = []
        self.report_errors: list[BaseException] = []
        self.health: list[tuple[str, str]] = []
        self.answer = ReconcileAnswer()
        self.accepts_failures = True

    async def pending_actions(self, kind: str) -> list[ActionRequest]:
        return list(self.requests[kind])

    async def report_action(self, request: ActionRequest, *, password: str | None = None,
                            error: str | None = None) -> bool:
        if self.report_errors:
            raise self.report_errors.pop(0)
        if error is not None and not self.accepts_failures:
            return False
        self.reports.append((request.request_id, password, error))
        self.requests[request.kind] = [r for r in self.requests[request.kind] if r.request_id != request.request_id]
        return True

    async def report_health(self, cid: str, health: InstanceHealth, checked_at_ns: int) -> None:
        self.health.append((cid, health.status))

    async def reconcile(self, running: list[Any]) -> ReconcileAnswer:
        return self.answer


class LifecycleDriver(Driver):
    def __init__(self) -> None:
        super().__init__()
        self.passwords: list[tuple[str, str]] = []
        self.keys: list[tuple[str, str, str | None]] = []
        self.state: dict[str, str] = {}
        self.lock = threading.Lock()

    def set_password(self, external_id: str, password: str, username: str | None = None) -> None:
        with self.lock:
            self.passwords.append((external_id, password))

    def rotate_ssh_key(self, external_id: str, new_key: str, old_key: str | None = None) -> None:
        self.keys.append((external_id, new_key, old_key))

    def stop(self, external_id: str) -> None:
        self.state[external_id] = "stopped"

    def start(self, external_id: str) -> None:
        self.state[external_id] = "running"

    def check_instance(self, external_id: str) -> InstanceHealth:
        return InstanceHealth("healthy" if self.state.get(external_id, "running") == "running" else "unhealthy")


def reset(cid: str = "c1") -> ActionRequest:
    return ActionRequest(kind=PASSWORD, contract_id=cid, request_id="r1", recipient_public_key="00" * 32)


def test_a_reset_applied_but_not_acknowledged_is_reported_after_a_restart_with_the_same_password(tmp_path: Path):
    api, driver = LifecycleApi(), LifecycleDriver()
    api.requests[PASSWORD] = [reset()]
    api.report_errors = [errors.Unreachable("PUT password", None, "down")]
    first = make_agent(tmp_path, api, driver)
    first.registry.record("c1", "vm-c1")
    asyncio.run(first.aftercare.actions_once())
    assert len(driver.passwords) == 1 and api.reports == []  # applied, not acknowledged
    (entry,) = ActionQueue(first.settings.state_dir).entries()
    assert entry.applied and (tmp_path / "state" / "actions").stat().st_mode & 0o077 == 0

    second = make_agent(tmp_path, api, driver)  # a restart: new process, same state dir
    asyncio.run(second.aftercare.actions_once())
    assert len(driver.passwords) == 1, "the reset was done again"
    assert api.reports == [("r1", driver.passwords[0][1], None)]
    assert ActionQueue(second.settings.state_dir).entries() == []


def test_an_unfinished_reset_is_redone_with_the_same_password(tmp_path: Path):
    """Crash between writing the request and the driver call: the retry uses the stored password."""
    api, driver = LifecycleApi(), LifecycleDriver()
    queue = ActionQueue(tmp_path / "state")
    stored = queue.add(reset())
    agent = make_agent(tmp_path, api, driver)
    agent.registry.record("c1", "vm-c1")
    asyncio.run(agent.aftercare.actions_once())
    assert driver.passwords == [("vm-c1", stored.password)]
    assert api.reports == [("r1", stored.password, None)]


def test_a_driver_that_cannot_reset_reports_a_failure_once(tmp_path: Path):
    api = LifecycleApi()
    api.requests[PASSWORD] = [reset()]
    agent = make_agent(tmp_path, api, Driver())  # the base driver: no lifecycle at all
    agent.registry.record("c1", "vm-c1")
    asyncio.run(agent.aftercare.actions_once())
    assert len(api.reports) == 1 and api.reports[0][2] and "cannot reset a password" in api.reports[0][2]
    asyncio.run(agent.aftercare.actions_once())
    assert len(api.reports) == 1


def test_where_the_api_takes_no_failure_report_the_request_backs_off(tmp_path: Path):
    api = LifecycleApi()
    api.accepts_failures = False
    api.requests[SSH_KEY] = [ActionRequest(kind=SSH_KEY, contract_id="c1", request_id="k1", new_key="ssh-ed25519 A")]
    agent = make_agent(tmp_path, api, Driver())
    agent.registry.record("c1", "vm-c1")
    asyncio.run(agent.aftercare.actions_once())
    (key,) = agent.aftercare.next_try
    first_wait = agent.aftercare.next_try[key]
    asyncio.run(agent.aftercare.actions_once())  # still backing off: nothing new happens
    assert agent.aftercare.next_try[key] == first_wait and api.reports == []


def test_key_rotation_removes_the_key_the_contract_was_provisioned_with(tmp_path: Path):
    api, driver = LifecycleApi(), LifecycleDriver()
    api.requests[SSH_KEY] = [ActionRequest(kind=SSH_KEY, contract_id="c1", request_id="k1", new_key="ssh-ed25519 NEW")]
    agent = make_agent(tmp_path, api, driver)
    agent.registry.record("c1", "vm-c1", ssh_key="ssh-ed25519 OLD")
    asyncio.run(agent.aftercare.actions_once())
    assert driver.keys == [("vm-c1", "ssh-ed25519 NEW", "ssh-ed25519 OLD")]
    assert agent.registry.get("c1")["sshKey"] == "ssh-ed25519 NEW"


def test_pause_stops_keep_starts_and_nothing_is_destroyed(tmp_path: Path):
    api, driver = LifecycleApi(), LifecycleDriver()
    agent = make_agent(tmp_path, api, driver)
    running = [ReconcileItem("vm-c1", "c1")]
    from provisioners.base import Instance

    api.answer = ReconcileAnswer(pause=[ReconcileItem("vm-c1", "c1", "paused")])
    asyncio.run(agent.reconciler.reconcile([Instance("vm-c1", "c1")], skip=set()))
    assert driver.state == {"vm-c1": "stopped"} and driver.terminated == []
    assert agent.registry.get("c1")["pausedByAgent"] is True
    asyncio.run(agent.aftercare.check_all())
    assert api.health == []  # a paused instance is not health-checked
    api.answer = ReconcileAnswer(keep=running)
    asyncio.run(agent.reconciler.reconcile([Instance("vm-c1", "c1")], skip=set()))
    assert driver.state == {"vm-c1": "running"} and agent.registry.get("c1")["pausedByAgent"] is False
    asyncio.run(agent.aftercare.check_all())
    assert api.health == [("c1", "healthy")]


def test_a_driver_that_cannot_pause_leaves_the_instance_alone(tmp_path: Path):
    class NoPause(Driver):
        def stop(self, external_id: str) -> None:
            raise Unsupported("the test driver cannot stop (pause) an instance")

    from provisioners.base import Instance

    api, driver = LifecycleApi(), NoPause()
    agent = make_agent(tmp_path, api, driver)
    api.answer = ReconcileAnswer(pause=[ReconcileItem("vm-c1", "c1", "paused")])
    asyncio.run(agent.reconciler.reconcile([Instance("vm-c1", "c1")], skip=set()))
    assert driver.terminated == [] and (agent.registry.get("c1") or {}).get("pausedByAgent") is not True


def test_failures_back_off_exponentially_up_to_an_hour(tmp_path: Path):
    agent = make_agent(tmp_path, LifecycleApi(), Driver(), poll_interval_seconds=30, max_consecutive_failures=5)
    waits = [agent.failure_backoff(n) for n in range(1, 14)]
    assert waits[:4] == [30] * 4  # the first failures are retried at the normal pace
    assert waits[4:8] == [60, 120, 240, 480]
    assert waits[-1] == 3600 and max(waits) == 3600


def test_metrics_endpoint_reads_the_agent_state(tmp_path: Path):
    """metrics_listen serves the agent's counters, gauges and the duration histogram on loopback."""
    import httpx

    agent = make_agent(tmp_path, LifecycleApi(), Driver(), metrics_listen="127.0.0.1:0")
    agent._start_metrics()
    try:
        assert agent.metrics is not None
        agent.state.count("renewals", 3)
        agent.metrics.observe("provisioned", 4.2)
        port = agent.metrics._server.server_address[1]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "dc_agent_renewals_total 3.0" in text
        assert "dc_agent_outbox_backlog 0.0" in text
        assert 'dc_agent_provisioning_seconds_count{result="provisioned"} 1.0' in text
    finally:
        agent.metrics.close()
