"""The `script` driver: the provider's own program makes the instance.

Configuration (`[provisioner.script]`)::

    command = ["/usr/local/bin/provision-vm", "--flag"]   # argv, never a shell string (required)
    protocol = "native"                                    # or "rust": the Rust dc-agent 0.6's scripts
    timeout_seconds = 900                                  # the whole process group is killed after it
    terminate_command = ["/usr/local/bin/terminate-vm"]    # optional: reconcile and clean-up
    list_command = ["/usr/local/bin/list-vms"]             # optional: reconcile
    find_command = ["/usr/local/bin/find-vm"]              # optional: adopt after a crash
    health_command = ["/usr/local/bin/vm-health"]          # optional: instance health
    stop_command / start_command = [...]                   # optional: pause and resume (both needed)
    reset_password_command = [...]                         # optional: set a login password
    rotate_ssh_key_command = [...]                         # optional: replace an SSH key
    query_timeout_seconds = 60                             # timeout of every command but `command`
    kill_grace_seconds = 5                                 # SIGTERM, then SIGKILL after this
    env = { SOME_VAR = "value" }                           # extra environment for every command

Interface of the commands in the native protocol (each runs in its own session/process group, so a
timeout or a cancel kills the script and everything it started; JSON on stdin, never on the command line):

* `command`: the contract as JSON on stdin (PROTOCOL.md field names). On success it exits 0 and prints
  the instance details as one JSON object on stdout, e.g.
  `{"externalId": "vm-123", "ipAddress": "203.0.113.7", "sshPort": 22}` (if the script also prints
  progress, the object must be the last line). A non-zero exit reports `failed` with the last lines of
  stderr.
* `find_command`: `{"contractId": ...}` on stdin; prints the details of the instance already made for
  that contract, or `null` / nothing when there is none.
* `list_command`: prints a JSON array of `{"externalId": ..., "contractId": ...}`.
* `terminate_command`: `{"externalId": ...}` on stdin; exit 0 when the instance is gone (or was).
* `health_command`: `{"externalId"}`; prints `{"status": "healthy"|"unhealthy"|"unknown", "detail": "..."}`.
* `stop_command`, `start_command`: `{"externalId"}`; exit 0 once stopped (disk kept) / running.
* `reset_password_command`: `{"externalId", "username", "password"}` (username null: the image's user),
  on stdin only; the password is never on a command line, in the environment or in a message.
* `rotate_ssh_key_command`: `{"externalId", "newKey", "oldKey"}` (oldKey null: just add newKey).

With `protocol = "rust"`, `command`, `terminate_command` and `health_command` are the Rust agent's
`provision`, `terminate` and `health_check` scripts and speak its protocol (:mod:`provisioners.script_rust`);
every other command keeps the native protocol, since the Rust one has no such action. The Rust protocol
cannot look an instance up by contract, so without a (native) `find_command` nothing is adopted after a
crash: adoption then depends on the provision script itself returning the instance it already made for
a `contract_id` it is given again, and a run killed by a timeout leaves what it made to reconcile.

Every command also gets `DC_AGENT_ACTION` (provision, find, list, terminate, health, stop, start,
reset_password, rotate_ssh_key), `DC_AGENT_CONTRACT_ID` and `DC_AGENT_EXTERNAL_ID` where they apply.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from provisioners import script_rust
from provisioners.base import (
    HEALTH_STATUSES,
    Cancelled,
    ConfigError,
    Contract,
    Health,
    Instance,
    InstanceDetails,
    InstanceHealth,
    Lifecycle,
    ProvisionError,
    Unsupported,
)
from provisioners.process import (  # noqa: F401  (kill_group, DIE_WITH_AGENT: imported from here before)
    DIE_WITH_AGENT,
    NEVER,
    Finished,
    json_output,
    kill_group,
    last_lines,
    run_in_group,
)
from provisioners.script_runs import RunRecords

PROTOCOLS = ("native", "rust")
# Lifecycle method -> (the setting that enables it, DC_AGENT_ACTION, what it does, for messages)
LIFECYCLE = {
    "check_instance": ("health_command", "health", "check an instance's health"),
    "stop": ("stop_command", "stop", "stop (pause) an instance"),
    "start": ("start_command", "start", "start (resume) an instance"),
    "set_password": ("reset_password_command", "reset_password", "reset a password"),
    "rotate_ssh_key": ("rotate_ssh_key_command", "rotate_ssh_key", "rotate SSH keys"),
}
COMMAND_KEYS = ("command", "terminate_command", "list_command", "find_command",
                *(key for key, _action, _what in LIFECYCLE.values()))
KNOWN_KEYS = {*COMMAND_KEYS, "protocol", "timeout_seconds", "query_timeout_seconds", "kill_grace_seconds",
              "env", "state_dir"}
STDERR_TAIL_LINES = 10
MASK = "***"


class ScriptProvisioner(Lifecycle):
    """Runs the provider's commands; see the module docstring for their interface."""

    name = "script"
    command: list[str]
    terminate_command: list[str] | None
    list_command: list[str] | None
    find_command: list[str] | None
    health_command: list[str] | None
    stop_command: list[str] | None
    start_command: list[str] | None
    reset_password_command: list[str] | None
    rotate_ssh_key_command: list[str] | None

    def __init__(self, settings: dict[str, Any], config_path: Path | str | None = None) -> None:
        self._base = Path(config_path).expanduser().absolute().parent if config_path else Path.cwd()
        unknown = set(settings) - KNOWN_KEYS
        if unknown:
            raise ConfigError(f"[provisioner.script] {sorted(unknown)[0]} is not a known key; "
                              f"known keys: {', '.join(sorted(KNOWN_KEYS - {'state_dir'}))}")
        self.protocol = settings.get("protocol", "native")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"[provisioner.script] protocol = {self.protocol!r} is not known; use \"native\" "
                              "(dc-agent's) or \"rust\" (the scripts of the Rust dc-agent 0.6)")
        for key in COMMAND_KEYS:  # self.command, self.find_command, ... self.health_command, ...
            setattr(self, key, self._argv(settings, key, required=key == "command"))
        self.timeout_seconds = self._number(settings, "timeout_seconds", 900.0)
        self.query_timeout_seconds = self._number(settings, "query_timeout_seconds", 60.0)
        self.kill_grace_seconds = self._number(settings, "kill_grace_seconds", 5.0, allow_zero=True)
        env = settings.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ConfigError('[provisioner.script] env must be a table of strings, e.g. env = { REGION = "eu" }')
        self.extra_env = dict(env)
        state_dir = settings.get("state_dir")
        self.runs_dir = Path(state_dir) / "running" if state_dir else None
        self._runs = RunRecords(self.runs_dir, self.kill_grace_seconds) if self.runs_dir else None

    @property
    def rust(self) -> bool:
        return self.protocol == "rust"

    # -- configuration ----------------------------------------------------------------------------

    def _argv(self, settings: dict[str, Any], key: str, *, required: bool = False) -> list[str] | None:
        value = settings.get(key)
        example = f'{key} = ["/usr/local/bin/{key.replace("_command", "").replace("command", "provision")}-vm"]'
        if value is None or value == []:
            if required:
                raise ConfigError(f"[provisioner.script] {key} is not set; set it to the argv of your "
                                  f"script, e.g. {example}")
            return None
        if isinstance(value, str):
            raise ConfigError(f"[provisioner.script] {key} must be a list of strings (an argv, not a shell "
                              f"string), e.g. {example}")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"[provisioner.script] {key} must be a non-empty list of strings, e.g. {example}")
        argv = list(value)
        if "/" in argv[0] and not os.path.isabs(os.path.expanduser(argv[0])):
            argv[0] = str((self._base / argv[0]).resolve())
        return argv

    @staticmethod
    def _number(settings: dict[str, Any], key: str, default: float, allow_zero: bool = False) -> float:
        value = settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"[provisioner.script] {key} must be a number of seconds > 0 (got {value!r})")
        return float(value)

    # -- running a command ------------------------------------------------------------------------

    def _env(self, action: str, contract_id: str | None = None, external_id: str | None = None) -> dict[str, str]:
        env = {**os.environ, **self.extra_env, "DC_AGENT_ACTION": action}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # a script never talks to systemd for us
            env.pop(name, None)
        if self._runs is not None:  # marks every process of ours, children included, for recover_orphans
            env.update(self._runs.mark())
        if contract_id is not None:
            env["DC_AGENT_CONTRACT_ID"] = contract_id
        if external_id is not None:
            env["DC_AGENT_EXTERNAL_ID"] = external_id
        return env

    def _run(self, argv: list[str], payload: Any, *, action: str, timeout: float,
             cancel: threading.Event = NEVER, contract_id: str | None = None,
             external_id: str | None = None, check: bool = True) -> Finished:
        """Run `argv` in a new session with `payload` as JSON on stdin; with `check`, a non-zero exit raises."""
        import json

        record = None
        if action == "provision" and contract_id and self._runs is not None:
            runs = self._runs
            record = lambda pid: runs.record(contract_id, pid)  # noqa: E731
        result = run_in_group(argv, json.dumps(payload).encode(), env=self._env(action, contract_id, external_id),
                              cwd=str(self._base), timeout=timeout, kill_grace=self.kill_grace_seconds,
                              action=action, cancel=cancel, started=record)
        if check and result.returncode != 0:
            raise self._failed(argv, action, result.returncode, result.stderr)
        return result

    @staticmethod
    def _failed(argv: list[str], action: str, status: int, stderr: str) -> ProvisionError:
        what = os.path.basename(argv[0])
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        tail = last_lines(stderr, STDERR_TAIL_LINES)
        return ProvisionError(f"{what} ({action}) {how}" + (f": {tail}" if tail else " (no stderr)"))

    @staticmethod
    def _label(argv: list[str], action: str) -> str:
        return f"{os.path.basename(argv[0])} ({action})"

    def _details(self, argv: list[str], action: str, stdout: str) -> InstanceDetails:
        what = os.path.basename(argv[0])
        snippet = stdout.strip()[:200] or "nothing"
        try:
            data = json_output(stdout)
        except ValueError:
            raise ProvisionError(f"{what} ({action}) exited 0 but its stdout is not the expected JSON object "
                                 f"with the instance details (got: {snippet!r})") from None
        if not isinstance(data, dict) or not data.get("externalId"):
            raise ProvisionError(f"{what} ({action}) printed JSON without \"externalId\"; it must print the "
                                 f"instance details, e.g. {{\"externalId\": \"vm-1\", \"ipAddress\": ...}} "
                                 f"(got: {snippet!r})")
        try:
            details = InstanceDetails.from_api(data)
        except (TypeError, ValueError) as exc:
            raise ProvisionError(f"{what} ({action}) printed instance details that do not validate: {exc}") from None
        if not details.provisioner:
            details.provisioner = self.name
        return details

    # -- the Provisioner interface ----------------------------------------------------------------

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        payload = script_rust.provision_input(contract) if self.rust else contract.to_api()
        try:
            result = self._run(self.command, payload, action="provision", timeout=self.timeout_seconds,
                               cancel=cancel, contract_id=contract.contract_id, check=False)
        except ProvisionError:  # killed (timeout, cancel) or never started: it may have left something
            self._clean_up(contract.contract_id)
            raise
        if result.returncode != 0:
            raise self._failed(self.command, "provision", result.returncode, result.stderr)
        if self.rust:
            label = self._label(self.command, "provision")
            return script_rust.instance_details(script_rust.reply(result.stdout, label), label)
        return self._details(self.command, "provision", result.stdout)

    def _clean_up(self, contract_id: str) -> None:
        """After a kill: remove what the script may have made, when find and terminate commands exist."""
        if not (self.find_command and self.terminate_command):
            return
        try:
            found = self.find(contract_id)
            if found is not None:
                self.terminate(found.external_id)
        except ProvisionError:
            pass

    def find(self, contract_id: str) -> InstanceDetails | None:
        """The instance made for `contract_id` (native `find_command`); None without one (see the docstring)."""
        if not self.find_command:
            return None
        result = self._run(self.find_command, {"contractId": contract_id}, action="find",
                           timeout=self.query_timeout_seconds, contract_id=contract_id)
        if not result.stdout.strip() or result.stdout.strip() == "null":
            return None
        return self._details(self.find_command, "find", result.stdout)

    def list_instances(self) -> list[Instance]:
        if not self.list_command:
            return []
        out = self._run(self.list_command, {}, action="list", timeout=self.query_timeout_seconds).stdout
        try:
            data = json_output(out) if out.strip() else []
        except ValueError:
            data = None
        if not isinstance(data, list) or not all(isinstance(d, dict) and d.get("externalId") for d in data):
            raise ProvisionError(f"{os.path.basename(self.list_command[0])} (list) must print a JSON array of "
                                 f"{{\"externalId\", \"contractId\"}} objects (got: {out.strip()[:200]!r})")
        return [Instance(external_id=str(d["externalId"]),
                         contract_id=None if d.get("contractId") is None else str(d["contractId"])) for d in data]

    def terminate(self, external_id: str) -> None:
        if not self.terminate_command:
            raise ProvisionError("cannot terminate: [provisioner.script] terminate_command is not set")
        payload = script_rust.instance_input("terminate", external_id) if self.rust else {"externalId": external_id}
        result = self._run(self.terminate_command, payload, action="terminate",
                           timeout=self.query_timeout_seconds, external_id=external_id)
        if self.rust:
            script_rust.reply(result.stdout, self._label(self.terminate_command, "terminate"))

    def health(self) -> Health:
        checks: dict[str, bool] = {}
        problems = []
        for key in COMMAND_KEYS:
            argv = getattr(self, key)
            if not argv:
                continue
            exe = argv[0]
            ok = bool(shutil.which(exe) if "/" not in exe else (os.path.isfile(exe) and os.access(exe, os.X_OK)))
            checks[key] = ok
            if not ok:
                problems.append(f"{key}: {exe} is not an executable file")
        if problems:
            return Health(ok=False, detail="; ".join(problems), checks=checks)
        protocol = " (Rust protocol)" if self.rust else ""
        return Health(ok=True, detail=f"{os.path.basename(self.command[0])} is executable{protocol}", checks=checks)

    # -- lifecycle (each enabled by its own setting) ------------------------------------------------

    def lifecycle_configured(self, method: str) -> bool:
        """Whether the setting that enables lifecycle `method` is set (for base.capabilities)."""
        return method in LIFECYCLE and bool(getattr(self, LIFECYCLE[method][0]))

    def _lifecycle(self, method: str, payload: dict[str, Any], external_id: str, secret: str | None = None) -> Finished:
        key, action, what = LIFECYCLE[method]
        argv = getattr(self, key)
        if not argv:
            raise Unsupported(f"the script driver cannot {what}: set [provisioner.script] {key} (see the README)")
        try:
            return self._run(argv, payload, action=action, timeout=self.query_timeout_seconds,
                             external_id=external_id)
        except ProvisionError as exc:
            if secret and secret in str(exc):  # a script that echoed it: never let it reach a log
                raise ProvisionError(str(exc).replace(secret, MASK), retryable=exc.retryable) from None
            raise

    def check_instance(self, external_id: str) -> InstanceHealth:
        """The instance's health from `health_command`; a check that fails or answers oddly is "unknown"."""
        if not self.health_command:
            return InstanceHealth("unknown", "no health check: set [provisioner.script] health_command")
        started = time.monotonic()
        payload = script_rust.instance_input("health_check", external_id) if self.rust else {"externalId": external_id}
        label = self._label(self.health_command, "health")
        try:
            out = self._lifecycle("check_instance", payload, external_id).stdout
            health = (script_rust.instance_health(script_rust.reply(out, label), label) if self.rust
                      else self._health(out, label))
        except ProvisionError as exc:
            health = InstanceHealth("unknown", f"health check failed: {exc}"[:500])
        if health.latency_ms is None:
            health = InstanceHealth(health.status, health.detail, round((time.monotonic() - started) * 1000, 1))
        return health

    @staticmethod
    def _health(stdout: str, label: str) -> InstanceHealth:
        try:
            data = json_output(stdout)
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("status") not in HEALTH_STATUSES:
            return InstanceHealth("unknown", f"{label} must print {{\"status\": \"healthy\"|\"unhealthy\"|"
                                             f"\"unknown\", \"detail\": \"...\"}} (got: {stdout.strip()[:100]!r})")
        latency = data.get("latencyMs")
        return InstanceHealth(data["status"], " ".join(str(data.get("detail") or "").split())[:500],
                              float(latency) if isinstance(latency, (int, float)) and not isinstance(latency, bool)
                              else None)

    def stop(self, external_id: str) -> None:
        self._lifecycle("stop", {"externalId": external_id}, external_id)

    def start(self, external_id: str) -> None:
        self._lifecycle("start", {"externalId": external_id}, external_id)

    def set_password(self, external_id: str, password: str, username: str | None = None) -> None:
        self._lifecycle("set_password", {"externalId": external_id, "username": username, "password": password},
                        external_id, secret=password)

    def rotate_ssh_key(self, external_id: str, new_key: str, old_key: str | None = None) -> None:
        self._lifecycle("rotate_ssh_key", {"externalId": external_id, "newKey": new_key, "oldKey": old_key},
                        external_id)

    # -- crash recovery -----------------------------------------------------------------------------

    def recover_orphans(self) -> list[str]:
        """Kill provision runs left by a previous agent process (one that was SIGKILLed mid-run).

        The agent calls this once at start; it returns the contract ids whose run was stopped, and
        then asks :meth:`find` whether the run had finished making the instance.
        """
        return self._runs.recover() if self._runs is not None else []
