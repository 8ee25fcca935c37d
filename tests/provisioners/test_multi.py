"""Several provisioners per agent (provisioners/multi.py, `[provisioners.<name>]` in dc_agent/config.py): routing by
name then type, the owner of each instance, merged lists, combined health and capabilities, config errors that name
the table. The drivers are real: the example script (in two directories) and the manual driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dc_agent import config as cfg
from dc_agent.errors import ConfigFileError
from provisioners import ConfigError, capabilities
from provisioners.base import Contract, ProvisionError
from provisioners.inventory import merge
from provisioners.multi import MultiProvisioner, describe, members_of

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "script-provisioner.py"
PROVIDER = "ab" * 32


def script_table(directory: Path, *actions: str) -> dict:
    keys = {"provision": "command", "list": "list_command", "terminate": "terminate_command", "find": "find_command",
            "health": "health_command"}
    return {keys[a]: [sys.executable, str(EXAMPLE), a, "--dir", str(directory), "--delay", "0"]
            for a in ("provision", *actions)}


def toml_value(value: object) -> str:
    return json.dumps(value)  # lists of strings and plain strings are the same in TOML


def write_config(tmp_path: Path, extra: str = "", *, a_actions: tuple[str, ...] = ("list", "terminate", "find", "health"),
                 b_actions: tuple[str, ...] = ("list", "terminate", "find")) -> Path:
    a = script_table(tmp_path / "a", *a_actions)
    b = script_table(tmp_path / "b", *b_actions)
    lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in a.items())
    other = "\n".join(f"{k} = {toml_value(v)}" for k, v in b.items())
    path = tmp_path / "config.toml"
    path.write_text(f"""
[agent]
api_url = "https://api.example"
provider_pubkey = "{PROVIDER}"

[provisioner]
type = "script"
[provisioner.script]
{lines}

[provisioners.other]
type = "script"
{other}

[provisioners.hand]
type = "manual"
{extra}
""")
    return path


def made_in(directory: Path) -> list[str]:
    return sorted(json.loads(p.read_text())["contractId"] for p in directory.glob("*.json"))


@pytest.fixture
def multi(tmp_path: Path) -> MultiProvisioner:
    driver = cfg.load_driver(cfg.load(write_config(tmp_path), environ={}))
    assert isinstance(driver, MultiProvisioner)
    return driver


class TestRouting:
    def test_name_then_type_then_default(self, tmp_path, multi):
        """provisionerType names a provisioner first, else a type (the default first), else the default."""
        assert [m.name for m in multi.members] == ["script", "other", "hand"]
        route = {t: multi.route(Contract("c", provisioner_type=t)).name
                 for t in ("other", "script", "manual", "hand", "kvm", None)}
        assert route == {"other": "other", "script": "script", "manual": "hand", "hand": "hand", "kvm": "script",
                         None: "script"}

    def test_each_contract_is_made_by_its_driver(self, tmp_path, multi):
        """A contract for `other` lands in other's directory, an unknown type in the default's."""
        multi.provision(Contract("c-other", provisioner_type="other"), threading.Event())
        multi.provision(Contract("c-unknown", provisioner_type="kvm"), threading.Event())
        assert made_in(tmp_path / "b") == ["c-other"] and made_in(tmp_path / "a") == ["c-unknown"]


class TestOwners:
    def test_list_merges_and_terminate_goes_to_the_owner(self, tmp_path, multi):
        """list_instances holds both drivers' instances; terminate removes each from its own driver only."""
        a = multi.provision(Contract("c-a"), threading.Event())
        b = multi.provision(Contract("c-b", provisioner_type="other"), threading.Event())
        fresh = cfg.load_driver(cfg.load(tmp_path / "config.toml", environ={}))  # learns owners from lists
        assert sorted(i.contract_id for i in fresh.list_instances()) == ["c-a", "c-b"]
        fresh.terminate(b.external_id)
        assert made_in(tmp_path / "b") == [] and made_in(tmp_path / "a") == ["c-a"]
        fresh.terminate(a.external_id)
        assert made_in(tmp_path / "a") == []

    def test_owner_survives_a_restart_without_a_list(self, tmp_path):
        """A driver that cannot list still gets its instance's calls after a restart (owners.json)."""
        path = write_config(tmp_path, b_actions=("terminate", "health"))
        first = cfg.load_driver(cfg.load(path, environ={}))
        made = first.provision(Contract("c-b", provisioner_type="other"), threading.Event())
        again = cfg.load_driver(cfg.load(path, environ={}))
        assert again.check_instance(made.external_id).status == "healthy"
        again.terminate(made.external_id)
        assert made_in(tmp_path / "b") == []

    def test_an_instance_nobody_lists_is_never_handed_to_a_driver(self, tmp_path, multi):
        """Unknown ids: terminate counts them as gone, health is unknown, stop is refused; nothing is removed."""
        multi.provision(Contract("c-a"), threading.Event())
        multi.terminate("demo-c-zzz@nowhere")
        assert made_in(tmp_path / "a") == ["c-a"]
        assert multi.check_instance("demo-c-zzz@nowhere").status == "unknown"
        with pytest.raises(Exception, match="none of this agent's provisioners"):
            multi.stop("demo-c-zzz@nowhere")

    def test_find_asks_every_driver(self, tmp_path, multi):
        """find has only the contract id: the instance is found whichever driver made it."""
        made = multi.provision(Contract("c-b", provisioner_type="other"), threading.Event())
        fresh = cfg.load_driver(cfg.load(tmp_path / "config.toml", environ={}))
        found = fresh.find("c-b")
        assert found is not None and found.external_id == made.external_id and fresh.find("c-none") is None


