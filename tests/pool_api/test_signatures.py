"""Signature verification: the server accepts exactly what dc_agent.signing produces, nothing else."""

from __future__ import annotations

import time
import uuid

import pytest
from nacl.signing import SigningKey

from dc_agent.signing import sign_headers
from pool_api.auth import check_skew, parse_headers, signature_message, verify_signature
from pool_api.envelope import ApiError

PATH = "/api/v1/providers/abc/contracts/c1/lock"


def headers_for(key: SigningKey, role: str = "agent", body: bytes = b"", **kw) -> dict[str, str]:
    return {k.lower(): v for k, v in sign_headers(key, role, "POST", PATH, body, **kw).items()}  # type: ignore[arg-type]


def verify(h: dict[str, str], method: str = "POST", path: str = PATH, body: bytes = b"") -> bool:
    _role, pubkey, ts, nonce, sig = parse_headers(h)
    return verify_signature(pubkey, sig, signature_message(ts, nonce, method, path, body))


class TestVerifySignature:
    def test_message_layout(self) -> None:
        """The server verifies timestamp + nonce + METHOD + path + body, no separators (PROTOCOL.md)."""
        assert signature_message("1", "n", "post", "/p", b"{}") == b"1nPOST/p{}"

    def test_valid_signature_verifies(self) -> None:
        """A request signed by dc_agent.signing verifies, for agents and providers, with and without body."""
        key = SigningKey.generate()
        assert verify(headers_for(key))
        assert verify(headers_for(key, "provider", body=b'{"a":1}'), body=b'{"a":1}')

    @pytest.mark.parametrize("change", ["method", "path", "body", "key"])
    def test_any_change_breaks_it(self, change: str) -> None:
        """Changing the method, path, body or key invalidates the signature."""
        key = SigningKey.generate()
        h = headers_for(key, body=b'{"a":1}')
        if change == "key":
            h["x-agent-pubkey"] = SigningKey.generate().verify_key.encode().hex()
        kwargs = {"method": "PUT" if change == "method" else "POST",
                  "path": PATH + "x" if change == "path" else PATH,
                  "body": b'{"a":2}' if change == "body" else b'{"a":1}'}
        assert not verify(h, **kwargs)

    def test_garbage_signature_is_false_not_error(self) -> None:
        """A well-formed but wrong signature, or a key that is not a curve point, just fails."""
        key = SigningKey.generate().verify_key.encode().hex()
        assert not verify_signature(key, "00" * 64, b"m")
        assert not verify_signature("ff" * 32, "00" * 64, b"m")
        assert not verify_signature("zz" * 32, "00" * 64, b"m")


class TestParseHeaders:
    def base(self) -> dict[str, str]:
        return headers_for(SigningKey.generate())

    @pytest.mark.parametrize("drop", ["x-timestamp", "x-nonce", "x-signature", "x-agent-pubkey"])
    def test_missing_header_is_401_naming_it(self, drop: str) -> None:
        """Each missing header is a 401 whose message names what is missing."""
        h = self.base()
        del h[drop]
        with pytest.raises(ApiError) as err:
            parse_headers(h)
        assert err.value.status == 401 and drop in err.value.message.lower()

    @pytest.mark.parametrize("header,value", [
        ("x-agent-pubkey", "not-hex"), ("x-agent-pubkey", "ab" * 31), ("x-signature", "zz" * 64),
        ("x-timestamp", "-5"), ("x-timestamp", "1e9"), ("x-timestamp", "9" * 40), ("x-nonce", "a b"),
        ("x-nonce", "x" * 200),
    ])
    def test_malformed_header_is_401_naming_it(self, header: str, value: str) -> None:
        """Non-hex keys, short keys, bad timestamps and nonces are refused with the header's name."""
        h = self.base()
        h[header] = value
        with pytest.raises(ApiError) as err:
            parse_headers(h)
        assert err.value.status == 401 and header.lower() in err.value.message.lower()

    def test_both_identities_refused(self) -> None:
        """A request may not claim to be agent and provider at once."""
        h = self.base()
        h["x-public-key"] = h["x-agent-pubkey"]
        with pytest.raises(ApiError):
            parse_headers(h)


class TestSkew:
    def test_within_300_s_passes(self) -> None:
        """Timestamps up to 300 s off either way are accepted."""
        now = time.time_ns()
        for delta in (-299, 0, 299):
            check_skew(str(now + delta * 10**9), 300, now=now)

    @pytest.mark.parametrize("delta", [-301, 301, -10**6])
    def test_beyond_300_s_is_401(self, delta: int) -> None:
        """Older or newer than 300 s is refused."""
        now = time.time_ns()
        with pytest.raises(ApiError) as err:
            check_skew(str(now + delta * 10**9), 300, now=now)
        assert err.value.status == 401

    def test_nonce_is_uuid4_by_default(self) -> None:
        """The client's default nonce passes the server's nonce format."""
        h = headers_for(SigningKey.generate(), nonce=None)
        uuid.UUID(h["x-nonce"])
        parse_headers(h)
