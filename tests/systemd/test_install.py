"""systemd/install.sh, run for real: a venv, `pip install` of this checkout, `dc-agent setup` against a
real `dc-pool-api serve`, the unit, all under a --root prefix and without systemctl (--no-systemd),
except one run that enables the unit with `systemctl --root`.

Two fresh installs per test run (about 10 s each here: pip builds this checkout and takes the
dependencies from pip's usual sources); the other runs reuse the venv (about 3 s).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pool_server import running_pool_api
from tests.support.provider import Provider, data

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "dc-agent.service"

pytestmark = pytest.mark.slow


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_installer(*args: str, timeout: float = 600, extra_env: dict[str, str] | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC_AGENT_")}
    env.update(extra_env or {})
    started = time.monotonic()
    res = subprocess.run(["bash", str(INSTALLER), *args], capture_output=True, text=True, env=env,
                         timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")
    return Run(list(args), res.returncode, res.stdout, res.stderr, time.monotonic() - started)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Pool:
    server: object
    provider: Provider
    pool_id: str

    def agents(self) -> list[dict]:
        return data(self.provider.request("GET", "/agents"))

    def pending_tokens(self) -> list[str]:
        return [t["token"] for t in data(self.provider.request("GET", f"/pools/{self.pool_id}/setup-tokens"))]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A real `dc-pool-api serve` on SQLite, a registered provider and one pool."""
    db = tmp_path_factory.mktemp("pool-db") / "pool.db"
    with running_pool_api(f"sqlite:///{db}") as server:
        provider = Provider.register(server)
        pool_id = provider.create_pool("installer", "europe", "script")["poolId"]
        try:
            yield Pool(server, provider, pool_id)
        finally:
            provider.close()


@dataclass
class Installed:
    root: Path
    token: str
    first: Run


@pytest.fixture(scope="module")
def installed(pool, tmp_path_factory) -> Installed:
    """The first install into an empty root, from this checkout, with a fresh token."""
    root = tmp_path_factory.mktemp("root")
    token = pool.provider.create_token(pool.pool_id)
    first = run_installer("--token", token, "--api-url", pool.server.url, "--label", "installer-test",
                          "--no-systemd", "--root", str(root), "--from", str(REPO))
    print(f"first install took {first.seconds:.1f} s")
    assert first.returncode == 0, first.output
    return Installed(root, token, first)


