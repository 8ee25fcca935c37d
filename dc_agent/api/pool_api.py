"""The pool-api dialect: our reference pool server (docs/protocol.md). camelCase JSON, HTTP statuses carry
the meaning (409 = another agent holds the lock), pure Ed25519 signatures."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from dc_agent.api.base import (PASSWORD, ActionRequest, HeartbeatAnswer, HeartbeatInfo, Lease, Offer, ReconcileAnswer,
                               ReconcileItem)
from dc_agent.api.http import SignedClient
from dc_agent.errors import UnexpectedAnswer
from dc_agent.signing import Ed25519Signer
from provisioners.base import Contract, Instance, InstanceHealth

ACTION_PATHS = {PASSWORD: ("pending-password-reset", "password"), "ssh_key": ("pending-ssh-key-rotation",
                                                                              "ssh-key-rotation")}


def seal_password(password: str, recipient_public_key: str) -> str:
    """The password sealed (NaCl sealed box) to the tenant's X25519 key, base64: pool_api never sees it."""
    import base64

    from nacl.public import PublicKey, SealedBox

    box = SealedBox(PublicKey(bytes.fromhex(recipient_public_key)))
    return base64.b64encode(box.encrypt(password.encode())).decode()


def _items(endpoint: str, data: Any, key: str) -> list[Any]:
    """A list answer, or a `{key: [...]}` object holding one."""
    if isinstance(data, dict):
        data = data.get(key, [])
    if data is None:
        return []
    if not isinstance(data, list):
        raise UnexpectedAnswer(endpoint, 200, f"expected a list, got {type(data).__name__}")
    return data


def reconcile_items(raw: Any) -> list[ReconcileItem]:
    out = []
    for item in raw or []:
        if not isinstance(item, dict) or not item.get("externalId"):
            continue
        cid = item.get("contractId")
        out.append(ReconcileItem(str(item["externalId"]), None if cid is None else str(cid), item.get("reason")))
    return out


