"""A fakepve (fake Proxmox VE 9 API) served over TLS with its own certificate, for the Proxmox tests.

fakepve is AGPL and a test-only peer: only tests import it, never `provisioners/` or `dc_agent/`.

Two ways to run it:
- in this process, on an event loop in a thread: ``with FakePveServer() as srv: ...`` (``srv.pve`` is
  the live fake, for faults and assertions);
- as a separate process for end-to-end tests, where agents are separate processes too:
  ``python -m tests.support.fakepve_server --state-dir DIR --agent-on-clone ...``; it writes
  ``DIR/fakepve.json`` (url, cafile, token) once it listens.

The fake is extended (``TestPve``) with two test knobs fakepve has no switch for:
- ``agent_on_clone``: a VM made by a clone gets a running guest agent that reports a distinct IPv4 and
  IPv6 on net0's MAC (plus loopback, a docker bridge and link-local noise) — fakepve's clones have no
  agent until a test turns one on;
- ``clone_secs``: PVE seconds every clone task takes (scaled by ``time_scale``), for slow clones.

The separate process also appends each guest-agent command it answered to ``DIR/agent-calls.jsonl``
(``agent_log``; the password only as its SHA-256), since its ``vm.agent_requests`` are out of a test's reach.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from fakepve import FakePve, TaskError
from fakepve.certs import make_cert

HOST = "127.0.0.1"
NODE = "pve1"
TEMPLATE_VMID = 9000
TOKEN_ID = "dc-agent@pve!provisioning"
TOKEN_SECRET = "9f1c2e7a-5b3d-4c8e-a1f0-6d2b7e9c4a13"
START_TIMEOUT = 30


def guest_interfaces(vm: Any) -> list[dict[str, Any]]:
    """What a freshly booted cloud image's guest agent reports: lo, docker0, and eth0 on net0's MAC."""
    mac = "bc:24:11:00:00:01"
    found = re.search(r"=([0-9A-Fa-f:]{17})", str(vm.config.get("net0", "")))
    if found:
        mac = found.group(1).lower()
    n = vm.vmid
    return [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
         "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                          {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
        {"name": "docker0", "hardware-address": "02:42:ac:11:00:01",
         "ip-addresses": [{"ip-address": "172.17.0.1", "ip-address-type": "ipv4", "prefix": 16}]},
        {"name": "eth0", "hardware-address": mac,
         "ip-addresses": [
             {"ip-address": f"fe80::be24:11ff:fe00:{n:x}", "ip-address-type": "ipv6", "prefix": 64},
             {"ip-address": f"10.20.{n // 250}.{n % 250 + 2}", "ip-address-type": "ipv4", "prefix": 16},
             {"ip-address": f"2001:db8:20::{n:x}", "ip-address-type": "ipv6", "prefix": 64},
         ]},
    ]


# qemu-server's $cloudinitoptions and ipconfigN: PVE checks VM.Config.Cloudinit for them (fakepve: HWType).
CLOUDINIT_KEYS = ("cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver", "searchdomain", "sshkeys")


class TestPve(FakePve):
    """FakePve with the knobs the Proxmox tests need and fakepve has no switch for.

    agent_on_clone: cloned VMs get a guest agent (see guest_interfaces).
    clone_secs: PVE seconds each clone task takes (time_scale applies).
    clone_error: the clone task ends with this TASK ERROR after the VM was made, leaving the VM behind.
    nextid_barrier: hold /cluster/nextid answers until that many requests wait (or 5 s), so concurrent
      callers all get the same VMID, as two agents asking at the same moment do.
    agent_log: a file that gets one JSON line per guest-agent command answered (see note_agent_call).
    """

    __test__ = False  # not a pytest class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_on_clone = False
        self.clone_secs = 0.0
        self.clone_error: str | None = None
        self.clones_started = 0
        self.nextid_barrier = 0
        self._nextid_waiting = 0
        self._nextid_open: asyncio.Event | None = None
        self.agent_log: Path | None = None

    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):  # noqa: ANN001
        if ttype == "qmclone" and vm is not None:
            self.clones_started += 1
            inner = body
            new = vm

            async def body():  # noqa: F811 - wraps the clone's own body
                await self.pause(self.clone_secs)
                note = await inner()
                if self.agent_on_clone and new in self.vms:
                    new.agent = {"interfaces": guest_interfaces(new)}
                if self.clone_error:
                    raise TaskError(self.clone_error)
                return note

        return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

    async def _agent_call(self, match, values):  # noqa: ANN001
        answer = await super()._agent_call(match, values)
        if self.agent_log is not None:
            self.note_agent_call(match.template.rsplit("/", 1)[1], values)
        return answer

    def note_agent_call(self, command: str, values: dict[str, Any]) -> None:
        """{vmid, command, file, content, username, passwordSha256} of an answered command, as a JSON line."""
        entry: dict[str, Any] = {"vmid": int(values["vmid"]), "command": command}
        for key in ("file", "content", "username"):
            if key in values:
                entry[key] = values[key]
        if "password" in values:
            entry["passwordSha256"] = hashlib.sha256(str(values["password"]).encode()).hexdigest()
        assert self.agent_log is not None
        with open(self.agent_log, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    async def _nextid(self, v, user):  # noqa: ANN001
        if self.nextid_barrier and not v.get("vmid"):
            if self._nextid_open is None:
                self._nextid_open = asyncio.Event()
            self._nextid_waiting += 1
            if self._nextid_waiting >= self.nextid_barrier:
                self._nextid_open.set()
            try:
                await asyncio.wait_for(self._nextid_open.wait(), 5)
            except asyncio.TimeoutError:
                pass
        return await super()._nextid(v, user)

    def _config_priv(self, key):  # noqa: ANN001
        if key in CLOUDINIT_KEYS or re.fullmatch(r"ipconfig\d+", key):
            return "VM.Config.Cloudinit"
        return super()._config_priv(key)


def add_template(pve: FakePve, vmid: int = TEMPLATE_VMID, node: str = NODE, storage: str = "local-lvm",
                 size_gb: int = 10) -> Any:
    """A cloud-init template as a provider has one: a disk, a cloud-init drive, net0, agent enabled."""
    store = pve.storages[storage]
    store.setdefault("volumes", {})[f"base-{vmid}-disk-0"] = {
        "content": "images", "format": "raw", "size": size_gb * 1024**3, "vmid": vmid}
    return pve.add_vm(vmid, "debian-13-cloud", node=node, template=True, config={
        "scsi0": f"{storage}:base-{vmid}-disk-0,size={size_gb}G",
        "ide2": f"{storage}:vm-{vmid}-cloudinit,media=cdrom",
        "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0",
        "boot": "order=scsi0",
        "scsihw": "virtio-scsi-single",
        "agent": "1",
        "cores": "1",
        "memory": "1024",
        "tags": "template",
    })


def build(time_scale: float = 0.0, *, agent_on_clone: bool = False, clone_secs: float = 0.0,
          token: tuple[str, str] = (TOKEN_ID, TOKEN_SECRET), template: bool = True,
          port: int = 0) -> TestPve:
    pve = TestPve(user="root@pam", password="secret", host=HOST, port=port)
    pve.time_scale = time_scale
    pve.agent_on_clone = agent_on_clone
    pve.clone_secs = clone_secs
    pve.apitokens[token[0]] = token[1]
    if template:
        add_template(pve)
    return pve


class FakePveServer:
    """A TestPve on a private event loop in a daemon thread, over TLS with a certificate made for it."""

    def __init__(self, pve: TestPve | None = None, cert_dir: str | os.PathLike[str] | None = None) -> None:
        self.pve = pve if pve is not None else build()
        self._tmp = None if cert_dir else tempfile.TemporaryDirectory(prefix="fakepve-pki-")
        directory = str(cert_dir or self._tmp.name)  # type: ignore[union-attr]
        self.cafile, self._keyfile, _ = make_cert(directory, hosts=(HOST, "localhost"))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fakepve", daemon=True)
        self._started = False

    @property
    def url(self) -> str:
        return self.pve.url

    @property
    def token_id(self) -> str:
        return next(iter(self.pve.apitokens))

    @property
    def token_secret(self) -> str:
        return self.pve.apitokens[self.token_id]

    def call(self, coro: Any) -> Any:
        """Run a coroutine of the fake (hold_config_lock, backup, ...) on its loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_TIMEOUT)

    def do(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call fn on the fake's loop (for state changes that must not interleave with a request)."""
        async def run():
            return fn(*args, **kwargs)
        return self.call(run())

    def start(self) -> "FakePveServer":
        self._thread.start()
        self.call(self.pve.start(self.cafile, self._keyfile))
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            try:
                self.call(self.pve.stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(START_TIMEOUT)
                self._started = False
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "FakePveServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ inspection

    def vms(self, *, templates: bool = False) -> list[Any]:
        return [vm for vm in list(self.pve.vms) if templates or not vm.template]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """A `[provisioner.proxmox]` table for this fake, verifying TLS against its certificate."""
        out: dict[str, Any] = {
            "api_url": self.url,
            "api_token_id": self.token_id,
            "api_token_secret": self.token_secret,
            "node": NODE,
            "template_vmid": TEMPLATE_VMID,
            "storage": "local-lvm",
            "ca_cert": self.cafile,
            "ip_timeout_seconds": 5,
            "task_timeout_seconds": 30,
            "poll_interval_seconds": 0.05,
        }
        out.update(overrides)
        return out


# ------------------------------------------------------------------ separate process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a TestPve over TLS for end-to-end tests.")
    parser.add_argument("--state-dir", required=True, help="where the certificate and fakepve.json go")
    parser.add_argument("--time-scale", type=float, default=0.0)
    parser.add_argument("--clone-secs", type=float, default=0.0)
    parser.add_argument("--agent-on-clone", action="store_true")
    args = parser.parse_args(argv)
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    pve = build(args.time_scale, agent_on_clone=args.agent_on_clone, clone_secs=args.clone_secs)
    pve.agent_log = state / "agent-calls.jsonl"
    server = FakePveServer(pve, cert_dir=state)
    server.start()
    info = {"url": server.url, "cafile": server.cafile, "token_id": server.token_id,
            "token_secret": server.token_secret, "node": NODE, "template_vmid": TEMPLATE_VMID,
            "pid": os.getpid()}
    tmp = state / "fakepve.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(state / "fakepve.json")
    print(f"fakepve listening on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------ pytest fixtures
# Imported by the test modules that use them (`from tests.support.fakepve_server import fake, make_fake`).

try:
    import pytest
except ImportError:  # the subprocess entry point does not need pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def make_fake():  # noqa: ANN201
        """make_fake(time_scale=0, agent_on_clone=True, ...) -> a started FakePveServer, stopped after the test."""
        started: list[FakePveServer] = []

        def make(time_scale: float = 0.0, *, agent_on_clone: bool = True, **kwargs: Any) -> FakePveServer:
            server = FakePveServer(build(time_scale, agent_on_clone=agent_on_clone, **kwargs)).start()
            started.append(server)
            return server

        yield make
        for server in started:
            server.stop()

    @pytest.fixture
    def fake(make_fake):  # noqa: ANN001, ANN201
        """A fake PVE 9 cluster (node pve1, template 9000) whose clones get a guest agent; tasks end at once."""
        return make_fake()