def test_shellcheck_clean():
    """install.sh passes shellcheck."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian package `shellcheck`)")
    res = subprocess.run(["shellcheck", str(INSTALLER)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


class TestArguments:
    def test_help(self):
        """--help explains the options and exits 0."""
        res = run_installer("--help")
        assert res.returncode == 0
        for option in ("--token", "--api-url", "--from", "--prefix", "--config-dir", "--state-dir",
                       "--no-systemd", "--root", "--force"):
            assert option in res.stdout

    def test_unknown_option(self, tmp_path):
        """An unknown option is named, with a pointer to --help."""
        res = run_installer("--root", str(tmp_path), "--tokn", "x")
        assert res.returncode != 0
        assert "unknown option --tokn" in res.stderr

    def test_token_required_for_a_first_install(self, tmp_path):
        """Without a config to keep, the token is required, and nothing is installed."""
        res = run_installer("--root", str(tmp_path), "--no-systemd")
        assert res.returncode != 0
        assert "--token TOKEN is required" in res.stderr
        assert list(tmp_path.iterdir()) == []

    def test_option_without_value(self, tmp_path):
        """`--api-url` at the end of the line (or followed by another option) is an error."""
        res = run_installer("--root", str(tmp_path), "--token", "t", "--api-url")
        assert res.returncode != 0 and "--api-url needs a value" in res.stderr
        res = run_installer("--root", str(tmp_path), "--token", "--no-systemd")
        assert res.returncode != 0 and "--token needs a value" in res.stderr

    def test_refuses_a_shared_system_directory(self, tmp_path):
        """--config-dir /etc would chmod 0700 all of /etc: refused."""
        res = run_installer("--root", str(tmp_path), "--token", "t", "--config-dir", "/etc")
        assert res.returncode != 0 and "directory of its own" in res.stderr

    def test_missing_from_path(self, tmp_path):
        """--from a path that does not exist says so before anything is installed."""
        res = run_installer("--root", str(tmp_path), "--token", "t", "--from", str(tmp_path / "nope"))
        assert res.returncode != 0 and "no such file or directory" in res.stderr


    def test_refuses_to_run_as_a_normal_user(self, tmp_path):
        """Without root (and without --root) the installer stops at once and says how to run it."""
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv to run the installer as another user")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
                              str(INSTALLER), "--token", "t"], capture_output=True, text=True, env=env,
                             timeout=60, cwd="/", stdin=subprocess.DEVNULL)
        assert res.returncode != 0
        assert "run as root" in res.stderr and "sudo bash -s --" in res.stderr

    @pytest.mark.parametrize("version, has_venv, message", [
        ("3.10.12", True, "needs Python 3.11 or newer"),
        ("3.11.2", False, "apt-get install python3-venv"),
    ])
    def test_python_checks(self, tmp_path, version, has_venv, message):
        """A Python older than 3.11, or one without the venv module, is refused with the fix."""
        fake = tmp_path / "python3"
        major, minor = (int(x) for x in version.split(".")[:2])
        fake.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = -V ]; then echo "Python {version}"; exit 0; fi\n'
            'case "$2" in\n'
            f"  *version_info*) [ {major * 100 + minor} -ge 311 ] && exit 0 || exit 1 ;;\n"
            f"  *ensurepip*) exit {0 if has_venv else 1} ;;\n"
            "esac\nexit 1\n")
        fake.chmod(0o755)
        root = tmp_path / "root"
        res = run_installer("--root", str(root), "--token", "t", "--no-systemd", "--python", str(fake))
        assert res.returncode != 0
        assert message in res.stderr, res.stderr
        assert not (root / "opt").exists()


class TestFirstInstall:
    def test_config_and_key_are_private(self, installed):
        """config.toml and agent.key exist, 0600, in a 0700 directory under the root prefix."""
        config_dir = installed.root / "etc" / "dc-agent"
        assert mode(config_dir) == 0o700
        assert mode(config_dir / "config.toml") == 0o600
        assert mode(config_dir / "agent.key") == 0o600
        assert mode(installed.root / "var" / "lib" / "dc-agent") == 0o700

    def test_config_points_at_the_pool_and_the_state_dir(self, installed, pool):
        """setup wrote the API URL, the pool and the state directory under the root prefix."""
        import tomllib

        config = tomllib.loads((installed.root / "etc" / "dc-agent" / "config.toml").read_text())
        assert config["agent"]["api_url"].rstrip("/") == pool.server.url
        assert config["agent"]["pool_id"] == pool.pool_id
        assert config["agent"]["state_dir"] == str(installed.root / "var" / "lib" / "dc-agent")
        assert config["keys"]["private_key_path"] == str(installed.root / "etc" / "dc-agent" / "agent.key")

    def test_agent_registered_and_token_spent(self, installed, pool):
        """The server has one agent in the pool, and the token is no longer pending."""
        agents = pool.agents()
        assert len(agents) == 1
        assert installed.token not in pool.pending_tokens()

    def test_unit_installed(self, installed):
        """The unit is installed as systemd/dc-agent.service, 0644; no drop-in for default paths."""
        unit = installed.root / "etc" / "systemd" / "system" / "dc-agent.service"
        assert unit.read_text() == UNIT.read_text()
        assert mode(unit) == 0o644
        assert not (installed.root / "etc" / "systemd" / "system" / "dc-agent.service.d").exists()

    def test_venv_and_command(self, installed):
        """The venv runs the installed dc-agent, and /usr/local/bin/dc-agent links to it."""
        agent = installed.root / "opt" / "dc-agent" / "venv" / "bin" / "dc-agent"
        res = subprocess.run([str(agent), "--version"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.startswith("dc-agent ")
        link = installed.root / "usr" / "local" / "bin" / "dc-agent"
        assert os.readlink(link) == "/opt/dc-agent/venv/bin/dc-agent"

    def test_token_never_printed(self, installed):
        """The installer's output never contains the token."""
        assert installed.token not in installed.first.output

    def test_next_steps_printed(self, installed):
        """The closing lines tell what to do next."""
        out = installed.first.stdout
        assert "Next steps:" in out and "systemctl restart dc-agent" in out and "dc-agent status" in out


