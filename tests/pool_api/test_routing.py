"""country_to_region over every ISO 3166-1 alpha-2 code (list from pycountry) and pool matching."""

from __future__ import annotations

import pycountry
import pytest

from pool_api.routing import (
    _REGION_CODES,
    COUNTRY_REGION,
    REGIONS,
    country_to_region,
    find_pools_for_offering,
    routes_to,
    routing_note,
)

ALL_CODES = sorted(c.alpha_2 for c in pycountry.countries)

# Spot checks per region, including the spec's examples and every documented judgement call.
EXPECTED = {
    "europe": ["AT", "BE", "FR", "DE", "GB", "UK", "IE", "PL", "CY", "IS", "NO", "CH", "VA", "AX", "GI", "SJ", "MT"],
    "cis": ["RU", "BY", "UA", "KZ", "KG", "TJ", "UZ", "TM", "AM", "AZ", "MD", "GE"],
    "na": ["US", "CA", "MX", "CR", "PA", "GT", "CU", "JM", "HT", "DO", "PR", "BS", "TT", "GL", "BM", "PM", "VI"],
    "latam": ["BR", "AR", "CL", "CO", "PE", "VE", "UY", "PY", "BO", "EC", "GY", "SR", "GF", "FK", "GS", "AQ"],
    "apac": ["CN", "JP", "SG", "AU", "IN", "KR", "TW", "HK", "ID", "NZ", "FJ", "PK", "BD", "AF", "MN", "UM", "IO"],
    "mena": ["AE", "SA", "IL", "TR", "EG", "MA", "DZ", "TN", "LY", "IR", "IQ", "JO", "LB", "SY", "YE", "PS", "SD", "EH"],
    "ssa": ["ZA", "NG", "KE", "GH", "ET", "SN", "CI", "CD", "AO", "TZ", "SS", "MR", "DJ", "SO", "MG", "BV", "TF", "SH"],
}


class TestCountryToRegion:
    def test_pycountry_lists_249_codes(self) -> None:
        """The reference list is the full ISO 3166-1 alpha-2 set."""
        assert len(ALL_CODES) == 249

    @pytest.mark.parametrize("code", ALL_CODES)
    def test_every_iso_code_has_a_region(self, code: str) -> None:
        """Each of the 249 codes maps to one of the seven regions, in upper and lower case."""
        assert country_to_region(code) in REGIONS
        assert country_to_region(code.lower()) == country_to_region(code)

    def test_no_code_listed_twice(self) -> None:
        """The region table names each code once, so no later entry silently overrides an earlier one."""
        listed = [code for codes in _REGION_CODES.values() for code in codes.split()]
        assert len(listed) == len(set(listed)) == len(COUNTRY_REGION)
        assert set(COUNTRY_REGION) - set(ALL_CODES) == {"UK", "XK"}

    @pytest.mark.parametrize("region,codes", sorted(EXPECTED.items()))
    def test_geography(self, region: str, codes: list[str]) -> None:
        """Spec examples and the documented edge cases land in the expected region."""
        assert {c: country_to_region(c) for c in codes} == {c: region for c in codes}

    def test_uk_alias_and_blanks(self) -> None:
        """UK is an alias of GB; surrounding blanks and case are ignored."""
        assert country_to_region("UK") == country_to_region("gb") == country_to_region(" Gb ") == "europe"

    @pytest.mark.parametrize("value", ["", "   ", "ZZ", "XX", "DEU", "Germany", "D", "€€", None, 49])
    def test_unknown_matches_nothing_and_never_raises(self, value: object) -> None:
        """An unknown, empty or non-string country has no region (no silent europe fallback) and a note."""
        assert country_to_region(value) is None  # type: ignore[arg-type]
        if isinstance(value, str) or value is None:
            assert routing_note(value) is not None
        assert routing_note("DE") is None


def pool(pool_id: str, location: str, ptype: str = "proxmox", created: int = 0) -> dict:
    return {"pool_id": pool_id, "location": location, "provisioner_type": ptype, "created_at_ns": created}


class TestPoolMatching:
    pools = [pool("eu-b", "europe", created=2), pool("eu-a", "europe", created=1), pool("eu-script", "europe", "script"),
             pool("na", "na")]

    def test_explicit_pool_wins(self) -> None:
        """An explicit agent_pool_id overrides location routing, even across regions."""
        offering = {"agent_pool_id": "na", "datacenter_country": "DE", "provisioner_type": None}
        assert [p["pool_id"] for p in find_pools_for_offering(offering, self.pools)] == ["na"]

    def test_auto_match_defaults_to_proxmox_oldest_first(self) -> None:
        """Without a provisioner type the offering routes as proxmox; the oldest matching pool is first."""
        offering = {"agent_pool_id": None, "datacenter_country": "fr", "provisioner_type": None}
        assert [p["pool_id"] for p in find_pools_for_offering(offering, self.pools)] == ["eu-a", "eu-b"]

    def test_provisioner_type_must_match(self) -> None:
        """A script offering in Europe routes to the europe script pool only."""
        offering = {"agent_pool_id": None, "datacenter_country": "DE", "provisioner_type": "script"}
        assert [p["pool_id"] for p in find_pools_for_offering(offering, self.pools)] == ["eu-script"]

    def test_unknown_country_matches_no_pool(self) -> None:
        """Unknown or empty countries match nothing."""
        for country in ("", "ZZ"):
            offering = {"agent_pool_id": None, "datacenter_country": country, "provisioner_type": None}
            assert find_pools_for_offering(offering, self.pools) == []
            assert not any(routes_to(offering, p) for p in self.pools)