class PoolApiClient(SignedClient):
    """Signed calls of one agent to pool_api."""

    dialect = "pool-api"
    failures_are_final = False  # `failed` keeps the contract open: the server offers it again

    signer = Ed25519Signer

    def _pk(self) -> str:
        return f"/providers/{self.provider_pubkey}"

    def _contract(self, contract_id: str) -> str:
        return f"{self._pk()}/contracts/{quote(str(contract_id), safe='')}"

    async def heartbeat(self, info: HeartbeatInfo, *, policy: str = "heartbeat") -> HeartbeatAnswer:
        body: dict[str, Any] = {"version": info.version, "provisionerType": info.provisioner_type,
                                "activeContracts": info.active_contracts,
                                "capacity": {"maxConcurrent": info.max_concurrent, "freeSlots": info.free_slots}}
        if info.capabilities:
            body["capabilities"] = info.capabilities
        if info.resources is not None:
            body["resources"] = info.resources
        if info.provisioners is not None:
            body["provisioners"] = info.provisioners
        data = await self.http.call("POST", f"{self._pk()}/heartbeat", body, policy=policy)
        data = data if isinstance(data, dict) else {}
        try:
            interval = float(data["nextHeartbeatSeconds"]) if data.get("nextHeartbeatSeconds") is not None else None
        except (TypeError, ValueError):
            interval = None
        upgrade = data.get("upgradeToVersion")
        return HeartbeatAnswer(next_heartbeat_seconds=interval,
                               upgrade_to_version=str(upgrade) if upgrade else None,
                               claim=bool(data.get("claim")),
                               pool_name=str(data["poolName"]) if data.get("poolName") else None)

    async def pending(self) -> list[Offer]:
        path = f"{self._pk()}/contracts/pending-provision"
        data = await self.http.call("GET", path, policy="poll")
        return [self._offer(item) for item in _items(self.http.endpoint("GET", path), data, "contracts")
                if isinstance(item, dict) and item.get("contractId")]

    @staticmethod
    def _lease(data: Any) -> Lease:
        data = data if isinstance(data, dict) else {}
        expires = data.get("expiresAtNs")
        first, locked = data.get("firstLockedAtNs"), data.get("lockedAtNs")
        return Lease(expires_at_ns=int(expires) if isinstance(expires, (int, float)) else None,
                     first_lock=isinstance(first, int) and first == locked)

    @staticmethod
    def _offer(item: dict[str, Any]) -> Offer:
        cid = str(item["contractId"])
        try:
            return Offer(cid, bool(item.get("lockedByMe")), Contract.from_api(item))
        except (KeyError, TypeError, ValueError) as exc:
            return Offer(cid, bool(item.get("lockedByMe")), None, f"{type(exc).__name__}: {exc}")

    async def lock(self, contract_id: str, *, renew: bool = False) -> Lease:
        return self._lease(await self.http.call("POST", f"{self._contract(contract_id)}/lock",
                                                policy="renew" if renew else "lock"))

    async def claim(self, max_contracts: int, wait_seconds: float, *, free_slots: int,
                    exclude: list[str]) -> list[tuple[Offer, Lease]]:
        path = f"{self._pk()}/contracts/claim"
        body: dict[str, Any] = {"max": max_contracts, "waitSeconds": round(wait_seconds, 1), "freeSlots": free_slots}
        if exclude:
            body["exclude"] = exclude[:200]
        data = await self.http.call("POST", path, body, policy="claim")
        return [(self._offer(item), self._lease(item))
                for item in _items(self.http.endpoint("POST", path), data, "contracts")
                if isinstance(item, dict) and item.get("contractId")]

    async def unlock(self, contract_id: str, *, quick: bool = False) -> None:
        await self.http.call("DELETE", f"{self._contract(contract_id)}/lock",
                             policy="unlock-quick" if quick else "unlock")

    async def started(self, contract_id: str) -> None:
        return None  # pool_api learns it from the lock

    async def report_provisioned(self, contract_id: str, details: dict[str, Any]) -> None:
        await self.http.call("POST", f"{self._contract(contract_id)}/provisioned", {"instanceDetails": details},
                             policy="report")

    async def report_failed(self, contract_id: str, message: str) -> None:
        await self.http.call("POST", f"{self._contract(contract_id)}/failed", {"errorMessage": message},
                             policy="report")

    async def reconcile(self, running: list[Instance]) -> ReconcileAnswer:
        body = {"runningInstances": [{"externalId": i.external_id, "contractId": i.contract_id} for i in running]}
        data = await self.http.call("POST", f"{self._pk()}/reconcile", body, policy="reconcile")
        if not isinstance(data, dict):
            raise UnexpectedAnswer(self.http.endpoint("POST", f"{self._pk()}/reconcile"), 200,
                                   f"expected an object, got {type(data).__name__}")
        return ReconcileAnswer(keep=reconcile_items(data.get("keep")), terminate=reconcile_items(data.get("terminate")),
                               unknown=reconcile_items(data.get("unknown")), pause=reconcile_items(data.get("pause")))

    async def report_terminated(self, contract_id: str) -> None:
        await self.http.call("PUT", f"{self._contract(contract_id)}/terminated", policy="report")

    async def report_health(self, contract_id: str, health: InstanceHealth, checked_at_ns: int) -> None:
        body: dict[str, Any] = {"status": health.status, "checkedAtNs": checked_at_ns}
        if health.detail:
            body["detail"] = health.detail[:500]
        if health.latency_ms is not None:
            body["latencyMs"] = round(health.latency_ms, 1)
        await self.http.call("POST", f"{self._contract(contract_id)}/health", body, policy="report")

    async def pending_actions(self, kind: str) -> list[ActionRequest]:
        path = f"{self._pk()}/contracts/{ACTION_PATHS[kind][0]}"
        data = await self.http.call("GET", path, policy="poll")
        out = []
        for item in _items(self.http.endpoint("GET", path), data, "requests"):
            if not isinstance(item, dict) or not item.get("contractId") or not item.get("requestId"):
                continue
            out.append(ActionRequest(kind=kind, contract_id=str(item["contractId"]),
                                     request_id=str(item["requestId"]), external_id=item.get("externalId"),
                                     username=item.get("username"), new_key=item.get("newKey"),
                                     old_key=item.get("oldKey"), recipient_public_key=item.get("recipientPublicKey")))
        return out

    async def report_action(self, request: ActionRequest, *, password: str | None = None,
                            error: str | None = None) -> bool:
        body: dict[str, Any] = {"requestId": request.request_id}
        if error is not None:
            body["error"] = error[:1000]
        elif request.kind == PASSWORD:
            if not password or not request.recipient_public_key:
                raise ValueError("a password report needs the password and the recipient's key")
            body["encryptedPassword"] = seal_password(password, request.recipient_public_key)
        await self.http.call("PUT", f"{self._contract(request.contract_id)}/{ACTION_PATHS[request.kind][1]}", body,
                             policy="report")
        return True
