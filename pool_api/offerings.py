"""Offerings and the pool each one routes to (explicit `agentPoolId`, else region + provisioner type)."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from pool_api.db import now_ns
from pool_api.errors import ApiError
from pool_api.pools import pools_of_provider
from pool_api.routing import country_to_region, effective_provisioner_type, find_pools_for_offering, routing_note
from pool_api.tables import agent_pools as p
from pool_api.tables import offerings as o

FIELDS = ("name", "product_type", "datacenter_country", "provisioner_type", "agent_pool_id", "price", "cpu_cores",
          "memory_mb", "storage_gb", "provisioner_config", "status")
STATUSES = ("active", "inactive")


def new_offering_id() -> str:
    return "off_" + secrets.token_hex(8)


def _check_pool(conn: sa.Connection, provider_pubkey: str, pool_id: str | None) -> None:
    if pool_id is None:
        return
    found = conn.execute(sa.select(p.c.pool_id).where(p.c.pool_id == pool_id, p.c.provider_pubkey == provider_pubkey)).first()
    if found is None:
        raise ApiError(422, f"agentPoolId: unknown pool {pool_id!r} of this provider")


def create_offering(conn: sa.Connection, provider_pubkey: str, fields: dict[str, Any],
                    offering_id: str | None = None) -> dict[str, Any]:
    _check_pool(conn, provider_pubkey, fields.get("agent_pool_id"))
    values = {k: fields.get(k) for k in FIELDS}
    values["product_type"] = values["product_type"] or "compute"
    values["status"] = values["status"] or "active"
    values.update(offering_id=offering_id or new_offering_id(), provider_pubkey=provider_pubkey,
                  region=country_to_region(values["datacenter_country"]), created_at_ns=now_ns())
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(o).values(**values))
    except sa.exc.IntegrityError:
        raise ApiError(409, f"offeringId: offering {values['offering_id']!r} already exists") from None
    return get_offering(conn, provider_pubkey, values["offering_id"])


def update_offering(conn: sa.Connection, provider_pubkey: str, offering_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    get_offering(conn, provider_pubkey, offering_id)
    _check_pool(conn, provider_pubkey, fields.get("agent_pool_id"))
    values = {k: fields.get(k) for k in FIELDS}
    values["region"] = country_to_region(values["datacenter_country"])
    values["status"] = values["status"] or "active"
    conn.execute(sa.update(o).where(o.c.offering_id == offering_id).values(**values))
    return get_offering(conn, provider_pubkey, offering_id)


def offering_json(row: Any, pools: list[dict[str, Any]]) -> dict[str, Any]:
    m = row._mapping
    matches = find_pools_for_offering(m, pools)
    resolved = matches[0] if matches else None
    if resolved is not None:
        note = None
        how = "explicit" if m["agent_pool_id"] else "auto"
    else:
        how = None
        if m["agent_pool_id"]:
            note = f"explicit pool {m['agent_pool_id']!r} does not exist"
        else:
            region = country_to_region(m["datacenter_country"])
            note = routing_note(m["datacenter_country"]) or (
                f"no pool with location {region!r} and provisioner type "
                f"{effective_provisioner_type(m['provisioner_type'])!r}")
    return {
        "offeringId": m["offering_id"],
        "providerPubkey": m["provider_pubkey"],
        "name": m["name"],
        "productType": m["product_type"],
        "datacenterCountry": m["datacenter_country"],
        "region": m["region"],
        "provisionerType": m["provisioner_type"],
        "effectiveProvisionerType": effective_provisioner_type(m["provisioner_type"]),
        "agentPoolId": m["agent_pool_id"],
        "price": m["price"],
        "cpuCores": m["cpu_cores"],
        "memoryMb": m["memory_mb"],
        "storageGb": m["storage_gb"],
        "provisionerConfig": m["provisioner_config"],
        "createdAtNs": m["created_at_ns"],
        "status": m["status"],
        "resolvedPool": None if resolved is None else {
            "poolId": resolved["pool_id"], "name": resolved["name"], "location": resolved["location"],
            "provisionerType": resolved["provisioner_type"], "match": how,
        },
        "matchingPoolIds": [x["pool_id"] for x in matches],
        "routingNote": note,
    }


def get_offering(conn: sa.Connection, provider_pubkey: str, offering_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(o).where(o.c.offering_id == offering_id, o.c.provider_pubkey == provider_pubkey)).first()
    if row is None:
        raise ApiError(404, "unknown offering")
    return offering_json(row, pools_of_provider(conn, provider_pubkey))


def list_offerings(conn: sa.Connection, provider_pubkey: str) -> list[dict[str, Any]]:
    pools = pools_of_provider(conn, provider_pubkey)
    rows = conn.execute(sa.select(o).where(o.c.provider_pubkey == provider_pubkey).order_by(o.c.created_at_ns, o.c.offering_id))
    return [offering_json(r, pools) for r in rows]
