"""A fake of the live Decent Cloud API's agent-facing endpoints, for tests (run as its own process).

    python -m tests.support.live_api --host 127.0.0.1 --port N --db FILE [--lock-ttl-seconds S]

Written from the real server's source (decent-stuff/decent-cloud); docs/decent-cloud-dialect.md says
the same in prose. Behaviour and where it comes from:
- auth, signatures, 400/401 plain text, 415/400 bodies, envelope: tests/support/live_api_wire.py
  (api/src/auth.rs, common/src/api_auth.rs, common/src/dcc_identity.rs, poem-openapi).
- POST /api/v1/agents/setup: api/src/openapi/agents.rs setup_agent,
  api/src/database/agent_pools.rs validate_and_use_setup_token (single-use token, delegation upsert).
- POST /api/v1/providers/{pk}/heartbeat: agents.rs send_heartbeat (nextHeartbeatSeconds 60, pool
  name and upgradeToVersion from the pool), common/src/api_types.rs HeartbeatResponse.
- GET  .../contracts/pending-provision: api/src/openapi/providers.rs get_pending_provision_contracts,
  api/src/database/contracts/provisioning.rs get_pending_provision_contracts_for_pool (any unexpired
  lock hides a contract, the caller's own included; pool or region match; snake_case items).
- POST/DELETE .../contracts/{id}/lock: api/src/openapi/pools.rs acquire_lock / release_lock,
  provisioning.rs acquire_provisioning_lock (holder re-lock extends; TTL 300 s there, configurable here).
- PUT  /api/v1/provider/rental-requests/{id}/provisioning: providers.rs update_provisioning_status,
  normalize_provisioning_details; api/src/database/contracts/rental.rs update_contract_status;
  common/src/contract_status.rs (tests/support/live_api_status.py); contracts/timeouts.rs
  mark_provisioning_failed (terminal, refund, no-op success); provisioning.rs add_provisioning_details;
  providers/auto_accept.rs (auto-activation to active, default on).
- POST .../reconcile: providers.rs reconcile_instances (keep/terminate/unknown/pause).
- PUT  .../contracts/{id}/terminated: providers.rs mark_contract_terminated,
  contracts/mod.rs mark_contract_terminated (cancelled contracts only).
- GET  .../pending-password-reset, PUT .../rental-requests/{id}/password: providers.rs
  get_pending_password_reset_contracts, update_contract_password; provisioning.rs
  update_encrypted_credentials (the server encrypts; here the plain text is kept in the history).
- GET  .../pending-ssh-key-rotation, PUT .../rental-requests/{id}/ssh-key-rotation: providers.rs,
  provisioning.rs complete_ssh_key_rotation.
- POST /api/v1/contracts/{id}/health: agents.rs record_health_check, contracts/usage.rs.
Not emulated: rate limiting (a fault of kind "http" with status 429 stands in), SSE, DNS, gateway.

Test-only control endpoints live under /_fake/ (unsigned, not part of the live API): providers,
pools, setup tokens, offerings, contracts and their history, agents, request log, and fault
injection (the next N requests to an endpoint answer an HTML 502, a 200 success:false, an arbitrary
HTTP status, or a malformed `data`; "before" faults leave state untouched, "after" faults replace
the answer of a request that took effect). State is a SQLite file, so a restart keeps it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.live_api_control import control_routes
from tests.support.live_api_server import LiveApiServer, running_live_api
from tests.support.live_api_status import parse_status, transition_error
from tests.support.live_api_store import LiveStore, now_ns
from tests.support.live_api_wire import (
    HEALTH_REQUEST, HEARTBEAT_REQUEST, PASSWORD_REQUEST, PROVISIONING_REQUEST, RECONCILE_REQUEST, SETUP_REQUEST,
    Caller, Refusal, WireError, authenticate, decode_hex_path, decode_pubkey, envelope, parse_body, refusal,
)

__all__ = ["LiveApiServer", "build_app", "running_live_api"]

ALL_PERMISSIONS = ["provision", "health_check", "heartbeat", "fetch_contracts", "dns_manage"]
DEFAULT_LOCK_TTL_S = 300.0
NEXT_HEARTBEAT_SECONDS = 60
HTML_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
            "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
FAULT_KINDS = ("html502", "refuse", "malformed", "http")

# common/src/regions.rs country_to_region, as data.
_REGIONS = {
    "europe": "AT BE FR DE LI LU MC NL CH DK EE FI IS IE LV LT NO SE GB UK AD AL BA HR CY GR IT MT ME MK PT SM "
              "RS SI ES VA XK BG CZ HU PL RO SK",
    "cis": "RU BY UA MD AM AZ GE KZ KG TJ TM UZ",
    "na": "US CA MX GT BZ HN SV NI CR PA CU JM HT DO PR BS BB TT LC VC GD AG DM KN AW CW SX BM KY VI VG TC AI MS "
          "GP MQ MF BL GL PM",
    "latam": "AR BO BR CL CO EC GY PY PE SR UY VE GF FK",
    "apac": "CN JP KR KP MN TW HK MO SG MY TH VN PH ID MM KH LA BN TL IN PK BD LK NP BT MV AF AU NZ PG FJ SB VU "
            "NC PF WS TO FM PW MH KI NR TV GU MP AS CK NU TK WF",
    "mena": "SA AE QA KW BH OM IR IQ SY JO LB PS IL YE TR EG DZ MA TN LY SD EH MR ML NE DJ ER ET SO KE UG TZ RW "
            "BI CD CG GA CM CF AO",
    "ssa": "TD SS NA BW ZW ZM MW MZ SZ LS",
}
COUNTRY_REGION = {code: region for region, codes in _REGIONS.items() for code in codes.split()}

Handler = Callable[[Request, bytes], Response]


def _omit_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def contract_wire(row: dict[str, Any]) -> dict[str, Any]:
    """contracts/mod.rs Contract on the wire: snake_case (no oai rename_all), None fields omitted."""
    return _omit_none({
        "contract_id": row["contract_id"], "requester_pubkey": row["requester_pubkey"],
        "requester_ssh_pubkey": row["requester_ssh_pubkey"], "requester_contact": row["requester_contact"],
        "provider_pubkey": row["provider_pubkey"], "offering_id": row["offering_id"],
        "instance_config": row["instance_config"], "payment_amount_e9s": row["payment_amount_e9s"],
        "end_timestamp_ns": row["end_timestamp_ns"], "request_memo": "", "created_at_ns": row["created_at_ns"],
        "status": row["status"], "provisioning_instance_details": row["provisioning_instance_details"],
        "provisioning_completed_at_ns": row["provisioning_completed_at_ns"], "payment_method": row["payment_method"],
        "payment_status": row["payment_status"], "currency": "usd", "status_updated_at_ns": row["status_updated_at_ns"],
        "cancel_at_period_end": False, "auto_renew": False,
        "password_reset_requested_at_ns": row["password_reset_requested_at_ns"],
        "ssh_key_rotation_requested_at_ns": row["ssh_key_rotation_requested_at_ns"],
    })


def _malformed(data: Any) -> Any:
    """A `data` of the wrong shape: lists become objects, objects lists, scalars objects."""
    if isinstance(data, list):
        return {"items": data}
    if isinstance(data, dict):
        return [data]
    return {"value": data}


def _fault_response(fault: dict[str, Any], original: Response | None) -> Response:
    kind = fault["kind"]
    if kind == "html502":
        return HTMLResponse(HTML_502, status_code=502)
    if kind == "refuse":
        return refusal(fault.get("message") or "Injected failure")
    if kind == "http":
        headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") is not None else None
        return PlainTextResponse(fault.get("message") or "", status_code=int(fault.get("status") or 500),
                                 headers=headers)
    # malformed
    if "data" in fault:
        data = fault["data"]
    else:
        data = None
        if original is not None:
            try:
                data = json.loads(bytes(original.body)).get("data")
            except (ValueError, AttributeError):
                data = None
        data = _malformed(data)
    return JSONResponse({"success": True, "data": data}, media_type="application/json; charset=utf-8")


class LiveApi:
    """The agent-facing endpoints over a LiveStore; each handler mirrors one server handler."""

    def __init__(self, store: LiveStore, lock_ttl_s: float = DEFAULT_LOCK_TTL_S) -> None:
        self.store = store
        self.lock_ttl_ns = int(lock_ttl_s * 1_000_000_000)

    # plumbing
    async def dispatch(self, name: str, handler: Handler, request: Request) -> Response:
        agent_header = request.headers.get("X-Agent-Pubkey")
        fault = self.store.take_fault(name, "before")
        if fault is not None:
            response = _fault_response(fault, None)
        else:
            body = await request.body()
            try:
                response = handler(request, body)
            except WireError as exc:
                response = exc.response()
            except Refusal as exc:
                response = refusal(str(exc))
            fault = self.store.take_fault(name, "after")
            if fault is not None:
                response = _fault_response(fault, response)
        self.store.log_request(name, request.method, agent_header, response.status_code)
        return response

    def _auth(self, request: Request, body: bytes, *, provider_allowed: bool = False) -> Caller:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        return authenticate(self.store, request.headers, request.method, path, body,
                            provider_allowed=provider_allowed)

    def _path_provider(self, request: Request, caller: Caller, mismatch: str) -> str:
        provider = decode_pubkey(request.path_params["pubkey"]).hex()
        if provider != caller.provider_pubkey:
            raise Refusal(mismatch)
        return provider

    # endpoints
    def setup(self, request: Request, body: bytes) -> Response:
        data = parse_body(request.headers, body, SETUP_REQUEST)
        try:
            agent = decode_pubkey(data["agentPubkey"]).hex()
        except Refusal as exc:
            raise Refusal(f"Invalid agent_pubkey: {exc}") from None
        token, error = self.store.consume_token(data["token"], agent)
        if token is None:
            raise Refusal(error or "Setup token validation failed")
        pool = self.store.pool(token["pool_id"])
        if pool is None:
            raise Refusal("Pool not found for token")
        self.store.upsert_delegation(agent, pool["provider_pubkey"], pool["pool_id"], ALL_PERMISSIONS, token["label"])
        return envelope({"providerPubkey": pool["provider_pubkey"], "poolId": pool["pool_id"], "poolName": pool["name"],
                         "poolLocation": pool["location"], "provisionerType": pool["provisioner_type"],
                         "permissions": ALL_PERMISSIONS})

    def heartbeat(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        parse_body(request.headers, body, HEARTBEAT_REQUEST)
        provider = self._path_provider(request, caller, "Agent is not delegated by this provider")
        caller.require("heartbeat")
        pool = self.store.pool(caller.pool_id) if caller.pool_id else None
        self.store.record_heartbeat(str(caller.agent_pubkey), provider, json.loads(body))
        return envelope(_omit_none({
            "acknowledged": True, "nextHeartbeatSeconds": NEXT_HEARTBEAT_SECONDS, "poolId": caller.pool_id,
            "poolName": pool["name"] if pool else None, "upgradeToVersion": pool["upgrade_to_version"] if pool else None,
        }))

    def pending_provision(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        provider = self._path_provider(request, caller,
                                       "Unauthorized: can only access your delegated provider's contracts")
        if caller.pool_id is None:
            raise Refusal("Agent must belong to a pool. Re-register using a setup token.")
        pool = self.store.pool(caller.pool_id)
        if pool is None:
            raise Refusal(f"Pool {caller.pool_id} not found")
        items = []
        for row in self.store.pending_candidates(provider, caller.pool_id):
            explicit = row["agent_pool_id"] == caller.pool_id
            by_region = (row["agent_pool_id"] is None and row["datacenter_country"] is not None
                         and COUNTRY_REGION.get(row["datacenter_country"].upper()) == pool["location"])
            if explicit or by_region:
                items.append(_omit_none({k: row[k] for k in (
                    "contract_id", "offering_id", "requester_ssh_pubkey", "instance_config", "cpu_cores",
                    "memory_amount", "storage_capacity", "provisioner_type", "provisioner_config",
                    "post_provision_script")}))
        return envelope(items)

    def lock(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        self._path_provider(request, caller, "Agent is not delegated by this provider")
        caller.require("provision")
        contract_id = decode_hex_path(request.path_params["contract_id"], "contract id").hex()
        expires_at_ns = now_ns() + self.lock_ttl_ns
        acquired = self.store.try_lock(contract_id, str(caller.agent_pubkey), self.lock_ttl_ns)
        error = None
        if not acquired:
            contract = self.store.contract(contract_id)
            if contract is None:
                error = f"Contract not found: {contract_id}"
            elif contract["status"] not in ("accepted", "provisioning"):
                error = f"Contract {contract_id} is not in lockable status (status: {contract['status']})"
            elif contract["payment_status"] != "succeeded":
                error = f"Contract {contract_id} payment not succeeded (status: {contract['payment_status']})"
        self.store.add_history(contract_id, "lock", caller.agent_pubkey,
                               _omit_none({"acquired": acquired, "error": error}))
        if error is not None:
            raise Refusal(error)
        return envelope({"acquired": acquired, "expiresAtNs": expires_at_ns},
                        error=None if acquired else "Contract already locked by another agent")

    def unlock(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        self._path_provider(request, caller, "Agent is not delegated by this provider")
        contract_id = decode_hex_path(request.path_params["contract_id"], "contract id").hex()
        released = self.store.unlock(contract_id, str(caller.agent_pubkey))
        self.store.add_history(contract_id, "unlock", caller.agent_pubkey, {"released": released})
        return envelope(released, error=None if released else "Lock not held by this agent")

    def provisioning(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body, provider_allowed=True)
        data = parse_body(request.headers, body, PROVISIONING_REQUEST)
        contract_id = decode_hex_path(request.path_params["id"], "contract id").hex()
        entry = {"status": data["status"], "instanceDetails": data["instanceDetails"]}
        try:
            message = self._apply_provisioning(contract_id, caller, data["status"], data["instanceDetails"])
        except Refusal as exc:
            self.store.add_history(contract_id, "status", caller.agent_pubkey,
                                   {**entry, "success": False, "error": str(exc)})
            raise
        self.store.add_history(contract_id, "status", caller.agent_pubkey, {**entry, "success": True})
        return envelope(message)

    def _apply_provisioning(self, contract_id: str, caller: Caller, status: str, details: str | None) -> str:
        details = details.strip() if details is not None else None
        details = details or None
        if status == "provisioned" and details is None:
            raise Refusal("Instance details are required when marking a contract as provisioned")
        try:
            target = parse_status(status)
        except ValueError:
            target = None
        if target == "provisioningfailed":
            contract = self.store.contract(contract_id)
            if contract is not None and contract["status"] in ("accepted", "provisioning"):
                refunded = contract["payment_status"] == "succeeded" and contract["payment_amount_e9s"] > 0
                self.store.update_contract(contract_id, status="provisioningfailed", status_updated_at_ns=now_ns(),
                                           provisioning_failure_reason=details or
                                           "Provider reported provisioning failure", refunded=int(refunded))
            return "Provisioning failed — contract closed and refund initiated"
        self._update_status(contract_id, caller.provider_pubkey, status)
        if status == "provisioned" and details is not None:
            self._add_details(contract_id, details)
            if self.store.provider_auto_accept(caller.provider_pubkey):
                try:
                    self._update_status(contract_id, caller.provider_pubkey, "active")
                except Refusal:
                    pass
        return "Provisioning status updated"

    def _update_status(self, contract_id: str, provider: str, status: str) -> None:
        """rental.rs update_contract_status."""
        contract = self.store.contract(contract_id)
        if contract is None:
            raise Refusal("Contract not found")
        if contract["provider_pubkey"] != provider:
            raise Refusal("Unauthorized: only provider can update contract status")
        try:
            target = parse_status(status)
        except ValueError as exc:
            raise Refusal(str(exc)) from None
        error = transition_error(contract["status"], target)
        if error is not None:
            raise Refusal(error)
        if (target in ("provisioned", "active") and contract["payment_amount_e9s"] > 0
                and contract["payment_status"] != "succeeded"):
            raise Refusal(f"Contract {contract_id} cannot transition to {target} while unpaid: payment_status is "
                          f"'{contract['payment_status']}' but payment_amount_e9s is {contract['payment_amount_e9s']} "
                          "(>0 requires payment_status='succeeded')")
        self.store.update_contract(contract_id, status=target, status_updated_at_ns=now_ns())

    def _add_details(self, contract_id: str, details: str) -> None:
        """provisioning.rs add_provisioning_details: stored verbatim, root_password picked out if JSON."""
        try:
            parsed = json.loads(details)
        except ValueError:
            parsed = None
        password = parsed.get("root_password") if isinstance(parsed, dict) else None
        self.store.update_contract(contract_id, provisioning_instance_details=details,
                                   provisioning_completed_at_ns=now_ns(), has_provisioning_details=1,
                                   root_password=password if isinstance(password, str) else None)

    def reconcile(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        data = parse_body(request.headers, body, RECONCILE_REQUEST)
        provider = self._path_provider(request, caller,
                                       "Unauthorized: can only reconcile your delegated provider's contracts")
        now = now_ns()
        out: dict[str, list[dict[str, Any]]] = {"keep": [], "terminate": [], "unknown": [], "pause": []}
        for item in data["runningInstances"]:
            external_id, raw_id = item["externalId"], item["contractId"]
            if raw_id is None:
                out["unknown"].append({"externalId": external_id,
                                       "message": "No contract ID associated with this instance"})
                continue
            try:
                contract_id = decode_hex_path(raw_id, "contract id").hex()
            except Refusal as exc:
                out["unknown"].append({"externalId": external_id, "message": str(exc)})
                continue
            contract = self.store.contract(contract_id)
            if contract is None:
                out["unknown"].append({"externalId": external_id, "message": f"No contract found with ID: {raw_id}"})
            elif contract["provider_pubkey"] != provider:
                out["unknown"].append({"externalId": external_id, "message": "Contract belongs to different provider"})
            else:
                end_ns = contract["end_timestamp_ns"] or 0
                base = {"externalId": external_id, "contractId": raw_id}
                if contract["status"] == "cancelled":
                    out["terminate"].append({**base, "reason": "cancelled"})
                elif 0 < end_ns < now:
                    out["terminate"].append({**base, "reason": "expired"})
                elif contract["status"] == "paused":
                    out["pause"].append({**base, "reason": contract["pause_reason"] or "paused"})
                else:
                    out["keep"].append({**base, "endsAt": end_ns})
        return envelope(out)

    def terminated(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        provider = decode_pubkey(request.path_params["pubkey"]).hex()
        contract_id = decode_hex_path(request.path_params["contract_id"], "contract id").hex()
        if provider != caller.provider_pubkey:
            raise Refusal("Unauthorized: can only mark your delegated provider's contracts")
        contract = self.store.contract(contract_id)
        if contract is None or contract["status"] != "cancelled":
            error = f"Contract not found or not in cancelled status (ID: {contract_id})"
            self.store.add_history(contract_id, "terminated", caller.agent_pubkey, {"success": False, "error": error})
            raise Refusal(error)
        self.store.update_contract(contract_id, terminated_at_ns=now_ns())
        self.store.add_history(contract_id, "terminated", caller.agent_pubkey, {"success": True})
        return envelope(True)

    def pending_password_reset(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body, provider_allowed=True)
        provider = self._path_provider(request, caller, "Unauthorized: can only access your own provider's contracts")
        return envelope([contract_wire(row) for row in self.store.pending_password_resets(provider)])

    def _own_contract(self, contract_id: str, caller: Caller) -> dict[str, Any]:
        contract = self.store.contract(contract_id)
        if contract is None:
            raise Refusal("Contract not found")
        if contract["provider_pubkey"] != caller.provider_pubkey:
            raise Refusal("Unauthorized: you are not the provider for this contract")
        return contract

    def password(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body, provider_allowed=True)
        data = parse_body(request.headers, body, PASSWORD_REQUEST)
        contract_id = decode_hex_path(request.path_params["id"], "contract id").hex()
        contract = self._own_contract(contract_id, caller)
        if not contract["has_provisioning_details"]:
            raise Refusal(f"No provisioning details found for contract {contract_id}")
        self.store.update_contract(contract_id, root_password=data["newPassword"], password_reset_requested_at_ns=None)
        self.store.add_history(contract_id, "password", caller.agent_pubkey, {"new_password": data["newPassword"]})
        return envelope("Password updated successfully")

    def pending_ssh_key_rotation(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        provider = self._path_provider(request, caller,
                                       "Unauthorized: can only access your delegated provider's contracts")
        return envelope([{"contract_id": r["contract_id"], "requester_ssh_pubkey": r["pending_ssh_pubkey"]}
                         for r in self.store.pending_ssh_rotations(provider)])

    def ssh_key_rotation(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body, provider_allowed=True)
        contract_id = decode_hex_path(request.path_params["id"], "contract id").hex()
        contract = self._own_contract(contract_id, caller)
        pending = contract["pending_ssh_pubkey"]
        if pending is None or not pending.strip():
            raise Refusal("No pending SSH key rotation found")
        self.store.update_contract(contract_id, requester_ssh_pubkey=pending, pending_ssh_pubkey=None,
                                   ssh_key_rotation_requested_at_ns=None)
        self.store.add_history(contract_id, "ssh_key_rotation", caller.agent_pubkey, {"new_ssh_pubkey": pending})
        return envelope("SSH key rotation completed successfully")

    def health(self, request: Request, body: bytes) -> Response:
        caller = self._auth(request, body)
        data = parse_body(request.headers, body, HEALTH_REQUEST)
        caller.require("health_check")
        raw_id = request.path_params["id"]
        contract_id = decode_hex_path(raw_id, "contract id").hex()
        contract = self.store.contract(contract_id)
        if contract is None:
            raise Refusal(f"Contract not found: {raw_id}")
        if contract["provider_pubkey"] != caller.provider_pubkey:
            raise Refusal(f"Unauthorized: agent's provider ({caller.provider_pubkey}) does not match contract "
                          f"provider ({contract['provider_pubkey']})")
        if data["status"] not in ("healthy", "unhealthy", "unknown"):
            raise Refusal(f"Invalid health status '{data['status']}'. Must be one of: healthy, unhealthy, unknown")
        check_id, created = self.store.add_health_check(contract_id, data["checkedAt"], data["status"],
                                                        data["latencyMs"], data["details"])
        return envelope(_omit_none({"id": check_id, "contractId": raw_id, "checkedAt": data["checkedAt"],
                                    "status": data["status"], "latencyMs": data["latencyMs"],
                                    "details": data["details"], "createdAt": created}))


AGENT_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("setup", "POST", "/api/v1/agents/setup"),
    ("heartbeat", "POST", "/api/v1/providers/{pubkey}/heartbeat"),
    ("pending_provision", "GET", "/api/v1/providers/{pubkey}/contracts/pending-provision"),
    ("pending_password_reset", "GET", "/api/v1/providers/{pubkey}/contracts/pending-password-reset"),
    ("pending_ssh_key_rotation", "GET", "/api/v1/providers/{pubkey}/contracts/pending-ssh-key-rotation"),
    ("lock", "POST", "/api/v1/providers/{pubkey}/contracts/{contract_id}/lock"),
    ("unlock", "DELETE", "/api/v1/providers/{pubkey}/contracts/{contract_id}/lock"),
    ("terminated", "PUT", "/api/v1/providers/{pubkey}/contracts/{contract_id}/terminated"),
    ("reconcile", "POST", "/api/v1/providers/{pubkey}/reconcile"),
    ("provisioning", "PUT", "/api/v1/provider/rental-requests/{id}/provisioning"),
    ("password", "PUT", "/api/v1/provider/rental-requests/{id}/password"),
    ("ssh_key_rotation", "PUT", "/api/v1/provider/rental-requests/{id}/ssh-key-rotation"),
    ("health", "POST", "/api/v1/contracts/{id}/health"),
)
ENDPOINT_NAMES = tuple(name for name, _, _ in AGENT_ROUTES)


def build_app(db_path: Path, lock_ttl_s: float = DEFAULT_LOCK_TTL_S) -> Starlette:
    """The fake as an ASGI app: agent-facing routes plus /_fake/ controls, over one SQLite file."""
    store = LiveStore(db_path)
    api = LiveApi(store, lock_ttl_s)

    def route(name: str, method: str, path: str) -> Route:
        handler: Handler = getattr(api, name)

        async def endpoint(request: Request) -> Response:
            return await api.dispatch(name, handler, request)

        return Route(path, endpoint, methods=[method], name=name)

    routes = [route(*spec) for spec in AGENT_ROUTES] + control_routes(api.store, ENDPOINT_NAMES, FAULT_KINDS)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.live_api", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created if missing)")
    parser.add_argument("--lock-ttl-seconds", type=float, default=DEFAULT_LOCK_TTL_S)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(args.db, args.lock_ttl_seconds), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
