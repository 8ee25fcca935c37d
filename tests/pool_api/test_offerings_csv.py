"""Offerings CSV (pool_api.offerings_csv) on PostgreSQL and SQLite: a good file creates and replaces, a bad
row is reported with its line number and nothing is written, export -> import changes nothing; and the
`dc-pool-api offering import/export` commands around the same module."""

from __future__ import annotations

import os
import subprocess

import pytest
import sqlalchemy as sa

from pool_api import offerings, offerings_csv
from pool_api.tables import offerings as offerings_table
from tests.pool_api.test_pages import ALICE, BOB, alice, bob, make_pool  # noqa: F401
from tests.support.pool_server import REPO, pool_api_command

HEADER = ("offering_id,name,product_type,datacenter_country,provisioner_type,agent_pool_id,price,cpu_cores,"
          "memory_mb,storage_gb,status,provisioner_config")


def stored(engine: sa.Engine) -> dict[str, dict]:
    with engine.begin() as conn:
        rows = conn.execute(sa.select(offerings_table).order_by(offerings_table.c.offering_id)).all()
    return {r.offering_id: {k: v for k, v in r._mapping.items() if k != "created_at_ns"} for r in rows}


def run_import(engine: sa.Engine, provider: str, text: str) -> dict[str, int]:
    with engine.begin() as conn:
        return offerings_csv.import_csv(conn, provider, text)


class TestImport:
    def test_good_file_creates_and_replaces(self, engine: sa.Engine, alice: str) -> None:
        """Columns in any order, empty cells unset, quoted JSON; an existing id of the provider is replaced."""
        pool = make_pool(engine, alice, "na-proxmox", "na")
        with engine.begin() as conn:
            offerings.create_offering(conn, alice, {"name": "Old", "datacenter_country": "DE", "price": 9.0}, "vps-s")
        text = ("\ufeffname,datacenter_country,offering_id,price,cpu_cores,agent_pool_id,status,provisioner_config\n"
                "VPS Small,DE,vps-s,5.5,1,,,\n"
                f'VPS US,US,vps-us,7,2,{pool},inactive,"{{""template"": ""debian-12""}}"\n'
                "\n"
                "Generated,FR,,,,,,\n")
        assert run_import(engine, alice, text) == {"created": 2, "updated": 1}
        got = stored(engine)
        assert got["vps-s"]["name"] == "VPS Small" and got["vps-s"]["price"] == 5.5 and got["vps-s"]["cpu_cores"] == 1
        assert got["vps-us"]["agent_pool_id"] == pool and got["vps-us"]["status"] == "inactive"
        assert got["vps-us"]["provisioner_config"] == {"template": "debian-12"} and got["vps-us"]["region"] == "na"
        [generated] = [k for k in got if k.startswith("off_")]
        assert got[generated]["product_type"] == "compute" and got[generated]["status"] == "active"

    def test_bad_rows_by_line_number_and_nothing_written(self, engine: sa.Engine, alice: str, bob: str) -> None:
        with engine.begin() as conn:
            offerings.create_offering(conn, bob, {"name": "Bob's", "datacenter_country": "DE"}, "bobs-id")
            offerings.create_offering(conn, alice, {"name": "Keep", "datacenter_country": "DE"}, "keep")
        before = stored(engine)
        text = (f"{HEADER}\n"
                "keep,Renamed,,DE,,,,,,,,\n"                     # 2: fine on its own
                'multi,"two\nlines",,DE,,,,,,,,\n'                # 3-4: one record over two lines, fine
                "bad-price,X,,DE,,,cheap,,,,,\n"                  # 5
                "bad-type,X,,DE,kvm,,,,,,,\n"                     # 6
                "no-country,X,,,,,,,,,,\n"                        # 7
                "keep,Again,,DE,,,,,,,,\n"                        # 8: duplicate of line 2
                "bobs-id,Mine now,,DE,,,,,,,,\n"                  # 9: another provider's id
                "pooled,X,,DE,,pool_nope,,,,,,\n"                 # 10: unknown pool
                "json,X,,DE,,,,,,,,[1]\n"                         # 11
                "short,X\n"                                       # 12
                "cores,X,,DE,,,,-1,,,,\n")                        # 13
        with pytest.raises(offerings_csv.CsvError) as caught:
            run_import(engine, alice, text)
        assert caught.value.errors == [
            "line 5: price: must be a number, not 'cheap'",
            "line 6: provisioner_type: Input should be 'proxmox', 'docker', 'script' or 'manual'",
            "line 7: datacenter_country: required",
            "line 8: offering_id: 'keep' is already on line 2",
            "line 9: offering_id: 'bobs-id' is taken; choose another id",
            "line 10: agent_pool_id: unknown pool 'pool_nope' of this provider",
            "line 11: provisioner_config: must be a JSON object",
            "line 12: 2 cells, the header has 12",
            "line 13: cpu_cores: must be a whole number, not '-1'",
        ]
        assert stored(engine) == before  # nothing written, not even the good rows

    def test_header_problems(self, engine: sa.Engine, alice: str) -> None:
        for text, message in (("", "line 1: the file is empty"),
                              ("name,datacenter_country,colour\n", "line 1: unknown column(s) 'colour'"),
                              ("name,name,datacenter_country\n", "line 1: column(s) name given more than once"),
                              ("offering_id,name\n", "line 1: required column(s) datacenter_country missing")):
            with pytest.raises(offerings_csv.CsvError) as caught:
                run_import(engine, alice, text)
            assert caught.value.errors[0].startswith(message), caught.value.errors

    def test_round_trip_export_import_changes_nothing(self, engine: sa.Engine, alice: str) -> None:
        pool = make_pool(engine, alice, "eu")
        with engine.begin() as conn:
            offerings.create_offering(conn, alice, {"name": 'Quote " and, comma', "datacenter_country": "DE",
                                                    "price": 0.1, "memory_mb": 2**40, "agent_pool_id": pool,
                                                    "provisioner_config": {"b": [1, 2], "a": "ü"}}, "weird")
            offerings.create_offering(conn, alice, {"name": "Plain", "datacenter_country": "ZZ", "status": "inactive",
                                                    "provisioner_type": "docker"}, "plain")
            exported = offerings_csv.export_csv(conn, alice)
        assert exported.splitlines()[0] == HEADER
        before = stored(engine)
        assert run_import(engine, alice, exported) == {"created": 0, "updated": 2}
        assert stored(engine) == before
        with engine.begin() as conn:
            assert offerings_csv.export_csv(conn, alice) == exported


