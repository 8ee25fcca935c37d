"""Config loading: layout, defaults, precedence flags > env > file, errors that name file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from dc_agent import config as cfg
from dc_agent.errors import ConfigFileError

PROVIDER = "ab" * 32


def write(tmp_path: Path, agent_extra: str = "", provisioner: str = 'type = "script"\n[provisioner.script]\ncommand = ["true"]\n') -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[agent]
api_url = "https://api.example/"
provider_pubkey = "{PROVIDER}"
pool_id = "pool-1"
{agent_extra}
[keys]
private_key_path = "agent.key"

[provisioner]
{provisioner}
""")
    return path


class TestLoad:
    def test_defaults_and_layout(self, tmp_path):
        """Unset options take documented defaults; relative paths are relative to the file."""
        s = cfg.load(write(tmp_path), environ={})
        assert s.api_url == "https://api.example"
        assert (s.poll_interval_seconds, s.lock_timeout_seconds, s.max_concurrent, s.shutdown_grace_seconds) == (30, 300, 2, 60)
        assert s.renew_interval_seconds == 100
        assert s.private_key_path == tmp_path / "agent.key"
        assert s.state_dir == tmp_path / "state"
        assert s.provisioner_type == "script" and s.provisioner_settings == {"command": ["true"]}

    def test_precedence_flags_over_env_over_file(self, tmp_path):
        """A flag beats DC_AGENT_*, which beats the file."""
        path = write(tmp_path, "poll_interval_seconds = 10\nmax_concurrent = 3\n")
        env = {"DC_AGENT_POLL_INTERVAL_SECONDS": "5", "DC_AGENT_MAX_CONCURRENT": "4"}
        s = cfg.load(path, {"poll_interval_seconds": 1.5}, environ=env)
        assert s.poll_interval_seconds == 1.5 and s.max_concurrent == 4
        assert s.sources["poll_interval_seconds"] == "--poll-interval-seconds"
        assert s.sources["max_concurrent"] == "environment DC_AGENT_MAX_CONCURRENT"
        assert cfg.load(path, environ={}).max_concurrent == 3

    def test_root_and_user_defaults(self, monkeypatch, tmp_path):
        """Root: /etc/dc-agent and /var/lib/dc-agent; others: XDG directories."""
        monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        monkeypatch.setattr(cfg, "is_root", lambda: True)
        assert cfg.default_config_path() == Path("/etc/dc-agent/config.toml")
        assert cfg.default_key_path(cfg.default_config_path()) == Path("/etc/dc-agent/agent.key")
        assert cfg.default_state_dir(cfg.default_config_path()) == Path("/var/lib/dc-agent")
        monkeypatch.setattr(cfg, "is_root", lambda: False)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xc"))
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xs"))
        assert cfg.default_config_path() == tmp_path / "xc" / "dc-agent" / "config.toml"
        assert cfg.default_state_dir(cfg.default_config_path()) == tmp_path / "xs" / "dc-agent"

    def test_flat_provisioner_layout_of_the_spec_is_accepted(self, tmp_path):
        """SPEC.md's first example puts driver keys directly under [provisioner]."""
        s = cfg.load(write(tmp_path, provisioner='type = "script"\ncommand = ["true"]\n'), environ={})
        assert s.provisioner_settings == {"command": ["true"]}


class TestErrors:
    @pytest.mark.parametrize("extra, needle", [
        ("poll_interval_seconds = 0\n", "[agent] poll_interval_seconds = 0: must be greater than 0"),
        ("max_concurrent = 1.5\n", "[agent] max_concurrent = 1.5: a whole number is required"),
        ("poll_intervall_seconds = 3\n", "did you mean `poll_interval_seconds`?"),
        ("log_level = \"loud\"\n", "[agent] log_level"),
    ])
    def test_bad_values_name_file_and_key(self, tmp_path, extra, needle):
        """Each message says which file, which key, and what is expected."""
        path = write(tmp_path, extra)
        with pytest.raises(ConfigFileError) as info:
            cfg.load(path, environ={})
        assert needle in str(info.value) and str(path) in str(info.value)

    def test_bad_env_value_names_the_variable(self, tmp_path):
        with pytest.raises(ConfigFileError, match="environment DC_AGENT_MAX_CONCURRENT"):
            cfg.load(write(tmp_path), environ={"DC_AGENT_MAX_CONCURRENT": "lots"})

    def test_missing_file_says_to_run_setup(self, tmp_path):
        with pytest.raises(ConfigFileError, match="dc-agent setup"):
            cfg.load(tmp_path / "nope.toml", environ={})

    def test_bad_toml(self, tmp_path):
        path = tmp_path / "config.toml"
        path.write_text("[agent\n")
        with pytest.raises(ConfigFileError, match="not valid TOML"):
            cfg.load(path, environ={})

    def test_unknown_driver(self, tmp_path):
        with pytest.raises(ConfigFileError, match="script, manual or proxmox|one of: docker, manual, proxmox, script"):
            cfg.load(write(tmp_path, provisioner='type = "kvm"\n'), environ={})


class TestPublicView:
    def test_secrets_are_masked(self, tmp_path):
        """status never shows a driver secret."""
        s = cfg.load(write(tmp_path, provisioner='type = "proxmox"\n[provisioner.proxmox]\n'
                                                 'api_token_id = "dc@pam!x"\napi_token_secret = "s3cr3t"\n'), environ={})
        view = s.public_view()
        assert view["provisioner_settings"] == {"api_token_id": "dc@pam!x", "api_token_secret": "***"}
