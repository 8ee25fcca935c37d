"""The `dc-pool-api` admin commands as a user runs them (real subprocesses on an SQLite file)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pool_api import db
from tests.support.pool_server import pool_api_command


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DC_POOL_API_")}
    full_env.update({"COLUMNS": "250", "TERM": "dumb", **(env or {})})
    return subprocess.run([*pool_api_command(), *args], capture_output=True, text=True, env=full_env, timeout=120)


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    res = run(*args, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


class TestHelp:
    def test_help_names_commands_env_vars_and_default_database(self) -> None:
        """--help lists the commands; each option shows its DC_POOL_API_* variable; the SQLite default is named."""
        top = ok("--help")
        for command in ("serve", "provider", "offering", "contract", "migrate"):
            assert command in top
        serve = ok("serve", "--help")
        for var in ("DC_POOL_API_DATABASE_URL", "DC_POOL_API_LOCK_TTL_SECONDS", "DC_POOL_API_HEARTBEAT_SECONDS",
                    "DC_POOL_API_LOCK_SWEEP_SECONDS", "DC_POOL_API_TOKEN_SWEEP_SECONDS", "DC_POOL_API_PUBLIC_URL",
                    "DC_POOL_API_PORT", "DC_POOL_API_HOST"):
            assert var in serve, var
        assert "/var/lib/dc-pool-api/pool.db" in serve and "dc-pool-api/pool.db" in serve
        assert "DC_POOL_API_DATABASE_URL" in ok("contract", "create", "--help")

    def test_default_database_path(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Root uses /var/lib/dc-pool-api/pool.db; other users $XDG_STATE_HOME or ~/.local/state."""
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert db.default_sqlite_path() == Path("/var/lib/dc-pool-api/pool.db")
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        assert db.default_sqlite_path() == tmp_path / "dc-pool-api" / "pool.db"
        monkeypatch.delenv("XDG_STATE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path))
        assert db.default_sqlite_path() == tmp_path / ".local" / "state" / "dc-pool-api" / "pool.db"
        assert db.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"


class TestAdminCommands:
    def test_provider_offering_contract_lifecycle(self, tmp_path: Path) -> None:
        """provider add, offering create, contract create/list/show/cancel work through the env variable too."""
        env = {"DC_POOL_API_DATABASE_URL": f"sqlite:///{tmp_path / 'pool.db'}"}
        pk = SigningKey.generate().verify_key.encode().hex()
        assert ok("provider", "add", "--pubkey", pk, "--name", "acme", env=env).strip() == pk
        assert ok("provider", "add", "--pubkey", pk.upper(), env=env).strip() == pk  # idempotent, lowercased
        out = ok("offering", "create", "--provider", pk, "--offering-id", "vps-eu", "--name", "VPS EU", "--country", "DE",
                 "--cpu-cores", "2", "--memory-mb", "2048", "--storage-gb", "20", "--price", "5",
                 "--provisioner-config", '{"templateVmid": 9000}', env=env)
        assert out.strip() == "vps-eu"
        ids = ok("contract", "create", "--offering", "vps-eu", "--ssh-pubkey", "ssh-ed25519 AAAA test", "--count", "3",
                 env=env).split()
        assert len(ids) == 3 and len(set(ids)) == 3
        listed = json.loads(ok("contract", "list", "--json", env=env))
        assert [c["contractId"] for c in listed] == ids
        shown = json.loads(ok("contract", "show", ids[0], "--json", env=env))
        for field in ("contractId", "offeringId", "status", "lockAgent", "lockExpiresNs", "instanceDetails",
                      "failureCount", "lastError", "provisionedAtNs"):
            assert field in shown
        assert (shown["status"], shown["paymentStatus"], shown["requesterSshPubkey"]) == \
               ("accepted", "succeeded", "ssh-ed25519 AAAA test")
        assert ids[0] in ok("contract", "cancel", ids[0], env=env)
        assert json.loads(ok("contract", "list", "--status", "cancelled", "--json", env=env))[0]["contractId"] == ids[0]
        assert ids[1] in ok("contract", "list", env=env)
        assert "status: accepted" in ok("contract", "show", ids[1], env=env)

    @pytest.mark.parametrize("args,needle", [
        (["provider", "add", "--pubkey", "xyz"], "--pubkey"),
        (["offering", "create", "--provider", "ab" * 32, "--offering-id", "o", "--name", "n", "--country", "DE"],
         "unknown provider"),
        (["contract", "create", "--offering", "nope"], "unknown offering"),
        (["contract", "show", "nope"], "unknown contract"),
        (["contract", "create", "--offering", "o", "--status", "weird"], "--status"),
        (["contract", "create", "--offering", "o", "--instance-config", "{"], "--instance-config"),
    ])
    def test_errors_exit_nonzero_with_a_message(self, tmp_path: Path, args: list[str], needle: str) -> None:
        """Bad keys, unknown objects and bad flag values exit 1 with one error line, no traceback."""
        res = run(*args, "--database-url", f"sqlite:///{tmp_path / 'pool.db'}")
        assert res.returncode == 1, res
        assert needle in res.stderr and "Traceback" not in res.stderr
