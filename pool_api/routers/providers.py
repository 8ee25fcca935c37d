"""Provider endpoints (signed with X-Public-Key): pools, setup tokens, agents, offerings, contracts."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from pool_api import agents, contracts, offerings, pools, tokens
from pool_api.dependencies import EngineDep, ProviderDep, SettingsDep
from pool_api.dispatch_rules import rules_from
from pool_api.envelope import ok
from pool_api.schemas import OfferingCreate, OfferingFields, PoolCreate, PoolUpdate, TokenCreate

router = APIRouter(prefix="/api/v1/providers/{pubkey}", tags=["providers"])


@router.post("/pools")
def create_pool(pubkey: str, body: PoolCreate, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(pools.create_pool(conn, caller.pubkey, body.name, body.location, body.provisioner_type,
                                    body.fallback_pool_id, body.fallback_after_seconds), 201)


@router.get("/pools")
def list_pools(pubkey: str, caller: ProviderDep, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        return ok(pools.list_pools(conn, caller.pubkey, settings.online_window_ns))


@router.get("/pools/{pool_id}")
def get_pool(pubkey: str, pool_id: str, caller: ProviderDep, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        return ok(pools.pool_detail(conn, caller.pubkey, pool_id, settings.online_window_ns, rules_from(settings)))


@router.put("/pools/{pool_id}")
def update_pool(pubkey: str, pool_id: str, body: PoolUpdate, caller: ProviderDep, engine: EngineDep,
                settings: SettingsDep):
    changes = body.changes()
    with engine.begin() as conn:
        return ok(pools.update_pool(conn, caller.pubkey, pool_id, changes, settings.online_window_ns))


@router.delete("/pools/{pool_id}")
def delete_pool(pubkey: str, pool_id: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        pools.delete_pool(conn, caller.pubkey, pool_id)
    return ok({"poolId": pool_id, "deleted": True})


def setup_command(request: Request, settings_public_url: str | None, token: str) -> str:
    api_url = (settings_public_url or str(request.base_url)).rstrip("/")
    return f"dc-agent setup --token {token} --api-url {api_url}"


@router.post("/pools/{pool_id}/setup-tokens")
def create_token(pubkey: str, pool_id: str, request: Request, caller: ProviderDep, engine: EngineDep,
                 settings: SettingsDep, body: TokenCreate | None = None):
    body = body or TokenCreate()
    with engine.begin() as conn:
        pool = pools.get_pool_row(conn, caller.pubkey, pool_id)
        token, entry = tokens.create_token(conn, pool, body.label, body.expires_in_hours)
    return ok({"token": token, **entry, "setupCommand": setup_command(request, settings.public_url, token)}, 201)


@router.get("/pools/{pool_id}/setup-tokens")
def list_tokens(pubkey: str, pool_id: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        pools.get_pool_row(conn, caller.pubkey, pool_id)
        return ok(tokens.list_pending(conn, pool_id))


@router.delete("/setup-tokens/{token}")
def delete_token(pubkey: str, token: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        tokens.delete_token(conn, caller.pubkey, token)
    return ok({"deleted": True})


@router.get("/agents")
def list_agents(pubkey: str, caller: ProviderDep, engine: EngineDep, settings: SettingsDep):
    with engine.begin() as conn:
        return ok(agents.list_agents(conn, caller.pubkey, settings.online_window_ns))


@router.delete("/agents/{agent_pubkey}")
def revoke_agent(pubkey: str, agent_pubkey: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(agents.revoke(conn, caller.pubkey, agent_pubkey))


@router.post("/offerings")
def create_offering(pubkey: str, body: OfferingCreate, caller: ProviderDep, engine: EngineDep):
    fields = body.model_dump(exclude={"offering_id"})
    with engine.begin() as conn:
        return ok(offerings.create_offering(conn, caller.pubkey, fields, body.offering_id), 201)


@router.get("/offerings")
def list_offerings(pubkey: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(offerings.list_offerings(conn, caller.pubkey))


@router.get("/offerings/{offering_id}")
def get_offering(pubkey: str, offering_id: str, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(offerings.get_offering(conn, caller.pubkey, offering_id))


@router.put("/offerings/{offering_id}")
def update_offering(pubkey: str, offering_id: str, body: OfferingFields, caller: ProviderDep, engine: EngineDep):
    with engine.begin() as conn:
        return ok(offerings.update_offering(conn, caller.pubkey, offering_id, body.model_dump()))


@router.get("/contracts")
def list_contracts(pubkey: str, caller: ProviderDep, engine: EngineDep,
                   status: str | None = Query(None, max_length=16), limit: int = Query(1000, ge=1, le=10000)):
    with engine.begin() as conn:
        return ok(contracts.list_contracts(conn, status=status, provider_pubkey=caller.pubkey, limit=limit))