class TestCombined:
    def test_capabilities_are_the_union(self, multi):
        """health comes from the default's health_command; the manual and other drivers add none."""
        assert capabilities(multi) == ["provision", "health"]
        assert [capabilities(m.driver) for m in multi.members] == [["provision", "health"], ["provision"],
                                                                     ["provision"]]

    def test_health_names_the_broken_one(self, tmp_path):
        """One provisioner with a missing program makes the whole unhealthy, and describe says which."""
        path = write_config(tmp_path)
        text = path.read_text().replace(f'"{sys.executable}", "{EXAMPLE}", "provision", "--dir", "{tmp_path / "b"}"',
                                        '"/nonexistent/provision"', 1)
        path.write_text(text)
        driver = cfg.load_driver(cfg.load(path, environ={}))
        health = driver.health()
        assert not health.ok and health.checks["other"] is False and health.checks["script"] is True
        assert "other (script): command: /nonexistent/provision" in health.detail
        items = {i["name"]: i for i in describe(driver)}
        assert (items["other"]["healthy"], items["script"]["healthy"], items["hand"]["default"]) == (False, True, False)

    def test_one_provisioner_is_the_plain_driver(self, tmp_path):
        """Without [provisioners.*] the agent gets the driver itself, described as one provisioner."""
        path = tmp_path / "config.toml"
        path.write_text(f'[agent]\napi_url = "https://a.example"\nprovider_pubkey = "{PROVIDER}"\n'
                        '[provisioner]\ntype = "manual"\n')
        driver = cfg.load_driver(cfg.load(path, environ={}))
        assert type(driver).__name__ == "ManualProvisioner"
        assert [(m.name, m.type, m.default) for m in members_of(driver)] == [("manual", "manual", True)]

    def test_inventory_merge(self):
        """CPU and memory of the default, the arrays of all without repeats."""
        a = {"cpuCores": 8, "cpuThreads": 16, "memoryTotalMb": 64000, "memoryAvailableMb": 1000,
             "storagePools": [{"name": "local"}], "gpuDevices": [], "templates": [{"vmid": 9000, "name": "deb"}]}
        b = {"cpuCores": 2, "cpuThreads": 2, "memoryTotalMb": 1, "memoryAvailableMb": 1,
             "storagePools": [{"name": "local"}, {"name": "docker"}], "gpuDevices": [{"pciId": "0000:01:00.0"}],
             "templates": [{"vmid": 0, "name": "busybox"}]}
        out = merge(a, [b])
        assert (out["cpuCores"], out["memoryTotalMb"]) == (8, 64000)
        assert [p["name"] for p in out["storagePools"]] == ["local", "docker"]
        assert len(out["gpuDevices"]) == 1 and len(out["templates"]) == 2
        assert merge(None, [b])["cpuCores"] == 2 and merge(None, []) is None


