"""Agent endpoints: unsigned setup, then heartbeat, pending-provision, locks, reports, reconcile."""

from __future__ import annotations

from fastapi import APIRouter, Query

from pool_api import agents, contracts, locks, reconcile
from pool_api.dependencies import AgentDep, EngineDep, SettingsDep
from pool_api.envelope import ok
from pool_api.schemas import FailedRequest, HeartbeatRequest, ProvisionedRequest, ReconcileRequest, SetupRequest

router = APIRouter(prefix="/api/v1", tags=["agents"])

ContractId = str


@router.post("/agents/setup")
def setup(body: SetupRequest, engine: EngineDep):
    with engine.begin() as conn:
        return ok(agents.setup(conn, body.token, body.agent_pubkey))


@router.post("/providers/{pubkey}/heartbeat")
def heartbeat(pubkey: str, body: HeartbeatRequest, caller: AgentDep, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        pool = agents.heartbeat(conn, caller.pubkey, body.version, body.provisioner_type, body.active_contracts,
                                body.capacity)
    return ok({"acknowledged": True, "nextHeartbeatSeconds": settings.heartbeat_seconds, **pool})


@router.get("/providers/{pubkey}/contracts/pending-provision")
def pending_provision(pubkey: str, caller: AgentDep, engine: EngineDep, limit: int = Query(500, ge=1, le=5000)):
    with engine.begin() as conn:
        return ok(contracts.pending_provision(conn, caller, limit=limit))


@router.post("/providers/{pubkey}/contracts/{contract_id}/lock")
def lock(pubkey: str, contract_id: ContractId, caller: AgentDep, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        return ok(locks.acquire(conn, caller, contract_id, settings.lock_ttl_seconds))


@router.delete("/providers/{pubkey}/contracts/{contract_id}/lock")
def unlock(pubkey: str, contract_id: ContractId, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(locks.release(conn, caller, contract_id))


@router.post("/providers/{pubkey}/contracts/{contract_id}/provisioned")
def provisioned(pubkey: str, contract_id: ContractId, body: ProvisionedRequest, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(locks.provisioned(conn, caller, contract_id, body.instance_details.stored()))


@router.post("/providers/{pubkey}/contracts/{contract_id}/failed")
def failed(pubkey: str, contract_id: ContractId, body: FailedRequest, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(locks.failed(conn, caller, contract_id, body.error_message))


@router.put("/providers/{pubkey}/contracts/{contract_id}/terminated")
def terminated(pubkey: str, contract_id: ContractId, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(locks.terminated(conn, caller, contract_id))


@router.post("/providers/{pubkey}/reconcile")
def reconcile_instances(pubkey: str, body: ReconcileRequest, caller: AgentDep, engine: EngineDep):
    running = [i.model_dump() for i in body.running_instances]
    with engine.begin() as conn:
        return ok(reconcile.reconcile(conn, caller, running))
