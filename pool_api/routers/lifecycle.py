"""The contract lifecycle after provisioning: health reports, pause/resume, password resets, SSH key rotations.

Provider endpoints (X-Public-Key) stand for the tenant's requests; agent endpoints (X-Agent-Pubkey)
list what to carry out and report back. The rules live in pool_api.instance_health, .pause and .actions.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from pool_api import actions, instance_health, pause
from pool_api.dependencies import AgentDep, EngineDep, ProviderDep, SettingsDep
from pool_api.envelope import ok
from pool_api.schemas import (
    HealthReport,
    PasswordReport,
    PasswordResetRequest,
    SshKeyRotationReport,
    SshKeyRotationRequest,
)

router = APIRouter(prefix="/api/v1/providers/{pubkey}/contracts", tags=["lifecycle"])

Limit = Query(500, ge=1, le=5000)


# --- agents ---------------------------------------------------------------------------------------

@router.post("/{contract_id}/health")
def report_health(pubkey: str, contract_id: str, body: HealthReport, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(instance_health.record(conn, caller, contract_id, body.status, body.detail, body.latency_ms,
                                         body.checked_at_ns))


@router.get("/pending-password-reset")
def pending_password_reset(pubkey: str, caller: AgentDep, engine: EngineDep, settings: SettingsDep,
                           limit: int = Limit):
    with engine.begin() as conn:
        return ok(actions.pending_for_agent(conn, caller, actions.PASSWORD_RESET, settings.agent_stale_ns, limit))


@router.put("/{contract_id}/password")
def report_password(pubkey: str, contract_id: str, body: PasswordReport, caller: AgentDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(actions.report_password(conn, caller, contract_id, body.request_id, body.encrypted_password,
                                          body.error))


@router.get("/pending-ssh-key-rotation")
def pending_ssh_key_rotation(pubkey: str, caller: AgentDep, engine: EngineDep, settings: SettingsDep,
                             limit: int = Limit):
    with engine.begin() as conn:
        return ok(actions.pending_for_agent(conn, caller, actions.SSH_KEY_ROTATION, settings.agent_stale_ns, limit))


@router.put("/{contract_id}/ssh-key-rotation")
def report_ssh_key_rotation(pubkey: str, contract_id: str, body: SshKeyRotationReport, caller: AgentDep,
                            engine: EngineDep):
    with engine.begin() as conn:
        return ok(actions.report_ssh_key_rotation(conn, caller, contract_id, body.request_id, body.error))


# --- providers (for the tenant) -------------------------------------------------------------------

@router.post("/{contract_id}/pause")
def pause_contract(pubkey: str, contract_id: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(pause.pause(conn, contract_id, caller.pubkey))


@router.post("/{contract_id}/resume")
def resume_contract(pubkey: str, contract_id: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(pause.resume(conn, contract_id, caller.pubkey))


@router.post("/{contract_id}/reset-password")
def reset_password(pubkey: str, contract_id: str, body: PasswordResetRequest, caller: ProviderDep,
                   engine: EngineDep):
    with engine.begin() as conn:
        return ok(actions.request_password_reset(conn, contract_id, body.recipient_public_key, caller.pubkey))


@router.post("/{contract_id}/rotate-ssh-key")
def rotate_ssh_key(pubkey: str, contract_id: str, body: SshKeyRotationRequest, caller: ProviderDep,
                   engine: EngineDep):
    with engine.begin() as conn:
        return ok(actions.request_ssh_key_rotation(conn, contract_id, body.new_key, caller.pubkey))
