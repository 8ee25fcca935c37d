"""structlog set-up: JSON lines when stdout is not a terminal, readable lines when it is.

Every event passes :class:`Redact`, which masks secrets by key name (`api_token_secret`,
`rootPassword`, `token`, …) and by shape (setup tokens) in any value, nested or not.
Contract lines carry `contract_id` because the loop binds it on a per-contract logger. The drivers log
through the standard `logging` module (they do not depend on the agent): :class:`ToStructlog` hands those
records to the same chain, so they are redacted and rendered like the agent's own lines.
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


QUIET_LIBRARIES = ("httpx", "httpcore", "urllib3", "docker", "asyncio")  # per-request chatter: warnings only


class ToStructlog(logging.Handler):
    """A `logging` handler that re-emits each record through structlog (so it passes Redact)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = str(record.msg)
        log = structlog.get_logger("dc_agent").bind(logger=record.name)
        method = getattr(log, record.levelname.lower(), log.info)
        try:
            if record.exc_info:
                method(message, exc_info=record.exc_info)
            else:
                method(message)
        except Exception:  # noqa: BLE001 - logging must never raise into a driver
            self.handleError(record)


def _route_standard_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ToStructlog):
            root.removeHandler(handler)
    root.addHandler(ToStructlog(level))
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


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
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(numeric)


def get(**bound: Any) -> Any:
    return structlog.get_logger("dc_agent").bind(**bound)
