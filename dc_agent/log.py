"""structlog set-up: JSON lines when stdout is not a terminal, readable lines when it is.

Every event passes :class:`Redact`, which masks secrets by key name (`api_token_secret`,
`rootPassword`, `token`, …) and by shape (setup tokens) in any value, nested or not.
Contract lines carry `contract_id` because the loop binds it on a per-contract logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from dc_common.redact import MASK, is_secret_key, redact_value


class Redact:
    """A structlog processor that masks secrets in the event dict."""

    def __init__(self, mask: str = MASK) -> None:
        self.mask = mask

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key in list(event_dict):
            value = event_dict[key]
            if is_secret_key(key) and value not in (None, "") and not isinstance(value, (bool, int, float)):
                event_dict[key] = self.mask
            else:
                event_dict[key] = redact_value(value)
        return event_dict


def configure(level: str = "info", *, json_output: bool | None = None, stream: Any = None) -> None:
    stream = stream or sys.stdout
    if json_output is None:
        json_output = not (hasattr(stream, "isatty") and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Plain tracebacks, formatted before Redact sees them: a rich traceback would print the locals
        # of every frame (a script's environment with its secrets) after redaction.
        structlog.processors.format_exc_info,
        Redact(),
    ]
    if json_output:
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(**bound: Any) -> Any:
    return structlog.get_logger("dc_agent").bind(**bound)
