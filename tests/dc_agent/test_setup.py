"""`dc-agent setup`: key before registering, 0600 files, and refusals that leave nothing behind."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import respx
from typer.testing import CliRunner

from dc_agent.cli import app

API = "https://pool.test"
PROVIDER = "ab" * 32
SETUP_OK = {"providerPubkey": PROVIDER, "poolId": "pool-eu", "poolName": "eu-script", "poolLocation": "europe",
            "provisionerType": "script", "permissions": ["provision"]}


def answer(status: int, data=None, error=None) -> httpx.Response:
    return httpx.Response(status, json={"success": status < 400, "data": data, "error": error})


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


class TestSetupSucceeds:
    @respx.mock
    def test_writes_key_and_config_0600_in_the_spec_layout(self, tmp_path):
        """A good token gives a 0600 key and a 0600 config with [agent], [keys], [provisioner]."""
        seen = {}

        def server(request: httpx.Request) -> httpx.Response:
            import json

            body = json.loads(request.content)
            key_file = tmp_path / "cfg" / ".agent.key.new"
            seen["key_on_disk_before_register"] = key_file.exists() and mode(key_file) == 0o600
            seen["pubkey"] = body["agentPubkey"]
            return answer(200, SETUP_OK)

        respx.post(f"{API}/api/v1/agents/setup").mock(side_effect=server)
        config = tmp_path / "cfg" / "config.toml"
        result = invoke("setup", "--token", "apt_europe_abcdef0123456789", "--api-url", API,
                        "--config", str(config), "--label", "hv-1")
        assert result.exit_code == 0, result.output
        assert seen["key_on_disk_before_register"]
        key = tmp_path / "cfg" / "agent.key"
        assert mode(config) == 0o600 and mode(key) == 0o600
        data = tomllib.loads(config.read_text())
        assert data["agent"]["api_url"] == API
        assert data["agent"]["provider_pubkey"] == PROVIDER
        assert data["agent"]["pool_id"] == "pool-eu"
        assert data["agent"]["poll_interval_seconds"] == 30 and data["agent"]["lock_timeout_seconds"] == 300
        assert data["keys"]["private_key_path"] == str(key)
        assert data["provisioner"]["type"] == "script" and "script" in data["provisioner"]
        assert data["agent"]["state_dir"] == str(tmp_path / "cfg" / "state")
        from nacl.signing import SigningKey

        assert SigningKey(bytes.fromhex(key.read_text().strip())).verify_key.encode().hex() == seen["pubkey"]
        assert "Next steps" in result.output and "[provisioner.script]" in result.output
        assert "apt_europe_abcdef0123456789" not in result.output

    @respx.mock
    def test_force_replaces_an_existing_identity(self, tmp_path):
        """With --force, a second setup replaces key and config."""
        respx.post(f"{API}/api/v1/agents/setup").mock(return_value=answer(200, SETUP_OK))
        config = tmp_path / "config.toml"
        assert invoke("setup", "--token", "apt_europe_1111111111", "--api-url", API, "--config", str(config)).exit_code == 0
        first_key = (tmp_path / "agent.key").read_text()
        assert invoke("setup", "--token", "apt_europe_2222222222", "--api-url", API, "--config", str(config),
                      "--force").exit_code == 0
        assert (tmp_path / "agent.key").read_text() != first_key


class TestSetupRefuses:
    @pytest.mark.parametrize("status, error, needle", [
        (410, "setup token already used", "already used or has expired"),
        (404, "unknown setup token", "does not know this setup token"),
        (400, "malformed token", "refused the setup request"),
        (500, "boom", "try again in a minute"),
    ])
    @respx.mock
    def test_bad_or_used_token_leaves_nothing(self, tmp_path, status, error, needle):
        """A refused token: one line on stderr, exit 1, no traceback, no key or config left."""
        respx.post(f"{API}/api/v1/agents/setup").mock(return_value=answer(status, error=error))
        target = tmp_path / "new" / "dir"
        result = invoke("setup", "--token", "apt_europe_0123456789abcdef", "--api-url", API,
                        "--config", str(target / "config.toml"))
        assert result.exit_code == 1
        assert needle in result.output
        assert "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.strip()]) == 1
        assert leftovers(tmp_path) == []  # not even the directories it made

    def test_existing_config_is_not_overwritten_without_force(self, tmp_path):
        """An existing config stays as it was; the message names --force."""
        config = tmp_path / "config.toml"
        config.write_text("# mine\n")
        result = invoke("setup", "--token", "apt_europe_0123456789", "--api-url", API, "--config", str(config))
        assert result.exit_code == 1
        assert "--force" in result.output and "already" in result.output
        assert config.read_text() == "# mine\n"
        assert not (tmp_path / "agent.key").exists()

    def test_unreachable_api_in_a_real_process(self, tmp_path):
        """Nothing listening: one line that says to check --api-url, exit 1, no traceback, nothing left."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        target = tmp_path / "agent"
        proc = subprocess.run([sys.executable, "-m", "dc_agent.cli", "setup", "--token", "apt_europe_0123456789",
                               "--api-url", f"http://127.0.0.1:{port}", "--config", str(target / "config.toml")],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the API" in lines[0] and "--api-url" in lines[0]
        assert "Traceback" not in proc.stderr
        assert leftovers(tmp_path) == []

    def test_empty_token_and_bad_url(self, tmp_path):
        """Obvious input mistakes are caught before any request."""
        r1 = invoke("setup", "--token", " ", "--api-url", API, "--config", str(tmp_path / "c.toml"))
        r2 = invoke("setup", "--token", "apt_x_y", "--api-url", "ftp://x", "--config", str(tmp_path / "c.toml"))
        assert r1.exit_code == 1 and "empty" in r1.output
        assert r2.exit_code == 1 and "https://" in r2.output
        assert leftovers(tmp_path) == []
