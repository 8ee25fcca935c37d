"""Test-only /_fake/ control endpoints of the live-API fake: build the world, read it back, inject faults.

Unsigned and not part of the live API. They write the SQLite state directly (no state machine,
no auth), so a test can put a contract in any status, queue a password reset or SSH key rotation,
and read every status report, lock and unlock a contract received.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.live_api_store import CONTRACT_MUTABLE, LiveStore, now_ns

DAY_NS = 86_400 * 1_000_000_000
DEFAULT_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeLiveApiTenantKeyForTestsOnly000000 tenant@test"


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ControlError(400, "control bodies are JSON objects")
    return value


def _contract_view(store: LiveStore, contract_id: str) -> dict[str, Any]:
    row = store.contract(contract_id)
    if row is None:
        raise ControlError(404, f"no contract {contract_id}")
    return {**row, "history": store.history(contract_id), "health_checks": store.health_checks(contract_id)}


def control_routes(store: LiveStore, endpoint_names: tuple[str, ...], fault_kinds: tuple[str, ...]) -> list[Route]:
    """The /_fake/ routes over `store`; faults may name any of `endpoint_names`."""

    def create_provider(body: dict[str, Any]) -> dict[str, Any]:
        pubkey = (body.get("pubkey") or os.urandom(32).hex()).lower()
        store.upsert_provider(pubkey, bool(body.get("auto_accept", True)))
        return {"pubkey": pubkey}

    def create_pool(body: dict[str, Any]) -> dict[str, Any]:
        provider = create_provider({"pubkey": body.get("provider_pubkey"),
                                    "auto_accept": body.get("auto_accept", True)})["pubkey"]
        pool_id = body.get("pool_id") or str(uuid.uuid4())
        store.insert_pool({"pool_id": pool_id, "provider_pubkey": provider, "name": body.get("name") or "pool-1",
                           "location": body.get("location") or "europe",
                           "provisioner_type": body.get("provisioner_type") or "script",
                           "upgrade_to_version": body.get("upgrade_to_version")})
        return {"provider_pubkey": provider, "pool_id": pool_id}

    def setup_token(body: dict[str, Any]) -> dict[str, Any]:
        pool_id = body["pool_id"]
        if store.pool(pool_id) is None:
            raise ControlError(404, f"no pool {pool_id}")
        token = body.get("token") or uuid.uuid4().hex
        expires = time.time_ns() + int(float(body.get("expires_in_seconds", 86_400)) * 1_000_000_000)
        store.insert_token(token, pool_id, body.get("label"), expires)
        return {"token": token}

    def create_offering(body: dict[str, Any]) -> dict[str, Any]:
        offering = {"cpu_cores": 2, "memory_amount": "4 GB", "storage_capacity": "40 GB",
                    "datacenter_country": "DE", **body}
        offering["offering_id"] = body.get("offering_id") or f"off-{uuid.uuid4().hex[:8]}"
        offering["provider_pubkey"] = body["provider_pubkey"].lower()
        store.insert_offering(offering)
        return {"offering_id": offering["offering_id"]}

    def create_contracts(body: dict[str, Any]) -> dict[str, Any]:
        count = int(body.get("count", 1))
        ids = []
        base = now_ns()
        for index in range(count):
            contract_id = (body.get("contract_id") if count == 1 and body.get("contract_id")
                           else os.urandom(32).hex()).lower()
            store.insert_contract({
                "contract_id": contract_id, "provider_pubkey": body["provider_pubkey"].lower(),
                "offering_id": body["offering_id"], "requester_pubkey": body.get("requester_pubkey")
                or os.urandom(32).hex(), "requester_ssh_pubkey": body.get("requester_ssh_pubkey") or DEFAULT_SSH_KEY,
                "requester_contact": body.get("requester_contact") or "email:tenant@example.com",
                "instance_config": body.get("instance_config"), "status": body.get("status") or "accepted",
                "payment_status": body.get("payment_status") or "succeeded",
                "payment_method": body.get("payment_method") or "stripe",
                "payment_amount_e9s": int(body.get("payment_amount_e9s", 1_000_000_000)),
                "end_timestamp_ns": body["end_timestamp_ns"] if "end_timestamp_ns" in body else base + 30 * DAY_NS,
                "created_at_ns": base + index,
            })
            ids.append(contract_id)
        return {"contract_ids": ids}

    def patch_contract(contract_id: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - CONTRACT_MUTABLE
        if unknown:
            raise ControlError(400, f"cannot set {sorted(unknown)}; settable: {sorted(CONTRACT_MUTABLE)}")
        _contract_view(store, contract_id)
        store.update_contract(contract_id, **body)
        return _contract_view(store, contract_id)

    def queue(contract_id: str, **fields: Any) -> dict[str, Any]:
        row = store.contract(contract_id)
        if row is None:
            raise ControlError(404, f"no contract {contract_id}")
        if not row["has_provisioning_details"]:
            raise ControlError(409, f"No provisioning details found for contract {contract_id}")
        store.update_contract(contract_id, **fields)
        return _contract_view(store, contract_id)

    def add_fault(body: dict[str, Any]) -> dict[str, Any]:
        endpoint, kind = body.get("endpoint"), body.get("kind")
        if endpoint not in endpoint_names:
            raise ControlError(400, f"endpoint must be one of {list(endpoint_names)}")
        if kind not in fault_kinds:
            raise ControlError(400, f"kind must be one of {list(fault_kinds)}")
        spec = {k: body[k] for k in ("message", "status", "retry_after", "data") if k in body}
        spec["when"] = body.get("when") or ("after" if kind == "malformed" else "before")
        if spec["when"] not in ("before", "after"):
            raise ControlError(400, "when must be 'before' or 'after'")
        store.add_fault(endpoint, kind, int(body.get("count", 1)), spec)
        return {"ok": True}

    def handle(fn: Any, *, with_body: bool = True, params: tuple[str, ...] = (), query: tuple[str, ...] = ()) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                args = [request.path_params[p].lower() if p in ("contract_id", "agent") else request.path_params[p]
                        for p in params]
                args += [request.query_params.get(q) for q in query]
                if with_body:
                    args.append(await _json(request))
                return JSONResponse(fn(*args))
            except ControlError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except (KeyError, ValueError, TypeError) as exc:
                return JSONResponse({"error": f"bad control request: {exc!r}"}, status_code=400)
        return endpoint

    def requests_view(endpoint: str | None) -> list[dict[str, Any]]:
        return store.requests(endpoint)

    def revoke(agent: str, _body: dict[str, Any]) -> dict[str, Any]:
        return {"revoked": store.revoke_delegation(agent) == 1}

    def permissions(agent: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"updated": store.set_permissions(agent, list(body["permissions"])) == 1}

    def upgrade(pool_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"updated": store.set_pool_upgrade(pool_id, body.get("version")) == 1}

    def clear_faults() -> dict[str, Any]:
        store.clear_faults()
        return {"ok": True}

    return [
        Route("/_fake/health", handle(lambda: {"ok": True}, with_body=False), methods=["GET"]),
        Route("/_fake/providers", handle(create_provider), methods=["POST"]),
        Route("/_fake/pools", handle(create_pool), methods=["POST"]),
        Route("/_fake/pools/{pool_id}/upgrade", handle(upgrade, params=("pool_id",)), methods=["POST"]),
        Route("/_fake/setup-tokens", handle(setup_token), methods=["POST"]),
        Route("/_fake/offerings", handle(create_offering), methods=["POST"]),
        Route("/_fake/contracts", handle(create_contracts), methods=["POST"]),
        Route("/_fake/contracts", handle(store.contracts, with_body=False), methods=["GET"]),
        Route("/_fake/contracts/{contract_id}", handle(lambda cid: _contract_view(store, cid), with_body=False,
                                                       params=("contract_id",)), methods=["GET"]),
        Route("/_fake/contracts/{contract_id}", handle(patch_contract, params=("contract_id",)), methods=["PATCH"]),
        Route("/_fake/contracts/{contract_id}/password-reset",
              handle(lambda cid, _b: queue(cid, password_reset_requested_at_ns=now_ns()), params=("contract_id",)),
              methods=["POST"]),
        Route("/_fake/contracts/{contract_id}/ssh-key-rotation",
              handle(lambda cid, b: queue(cid, pending_ssh_pubkey=b["new_ssh_pubkey"],
                                          ssh_key_rotation_requested_at_ns=now_ns()), params=("contract_id",)),
              methods=["POST"]),
        Route("/_fake/agents", handle(store.agents, with_body=False), methods=["GET"]),
        Route("/_fake/agents/{agent}/revoke", handle(revoke, params=("agent",)), methods=["POST"]),
        Route("/_fake/agents/{agent}/permissions", handle(permissions, params=("agent",)), methods=["PUT"]),
        Route("/_fake/requests", handle(requests_view, with_body=False, query=("endpoint",)), methods=["GET"]),
        Route("/_fake/faults", handle(add_fault), methods=["POST"]),
        Route("/_fake/faults", handle(clear_faults, with_body=False), methods=["DELETE"]),
    ]
