"""The agent's API clients: one interface (:mod:`dc_agent.api.base`), one module per dialect.

    pool-api       our reference pool server (:mod:`dc_agent.api.pool_api`)
    decent-cloud   the live Decent Cloud marketplace API (:mod:`dc_agent.api.decent_cloud`)

:func:`connect` is the one place that maps `[agent] api_dialect` onto a client class.
"""

from __future__ import annotations

import importlib
from typing import Any

from nacl.signing import SigningKey

from dc_agent.api.base import AgentApi, HeartbeatAnswer, HeartbeatInfo, Lease, Offer, ReconcileAnswer, ReconcileItem

DIALECTS: dict[str, str] = {
    "pool-api": "dc_agent.api.pool_api:PoolApiClient",
    "decent-cloud": "dc_agent.api.decent_cloud:DecentCloudClient",
}


def client_class(dialect: str) -> Any:
    module, _, name = DIALECTS[dialect].partition(":")
    return getattr(importlib.import_module(module), name)


def connect(settings: Any, key: SigningKey, **kwargs: Any) -> AgentApi:
    """The client for `settings.api_dialect` (kwargs: transport, policies, timeout override)."""
    kwargs.setdefault("timeout", settings.request_timeout_seconds)
    kwargs.setdefault("ca_cert", settings.ca_cert)
    return client_class(settings.api_dialect)(settings.api_url, key, settings.provider_pubkey, **kwargs)


__all__ = ["AgentApi", "DIALECTS", "HeartbeatAnswer", "HeartbeatInfo", "Lease", "Offer", "ReconcileAnswer",
           "ReconcileItem", "client_class", "connect"]