def test_offering_import_export_commands(sqlite_url: str, tmp_path) -> None:  # noqa: ANN001
    """The CLI reads and writes the same format; a bad line is an error naming file and line, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC_POOL_API_")}
    env["DC_POOL_API_DATABASE_URL"] = sqlite_url

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*pool_api_command(), *args], capture_output=True, text=True, cwd=REPO, env=env,
                              input=stdin, timeout=120)

    assert cli("provider", "add", "--pubkey", ALICE).returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("offering_id,name,datacenter_country,price\nvps-a,A,DE,1\nvps-b,B,FR,x\n")
    refused = cli("offering", "import", str(bad), "--provider", ALICE)
    assert refused.returncode == 1 and f"error: {bad}: line 3: price: must be a number, not 'x'" in refused.stderr
    assert "nothing was imported" in refused.stderr and "Traceback" not in refused.stderr
    assert cli("offering", "export", "--provider", ALICE).stdout.splitlines() == [HEADER]
    good = cli("offering", "import", "-", "--provider", ALICE, stdin="name,datacenter_country,offering_id\nA,DE,vps-a\n")
    assert good.returncode == 0 and good.stdout.strip() == "imported 1 offerings: 1 created, 0 updated"
    out = tmp_path / "out.csv"
    assert cli("offering", "export", "--provider", ALICE, "-o", str(out)).returncode == 0
    assert out.read_text().splitlines() == [HEADER, "vps-a,A,compute,DE,,,,,,,active,"]
    again = cli("offering", "import", str(out), "--provider", ALICE)
    assert again.stdout.strip() == "imported 1 offerings: 0 created, 1 updated"
    unknown = cli("offering", "export", "--provider", "cd" * 32)
    assert unknown.returncode == 1 and "unknown provider" in unknown.stderr