class TestSecondRun:
    def test_second_run_keeps_config_and_spends_no_token(self, installed, pool):
        """Running the same one-liner again (same, now used, token) succeeds, keeps the config and key
        byte for byte, does not call setup, and leaves the server with one agent."""
        config = installed.root / "etc" / "dc-agent" / "config.toml"
        key = installed.root / "etc" / "dc-agent" / "agent.key"
        before = (config.read_bytes(), key.read_bytes(), config.stat().st_mtime_ns)
        again = run_installer("--token", installed.token, "--api-url", pool.server.url, "--no-systemd",
                              "--root", str(installed.root), "--from", str(REPO))
        print(f"second run took {again.seconds:.1f} s")
        assert again.returncode == 0, again.output
        assert "keeping the existing config" in again.stdout
        assert "not applied to the existing config: --token --api-url (the token was not used)" in again.stderr
        assert "upgrading the venv" in again.stdout
        assert "Check it:" in again.stdout and "Next steps:" not in again.stdout
        assert (config.read_bytes(), key.read_bytes(), config.stat().st_mtime_ns) == before
        assert len(pool.agents()) == 1
        assert installed.token not in again.output

    def test_upgrade_without_token(self, installed):
        """An existing install upgrades with no token at all."""
        again = run_installer("--no-systemd", "--root", str(installed.root), "--from", str(REPO))
        assert again.returncode == 0, again.output
        assert "keeping the existing config" in again.stdout


class TestRefusals:
    def test_bad_token_fails_clearly_and_leaves_nothing(self, installed, pool):
        """A token the server does not know: non-zero exit, setup's one-line reason and the installer's,
        no traceback, and no config or key left behind."""
        bad = "apt_bad_0000000000000000"
        res = run_installer("--token", bad, "--api-url", pool.server.url, "--no-systemd",
                            "--root", str(installed.root), "--from", str(REPO),
                            "--config-dir", "/etc/dc-agent-bad", "--state-dir", "/var/lib/dc-agent-bad")
        assert res.returncode != 0
        assert "dc-agent setup failed" in res.stderr
        assert "token" in res.stderr.lower()
        assert "Traceback" not in res.output
        assert bad not in res.output
        leftovers = [p for p in (installed.root / "etc" / "dc-agent-bad").glob("*")]
        assert leftovers == []
        assert len(pool.agents()) == 1

    def test_used_token_with_force_fails_and_keeps_the_old_identity(self, installed, pool):
        """--force with the already-spent token: setup is refused, and the working config and key stay."""
        config = installed.root / "etc" / "dc-agent" / "config.toml"
        key = installed.root / "etc" / "dc-agent" / "agent.key"
        before = (config.read_bytes(), key.read_bytes())
        res = run_installer("--token", installed.token, "--api-url", pool.server.url, "--no-systemd",
                            "--root", str(installed.root), "--from", str(REPO), "--force")
        assert res.returncode != 0
        assert "dc-agent setup failed" in res.stderr
        assert installed.token not in res.output
        assert (config.read_bytes(), key.read_bytes()) == before


def test_custom_paths_and_systemctl_root_enable(pool, tmp_path):
    """--prefix, --config-dir and --state-dir are written into the unit (and a drop-in lets the agent
    write the state directory); without --no-systemd, --root enables the unit with `systemctl --root`;
    the token may come from DC_AGENT_SETUP_TOKEN instead of the command line."""
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl not installed (Debian package `systemd`)")
    token = pool.provider.create_token(pool.pool_id)
    res = run_installer("--api-url", pool.server.url, "--root", str(tmp_path),
                        "--from", str(REPO), "--prefix", "/opt/dca", "--config-dir", "/etc/dca",
                        "--state-dir", "/srv/dca-state", extra_env={"DC_AGENT_SETUP_TOKEN": token})
    print(f"install with custom paths took {res.seconds:.1f} s")
    assert res.returncode == 0, res.output
    units = tmp_path / "etc" / "systemd" / "system"
    unit = (units / "dc-agent.service").read_text()
    assert "ExecStart=/opt/dca/venv/bin/dc-agent run --config /etc/dca/config.toml\n" in unit
    assert "ReadWritePaths=/srv/dca-state" in (units / "dc-agent.service.d" / "paths.conf").read_text()
    assert (units / "multi-user.target.wants" / "dc-agent.service").is_symlink()
    assert mode(tmp_path / "etc" / "dca" / "config.toml") == 0o600
    assert mode(tmp_path / "srv" / "dca-state") == 0o700
    assert (tmp_path / "opt" / "dca" / "venv" / "bin" / "dc-agent").exists()
    assert "enabled under" in res.stdout
    assert token not in res.output
    assert token not in pool.pending_tokens()
