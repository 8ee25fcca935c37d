"""What the Proxmox driver does for a contract after provisioning: health, pause (stop) and resume (start),
password reset and SSH key rotation, on VMs with the `dc-agent` tag only.

`ProxmoxLifecycle` is a mixin of :class:`provisioners.proxmox.ProxmoxProvisioner` and uses its plumbing
(`api`, `cfg`, `_vm`, `_call`, `wait_task`, `_resources`, `_config`). An instance is `<node>/<vmid>`;
the node is looked up again (the VM may have migrated). Privileges (PVE 9): status and health need
`VM.Audit` and `VM.GuestAgent.Audit`, stop/start `VM.PowerMgmt`, the SSH key `VM.GuestAgent.FileRead`,
`VM.GuestAgent.FileWrite` and `VM.Config.Cloudinit`, a password `VM.GuestAgent.Unrestricted` (PVE has
no narrower privilege for `set-user-password`).

A password never reaches a log line or an exception message: the call is made without retries that log,
PVE's answer is scrubbed of it, and proxmoxer's request log (INFO on `proxmoxer.core`, off by default)
gets a filter that masks `password` values.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from typing import Any

import requests
from proxmoxer import ResourceException

from provisioners.base import InstanceHealth, Lifecycle, ProvisionError
from provisioners.proxmox_errors import TaskFailed, VmGone, describe
from provisioners.proxmox_guest import (
    AGENT_TAG,
    USERNAME,
    authorized_keys_path,
    encode_sshkeys,
    key_line_problem,
    replace_key,
    split_tags,
)

log = logging.getLogger(__name__)

EXTERNAL_ID = re.compile(r"(?:([A-Za-z0-9-]+)/)?(\d+)")
PASSWORD_MIN, PASSWORD_MAX = 5, 1024  # PVE's limits for set-user-password
FILE_WRITE_MAX = 61440  # PVE's limit for agent/file-write content
_PASSWORD_IN_LOG = re.compile(r"""(['"]password['"]\s*:\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


class _MaskPasswords(logging.Filter):
    """Mask `'password': '…'` in proxmoxer's request log lines (it logs request data at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "password" in message:
            record.msg, record.args = _PASSWORD_IN_LOG.sub(r"\1'***'", message), ()
        return True


logging.getLogger("proxmoxer.core").addFilter(_MaskPasswords())


class _ApiUnavailable(ProvisionError):
    """The Proxmox API could not be asked (network, TLS, token): the instance's state is unknown."""


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


class ProxmoxLifecycle(Lifecycle):
    """Lifecycle actions of the `proxmox` driver (mixed into ProxmoxProvisioner)."""

    # ------------------------------------------------------------------ which VM

    def _our_vm(self, external_id: str, what: str) -> tuple[str, int]:
        """(node, vmid) of a VM of ours; VmGone when it does not exist, ProvisionError when it is not ours."""
        match = EXTERNAL_ID.fullmatch(str(external_id).strip())
        if not match:
            raise ProvisionError(f"{external_id!r} is not a Proxmox instance id (node/vmid)")
        vmid = int(match.group(2))
        try:
            res = next((r for r in self._resources() if int(r.get("vmid", -1)) == vmid), None)  # type: ignore[attr-defined]
        except (ResourceException, requests.RequestException) as exc:
            raise _ApiUnavailable(f"Proxmox API error while looking up VM {vmid}: {describe(exc)}") from exc
        if res is None:
            raise VmGone(f"VM {vmid} does not exist (or the token lacks VM.Audit on it)")
        if res.get("template") or AGENT_TAG not in [t.lower() for t in split_tags(res.get("tags"))]:
            raise ProvisionError(f"refusing to {what} VM {vmid}: it does not carry the {AGENT_TAG} tag")
        return str(res["node"]), vmid

    def _status(self, node: str, vmid: int) -> dict[str, Any]:
        return self._call(f"reading the status of VM {vmid}",  # type: ignore[attr-defined]
                          lambda: self._vm(node, vmid).status.current.get()) or {}  # type: ignore[attr-defined]

    def _running_vm(self, external_id: str, what: str) -> tuple[str, int]:
        """Our VM, which must be running: these actions go through its guest agent."""
        node, vmid = self._our_vm(external_id, what)
        if self._status(node, vmid).get("status") != "running":
            raise ProvisionError(f"VM {vmid} is not running: to {what} it, the guest agent of a running VM is "
                                 "needed (resume the contract first)")
        return node, vmid

    def _user(self, username: str | None) -> str:
        user = username or self.cfg.ciuser or "root"  # type: ignore[attr-defined]
        if not USERNAME.match(user):
            raise ProvisionError(f"{user[:40]!r} is not a valid Linux user name")
        return user

    # ------------------------------------------------------------------ health

    def check_instance(self, external_id: str) -> InstanceHealth:
        """healthy: running and the guest agent answers a ping (latency measured); stopped, missing or a
        silent guest agent: unhealthy; the API not answering: unknown."""
        try:
            node, vmid = self._our_vm(external_id, "check")
        except VmGone as exc:
            return InstanceHealth("unhealthy", str(exc))
        except _ApiUnavailable as exc:
            return InstanceHealth("unknown", str(exc))
        try:
            status = self._vm(node, vmid).status.current.get() or {}  # type: ignore[attr-defined]
        except (ResourceException, requests.RequestException) as exc:
            return InstanceHealth("unknown", f"cannot read the status of VM {vmid}: {describe(exc)}")
        state, qmp = status.get("status"), status.get("qmpstatus")
        if state != "running":
            return InstanceHealth("unhealthy", f"VM {vmid} is {state or 'in an unknown state'}")
        if qmp and qmp != "running":
            return InstanceHealth("unhealthy", f"VM {vmid} is {qmp}")
        started = time.monotonic()
        try:
            self._vm(node, vmid).agent("ping").post()  # type: ignore[attr-defined]
        except ResourceException as exc:
            if exc.status_code in (401, 403):
                return InstanceHealth("unknown", f"cannot ping the guest agent of VM {vmid}: {describe(exc)} "
                                                 "(the token needs VM.GuestAgent.Audit)")
            return InstanceHealth("unhealthy", f"VM {vmid} is running but its guest agent does not answer: "
                                               f"{describe(exc)}")
        except requests.RequestException as exc:
            return InstanceHealth("unknown", f"cannot ping the guest agent of VM {vmid}: {describe(exc)}")
        latency = (time.monotonic() - started) * 1000
        return InstanceHealth("healthy", f"VM {vmid} running; guest agent answered in {latency:.0f} ms",
                              latency_ms=round(latency, 3))

    # ------------------------------------------------------------------ pause and resume

    def stop(self, external_id: str) -> None:
        """ACPI shutdown with shutdown_timeout_seconds, then a hard stop if it still runs; the disk is kept."""
        node, vmid = self._our_vm(external_id, "stop")
        vm = self._vm(node, vmid)  # type: ignore[attr-defined]
        if self._status(node, vmid).get("status") == "stopped":
            return
        timeout = self.cfg.shutdown_timeout  # type: ignore[attr-defined]
        try:
            upid = self._call(f"shutting down VM {vmid}",  # type: ignore[attr-defined]
                              lambda: vm.status.shutdown.post(timeout=max(1, int(timeout))))
            self.wait_task(upid, f"shutdown of VM {vmid}", timeout=timeout + 30)  # type: ignore[attr-defined]
        except ProvisionError as exc:  # the guest ignored ACPI, the task failed or outlasted the timeout
            log.info("proxmox: VM %s did not power off by ACPI (%s); stopping it", vmid, exc)
        if self._status(node, vmid).get("status") == "stopped":
            log.info("proxmox: VM %s on %s shut down", vmid, node)
            return
        upid = self._call(f"stopping VM {vmid}",  # type: ignore[attr-defined]
                          lambda: vm.status.stop.post(**{"overrule-shutdown": 1}))
        self.wait_task(upid, f"stop of VM {vmid}")  # type: ignore[attr-defined]
        log.info("proxmox: VM %s on %s stopped", vmid, node)

    def start(self, external_id: str) -> None:
        """Start a stopped VM of ours; a running one is done."""
        node, vmid = self._our_vm(external_id, "start")
        if self._status(node, vmid).get("status") == "running":
            return
        vm = self._vm(node, vmid)  # type: ignore[attr-defined]
        upid = self._call(f"starting VM {vmid}", lambda: vm.status.start.post())  # type: ignore[attr-defined]
        try:
            self.wait_task(upid, f"start of VM {vmid}")  # type: ignore[attr-defined]
        except TaskFailed as exc:
            if "already running" not in exc.exitstatus:
                raise
        log.info("proxmox: VM %s on %s started", vmid, node)

    # ------------------------------------------------------------------ password and SSH key

    def set_password(self, external_id: str, password: str, username: str | None = None) -> None:
        """The guest agent's set-user-password for `username` (default: ciuser, else root); idempotent."""
        if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            raise ProvisionError(f"the password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters")
        if any(ch in password for ch in "\r\n\x00"):
            raise ProvisionError("the password must not contain line breaks or NUL characters")
        user = self._user(username)
        node, vmid = self._running_vm(external_id, "set the password of")
        try:
            self._vm(node, vmid).agent("set-user-password").post(  # type: ignore[attr-defined]
                username=user, password=password)
        except (ResourceException, requests.RequestException) as exc:
            detail = _scrub(describe(exc), password)
            hint = (" (the token needs VM.GuestAgent.Unrestricted)"
                    if isinstance(exc, ResourceException) and exc.status_code == 403 else "")
            raise ProvisionError(f"setting the password of {user} on VM {vmid} failed: {detail}{hint}") from None
        log.info("proxmox: password of %s set on VM %s", user, vmid)

    def rotate_ssh_key(self, external_id: str, new_key: str, old_key: str | None = None) -> None:
        """Replace `old_key` (every line of it) by `new_key` in the user's authorized_keys through the guest
        agent, and in the cloud-init `sshkeys` for the next boot; the user's other keys stay. Idempotent."""
        problem = key_line_problem(new_key)
        if problem:
            raise ProvisionError(problem)
        new_key = " ".join(new_key.split())
        user = self._user(None)
        path = authorized_keys_path(user)
        node, vmid = self._running_vm(external_id, "rotate the SSH key of")
        vm = self._vm(node, vmid)  # type: ignore[attr-defined]
        current = self._read_guest_file(node, vmid, path)
        wanted = replace_key(current, new_key, old_key)
        if len(wanted.encode()) > FILE_WRITE_MAX:
            raise ProvisionError(f"{path} on VM {vmid} would exceed {FILE_WRITE_MAX} bytes; not written")
        if wanted != current:
            self._call(f"writing {path} on VM {vmid}",  # type: ignore[attr-defined]
                       lambda: vm.agent("file-write").post(file=path, content=wanted))
        stored = self._next_boot_value(node, vmid, "sshkeys")
        cloud = encode_sshkeys(replace_key(urllib.parse.unquote(stored), new_key, old_key))
        if cloud != stored:
            self._call(f"updating the cloud-init sshkeys of VM {vmid}",  # type: ignore[attr-defined]
                       lambda: vm.config.put(sshkeys=cloud))
        log.info("proxmox: SSH key of %s rotated on VM %s", user, vmid)

    def _next_boot_value(self, node: str, vmid: int, key: str) -> str:
        """A config value as the next start uses it: a pending change (a running VM's cloud-init edits wait
        there) over the current value; "" when unset or deleted."""
        items = self._call(f"reading the pending config of VM {vmid}",  # type: ignore[attr-defined]
                           lambda: self._vm(node, vmid).pending.get()) or []  # type: ignore[attr-defined]
        for item in items:
            if item.get("key") == key:
                if item.get("delete"):
                    return ""
                return str(item.get("pending", item.get("value")) or "")
        return ""

    def _read_guest_file(self, node: str, vmid: int, path: str) -> str:
        """A file's text through the guest agent; a missing file reads as empty."""
        try:
            reply = self._vm(node, vmid).agent("file-read").get(file=path) or {}  # type: ignore[attr-defined]
        except ResourceException as exc:
            text = str(exc).lower()
            if "no such file" in text or "not found" in text:
                return ""
            hint = " (the token needs VM.GuestAgent.FileRead)" if exc.status_code == 403 else ""
            raise ProvisionError(f"reading {path} on VM {vmid} failed: {describe(exc)}{hint}") from exc
        except requests.RequestException as exc:
            raise ProvisionError(f"reading {path} on VM {vmid} failed: {describe(exc)}") from exc
        if reply.get("truncated"):
            raise ProvisionError(f"{path} on VM {vmid} is too large to rewrite through the guest agent")
        return str(reply.get("content") or "")
