"""Shared FastAPI dependencies: the engine, the settings and the signed caller."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from pool_api.auth import Caller, authenticate
from pool_api.errors import ApiError
from pool_api.settings import Settings


def get_engine(request: Request) -> sa.Engine:
    return request.app.state.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[sa.Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def signed_caller(request: Request) -> Caller:
    """Verify the request's signature over its exact raw body, then check the path's provider key."""
    body = await request.body()
    settings: Settings = request.app.state.settings
    caller = await run_in_threadpool(
        authenticate, request.app.state.engine, request.method, request.url.path, request.headers, body,
        settings.skew_seconds,
    )
    path_pk = request.path_params.get("pubkey")
    if path_pk is not None and path_pk.lower() != caller.provider_pubkey:
        raise ApiError(403, "path provider key is not the signer's provider")
    return caller


async def provider_caller(caller: Annotated[Caller, Depends(signed_caller)]) -> Caller:
    if caller.role != "provider":
        raise ApiError(403, "this endpoint needs a provider signature (X-Public-Key)")
    return caller


async def agent_caller(caller: Annotated[Caller, Depends(signed_caller)]) -> Caller:
    if caller.role != "agent":
        raise ApiError(403, "this endpoint needs an agent signature (X-Agent-Pubkey)")
    return caller


ProviderDep = Annotated[Caller, Depends(provider_caller)]
AgentDep = Annotated[Caller, Depends(agent_caller)]
