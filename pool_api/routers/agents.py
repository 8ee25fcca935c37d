"""Agent endpoints: unsigned setup, then heartbeat, pending-provision, locks, reports, reconcile."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from pool_api import agents, contracts, locks, reconcile
from pool_api.dependencies import AgentDep, EngineDep, SettingsDep
from pool_api.dispatch_rules import rules_from
from pool_api.envelope import ok
from pool_api.errors import ApiError
from pool_api.schemas import FailedRequest, HeartbeatRequest, ProvisionedRequest, ReconcileRequest, SetupRequest

router = APIRouter(prefix="/api/v1", tags=["agents"])

ContractId = str


@router.post("/agents/setup")
def setup(body: SetupRequest, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        answer = agents.setup(conn, body.token, body.agent_pubkey)
    return ok({**answer, "claim": settings.advertise_claim})  # agents use POST .../contracts/claim when true


@router.post("/providers/{pubkey}/heartbeat")
def heartbeat(pubkey: str, body: HeartbeatRequest, caller: AgentDep, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        pool = agents.heartbeat(conn, caller.pubkey, body.version, body.provisioner_type, body.active_contracts,
                                body.capacity, resources=body.resources, provisioners=body.provisioners)
    return ok({"acknowledged": True, "nextHeartbeatSeconds": settings.heartbeat_seconds, **pool,
               "claim": settings.advertise_claim})


@router.get("/providers/{pubkey}/contracts/pending-provision")
def pending_provision(pubkey: str, caller: AgentDep, engine: EngineDep, settings: SettingsDep,
                      limit: int = Query(500, ge=1, le=5000)):
    with engine.begin() as conn:
        return ok(contracts.pending_provision(conn, caller, limit=limit, rules=rules_from(settings)))


@router.post("/providers/{pubkey}/contracts/{contract_id}/lock")
def lock(pubkey: str, contract_id: ContractId, request: Request, caller: AgentDep, engine: EngineDep,
         settings: SettingsDep):
    try:
        with engine.begin() as conn:
            return ok(locks.acquire(conn, caller, contract_id, settings.lock_ttl_seconds, rules_from(settings)))
    except ApiError as exc:
        if exc.status == 409:
            request.app.state.metrics.lock_conflicts.inc()
        raise


@router.delete("/providers/{pubkey}/contracts/{contract_id}/lock")
def unlock(pubkey: str, contract_id: ContractId, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(locks.release(conn, caller, contract_id))


@router.post("/providers/{pubkey}/contracts/{contract_id}/provisioned")
def provisioned(pubkey: str, contract_id: ContractId, body: ProvisionedRequest, request: Request, caller: AgentDep,
                engine: EngineDep):
    with engine.begin() as conn:
        answer = locks.provisioned(conn, caller, contract_id, body.instance_details.stored())
    if not answer["repeated"]:
        first = answer.get("firstLockedAtNs")
        seconds = None if first is None else (answer["provisionedAtNs"] - first) / 1e9
        request.app.state.metrics.provisioned(caller.pool_id, seconds)
    return ok(answer)


@router.post("/providers/{pubkey}/contracts/{contract_id}/failed")
def failed(pubkey: str, contract_id: ContractId, body: FailedRequest, request: Request, caller: AgentDep,
           engine: EngineDep):
    with engine.begin() as conn:
        answer = locks.failed(conn, caller, contract_id, body.error_message)
    if not answer["repeated"]:
        request.app.state.metrics.failed(caller.pool_id)
    return ok(answer)


@router.put("/providers/{pubkey}/contracts/{contract_id}/terminated")
def terminated(pubkey: str, contract_id: ContractId, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(locks.terminated(conn, caller, contract_id))


@router.post("/providers/{pubkey}/reconcile")
def reconcile_instances(pubkey: str, body: ReconcileRequest, caller: AgentDep, engine: EngineDep):
    running = [i.model_dump() for i in body.running_instances]
    with engine.begin() as conn:
        return ok(reconcile.reconcile(conn, caller, running))
