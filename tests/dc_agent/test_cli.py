"""The command line: fast start-up (no heavy imports for --help), version, help text."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dc_agent import __version__

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("httpx", "structlog", "nacl", "proxmoxer", "sqlalchemy", "rich", "tenacity", "fastapi", "requests")


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)


class TestStartUp:
    def test_help_imports_no_heavy_library(self):
        """`dc-agent --help` loads Typer and the CLI module only."""
        res = python(
            "import sys\n"
            "sys.argv = ['dc-agent', '--help']\n"
            "from dc_agent.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('MODULES=' + ','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
        assert res.returncode == 0, res.stderr
        assert "MODULES=\n" in res.stdout or res.stdout.rstrip().endswith("MODULES="), res.stdout[-300:]
        assert "setup" in res.stdout and "status" in res.stdout and "manual" in res.stdout

    def test_help_costs_a_few_times_python_itself(self):
        """Best of 5: `--help` within 8x a bare interpreter start plus 150 ms of slack."""
        def best(argv: list[str]) -> float:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                subprocess.run(argv, capture_output=True, check=True, cwd=REPO)
                times.append(time.perf_counter() - started)
            return min(times)

        bare = best([sys.executable, "-c", "pass"])
        cli = best([sys.executable, "-m", "dc_agent.cli", "--help"])
        assert cli < 8 * bare + 0.15, (cli, bare)

    def test_version(self):
        res = subprocess.run([sys.executable, "-m", "dc_agent.cli", "--version"], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
        assert res.stdout.strip() == f"dc-agent {__version__}"

    def test_every_command_has_help_naming_its_environment_variables(self):
        for argv in (["setup"], ["run"], ["status"], ["manual", "done"]):
            res = subprocess.run([sys.executable, "-m", "dc_agent.cli", *argv, "--help"], capture_output=True,
                                 text=True, cwd=REPO, timeout=60)
            assert res.returncode == 0 and "DC_AGENT_CONFIG" in res.stdout, (argv, res.stdout)

    def test_run_with_a_broken_config_is_one_line_and_exit_78(self, tmp_path):
        """A configuration error stops `run` with one line and EX_CONFIG, no traceback."""
        config = tmp_path / "config.toml"
        config.write_text('[agent]\napi_url = "https://x"\nprovider_pubkey = "' + "ab" * 32 + '"\n'
                          'poll_interval_seconds = -1\n[provisioner]\ntype = "script"\n')
        res = subprocess.run([sys.executable, "-m", "dc_agent.cli", "run", "--config", str(config)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert res.returncode == 78
        assert res.stderr.count("\n") == 1 and "poll_interval_seconds" in res.stderr and "Traceback" not in res.stderr

    def test_status_json_without_a_config_is_unhealthy_and_parseable(self, tmp_path):
        res = subprocess.run([sys.executable, "-m", "dc_agent.cli", "status", "--json", "--config",
                              str(tmp_path / "missing.toml")], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert res.returncode == 1
        report = json.loads(res.stdout)
        assert report["healthy"] is False and report["checks"]["config"] is False
        assert "dc-agent setup" in report["problems"][0]


class TestStateDirectory:
    def _config(self, tmp_path: Path) -> Path:
        from nacl.signing import SigningKey

        from dc_agent import keys

        keys.write(tmp_path / "agent.key", SigningKey.generate())
        config = tmp_path / "config.toml"
        config.write_text('[agent]\napi_url = "http://127.0.0.1:9"\nprovider_pubkey = "' + "ab" * 32 + '"\n'
                          'pool_id = "p"\n[keys]\nprivate_key_path = "agent.key"\n'
                          '[provisioner]\ntype = "script"\n[provisioner.script]\ncommand = ["true"]\n')
        return config

    def test_a_second_run_on_one_state_directory_is_refused(self, tmp_path):
        """Two agents must never share an outbox: the second `run` stops with one line naming the first."""
        from dc_agent.state import StateDirLock

        config = self._config(tmp_path)
        holder = StateDirLock(tmp_path / "state")
        holder.acquire()
        try:
            res = subprocess.run([sys.executable, "-m", "dc_agent.cli", "run", "--config", str(config)],
                                 capture_output=True, text=True, cwd=REPO, timeout=60)
        finally:
            holder.release()
        assert res.returncode == 78
        assert "another `dc-agent run`" in res.stderr and "Traceback" not in res.stderr

    def test_unreadable_ca_cert_is_a_config_error(self, tmp_path):
        """[agent] ca_cert that is not a PEM bundle is named in the error."""
        import pytest
        from nacl.signing import SigningKey

        from dc_agent.api.pool_api import PoolApiClient as ApiClient
        from dc_agent.errors import ConfigFileError

        bad = tmp_path / "ca.pem"
        bad.write_text("not a certificate")
        with pytest.raises(ConfigFileError, match="ca_cert"):
            ApiClient("https://x", SigningKey.generate(), "ab" * 32, ca_cert=str(bad))
