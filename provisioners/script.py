"""The `script` driver: the provider's own program makes the instance.

Configuration (`[provisioner.script]`)::

    command = ["/usr/local/bin/provision-vm", "--flag"]   # argv, never a shell string (required)
    timeout_seconds = 900                                  # the whole process group is killed after it
    terminate_command = ["/usr/local/bin/terminate-vm"]    # optional: reconcile and clean-up
    list_command = ["/usr/local/bin/list-vms"]             # optional: reconcile
    find_command = ["/usr/local/bin/find-vm"]              # optional: adopt after a crash
    query_timeout_seconds = 60                             # timeout of find/list/terminate
    kill_grace_seconds = 5                                 # SIGTERM, then SIGKILL after this
    env = { SOME_VAR = "value" }                           # extra environment for every command

Interface of the commands (each runs in its own session/process group, so a timeout or a cancel kills
the script and everything it started):

* `command`: the contract as JSON on stdin (PROTOCOL.md field names). On success it exits 0 and prints
  the instance details as one JSON object on stdout, e.g.
  `{"externalId": "vm-123", "ipAddress": "203.0.113.7", "sshPort": 22}` (if the script also prints
  progress, the object must be the last line). A non-zero exit reports `failed` with the last lines of
  stderr.
* `find_command`: `{"contractId": ...}` on stdin; prints the details of the instance already made for
  that contract, or `null` / nothing when there is none.
* `list_command`: prints a JSON array of `{"externalId": ..., "contractId": ...}`.
* `terminate_command`: `{"externalId": ...}` on stdin; exit 0 when the instance is gone (or was).

Every command also gets `DC_AGENT_ACTION` (provision, find, list, terminate), `DC_AGENT_CONTRACT_ID` and
`DC_AGENT_EXTERNAL_ID` where they apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from provisioners.base import (
    Cancelled,
    ConfigError,
    Contract,
    Health,
    Instance,
    InstanceDetails,
    Lifecycle,
    ProvisionError,
)

KNOWN_KEYS = {"command", "timeout_seconds", "terminate_command", "list_command", "find_command",
              "query_timeout_seconds", "kill_grace_seconds", "env", "state_dir"}
STDERR_TAIL_LINES = 10
PIPE_GRACE_SECONDS = 2.0  # after the command exits, how long its background children may hold its output
_NEVER = threading.Event()


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _die_with_agent_prefix() -> list[str]:
    """argv prefix that makes a command die (SIGKILL) when the agent process that started it dies.

    A run starts in its own session, so a SIGKILLed agent would leave it running; if the contract's
    lease then ran out before the agent came back, another agent could provision the same contract
    while the orphan finished. util-linux's setpriv sets the parent-death signal and execs the command
    (same pid); without setpriv the next agent start still stops orphans (recover_orphans).
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_foreign(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_group(pgid: int, grace: float, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM the process group, then SIGKILL it if anything is still there after `grace` seconds.

    `reap` collects the group leader when it is our child (`Popen.poll`), so that a zombie leader does
    not make the group look alive.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        (reap or (lambda: _reap_foreign(pgid)))()
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_DIE_WITH_AGENT = _die_with_agent_prefix()


class ScriptProvisioner(Lifecycle):
    """Runs the provider's commands; see the module docstring for their interface."""

    name = "script"

    def __init__(self, settings: dict[str, Any], config_path: Path | str | None = None) -> None:
        self._base = Path(config_path).expanduser().absolute().parent if config_path else Path.cwd()
        unknown = set(settings) - KNOWN_KEYS
        if unknown:
            raise ConfigError(f"[provisioner.script] {sorted(unknown)[0]} is not a known key; "
                              f"known keys: {', '.join(sorted(KNOWN_KEYS - {'state_dir'}))}")
        self.command = self._argv(settings, "command", required=True)
        self.terminate_command = self._argv(settings, "terminate_command")
        self.list_command = self._argv(settings, "list_command")
        self.find_command = self._argv(settings, "find_command")
        self.timeout_seconds = self._number(settings, "timeout_seconds", 900.0)
        self.query_timeout_seconds = self._number(settings, "query_timeout_seconds", 60.0)
        self.kill_grace_seconds = self._number(settings, "kill_grace_seconds", 5.0, allow_zero=True)
        env = settings.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ConfigError('[provisioner.script] env must be a table of strings, e.g. env = { REGION = "eu" }')
        self.extra_env = dict(env)
        state_dir = settings.get("state_dir")
        self.runs_dir = Path(state_dir) / "running" if state_dir else None

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
        if self.runs_dir is not None:  # marks every process of ours, children included, for recover_orphans
            env["DC_AGENT_RUN_DIR"] = str(self.runs_dir)
        if contract_id is not None:
            env["DC_AGENT_CONTRACT_ID"] = contract_id
        if external_id is not None:
            env["DC_AGENT_EXTERNAL_ID"] = external_id
        return env

    def _record_run(self, contract_id: str, pid: int) -> Path | None:
        if self.runs_dir is None:
            return None
        from dc_agent.fsutil import atomic_write  # small, stdlib-only

        import hashlib

        path = self.runs_dir / f"{hashlib.sha256(contract_id.encode()).hexdigest()[:12]}-{pid}.json"
        atomic_write(path, json.dumps({"contractId": contract_id, "pid": pid,
                                       "start": _proc_start_time(pid)}).encode(), durable=False)
        return path

    def _run(self, argv: list[str], payload: Any, *, action: str, timeout: float,
             cancel: threading.Event = _NEVER, contract_id: str | None = None,
             external_id: str | None = None) -> tuple[int, str, str]:
        """Run `argv` in a new session with `payload` as JSON on stdin: (exit status, stdout, stderr)."""
        what = os.path.basename(argv[0])
        env = self._env(action, contract_id, external_id)
        if _DIE_WITH_AGENT:  # setpriv execs the command: find out here, not from its exit status, if it can
            program = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
            if not program or not os.path.isfile(program):
                raise ProvisionError(f"cannot start {action} command {argv[0]!r}: No such file or directory")
            if not os.access(program, os.X_OK):
                raise ProvisionError(f"cannot start {action} command {argv[0]!r}: Permission denied (not executable)")
        try:
            proc = subprocess.Popen([*_DIE_WITH_AGENT, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, env=env, cwd=str(self._base))
        except OSError as exc:
            raise ProvisionError(f"cannot start {action} command {argv[0]!r}: {exc.strerror or exc}") from None
        record = self._record_run(contract_id, proc.pid) if action == "provision" and contract_id else None
        stdin = json.dumps(payload).encode()
        deadline = time.monotonic() + timeout
        first = True
        exited_at: float | None = None
        try:
            while True:
                try:
                    out, err = proc.communicate(input=stdin if first else None, timeout=0.2)
                    break
                except subprocess.TimeoutExpired as exc:
                    first = False
                    if proc.poll() is not None:
                        exited_at = exited_at or time.monotonic()
                        if time.monotonic() - exited_at >= PIPE_GRACE_SECONDS:
                            # The command exited, but something it started in the background still holds
                            # its stdout/stderr open: take what it printed and stop reading.
                            out, err = exc.output or b"", exc.stderr or b""
                            for pipe in (proc.stdout, proc.stderr):
                                with contextlib.suppress(OSError):
                                    pipe.close()  # type: ignore[union-attr]
                            break
                if cancel.is_set():
                    self._stop(proc)
                    raise Cancelled(f"{action} of {what} cancelled; its process group was killed")
                if time.monotonic() >= deadline:
                    self._stop(proc)
                    err_tail = self._tail(proc)
                    raise ProvisionError(f"{what} timed out after {timeout:g} s ({action}); its process group "
                                         f"was killed{': ' + err_tail if err_tail else ''}")
        finally:
            if record is not None:
                record.unlink(missing_ok=True)
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        kill_group(proc.pid, self.kill_grace_seconds, reap=proc.poll)
        try:
            proc.wait(timeout=self.kill_grace_seconds + 5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    @staticmethod
    def _tail(proc: subprocess.Popen[bytes]) -> str:
        try:
            _out, err = proc.communicate(timeout=1)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            return ""
        return ScriptProvisioner._last_lines(err.decode("utf-8", "replace"))

    @staticmethod
    def _last_lines(text: str, n: int = STDERR_TAIL_LINES) -> str:
        from dc_agent.redact import redact_text

        lines = deque((line.rstrip() for line in text.splitlines() if line.strip()), maxlen=n)
        joined = " | ".join(lines)
        return redact_text(joined[-1500:])

    def _failed(self, argv: list[str], action: str, status: int, stderr: str) -> ProvisionError:
        what = os.path.basename(argv[0])
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        tail = self._last_lines(stderr)
        return ProvisionError(f"{what} ({action}) {how}" + (f": {tail}" if tail else " (no stderr)"))

    @staticmethod
    def _parse_json(text: str) -> Any:
        """The whole of stdout as JSON, else its last non-empty line; raises ValueError."""
        stripped = text.strip()
        if not stripped:
            raise ValueError("empty")
        try:
            return json.loads(stripped)
        except ValueError:
            last = stripped.splitlines()[-1]
            return json.loads(last)

    def _details(self, argv: list[str], action: str, stdout: str) -> InstanceDetails:
        what = os.path.basename(argv[0])
        snippet = stdout.strip()[:200] or "nothing"
        try:
            data = self._parse_json(stdout)
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
        try:
            status, out, err = self._run(self.command, contract.to_api(), action="provision",
                                         timeout=self.timeout_seconds, cancel=cancel,
                                         contract_id=contract.contract_id)
        except ProvisionError:
            self._clean_up(contract.contract_id)
            raise
        if status != 0:
            raise self._failed(self.command, "provision", status, err)
        return self._details(self.command, "provision", out)

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
        if not self.find_command:
            return None
        status, out, err = self._run(self.find_command, {"contractId": contract_id}, action="find",
                                     timeout=self.query_timeout_seconds, contract_id=contract_id)
        if status != 0:
            raise self._failed(self.find_command, "find", status, err)
        if not out.strip() or out.strip() == "null":
            return None
        return self._details(self.find_command, "find", out)

    def list_instances(self) -> list[Instance]:
        if not self.list_command:
            return []
        status, out, err = self._run(self.list_command, {}, action="list", timeout=self.query_timeout_seconds)
        if status != 0:
            raise self._failed(self.list_command, "list", status, err)
        try:
            data = self._parse_json(out) if out.strip() else []
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
        status, _out, err = self._run(self.terminate_command, {"externalId": external_id}, action="terminate",
                                      timeout=self.query_timeout_seconds, external_id=external_id)
        if status != 0:
            raise self._failed(self.terminate_command, "terminate", status, err)

    def health(self) -> Health:
        import shutil

        checks: dict[str, bool] = {}
        problems = []
        for key in ("command", "terminate_command", "list_command", "find_command"):
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
        return Health(ok=True, detail=f"{os.path.basename(self.command[0])} is executable", checks=checks)

    # -- crash recovery -----------------------------------------------------------------------------

    def recover_orphans(self) -> list[str]:
        """Kill provision runs left by a previous agent process (one that was SIGKILLed mid-run).

        The agent calls this once at start, while it holds the state directory: any run of this driver
        still alive then belongs to a process that is gone. Runs are found two ways: the records
        written when each run starts, and the `DC_AGENT_RUN_DIR` mark in the environment of every
        process a run started (which also covers a kill between starting a run and recording it).
        Returns the contract ids whose run was stopped; the agent then asks :meth:`find` whether the
        run had finished making the instance.
        """
        if self.runs_dir is None:
            return []
        groups: dict[int, str] = {}
        if self.runs_dir.exists():
            for path in self.runs_dir.glob("*.json"):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    path.unlink(missing_ok=True)
                    continue
                pid = int(record.get("pid") or 0)
                if pid and record.get("start") and _proc_start_time(pid) == record.get("start"):
                    groups[pid] = str(record.get("contractId"))
                path.unlink(missing_ok=True)
        groups.update(self._marked_groups())
        for pgid in groups:
            kill_group(pgid, self.kill_grace_seconds)
        return sorted({cid for cid in groups.values() if cid})

    def _marked_groups(self) -> dict[int, str]:
        """Process groups of live processes carrying this driver's DC_AGENT_RUN_DIR mark."""
        mark = f"DC_AGENT_RUN_DIR={self.runs_dir}".encode()
        found: dict[int, str] = {}
        me = os.getpid()
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                pgid = os.getpgid(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
            if mark not in environ or pgid == os.getpgid(0):
                continue
            contract = next((v.split(b"=", 1)[1].decode(errors="replace") for v in environ
                             if v.startswith(b"DC_AGENT_CONTRACT_ID=")), "")
            found.setdefault(pgid, contract)
        return found
