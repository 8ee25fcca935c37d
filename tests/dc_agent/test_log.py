"""structlog output: JSON off a terminal, secrets masked, contract_id carried."""

from __future__ import annotations

import io
import json

from dc_agent import log
from dc_common.redact import is_secret_key


class TestRedaction:
    def test_secret_keys_and_token_shapes_are_masked(self):
        """Keys named like secrets and setup-token-shaped values never reach the log."""
        out = io.StringIO()
        log.configure("debug", json_output=True, stream=out)
        log.get().bind(contract_id="c-1").info(
            "provisioned apt_europe_7f3a9c2b4d6e8f0a", api_token_secret="hunter2", rootPassword="pw",
            details={"rootPassword": "pw2", "ipAddress": "192.0.2.1"}, api_token_id="dc@pam!x")
        line = json.loads(out.getvalue())
        text = out.getvalue()
        assert "hunter2" not in text and "pw2" not in text and "7f3a9c2b4d6e8f0a" not in text
        assert line["api_token_secret"] == "***" and line["rootPassword"] == "***"
        assert line["details"]["ipAddress"] == "192.0.2.1"
        assert line["api_token_id"] == "dc@pam!x"
        assert line["contract_id"] == "c-1" and line["level"] == "info"

    def test_console_output_when_asked(self):
        out = io.StringIO()
        log.configure("info", json_output=False, stream=out)
        log.get().info("hello", contract_id="c-2")
        assert "hello" in out.getvalue() and "contract_id=c-2" in out.getvalue()
        assert not out.getvalue().lstrip().startswith("{")

    def test_public_names_are_not_secrets(self):
        for name in ("agent_pubkey", "provider_pubkey", "private_key_path", "api_token_id", "contract_id"):
            assert not is_secret_key(name), name
        for name in ("token", "api_token_secret", "rootPassword", "private_key", "signature", "X-Signature"):
            assert is_secret_key(name), name


class TestTracebacks:
    def test_console_tracebacks_never_show_local_variables(self):
        """A driver error logged on a terminal must not print the locals of its frames (a script's
        environment with secrets in it): plain tracebacks, masked like every other value."""
        out = io.StringIO()
        log.configure("debug", json_output=False, stream=out)

        def spawn(env: dict) -> None:
            raise ValueError("embedded null byte")

        secret = "-".join(("5f1c2d3e", "aaaa", "bbbb"))  # not in any source line the traceback quotes
        try:
            spawn({"PVE_API_TOKEN_SECRET": secret})
        except ValueError:
            log.get().exception("driver raised an unexpected error")
        text = out.getvalue()
        assert "embedded null byte" in text and "Traceback" in text
        assert "5f1c2d3e" not in text


class TestStatusView:
    def test_every_value_of_a_script_environment_is_masked(self):
        """[provisioner.script] env may hold any secret under any name: status shows the names only."""
        from dc_common.redact import redact_mapping

        shown = redact_mapping({"command": ["/usr/local/bin/provision"],
                                "env": {"HCLOUD_KEY": "hk-very-private-123", "DB_PASS": "hunter2", "REGION": "eu"}})
        assert shown["env"] == {"HCLOUD_KEY": "***", "DB_PASS": "***", "REGION": "***"}
        assert shown["command"] == ["/usr/local/bin/provision"]


def test_driver_lines_from_standard_logging_are_json_and_redacted():
    """Drivers log with `logging`; their lines come out as the agent's JSON, secrets masked, at the level set."""
    import io
    import json
    import logging as std

    from dc_agent import log as logmod

    out = io.StringIO()
    logmod.configure("info", json_output=True, stream=out)
    std.getLogger("provisioners.proxmox").info("proxmox: token PVEAPIToken=dc@pve!x=0d4e0c1a-1111-2222-3333-444455556666 used")
    std.getLogger("provisioners.docker").debug("not shown at info")
    std.getLogger("httpx").info("HTTP Request: per-request chatter")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1, lines
    assert lines[0]["logger"] == "provisioners.proxmox" and lines[0]["level"] == "info"
    assert "0d4e0c1a-1111" not in lines[0]["event"] and "***" in lines[0]["event"]
