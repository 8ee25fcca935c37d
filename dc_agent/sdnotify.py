"""systemd service notifications (sd_notify) over `$NOTIFY_SOCKET`, in the standard library.

Why not a library: `sdnotify` was last released in 2017, `systemd-python` needs a compiler and the
libsystemd headers, and `cysystemd` is compiled too. The protocol is one datagram of `KEY=VALUE`
lines to an AF_UNIX socket, so it fits in a few lines here.

Every function is a no-op that returns False when the agent does not run under systemd
(`$NOTIFY_SOCKET` unset) and never raises: a lost notification must not take the agent down.
The unit uses `NotifyAccess=main`, so only the main process (any of its threads) may notify.
"""

from __future__ import annotations

import os
import socket

# The variables systemd hands to a notify service; strip them from the environment of child processes
# (provisioner scripts) so a child never notifies or pings the watchdog for the agent.
ENVIRONMENT_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address() -> str | None:
    """The address to send to: a filesystem path, or an abstract name (`@` becomes a NUL byte)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # unset, empty, or a transport this notifier does not speak (e.g. vsock:)


def notify(state: str) -> bool:
    """Send one notification (newline-separated `KEY=VALUE` assignments); True if it was sent."""
    address = _socket_address()
    if address is None:
        return False
    try:
        data = state.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(data, address)
    except (OSError, UnicodeError, ValueError):
        return False
    return True


def notify_ready() -> bool:
    """Start-up finished: systemd marks the unit active (Type=notify waits for this)."""
    return notify("READY=1")


def notify_watchdog() -> bool:
    """Keep-alive ping; send every `watchdog_interval_seconds()` while the loop is healthy."""
    return notify("WATCHDOG=1")


def notify_stopping() -> bool:
    """Shutdown began (the drain after SIGTERM)."""
    return notify("STOPPING=1")


def notify_status(text: str) -> bool:
    """A one-line status shown by `systemctl status dc-agent`."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval_seconds() -> float | None:
    """How often to ping: half of `$WATCHDOG_USEC`, or None when no watchdog is asked of this process.

    systemd sets `WATCHDOG_PID` to the pid it expects pings from; when it names another process
    (e.g. a child that inherited the environment), the watchdog is not ours.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
