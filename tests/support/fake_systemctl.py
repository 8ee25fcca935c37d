"""A fake `systemctl` for the `dc-agent upgrade` tests: one Type=notify service, run as a plain process.

Installed on PATH as `systemctl` (a two-line shell wrapper runs this file). Every call is appended to
`$FAKE_SYSTEMD_DIR/calls.log`. The service's command is `$FAKE_SYSTEMD_AGENT run --config $FAKE_SYSTEMD_CONFIG`;
like systemd's, `start`/`restart` give it a `$NOTIFY_SOCKET` and return once it sent READY=1 (exit 1, as systemctl
does, when it dies first); `stop` sends SIGTERM and waits. `is-active` says active, failed (it died) or inactive;
`show --property=LoadState --value` says loaded. The real systemd is never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT = 60.0


def _pid(state: Path) -> int | None:
    try:
        return int((state / "pid").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def stop(state: Path) -> None:
    pid = _pid(state)
    if _alive(pid):
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    (state / "pid").unlink(missing_ok=True)


def start(state: Path) -> int:
    address = str(state / "notify.sock")
    Path(address).unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": address}
    with open(state / "agent.log", "ab") as log:
        proc = subprocess.Popen([os.environ["FAKE_SYSTEMD_AGENT"], "run", "--config", os.environ["FAKE_SYSTEMD_CONFIG"],
                                 "--log-format", "json"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (state / "pid").write_text(str(proc.pid))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"Job for dc-agent.service failed: the process exited with {proc.returncode}", file=sys.stderr)
            return 1
        try:
            if b"READY=1" in sock.recv(4096):
                return 0
        except socket.timeout:
            continue
    print("Job for dc-agent.service timed out", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    state = Path(os.environ["FAKE_SYSTEMD_DIR"])
    with open(state / "calls.log", "a") as calls:
        calls.write(" ".join(argv) + "\n")
    args = [a for a in argv if not a.startswith("--")]
    verb = args[0] if args else ""
    if verb == "show":
        print("loaded")
        return 0
    if verb == "is-active":
        pid = _pid(state)
        state_text = "active" if _alive(pid) else ("failed" if pid is not None else "inactive")
        print(state_text)
        return 0 if state_text == "active" else 3
    if verb == "stop":
        stop(state)
        return 0
    if verb in ("start", "restart"):
        stop(state)
        return start(state)
    print(f"fake systemctl: {verb} is not faked", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
