"""Proxmox VE driver: clone a cloud-init template per contract, over the PVE API with an API token.

One VM per contract, and never a VM left behind:
- the VMID comes from `/cluster/nextid` (or a configured range); `nextid` reserves nothing, so a clone
  that finds its VMID taken ("already exists") is retried with a new one, and one process never asks
  twice at once (a lock per API endpoint);
- the VM carries the contract: its name (`dc-<id>`), its description (`dc-agent contract: <id>`) from the
  clone on, then the tags `dc-agent` and `dc-contract-<id>`. `find` and `list_instances` go by those;
- every task (UPID) is waited for with a timeout and its exit status checked; "can't lock file … got
  timeout" and "VM is locked" are waited out and retried;
- any failure or cancel after the clone stops and destroys (with purge) the VM, then raises.

Adopting after a crash (`find`): a running VM of the contract is finished (wait for its IP) and returned;
a stopped one is destroyed and `find` returns None, so the agent provisions again. A VM is started only
after all of its configuration is written, so "running" means "configured", while a stopped VM may be
half made and `find` has no contract to finish it with.

The driver is synchronous and thread-safe: each thread has its own HTTP session; waits poll with
`cancel.wait`, so a cancel is seen within one poll interval.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import requests
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from provisioners.base import Cancelled, Contract, Health, Instance, InstanceDetails, ProvisionError
from provisioners.proxmox_config import STORAGE_ID, VMID_MAX, VMID_MIN, NODE_NAME, ProxmoxSettings, parse_settings
from provisioners.proxmox_errors import (
    GuestAgentTimeout,
    TaskFailed,
    VmGone,
    describe,
    is_gone,
    is_lock_wait,
    is_taken,
    is_transient,
    short_message,
)
from provisioners.proxmox_guest import (
    AGENT_TAG,
    attempt_of_description,
    boot_disk,
    contract_of_description,
    contract_of_tags,
    contract_tag,
    description,
    encode_sshkeys,
    merge_tags,
    net_mac,
    pick_addresses,
    split_tags,
    vm_name,
    wants_ipv4,
    with_bridge,
)
from provisioners.proxmox_lifecycle import ProxmoxLifecycle

log = logging.getLogger(__name__)

T = TypeVar("T")
GiB = 1024**3
MAX_VMID_RACES = 25


class ProxmoxProvisioner(ProxmoxLifecycle):
    """The `proxmox` driver. Construct with the `[provisioner.proxmox]` table; the lifecycle actions after
    provisioning (health, stop/start, password, SSH key) come from ProxmoxLifecycle."""

    name = "proxmox"

    # Shared by every driver instance of the process: one VMID pick + clone request at a time per API
    # endpoint, and at most max_parallel_clones clone tasks per node.
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()
    _vmid_locks: ClassVar[dict[str, threading.Lock]] = {}
    _clone_slots: ClassVar[dict[tuple[str, str], threading.BoundedSemaphore]] = {}

    def __init__(self, settings: dict[str, Any], config_path: Path | None = None) -> None:
        self.cfg: ProxmoxSettings = parse_settings(settings, config_path)
        self._local = threading.local()
        with self._registry_lock:
            self._vmid_lock = self._vmid_locks.setdefault(self.cfg.api_url, threading.Lock())

    def __repr__(self) -> str:
        return f"ProxmoxProvisioner({self.cfg!r})"

    # ------------------------------------------------------------------ plumbing

    @property
    def api(self) -> ProxmoxAPI:
        """This thread's API client (requests sessions are not shared between threads)."""
        api = getattr(self._local, "api", None)
        if api is None:
            c = self.cfg
            api = ProxmoxAPI(c.host, port=c.port, user=c.token_user, token_name=c.token_name,
                             token_value=c.token_secret, verify_ssl=c.verify, timeout=c.api_timeout)
            self._local.api = api
        return api

    def _vm(self, node: str, vmid: int) -> Any:
        return self.api.nodes(node).qemu(vmid)

    def _pause(self, cancel: threading.Event | None, seconds: float) -> bool:
        """Sleep; True when cancel was set (at once, not at the end of the sleep)."""
        if cancel is None:
            time.sleep(seconds)
            return False
        return cancel.wait(seconds)

    def _check(self, cancel: threading.Event | None, what: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled {what}")

    def _call(self, what: str, fn: Callable[[], T], *, cancel: threading.Event | None = None,
              deadline: float | None = None) -> T:
        """One API call; a held config/storage lock is waited out and the call retried until `deadline`."""
        deadline = deadline if deadline is not None else time.monotonic() + self.cfg.task_timeout
        delay = self.cfg.poll_interval
        while True:
            try:
                return fn()
            except (ResourceException, requests.RequestException) as exc:
                if is_lock_wait(exc) and time.monotonic() + delay < deadline:
                    log.info("proxmox: %s: lock held, retrying in %.1f s (%s)", what, delay, describe(exc))
                    if self._pause(cancel, delay):
                        raise Cancelled(f"cancelled while {what}") from None
                    delay = min(delay * 2, 10 * self.cfg.poll_interval, 30.0)
                    continue
                raise ProvisionError(f"Proxmox API error while {what}: {describe(exc)}") from exc

    def wait_task(self, upid: Any, what: str, cancel: threading.Event | None = None,
                  timeout: float | None = None) -> None:
        """Poll a task until it stops; raise TaskFailed on an exit status other than OK (or WARNINGS)."""
        if not isinstance(upid, str) or not upid.startswith("UPID:"):
            return  # a synchronous API (older PVE) answered with no task
        timeout = self.cfg.task_timeout if timeout is None else timeout
        try:
            node = Tasks.decode_upid(upid)["node"]
        except (AssertionError, ValueError):
            node = self.cfg.node
        deadline = time.monotonic() + timeout
        delay = min(0.05, self.cfg.poll_interval)
        while True:
            try:
                status = self.api.nodes(node).tasks(upid).status.get()
            except (ResourceException, requests.RequestException) as exc:
                if not is_transient(exc):
                    raise ProvisionError(f"{what}: cannot read the task status: {describe(exc)}") from exc
                status = None
            if status and status.get("status") == "stopped":
                exitstatus = str(status.get("exitstatus") or "unknown")
                if exitstatus == "OK" or exitstatus.startswith("WARNINGS"):
                    return
                raise TaskFailed(what, short_message(exitstatus))
            if time.monotonic() >= deadline:
                raise ProvisionError(f"{what}: the task did not finish within {timeout:g} s")
            if self._pause(cancel, min(delay, max(0.0, deadline - time.monotonic()))):
                raise Cancelled(f"cancelled while waiting for {what}")
            delay = min(delay * 2, self.cfg.poll_interval)

    def _config(self, node: str, vmid: int) -> dict[str, Any]:
        try:
            return self._vm(node, vmid).config.get()
        except ResourceException as exc:
            if is_gone(exc):
                raise VmGone(f"VM {vmid} does not exist") from exc
            raise

    def _wait_unlocked(self, node: str, vmid: int, what: str, cancel: threading.Event | None,
                       timeout: float | None = None) -> dict[str, Any]:
        """The VM's config once no `lock` is set on it (clone, create, backup, …)."""
        timeout = self.cfg.task_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                config = self._config(node, vmid)
            except (ResourceException, requests.RequestException) as exc:
                if not is_transient(exc) or time.monotonic() >= deadline:
                    raise ProvisionError(f"Proxmox API error while {what}: {describe(exc)}") from exc
                config = None
            if config is not None and not config.get("lock"):
                return config
            if time.monotonic() >= deadline:
                lock = (config or {}).get("lock", "?")
                raise ProvisionError(f"{what}: VM {vmid} stayed locked ({lock}) for {timeout:g} s")
            if self._pause(cancel, self.cfg.poll_interval):
                raise Cancelled(f"cancelled while {what}")

    # ------------------------------------------------------------------ targets and VMIDs

    def _target(self, contract: Contract) -> tuple[str, int, str | None]:
        """(node, template VMID, storage) for this contract: the settings, or the offering's overrides."""
        node, template, storage = self.cfg.node, self.cfg.template_vmid, self.cfg.storage
        over = contract.provisioner_config or {}
        if not isinstance(over, dict):
            raise ProvisionError("the offering's provisioner config is not an object")

        def pick(*keys: str) -> Any:
            return next((over[k] for k in keys if over.get(k) not in (None, "")), None)

        value = pick("node")
        if value is not None:
            if not isinstance(value, str) or not NODE_NAME.match(value):
                raise ProvisionError(f"the offering's provisioner config has an invalid node {value!r}")
            node = value
        value = pick("template_vmid", "templateVmid")
        if value is not None:
            try:
                template = int(value)
            except (TypeError, ValueError):
                template = -1
            if isinstance(value, bool) or not VMID_MIN <= template <= VMID_MAX:
                raise ProvisionError(f"the offering's provisioner config has an invalid template_vmid {value!r}")
        value = pick("storage")
        if value is not None:
            if not isinstance(value, str) or not STORAGE_ID.match(value):
                raise ProvisionError(f"the offering's provisioner config has an invalid storage {value!r}")
            if not self.cfg.full_clone:
                raise ProvisionError("the offering sets a storage, but this agent makes linked clones "
                                     "(full_clone = false), which stay on the template's storage")
            storage = value
        return node, template, storage

    def _resources(self) -> list[dict[str, Any]]:
        return self.api.cluster.resources.get(type="vm") or []

    def _next_vmid(self) -> int:
        if self.cfg.vmid_range is None:
            return int(self.api.cluster.nextid.get())
        lo, hi = self.cfg.vmid_range
        used = {int(r["vmid"]) for r in self._resources() if "vmid" in r}
        span = hi - lo + 1
        start = random.randrange(span)  # agents sharing a range start apart, so they rarely collide
        for i in range(span):
            vmid = lo + (start + i) % span
            if vmid in used:
                continue
            try:
                return int(self.api.cluster.nextid.get(vmid=vmid))
            except ResourceException as exc:
                if exc.status_code == 400:  # taken by a guest this token cannot see
                    continue
                raise
        raise ProvisionError(f"no free VMID left in vmid_range {lo}-{hi}")

    def _clone_slot(self, node: str) -> threading.BoundedSemaphore:
        with self._registry_lock:
            return self._clone_slots.setdefault(
                (self.cfg.api_url, node), threading.BoundedSemaphore(self.cfg.max_parallel_clones))

    def _template_node(self, template: int) -> str:
        for res in self._resources():
            if int(res.get("vmid", -1)) == template:
                if not res.get("template"):
                    raise ProvisionError(f"VM {template} is not a template (convert it with `qm template {template}`)")
                return str(res["node"])
        raise ProvisionError(f"template VM {template} not found (or the token lacks VM.Audit on it)")

    def _start_clone(self, contract: Contract, node: str, template: int, storage: str | None, attempt: str,
                     cancel: threading.Event) -> tuple[int, str]:
        """Pick a VMID and ask for the clone; a VMID taken meanwhile (another agent) means a new one."""
        source = self._call(f"looking up template {template}", lambda: self._template_node(template),
                            cancel=cancel)
        params: dict[str, Any] = {
            "name": vm_name(contract.contract_id),
            "description": description(contract.contract_id, attempt),
            "full": 1 if self.cfg.full_clone else 0,
        }
        if storage and self.cfg.full_clone:
            params["storage"] = storage
        if self.cfg.pool:
            params["pool"] = self.cfg.pool
        if source != node:
            params["target"] = node
        deadline = time.monotonic() + self.cfg.task_timeout
        races = 0
        delay = self.cfg.poll_interval
        while True:
            self._check(cancel, "before the clone")
            with self._vmid_lock:
                try:
                    vmid = self._next_vmid()
                except ProvisionError:
                    raise
                except (ResourceException, requests.RequestException) as exc:
                    raise ProvisionError(f"Proxmox API error while picking a VMID: {describe(exc)}") from exc
                try:
                    upid = self.api.nodes(source).qemu(template).clone.post(newid=vmid, **params)
                    log.info("proxmox: contract %s: cloning template %s to VM %s on %s",
                             contract.contract_id, template, vmid, node)
                    return vmid, upid
                except ResourceException as exc:
                    error: BaseException = exc
                except requests.RequestException as exc:
                    # The request may have reached PVE: the VM may exist. The caller removes it if ours.
                    raise _UnsureClone(vmid, f"Proxmox API error while cloning template {template} "
                                             f"to VM {vmid}: {describe(exc)}") from exc
            if is_taken(error) and races < MAX_VMID_RACES:
                races += 1
                log.info("proxmox: VMID %s was taken meanwhile (%s); picking another", vmid, describe(error))
                if self._pause(cancel, random.uniform(0, 0.05)):
                    raise Cancelled("cancelled before the clone")
                continue
            if is_lock_wait(error) and time.monotonic() + delay < deadline:
                log.info("proxmox: clone of %s waits for a lock: %s", template, describe(error))
                if self._pause(cancel, delay):
                    raise Cancelled("cancelled before the clone")
                delay = min(delay * 2, 30.0)
                continue
            raise ProvisionError(f"Proxmox API error while cloning template {template} to VM {vmid}: "
                                 f"{describe(error)}") from error

    # ------------------------------------------------------------------ provision

    def provision(self, contract: Contract, cancel: threading.Event) -> InstanceDetails:
        node, template, storage = self._target(contract)
        self._check(cancel, "before provisioning")
        slot = self._clone_slot(node)
        while not slot.acquire(timeout=min(0.2, self.cfg.poll_interval)):
            self._check(cancel, "while waiting for a clone slot")
        vmid: int | None = None
        running_clone: str | None = None  # the clone task's UPID until it has ended
        # Written into the VM's description: clean-up destroys the VM only while this attempt still owns
        # it (an agent that adopted it after our lease expired has written its own).
        attempt = secrets.token_hex(8)
        try:
            try:
                vmid, running_clone = self._start_clone(contract, node, template, storage, attempt, cancel)
                self.wait_task(running_clone, f"clone of template {template} to VM {vmid}", cancel)
                running_clone = None
            finally:
                slot.release()
            return self._finish(contract, node, vmid, template, attempt, cancel)
        except BaseException as exc:
            if isinstance(exc, _UnsureClone):
                vmid = exc.vmid
            if vmid is None or isinstance(exc, _Adopted):
                if isinstance(exc, ProvisionError) or not isinstance(exc, Exception):
                    raise
                raise ProvisionError(f"unexpected error before the clone: {describe(exc)}") from exc
            problem = self._remove(node, vmid, contract.contract_id, attempt, running_clone)
            note = f"; VM {vmid} removed" if problem is None else f"; {problem}"
            if isinstance(exc, Cancelled):
                raise Cancelled(f"provisioning cancelled{note}") from exc
            if isinstance(exc, GuestAgentTimeout):
                raise GuestAgentTimeout(f"{exc}{note}") from exc
            if isinstance(exc, ProvisionError):
                raise ProvisionError(f"{exc}{note}") from exc
            if isinstance(exc, Exception):
                raise ProvisionError(f"unexpected error on VM {vmid}: {describe(exc)}{note}") from exc
            raise  # KeyboardInterrupt and the like, after the clean-up

    def _finish(self, contract: Contract, node: str, vmid: int, template: int, attempt: str,
                cancel: threading.Event) -> InstanceDetails:
        """Everything after the clone: mark, configure, grow the disk, start, wait for the address."""
        config = self._wait_unlocked(node, vmid, f"waiting for VM {vmid} to be unlocked after the clone", cancel)
        vm = self._vm(node, vmid)
        tags = merge_tags(config.get("tags"), AGENT_TAG, contract_tag(contract.contract_id))
        self._call(f"tagging VM {vmid}", lambda: vm.config.put(tags=tags), cancel=cancel)
        self._check(cancel, "after the clone")

        changes = self._config_changes(contract, config)
        if changes:
            self._call(f"configuring VM {vmid}", lambda: vm.config.put(**changes), cancel=cancel)
        self._check(cancel, "after configuring the VM")

        disk = boot_disk(config)
        if contract.storage_gb and disk is not None and contract.storage_gb * GiB > disk[1]:
            key, size = disk
            upid = self._call(f"resizing disk {key} of VM {vmid} to {contract.storage_gb}G",
                              lambda: vm.resize.put(disk=key, size=f"{contract.storage_gb}G"), cancel=cancel)
            self.wait_task(upid, f"resize of disk {key} of VM {vmid}", cancel)
        self._check(cancel, "before starting the VM")

        upid = self._call(f"starting VM {vmid}", lambda: vm.status.start.post(), cancel=cancel)
        self.wait_task(upid, f"start of VM {vmid}", cancel)

        mac = net_mac(config.get("net0"))
        ipv4, ipv6 = self._wait_for_address(node, vmid, mac, cancel)
        now = self._call(f"reading the config of VM {vmid}", lambda: vm.config.get(), cancel=cancel)
        if attempt_of_description(now.get("description")) != attempt:
            raise _Adopted(f"VM {vmid} was adopted by another provisioning of this contract meanwhile")
        log.info("proxmox: contract %s: VM %s on %s is up at %s %s", contract.contract_id, vmid, node, ipv4, ipv6)
        return self._details(node, vmid, ipv4, ipv6, name=str(config.get("name") or vm_name(contract.contract_id)),
                             template=template)

    def _config_changes(self, contract: Contract, config: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {"ipconfig0": self.cfg.ipconfig0}
        if contract.cpu_cores:
            changes["cores"] = int(contract.cpu_cores)
        if contract.memory_mb:
            changes["memory"] = int(contract.memory_mb)
        if self.cfg.ciuser:
            changes["ciuser"] = self.cfg.ciuser
        if contract.requester_ssh_pubkey and contract.requester_ssh_pubkey.strip():
            changes["sshkeys"] = encode_sshkeys(contract.requester_ssh_pubkey)
        agent = str(config.get("agent", "0")).split(",")[0]
        if agent not in ("1", "enabled=1"):
            changes["agent"] = "enabled=1"  # without it PVE never talks to the guest agent
        if self.cfg.bridge and config.get("net0"):
            net0 = with_bridge(str(config["net0"]), self.cfg.bridge)
            if net0 != config["net0"]:
                changes["net0"] = net0
        return changes

    def _details(self, node: str, vmid: int, ipv4: str | None, ipv6: str | None, *, name: str,
                 template: int | None = None) -> InstanceDetails:
        extra: dict[str, Any] = {"vmid": vmid, "name": name}
        if template is not None:
            extra["templateVmid"] = template
        return InstanceDetails(external_id=f"{node}/{vmid}", provisioner=self.name, ip_address=ipv4,
                               ipv6_address=ipv6, ssh_port=22, node=node, extra=extra)

    def _wait_for_address(self, node: str, vmid: int, mac: str | None,
                          cancel: threading.Event | None) -> tuple[str | None, str | None]:
        """Poll the guest agent's network-get-interfaces until the VM has a usable address."""
        timeout = self.cfg.ip_timeout
        need_v4 = wants_ipv4(self.cfg.ipconfig0)
        deadline = time.monotonic() + timeout
        answered = False
        last_error = ""
        delay = min(0.2, self.cfg.poll_interval)
        agent = self._vm(node, vmid).agent("network-get-interfaces")
        while True:
            try:
                reply = agent.get()
            except (ResourceException, requests.RequestException) as exc:
                if isinstance(exc, ResourceException) and exc.status_code in (401, 403):
                    raise ProvisionError(f"cannot ask the guest agent of VM {vmid}: {describe(exc)} "
                                         "(the token needs VM.GuestAgent.Audit)") from exc
                if is_gone(exc):
                    raise ProvisionError(f"VM {vmid} disappeared while waiting for its address") from exc
                last_error = describe(exc)
            else:
                answered = True
                ipv4, ipv6 = pick_addresses((reply or {}).get("result"), mac)
                if (ipv4 if need_v4 else ipv4 or ipv6):
                    return ipv4, ipv6
            if time.monotonic() >= deadline:
                if answered:
                    family = "IPv4" if need_v4 else "IP"
                    raise GuestAgentTimeout(f"guest agent of VM {vmid} answered but reported no usable {family} "
                                            f"address within {timeout:g} s (check DHCP/ipconfig0 on the VM's network)")
                raise GuestAgentTimeout(f"guest agent never answered within {timeout:g} s on VM {vmid} "
                                        f"(is qemu-guest-agent installed and enabled in the template?; "
                                        f"last answer: {last_error or 'none'})")
            if self._pause(cancel, min(delay, max(0.0, deadline - time.monotonic()))):
                raise Cancelled(f"cancelled while waiting for the address of VM {vmid}")
            delay = min(delay * 2, self.cfg.poll_interval)

    # ------------------------------------------------------------------ removal

    def _remove(self, node: str, vmid: int, contract_id: str, attempt: str, clone_upid: str | None) -> str | None:
        """Stop and destroy a VM this provision made. None when it is gone; else what went wrong."""
        if clone_upid:
            try:  # a clone still running cannot be destroyed: ask PVE to stop it, then wait for its end
                self.api.nodes(Tasks.decode_upid(clone_upid)["node"]).tasks(clone_upid).delete()
            except (ResourceException, requests.RequestException, AssertionError):
                pass
            try:
                self.wait_task(clone_upid, f"clone to VM {vmid}")
            except ProvisionError:
                pass  # failed or stopped: either way, see what is left below
        try:
            config = self._config(node, vmid)
        except VmGone:
            return None
        except (ResourceException, requests.RequestException) as exc:
            return f"VM {vmid} could not be checked for removal ({describe(exc)}); remove it by hand"
        text = config.get("description")
        if contract_of_description(text) != contract_id or attempt_of_description(text) != attempt:
            return f"VM {vmid} is not (or no longer) this attempt's, so it was left alone"
        return self._destroy(node, vmid)

    def _destroy(self, node: str, vmid: int) -> str | None:
        """Stop (if running) and destroy with purge; None when the VM is gone, else the problem."""
        what = f"removing VM {vmid}"
        try:
            self._wait_unlocked(node, vmid, what, None)
            vm = self._vm(node, vmid)
            status = self._call(f"reading the status of VM {vmid}", lambda: vm.status.current.get())
            if status.get("status") != "stopped":
                self.wait_task(self._call(f"stopping VM {vmid}", lambda: vm.status.stop.post()),
                               f"stop of VM {vmid}")
            upid = self._call(f"destroying VM {vmid}",
                              lambda: vm.delete(purge=1, **{"destroy-unreferenced-disks": 1}))
            self.wait_task(upid, f"destroy of VM {vmid}")
            log.info("proxmox: VM %s on %s destroyed", vmid, node)
            return None
        except ProvisionError as exc:
            if isinstance(exc, VmGone) or (isinstance(exc.__cause__, ResourceException) and is_gone(exc.__cause__)):
                return None
            try:
                self._config(node, vmid)
            except VmGone:
                return None
            except Exception:  # noqa: BLE001 - report the original problem
                pass
            return f"removing VM {vmid} failed ({exc}); remove it by hand"

    # ------------------------------------------------------------------ the rest of the interface

    def _ours(self) -> list[dict[str, Any]]:
        return [r for r in self._resources()
                if not r.get("template") and AGENT_TAG in [t.lower() for t in split_tags(r.get("tags"))]]

    def list_instances(self) -> list[Instance]:
        try:
            return [Instance(external_id=f"{r['node']}/{r['vmid']}", contract_id=contract_of_tags(r.get("tags")))
                    for r in self._ours()]
        except (ResourceException, requests.RequestException) as exc:
            raise ProvisionError(f"Proxmox API error while listing VMs: {describe(exc)}") from exc

    def find(self, contract_id: str) -> InstanceDetails | None:
        """This contract's VM after a crash: finished and returned if running, destroyed if stopped."""
        try:
            candidates = [r for r in self._resources() if not r.get("template") and (
                contract_of_tags(r.get("tags")) == contract_id or r.get("name") == vm_name(contract_id))]
        except (ResourceException, requests.RequestException) as exc:
            raise ProvisionError(f"Proxmox API error while looking for contract {contract_id}: "
                                 f"{describe(exc)}") from exc
        found: InstanceDetails | None = None
        for res in candidates:
            node, vmid = str(res["node"]), int(res["vmid"])
            try:
                config = self._wait_unlocked(node, vmid, f"waiting for VM {vmid} to be unlocked", None)
            except VmGone:
                continue
            owner = contract_of_description(config.get("description")) or contract_of_tags(config.get("tags"))
            if owner != contract_id:
                continue  # same name, someone else's VM
            if found is None and self._running(node, vmid):
                try:
                    ipv4, ipv6 = self._wait_for_address(node, vmid, net_mac(config.get("net0")), None)
                except ProvisionError as exc:
                    log.warning("proxmox: contract %s: VM %s cannot be adopted (%s); destroying it",
                                contract_id, vmid, exc)
                else:
                    # Take the VM over: the attempt that made it (if still alive) must not destroy it now.
                    text = description(contract_id, f"adopted-{secrets.token_hex(8)}")
                    self._call(f"adopting VM {vmid}", lambda: self._vm(node, vmid).config.put(description=text))
                    found = self._details(node, vmid, ipv4, ipv6, name=str(config.get("name") or ""))
                    log.info("proxmox: contract %s: adopted running VM %s on %s", contract_id, vmid, node)
                    continue
            problem = self._destroy(node, vmid)
            if problem is not None:
                raise ProvisionError(f"contract {contract_id}: a leftover VM could not be removed: {problem}")
            log.info("proxmox: contract %s: removed unfinished VM %s", contract_id, vmid)
        return found

    def _running(self, node: str, vmid: int) -> bool:
        """True if running; an API error raises (a VM is never destroyed on a status it could not read)."""
        status = self._call(f"reading the status of VM {vmid}", lambda: self._vm(node, vmid).status.current.get())
        return status.get("status") == "running"

    def terminate(self, external_id: str) -> None:
        match = re.fullmatch(r"(?:([A-Za-z0-9-]+)/)?(\d+)", external_id.strip())
        if not match:
            raise ProvisionError(f"{external_id!r} is not a Proxmox instance id (node/vmid)")
        vmid = int(match.group(2))
        try:
            res = next((r for r in self._resources() if int(r.get("vmid", -1)) == vmid), None)
        except (ResourceException, requests.RequestException) as exc:
            raise ProvisionError(f"Proxmox API error while looking up VM {vmid}: {describe(exc)}") from exc
        if res is None:
            return  # already gone
        if res.get("template") or AGENT_TAG not in [t.lower() for t in split_tags(res.get("tags"))]:
            raise ProvisionError(f"refusing to destroy VM {vmid}: it does not carry the {AGENT_TAG} tag")
        problem = self._destroy(str(res["node"]), vmid)
        if problem is not None:
            raise ProvisionError(problem)

    def health(self) -> Health:
        checks = {"api_reachable": False, "token_accepted": False, "template_present": False}
        try:
            version = self.api.version.get()
            checks["api_reachable"] = checks["token_accepted"] = True
        except ResourceException as exc:
            checks["api_reachable"] = True
            detail = ("API token rejected (check api_token_id and the secret)" if exc.status_code == 401
                      else f"Proxmox API error: {describe(exc)}")
            return Health(ok=False, detail=detail, checks=checks)
        except requests.RequestException as exc:
            return Health(ok=False, detail=f"{self.cfg.api_url}: {describe(exc)}", checks=checks)
        template = self.cfg.template_vmid
        try:
            res = next((r for r in self._resources() if int(r.get("vmid", -1)) == template), None)
        except (ResourceException, requests.RequestException) as exc:
            return Health(ok=False, detail=f"cannot list VMs: {describe(exc)}", checks=checks)
        if res is None:
            return Health(ok=False, checks=checks,
                          detail=f"template VM {template} not found (or the token lacks VM.Audit on it)")
        if not res.get("template"):
            return Health(ok=False, checks=checks, detail=f"VM {template} is not a template")
        checks["template_present"] = True
        return Health(ok=True, checks=checks,
                      detail=f"PVE {version.get('version', '?')} at {self.cfg.api_url}, node {self.cfg.node}, "
                             f"template {template} on {res.get('node')}")

    def inventory(self) -> dict[str, Any]:
        """The node's resources for the heartbeat (provisioners/proxmox_inventory.py says what needs which grant)."""
        from provisioners.proxmox_inventory import node_inventory

        return node_inventory(self.api, self.cfg.node, self.__dict__.setdefault("_inventory_refused", set()))


class _UnsureClone(ProvisionError):
    """The clone request failed in transit: the VM may or may not exist."""

    def __init__(self, vmid: int, message: str) -> None:
        super().__init__(message)
        self.vmid = vmid


class _Adopted(ProvisionError):
    """Another provisioning of the contract (an agent that took over the lease) adopted our VM."""
