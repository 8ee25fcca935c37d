"""Running one command in its own process group: JSON on stdin, its output back, and the whole group
killed on a timeout or a cancel (SIGTERM, then SIGKILL after a grace), dying with the agent.

Why a group: a provider's script starts children (qm, ssh, curl ...). Killing only the script would
leave them making a machine nobody reports. Why the parent-death signal: a run starts its own session,
so a SIGKILLed agent would otherwise leave it running while another agent takes the contract over.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from provisioners.base import Cancelled, ProvisionError

PIPE_GRACE_SECONDS = 2.0  # after the command exits, how long its background children may hold its output
NEVER = threading.Event()  # a cancel that is never set


@dataclass(frozen=True)
class Finished:
    """A command that ran to its end: exit status (negative: killed by that signal) and its output."""

    returncode: int
    stdout: str
    stderr: str


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def die_with_agent_prefix() -> list[str]:
    """argv prefix that makes a command die (SIGKILL) when the agent process that started it dies.

    util-linux's setpriv sets the parent-death signal and execs the command (same pid); without
    setpriv the next agent start still stops orphans (ScriptProvisioner.recover_orphans).
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


DIE_WITH_AGENT = die_with_agent_prefix()


def group_alive(pgid: int) -> bool:
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
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def last_lines(text: str, n: int = 10) -> str:
    """The last `n` non-empty lines joined with " | ", with recognisable secrets masked."""
    from dc_common.redact import redact_text

    lines = deque((line.rstrip() for line in text.splitlines() if line.strip()), maxlen=n)
    return redact_text(" | ".join(lines)[-1500:])


def json_output(text: str) -> Any:
    """A command's stdout as JSON: the whole of it, else its last non-empty line (progress lines before
    the JSON are allowed); raises ValueError."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty")
    try:
        return json.loads(stripped)
    except ValueError:
        return json.loads(stripped.splitlines()[-1])


def _check_executable(argv: list[str], env: dict[str, str], action: str) -> None:
    """setpriv execs the command: find out here, not from its exit status, whether it can start."""
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if not program or not os.path.isfile(program):
        raise ProvisionError(f"cannot start {action} command {argv[0]!r}: No such file or directory")
    if not os.access(program, os.X_OK):
        raise ProvisionError(f"cannot start {action} command {argv[0]!r}: Permission denied (not executable)")


def run_in_group(argv: list[str], stdin: bytes, *, env: dict[str, str], cwd: str, timeout: float,
                 kill_grace: float, action: str, cancel: threading.Event = NEVER,
                 started: Callable[[int], Callable[[], None] | None] | None = None) -> Finished:
    """Run `argv` in a new session with `stdin`, wait for it, and return its exit status and output.

    Raises ProvisionError when it cannot start or runs past `timeout` (the group is killed), and
    Cancelled when `cancel` is set meanwhile (the group is killed). `started(pid)` is called once the
    process runs; what it returns is called when the run is over (a record of the run, say).
    """
    what = os.path.basename(argv[0])
    if DIE_WITH_AGENT:
        _check_executable(argv, env, action)
    try:
        proc = subprocess.Popen([*DIE_WITH_AGENT, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env, cwd=cwd)
    except OSError as exc:
        raise ProvisionError(f"cannot start {action} command {argv[0]!r}: {exc.strerror or exc}") from None
    finish = started(proc.pid) if started else None
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
                _stop(proc, kill_grace)
                raise Cancelled(f"{action} of {what} cancelled; its process group was killed")
            if time.monotonic() >= deadline:
                _stop(proc, kill_grace)
                err_tail = _tail(proc)
                raise ProvisionError(f"{what} timed out after {timeout:g} s ({action}); its process group "
                                     f"was killed{': ' + err_tail if err_tail else ''}")
    finally:
        if finish is not None:
            finish()
    return Finished(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    kill_group(proc.pid, grace, reap=proc.poll)
    try:
        proc.wait(timeout=grace + 5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _tail(proc: subprocess.Popen[bytes]) -> str:
    try:
        _out, err = proc.communicate(timeout=1)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return ""
    return last_lines(err.decode("utf-8", "replace"))
