"""The manual driver: waits for an operator's result through the hand-off directory."""

from __future__ import annotations

import threading
import time

import pytest

from provisioners.base import Cancelled, ConfigError, Contract, ProvisionError
from provisioners.manual import HandoffDir, ManualProvisioner

CONTRACT = Contract(contract_id="c-7", cpu_cores=2, memory_mb=4096, requester_ssh_pubkey="ssh-ed25519 AAAA")


def start(driver: ManualProvisioner, cancel: threading.Event) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["details"] = driver.provision(CONTRACT, cancel)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 10
    while not driver.handoff.is_waiting(CONTRACT.contract_id):
        assert time.monotonic() < deadline, "the driver never announced the contract"
        time.sleep(0.01)
    return thread, outcome


class TestManual:
    def test_done_hands_the_machine_to_the_waiting_driver(self, tmp_path):
        """An operator's `done` becomes the instance details; the contract leaves the waiting list."""
        driver = ManualProvisioner({"state_dir": str(tmp_path)})
        thread, outcome = start(driver, threading.Event())
        waiting = HandoffDir(tmp_path).waiting()
        assert [w["contractId"] for w in waiting] == ["c-7"] and waiting[0]["contract"]["memoryMb"] == 4096
        HandoffDir(tmp_path).hand_result("c-7", {"outcome": "done", "instanceDetails": {
            "externalId": "rack3-u12", "ipAddress": "192.0.2.10", "sshPort": 2222}})
        thread.join(10)
        details = outcome["details"]
        assert (details.external_id, details.ip_address, details.ssh_port, details.provisioner) == \
               ("rack3-u12", "192.0.2.10", 2222, "manual")
        assert HandoffDir(tmp_path).waiting() == []
        assert [i.external_id for i in driver.list_instances()] == ["rack3-u12"]
        assert driver.find("c-7").external_id == "rack3-u12"

    def test_fail_raises_with_the_operators_reason(self, tmp_path):
        driver = ManualProvisioner({"state_dir": str(tmp_path)})
        thread, outcome = start(driver, threading.Event())
        HandoffDir(tmp_path).hand_result("c-7", {"outcome": "fail", "reason": "no such hardware in stock"})
        thread.join(10)
        assert isinstance(outcome["error"], ProvisionError)
        assert str(outcome["error"]) == "no such hardware in stock"

    def test_cancel_stops_waiting(self, tmp_path):
        """Lease lost or shutdown: the driver stops waiting and the contract leaves the list."""
        driver = ManualProvisioner({"state_dir": str(tmp_path)})
        cancel = threading.Event()
        thread, outcome = start(driver, cancel)
        cancel.set()
        thread.join(10)
        assert isinstance(outcome["error"], Cancelled)
        assert HandoffDir(tmp_path).waiting() == []

    def test_a_result_handed_in_while_the_agent_was_down_is_adopted(self, tmp_path):
        """find() picks up a `done` written while no agent was waiting."""
        HandoffDir(tmp_path).hand_result("c-7", {"outcome": "done", "instanceDetails": {"externalId": "m1",
                                                                                        "ipAddress": "192.0.2.3"}})
        assert ManualProvisioner({"state_dir": str(tmp_path)}).find("c-7").external_id == "m1"

    def test_terminate_asks_the_operator(self, tmp_path):
        driver = ManualProvisioner({"state_dir": str(tmp_path)})
        HandoffDir(tmp_path).hand_result("c-7", {"outcome": "done", "instanceDetails": {"externalId": "m1"}})
        driver.find("c-7")
        driver.terminate("m1")
        assert [r["externalId"] for r in HandoffDir(tmp_path).termination_requests()] == ["m1"]
        assert driver.list_instances() == []

    def test_timeout_hours_gives_the_contract_back(self, tmp_path):
        driver = ManualProvisioner({"state_dir": str(tmp_path), "timeout_hours": 0.0001})  # 0.36 s
        with pytest.raises(ProvisionError, match="timeout_hours"):
            driver.provision(CONTRACT, threading.Event())

    @pytest.mark.parametrize("settings, needle", [
        ({"timeout_hours": -1}, "[provisioner.manual] timeout_hours"),
        ({"hours": 1}, "[provisioner.manual] hours is not a known key"),
    ])
    def test_config_errors_name_the_key(self, settings, needle):
        with pytest.raises(ConfigError) as info:
            ManualProvisioner(settings)
        assert needle in str(info.value)