class TestConfigErrors:
    def test_unknown_type_names_the_table(self, tmp_path):
        path = write_config(tmp_path, '[provisioners.gpu]\ntype = "kvm"\n')
        with pytest.raises(ConfigFileError, match=r"\[provisioners.gpu\] type = 'kvm' is not a known driver"):
            cfg.load(path, environ={})

    def test_missing_type(self, tmp_path):
        path = write_config(tmp_path, '[provisioners.gpu]\nnode = "pve1"\n')
        with pytest.raises(ConfigFileError, match=r"\[provisioners.gpu\] type is missing"):
            cfg.load(path, environ={})

    def test_the_default_type_is_not_a_name(self, tmp_path):
        path = write_config(tmp_path, '[provisioners.script]\ntype = "manual"\n')
        with pytest.raises(ConfigFileError, match="already names the default provisioner"):
            cfg.load(path, environ={})

    def test_a_driver_error_names_the_named_table(self, tmp_path):
        """The script driver's own message says [provisioner.script]; it is rewritten to the table it came from."""
        path = write_config(tmp_path, '[provisioners.gpu]\ntype = "script"\ncommand = ["true"]\ncomand = ["x"]\n')
        settings = cfg.load(path, environ={})
        with pytest.raises(ConfigError, match=r"^\[provisioners.gpu\] comand is not a known key"):
            cfg.load_driver(settings)

    def test_state_dirs_are_apart(self, tmp_path):
        """Each named provisioner keeps its state in <state_dir>/provisioners/<name>."""
        tables = cfg.provisioner_tables(cfg.load(write_config(tmp_path), environ={}))
        assert [(t.name, Path(t.settings["state_dir"]).relative_to(tmp_path / "state")) for t in tables] == [
            ("script", Path("script")), ("other", Path("provisioners/other")), ("hand", Path("provisioners/hand"))]
        assert [t.table for t in tables] == ["[provisioner.script]", "[provisioners.other]", "[provisioners.hand]"]


def test_no_provisioner_is_refused():
    with pytest.raises(ValueError):
        MultiProvisioner([])


def test_status_lists_each_provisioner_with_its_health(tmp_path):
    """`dc-agent status`: the provisioner line plus one line per provisioner; a broken one fails the whole."""
    path = write_config(tmp_path, '[provisioners.box]\ntype = "script"\ncommand = ["/nonexistent/provision"]\n')
    agent = Path(sys.executable).parent / "dc-agent"
    res = subprocess.run([str(agent), "status", "--config", str(path), "--json"], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("DC_AGENT_")})
    report = json.loads(res.stdout)
    assert res.returncode == 1 and report["checks"]["provisioner"] is False
    assert [(p["name"], p["type"], p["healthy"]) for p in report["provisioners"]] == [
        ("script", "script", True), ("other", "script", True), ("hand", "manual", True), ("box", "script", False)]
    assert any("provisioner box: command: /nonexistent/provision" in p for p in report["problems"])
    table = subprocess.run([str(agent), "status", "--config", str(path)], capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in os.environ.items() if not k.startswith("DC_AGENT_")}).stdout
    assert any(line.startswith("FAIL   box") and "script:" in line for line in table.splitlines()), table
    assert any(line.startswith("ok     script") and "(default)" in line for line in table.splitlines()), table


def test_find_survives_one_broken_driver_but_never_reports_nothing_on_a_failure(tmp_path):
    """A failing driver's find does not hide an instance another driver has; with none found it is an error
    (provisioning again could make a second instance in the driver that could not answer)."""
    path = write_config(tmp_path)
    text = path.read_text().replace(f'"find", "--dir", "{tmp_path / "b"}"', '"nonexistent-action"', 1)
    path.write_text(text)
    driver = cfg.load_driver(cfg.load(path, environ={}))
    made = driver.provision(Contract("c-a"), threading.Event())
    fresh = cfg.load_driver(cfg.load(path, environ={}))
    assert fresh.find("c-a").external_id == made.external_id
    with pytest.raises(ProvisionError):
        fresh.find("c-none")
