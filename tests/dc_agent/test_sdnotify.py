"""dc_agent.sdnotify against real AF_UNIX datagram sockets (a path socket and an abstract one)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from dc_agent import sdnotify


def _receive(sock: socket.socket) -> bytes:
    sock.settimeout(2)
    return sock.recv(4096)


@pytest.fixture
def path_socket(tmp_path, monkeypatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a filesystem path, announced in $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def abstract_socket(monkeypatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, announced as `@name` the way systemd does."""
    name = f"dc-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield sock
    finally:
        sock.close()


class TestNotifyOverPathSocket:
    def test_each_helper_sends_its_exact_datagram(self, path_socket):
        """ready, watchdog, stopping and status each arrive as one datagram with the exact bytes."""
        assert sdnotify.notify_ready() is True
        assert _receive(path_socket) == b"READY=1"
        assert sdnotify.notify_watchdog() is True
        assert _receive(path_socket) == b"WATCHDOG=1"
        assert sdnotify.notify_stopping() is True
        assert _receive(path_socket) == b"STOPPING=1"
        assert sdnotify.notify_status("polling: 2 contracts in progress") is True
        assert _receive(path_socket) == b"STATUS=polling: 2 contracts in progress"

    def test_multi_line_state_is_one_datagram(self, path_socket):
        """notify() sends several assignments together, as sd_notify does."""
        assert sdnotify.notify("READY=1\nSTATUS=started") is True
        assert _receive(path_socket) == b"READY=1\nSTATUS=started"

    def test_status_newlines_cannot_inject_assignments(self, path_socket):
        """A newline in a status text would start a new assignment; it is flattened to a space."""
        assert sdnotify.notify_status("first\nREADY=1") is True
        assert _receive(path_socket) == b"STATUS=first READY=1"

    def test_utf8_status(self, path_socket):
        """Status text is sent as UTF-8."""
        assert sdnotify.notify_status("prêt ✓") is True
        assert _receive(path_socket) == "STATUS=prêt ✓".encode()


class TestNotifyOverAbstractSocket:
    def test_at_sign_becomes_nul_byte(self, abstract_socket):
        """`@name` in $NOTIFY_SOCKET addresses the abstract socket `\\0name`."""
        assert sdnotify.notify_ready() is True
        assert _receive(abstract_socket) == b"READY=1"
        assert sdnotify.notify_watchdog() is True
        assert _receive(abstract_socket) == b"WATCHDOG=1"


class TestNotifyWithoutSystemd:
    def test_unset_socket_is_a_no_op(self, monkeypatch):
        """Outside systemd every helper returns False and does nothing."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert sdnotify.notify("READY=1") is False
        assert sdnotify.notify_ready() is False
        assert sdnotify.notify_watchdog() is False
        assert sdnotify.notify_stopping() is False
        assert sdnotify.notify_status("x") is False

    def test_empty_or_unsupported_address_is_a_no_op(self, monkeypatch):
        """An empty value or a transport other than AF_UNIX (vsock:) is ignored, not an error."""
        monkeypatch.setenv("NOTIFY_SOCKET", "")
        assert sdnotify.notify_ready() is False
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
        assert sdnotify.notify_ready() is False

    def test_send_error_returns_false(self, tmp_path, monkeypatch):
        """A socket that is gone (systemd restarted, path removed) gives False, never an exception."""
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
        assert sdnotify.notify_ready() is False
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + "no-such-abstract-" + uuid.uuid4().hex)
        assert sdnotify.notify_watchdog() is False

    def test_unencodable_text_returns_false(self, path_socket):
        """A lone surrogate cannot be encoded: False, no exception, nothing sent."""
        assert sdnotify.notify_status("bad \udcff") is False
        path_socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            path_socket.recv(4096)

    def test_sends_no_file_descriptors_or_sockets_left_open(self, path_socket):
        """Each notification opens and closes its own socket (no descriptor leak over a long run)."""
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            sdnotify.notify_watchdog()
            _receive(path_socket)
        assert len(os.listdir("/proc/self/fd")) == before


class TestWatchdogInterval:
    def test_half_of_watchdog_usec(self, monkeypatch):
        """WATCHDOG_USEC=120000000 (WatchdogSec=120) means a ping every 60 seconds."""
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        monkeypatch.setenv("WATCHDOG_USEC", "120000000")
        assert sdnotify.watchdog_interval_seconds() == 60.0

    def test_our_pid(self, monkeypatch):
        """WATCHDOG_PID equal to our pid: the watchdog is ours."""
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert sdnotify.watchdog_interval_seconds() == 1.5

    def test_other_pid(self, monkeypatch):
        """WATCHDOG_PID of another process (an inherited environment): no watchdog for us."""
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert sdnotify.watchdog_interval_seconds() is None

    @pytest.mark.parametrize("value", [None, "", "abc", "0", "-5"])
    def test_no_or_invalid_watchdog(self, monkeypatch, value):
        """Unset, empty, non-numeric or non-positive WATCHDOG_USEC: None."""
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        if value is None:
            monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        else:
            monkeypatch.setenv("WATCHDOG_USEC", value)
        assert sdnotify.watchdog_interval_seconds() is None

    def test_invalid_pid(self, monkeypatch):
        """A WATCHDOG_PID that is not a number is not our pid."""
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        monkeypatch.setenv("WATCHDOG_PID", "x")
        assert sdnotify.watchdog_interval_seconds() is None
