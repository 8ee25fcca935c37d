"""structlog set-up: one JSON line per event on stderr, secrets masked by a processor."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

SECRET_KEYS = {"token", "signature", "x-signature", "body", "password", "root_password", "rootpassword", "secret"}
_TOKEN_IN_PATH = re.compile(r"apt_[^/]+")


def redact_path(path: str) -> str:
    """Setup tokens travel in one path (DELETE …/setup-tokens/{token}); never log them."""
    return _TOKEN_IN_PATH.sub("apt_<redacted>", path)


class RedactSecrets:
    """Processor: mask values of keys that may carry secrets."""

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        for key in list(event):
            if key.lower() in SECRET_KEYS:
                event[key] = "<redacted>"
        if isinstance(event.get("path"), str):
            event["path"] = redact_path(event["path"])
        return event


def configure(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            RedactSecrets(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
