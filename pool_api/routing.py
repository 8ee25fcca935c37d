"""Location routing (SPEC.md, "Location Matching Logic"): country code -> region -> pool.

`country_to_region` covers every ISO 3166-1 alpha-2 code plus the `UK` alias, case-insensitively.
Unlike the spec's sketch it has no silent "europe" fallback: an unknown or empty code returns None,
so an offering with such a country matches no pool and the provider API explains why.

Where geography is ambiguous, UN M49 decides, with these documented choices:
- CY (Cyprus) is europe (EU member); TR (Turkey) is mena, as the spec's example says.
- GE (Georgia) is cis: it sits between AM and AZ (both cis) and shares their network paths, even
  though it left the CIS in 2009. The spec names the region "CIS (Russia & neighbors)".
- AF (Afghanistan) is apac: UN M49 "Southern Asia", not a former Soviet state.
- SD (Sudan) is mena (UN M49 Northern Africa); SS, MR, DJ, SO, KM are ssa (UN M49 sub-Saharan).
- GL (Greenland), BM (Bermuda), PM (St Pierre & Miquelon) are na; the whole Caribbean and Central
  America are na; South America with FK (Falklands) and GS (South Georgia) is latam.
- UM (US Minor Outlying Islands, nearly all in the Pacific) and IO (British Indian Ocean Territory,
  south of the Maldives), CX, CC, HM are apac.
- BV (Bouvet Island) and TF (French Southern Territories), nearest to southern Africa, are ssa;
  SH (St Helena) is ssa.
- AQ (Antarctica) is latam: the Antarctic Peninsula and most station traffic go through Chile and
  Argentina.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

REGIONS: dict[str, str] = {
    "europe": "Europe",
    "na": "North America",
    "latam": "Latin America",
    "apac": "Asia Pacific",
    "mena": "Middle East & North Africa",
    "ssa": "Sub-Saharan Africa",
    "cis": "CIS (Russia & neighbors)",
}

PROVISIONER_TYPES: tuple[str, ...] = ("proxmox", "docker", "script", "manual")
DEFAULT_PROVISIONER_TYPE = "proxmox"

_REGION_CODES: dict[str, str] = {
    "europe": (
        "AD AL AT AX BA BE BG CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU "
        "LV MC ME MK MT NL NO PL PT RO RS SE SI SJ SK SM VA XK UK"
    ),
    "cis": "AM AZ BY GE KG KZ MD RU TJ TM UA UZ",
    "na": (
        "US CA MX GL BM PM "
        "BZ CR GT HN NI PA SV "
        "AG AI AW BB BL BQ BS CU CW DM DO GD GP HT JM KN KY LC MF MQ MS PR SX TC TT VC VG VI"
    ),
    "latam": "AR BO BR CL CO EC FK GF GS GY PE PY SR UY VE AQ",
    "apac": (
        "CN HK MO TW JP KR KP MN "
        "BN KH ID LA MM MY PH SG TH TL VN "
        "AF BD BT IN LK MV NP PK IO "
        "AS AU CC CK CX FJ FM GU HM KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS"
    ),
    "mena": "AE BH DZ EG EH IL IQ IR JO KW LB LY MA OM PS QA SA SD SY TN TR YE",
    "ssa": (
        "AO BF BI BJ BW CD CF CG CI CM CV DJ ER ET GA GH GM GN GQ GW KE KM LR LS MG ML MR MU MW MZ NA "
        "NE NG RE RW SC SH SL SN SO SS ST SZ TD TG TZ UG YT ZA ZM ZW BV TF"
    ),
}

COUNTRY_REGION: dict[str, str] = {
    code: region for region, codes in _REGION_CODES.items() for code in codes.split()
}


def country_to_region(country: str | None) -> str | None:
    """The region of an ISO 3166-1 alpha-2 code (any case, surrounding blanks ignored), else None."""
    if not isinstance(country, str):
        return None
    return COUNTRY_REGION.get(country.strip().upper())


def effective_provisioner_type(offering_type: str | None) -> str:
    """An offering without a provisioner type routes as the spec's default, proxmox."""
    return offering_type or DEFAULT_PROVISIONER_TYPE


def routing_note(country: str | None) -> str | None:
    """Why an offering's country cannot be auto-routed, or None when it can."""
    if country is None or not country.strip():
        return "the offering has no datacenter country, so it matches no pool by location"
    if country_to_region(country) is None:
        return (f"datacenter country {country!r} is not an ISO 3166-1 alpha-2 code, so it matches no "
                "pool by location")
    return None


def routes_to(offering: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    """Does the offering route to the pool? Its explicit `agent_pool_id` if set, else region of the
    datacenter country == pool location and provisioner type (default proxmox) == pool type."""
    if offering.get("agent_pool_id"):
        return offering["agent_pool_id"] == pool["pool_id"]
    region = country_to_region(offering.get("datacenter_country"))
    return (region is not None and region == pool["location"]
            and effective_provisioner_type(offering.get("provisioner_type")) == pool["provisioner_type"])


def routes_to_clause(offerings: sa.Table, pool: Mapping[str, Any]) -> sa.ColumnElement[bool]:
    """`routes_to` as SQL over the offerings table (its stored `region` column), for one pool."""
    o = offerings.c
    return sa.or_(
        o.agent_pool_id == pool["pool_id"],
        sa.and_(o.agent_pool_id.is_(None), o.region == pool["location"],
                sa.func.coalesce(o.provisioner_type, DEFAULT_PROVISIONER_TYPE) == pool["provisioner_type"]),
    )


def find_pools_for_offering(offering: Mapping[str, Any], pools: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pools an offering routes to, oldest first; the first is SPEC's find_pool_for_offering."""
    return [p for p in sorted(pools, key=lambda p: (p["created_at_ns"], p["pool_id"])) if routes_to(offering, p)]
