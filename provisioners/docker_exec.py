"""Run one command in a running container with input on its stdin (never in its argv).

Used for `chpasswd`: a password on a command line would show in `docker inspect` of the exec, in
`ps` inside the container and in the daemon's logs; on stdin it shows nowhere.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

import docker

_HEADER = struct.Struct(">BxxxL")  # Docker's multiplexed stream: stream id, 3 pad bytes, length
_MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str


def _demux(data: bytes) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a non-TTY exec stream; text that is not framed counts as stderr (daemon errors)."""
    out, err = bytearray(), bytearray()
    pos = 0
    while pos + _HEADER.size <= len(data):
        stream, size = _HEADER.unpack_from(data, pos)
        if stream not in (0, 1, 2):
            break
        chunk = data[pos + _HEADER.size: pos + _HEADER.size + size]
        (err if stream == 2 else out).extend(chunk)
        pos += _HEADER.size + size
    err.extend(data[pos:])
    return bytes(out), bytes(err)


def run_with_stdin(api: docker.APIClient, container_id: str, argv: list[str], stdin: bytes, *,
                   timeout: float, user: str = "root") -> ExecResult:
    """Run `argv` in the container, write `stdin`, close it, and collect the output and exit code."""
    exec_id = api.exec_create(container_id, argv, stdin=True, stdout=True, stderr=True, tty=False, user=user)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(sock, "_sock", sock)
    data = bytearray()
    try:
        raw.settimeout(timeout)
        raw.sendall(stdin)
        raw.shutdown(socket.SHUT_WR)  # EOF on the command's stdin
        while len(data) < _MAX_OUTPUT:
            chunk = raw.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    out, err = _demux(bytes(data))
    deadline = time.monotonic() + timeout
    info = api.exec_inspect(exec_id)
    while info.get("Running") and time.monotonic() < deadline:  # output closed a moment before the exit
        time.sleep(0.05)
        info = api.exec_inspect(exec_id)
    code = None if info.get("Running") else info.get("ExitCode")
    return ExecResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
