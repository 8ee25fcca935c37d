"""What counts as a secret, and how it is masked (`***`) in logs and in `dc-agent status`."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_WORDS = ("secret", "password", "passwd", "token", "private", "passphrase", "signature",
                 "credential", "apikey", "api_key", "authorization", "seed")
_PUBLIC_SUFFIXES = ("_id", "pubkey", "public_key", "_path", "_ns", "_type")
_ENV_KEYS = ("env", "environment")
_SETUP_TOKEN = re.compile(r"\bapt_[A-Za-z0-9]+_[A-Za-z0-9_-]{6,}")
_PVE_TOKEN = re.compile(r"(PVEAPIToken=[^=\s]+=)[0-9a-fA-F-]{8,}")


def is_secret_key(name: str) -> bool:
    """True for names such as `api_token_secret`, `rootPassword`, `token`; false for `api_token_id`."""
    lowered = name.lower().replace("-", "_")
    if lowered.endswith(_PUBLIC_SUFFIXES) or lowered in {"tokens_used"}:
        return False
    squashed = lowered.replace("_", "")
    return any(word.replace("_", "") in squashed for word in _SECRET_WORDS)


def redact_text(text: str) -> str:
    """Mask secrets that can be recognised by their shape inside free text."""
    text = _SETUP_TOKEN.sub("apt_" + MASK, text)
    return _PVE_TOKEN.sub(r"\1" + MASK, text)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return redact_mapping(value)
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


def redact_mapping(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if str(key).lower() in _ENV_KEYS and isinstance(value, dict):
            out[key] = {name: MASK for name in value}  # an environment is where scripts' secrets live
        elif is_secret_key(str(key)) and value not in (None, "", {}) and not isinstance(value, (bool, int, float)):
            out[key] = MASK
        else:
            out[key] = redact_value(value)
    return out
