"""The decent-cloud dialect: the live Decent Cloud marketplace API (docs/decent-cloud-dialect.md).

What differs from pool-api, and how this module hides it from the loop:

* Signatures are Ed25519ph with the context `b"decent-cloud"` (:class:`dc_agent.signing.Ed25519phSigner`).
* Refusals are HTTP 200 with `success: false` and a message; :func:`refusal` maps the messages onto the
  agent's error tree (a lock held by another agent, `acquired: false`, becomes `Conflict`).
* Pending contracts are snake_case, sizes are text ("16 GB"), configs are JSON text.
* Status goes through one endpoint, `PUT /provider/rental-requests/{id}/provisioning`, with
  `provisioning` before `provisioned`; `provisioning_failed` ends the contract and refunds the tenant
  (:attr:`failures_are_final`), so the loop retries locally before reporting a failure.
* The server does not check the lock holder on status reports. Exactly-once rests on the agent: every
  status report is sent only right after this agent (re)took the lock; if another agent holds it, the
  report is refused here as `Conflict`, never sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

from dc_agent.api.base import (PASSWORD, ActionRequest, HeartbeatAnswer, HeartbeatInfo, Lease, Offer, ReconcileAnswer,
                               ReconcileItem)
from dc_agent.api.http import SignedClient
from dc_agent.api.pool_api import reconcile_items
from dc_agent.errors import ApiError, Conflict, Forbidden, Gone, NotFound, Refused, UnexpectedAnswer
from dc_agent.signing import Ed25519phSigner
from provisioners.base import Contract, Instance, InstanceHealth

TERMINAL = ("cancelled", "canceled", "rejected", "expired", "provisioningfailed", "provisioning_failed")
_TRANSITION = re.compile(r"Invalid status transition: (\w+) -> (\w+)", re.I)
_LOCKABLE = re.compile(r"not in lockable status \(status: (\w+)\)", re.I)
REPORTED = ("provisioned", "active", "paused")


def refusal(exc: Refused) -> ApiError:
    """The agent error a live-API refusal message stands for (the message itself is kept)."""
    text = exc.detail
    low = text.lower()
    cls: type[ApiError] | None = None
    move = _TRANSITION.search(text)
    if "already locked by another agent" in low:
        cls = Conflict
    elif move and move.group(1).lower() in TERMINAL:
        cls = Gone  # the contract is over (cancelled, refunded, ...)
    elif "not in lockable status" in low or "not in cancelled status" in low:
        cls = Gone
    elif "not found" in low:
        cls = NotFound
    elif low.startswith("unauthorized") or "not delegated" in low or "does not have" in low \
            or "payment not succeeded" in low or "belong to a pool" in low:
        cls = Forbidden
    if cls is None:
        return exc
    return cls(exc.endpoint, exc.status, text)


def _size(text: Any, unit: str) -> int | None:
    """'16 GB' -> 16384 (unit MB) or 16 (unit GB); None when unreadable (the driver's default applies)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B)?\s*", text, re.I)
    if not match:
        return None
    mb = float(match.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[
        (match.group(2) or ("GB" if unit == "GB" else "MB"))[0].upper()]
    return int(mb if unit == "MB" else mb / 1024)


def _json_object(text: Any) -> dict[str, Any] | None:
    """A JSON-text config as an object; text that is not a JSON object is kept under `raw`."""
    if text is None or text == "":
        return None
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": text}


def contract_from_live(item: dict[str, Any]) -> Contract:
    """A pending-provision item (snake_case, docs/decent-cloud-dialect.md 3.5) as a driver's Contract."""
    cores = item.get("cpu_cores")
    return Contract(
        contract_id=str(item["contract_id"]),
        offering_id=str(item.get("offering_id") or ""),
        requester_ssh_pubkey=item.get("requester_ssh_pubkey") or None,
        cpu_cores=int(cores) if isinstance(cores, (int, float)) and not isinstance(cores, bool) else None,
        memory_mb=_size(item.get("memory_amount"), "MB"),
        storage_gb=_size(item.get("storage_capacity"), "GB"),
        provisioner_type=item.get("provisioner_type") or None,
        provisioner_config=_json_object(item.get("provisioner_config")),
        instance_config=_json_object(item.get("instance_config")),
        post_provision_script=item.get("post_provision_script") or None,
    )


def instance_details_text(details: dict[str, Any]) -> str:
    """Our instance details (camelCase) as the live API stores them: JSON text of the Rust agent's
    snake_case `Instance` (external_id, ip_address, ipv6_address, ssh_port, root_password,
    additional_details)."""
    extra = dict(details.get("extra") or {})
    for key in ("provisioner", "node"):
        if details.get(key) is not None:
            extra.setdefault(key, details[key])
    out: dict[str, Any] = {
        "external_id": details.get("externalId"),
        "ip_address": details.get("ipAddress"),
        "ipv6_address": details.get("ipv6Address"),
        "ssh_port": int(details.get("sshPort") or 22),
        "root_password": details.get("rootPassword"),
        "additional_details": extra or None,
    }
    if details.get("publicIp"):
        out["public_ip"] = details["publicIp"]
    return json.dumps(out, separators=(",", ":"))


class DecentCloudClient(SignedClient):
    """Signed calls of one agent to the live Decent Cloud API."""

    dialect = "decent-cloud"
    failures_are_final = True  # provisioning_failed closes the contract and refunds the tenant

    signer = Ed25519phSigner

    async def _call(self, method: str, path: str, body: Any = None, *, policy: str) -> Any:
        try:
            return await self.http.call(method, path, body, policy=policy)
        except Refused as exc:
            raise refusal(exc) from None

    def _pk(self) -> str:
        return f"/providers/{self.provider_pubkey}"

    @staticmethod
    def _id(contract_id: str) -> str:
        return quote(str(contract_id), safe="")

    def _status_path(self, contract_id: str) -> str:
        return f"/provider/rental-requests/{self._id(contract_id)}/provisioning"

    # -- heartbeat and dispatch ---------------------------------------------------------------------

    async def heartbeat(self, info: HeartbeatInfo, *, policy: str = "heartbeat") -> HeartbeatAnswer:
        body: dict[str, Any] = {"version": info.version, "provisionerType": info.provisioner_type,
                                "activeContracts": info.active_contracts}
        # Several provisioners: the live API has no field for them, so each is one capability string.
        several = [f"provisioner:{p['name']}:{p['type']}" for p in info.provisioners or []]
        capabilities = [*info.capabilities, *(several if len(several) > 1 else [])]
        if capabilities:
            body["capabilities"] = capabilities
        if info.resources is not None:
            body["resources"] = info.resources
        data = await self._call("POST", f"{self._pk()}/heartbeat", body, policy=policy)
        data = data if isinstance(data, dict) else {}
        try:
            interval = float(data["nextHeartbeatSeconds"]) if data.get("nextHeartbeatSeconds") is not None else None
        except (TypeError, ValueError):
            interval = None
        upgrade, pool = data.get("upgradeToVersion"), data.get("poolName")
        return HeartbeatAnswer(next_heartbeat_seconds=interval, upgrade_to_version=str(upgrade) if upgrade else None,
                               pool_name=str(pool) if pool else None)

    async def pending(self) -> list[Offer]:
        path = f"{self._pk()}/contracts/pending-provision"
        data = await self._call("GET", path, policy="poll")
        if data is None:
            return []
        if not isinstance(data, list):
            raise UnexpectedAnswer(self.http.endpoint("GET", path), 200,
                                   f"expected a list of contracts, got {type(data).__name__}")
        offers = []
        for item in data:
            if not isinstance(item, dict) or not item.get("contract_id"):
                continue
            cid = str(item["contract_id"])
            try:
                offers.append(Offer(cid, False, contract_from_live(item)))
            except (KeyError, TypeError, ValueError) as exc:
                offers.append(Offer(cid, False, None, f"{type(exc).__name__}: {exc}"))
        return offers

    async def lock(self, contract_id: str, *, renew: bool = False) -> Lease:
        path = f"{self._pk()}/contracts/{self._id(contract_id)}/lock"
        data = await self._call("POST", path, policy="renew" if renew else "lock")
        if not isinstance(data, dict) or not isinstance(data.get("acquired"), bool):
            raise UnexpectedAnswer(self.http.endpoint("POST", path), 200, f"lock answer without `acquired`: {data!r:.100}")
        if not data["acquired"]:
            raise Conflict(self.http.endpoint("POST", path), 200, "the contract is locked by another agent")
        expires = data.get("expiresAtNs")
        return Lease(expires_at_ns=int(expires) if isinstance(expires, (int, float)) else None)

    async def claim(self, max_contracts: int, wait_seconds: float, *, free_slots: int,
                    exclude: list[str]) -> list[tuple[Offer, Lease]]:
        raise NotImplementedError("the live API has no claim endpoint (its heartbeat never offers one)")

    async def unlock(self, contract_id: str, *, quick: bool = False) -> None:
        await self._call("DELETE", f"{self._pk()}/contracts/{self._id(contract_id)}/lock",
                         policy="unlock-quick" if quick else "unlock")

    # -- status -------------------------------------------------------------------------------------

    async def _put_status(self, contract_id: str, status: str, details: str | None = None) -> None:
        body: dict[str, Any] = {"status": status}
        if details is not None:
            body["instanceDetails"] = details
        await self._call("PUT", self._status_path(contract_id), body, policy="report")

    async def started(self, contract_id: str) -> None:
        """`provisioning`; a contract already in provisioning (an earlier attempt) counts as done."""
        try:
            await self._put_status(contract_id, "provisioning")
        except Refused as exc:
            move = _TRANSITION.search(exc.detail)
            if not (move and move.group(1).lower() == "provisioning"):
                raise

    async def report_provisioned(self, contract_id: str, details: dict[str, Any]) -> None:
        try:
            await self.lock(contract_id)  # the server does not check the holder: only report while holding it
        except Gone as exc:
            state = _LOCKABLE.search(exc.detail)
            if state and state.group(1).lower() in REPORTED:
                return  # already provisioned: this is a resend whose acknowledgement was lost
            raise
        text = instance_details_text(details)
        try:
            await self._put_status(contract_id, "provisioned", text)
        except Refused as exc:
            move = _TRANSITION.search(exc.detail)
            if not move:
                raise
            current = move.group(1).lower()
            if current in REPORTED:
                return  # already reported (a resend after a lost acknowledgement)
            if current != "accepted":
                raise
            await self.started(contract_id)  # accepted -> provisioning -> provisioned
            await self._put_status(contract_id, "provisioned", text)

    async def report_failed(self, contract_id: str, message: str) -> None:
        await self.lock(contract_id)  # a stale agent must never close a contract another agent provisions
        await self._put_status(contract_id, "provisioning_failed", message or "provisioning failed")

    # -- reconcile ----------------------------------------------------------------------------------

    async def reconcile(self, running: list[Instance]) -> ReconcileAnswer:
        path = f"{self._pk()}/reconcile"
        body = {"runningInstances": [{"externalId": i.external_id, **({"contractId": i.contract_id}
                                                                        if i.contract_id else {})}
                                     for i in running]}
        data = await self._call("POST", path, body, policy="reconcile")
        if not isinstance(data, dict):
            raise UnexpectedAnswer(self.http.endpoint("POST", path), 200,
                                   f"expected an object, got {type(data).__name__}")
        return ReconcileAnswer(keep=reconcile_items(data.get("keep")), terminate=reconcile_items(data.get("terminate")),
                               unknown=[ReconcileItem(str(u.get("externalId")), None, u.get("message"))
                                        for u in data.get("unknown") or [] if isinstance(u, dict)],
                               pause=reconcile_items(data.get("pause")))

    async def report_terminated(self, contract_id: str) -> None:
        await self._call("PUT", f"{self._pk()}/contracts/{self._id(contract_id)}/terminated", policy="report")

    # -- after provisioning -------------------------------------------------------------------------

    async def report_health(self, contract_id: str, health: InstanceHealth, checked_at_ns: int) -> None:
        body: dict[str, Any] = {"checkedAt": checked_at_ns, "status": health.status}
        if health.latency_ms is not None:
            body["latencyMs"] = int(round(health.latency_ms))
        if health.detail:
            body["details"] = health.detail[:500]
        await self._call("POST", f"/contracts/{self._id(contract_id)}/health", body, policy="report")

    async def pending_actions(self, kind: str) -> list[ActionRequest]:
        """The live lists are snake_case and carry no request id (one request per contract at a time) and no
        instance id (the agent looks it up)."""
        which = "pending-password-reset" if kind == PASSWORD else "pending-ssh-key-rotation"
        path = f"{self._pk()}/contracts/{which}"
        data = await self._call("GET", path, policy="poll")
        if data is None:
            return []
        if not isinstance(data, list):
            raise UnexpectedAnswer(self.http.endpoint("GET", path), 200, f"expected a list, got {type(data).__name__}")
        out = []
        for item in data:
            if not isinstance(item, dict) or not item.get("contract_id"):
                continue
            cid = str(item["contract_id"])
            new_key = item.get("requester_ssh_pubkey") if kind != PASSWORD else None
            request_id = f"{kind}:{cid}" + (f":{hashlib.sha256(str(new_key).encode()).hexdigest()[:12]}"
                                            if new_key else "")
            out.append(ActionRequest(kind=kind, contract_id=cid, request_id=request_id, new_key=new_key))
        return out

    async def report_action(self, request: ActionRequest, *, password: str | None = None,
                            error: str | None = None) -> bool:
        if error is not None:
            return False  # the live API has no failure report for these; the request stays pending there
        if request.kind == PASSWORD:
            if not password:
                raise ValueError("a password report needs the password")
            # plain over TLS: the server encrypts it for the tenant (docs/decent-cloud-dialect.md 3.9)
            await self._call("PUT", f"/provider/rental-requests/{self._id(request.contract_id)}/password",
                             {"newPassword": password}, policy="report")
        else:
            await self._call("PUT", f"/provider/rental-requests/{self._id(request.contract_id)}/ssh-key-rotation",
                             policy="report")
        return True
