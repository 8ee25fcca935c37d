"""structlog output: JSON off a terminal, secrets masked, contract_id carried."""

from __future__ import annotations

import io
import json

from dc_agent import log
from dc_agent.redact import is_secret_key


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
