"""Every error the agent raises about the API, in one tree, and the one place that maps HTTP onto it.

    AgentError                      anything the agent reports to a person
    ├── ConfigFileError             the config file or key is missing or wrong (names file, key, fix)
    └── ApiError                    a call to pool_api did not succeed (names endpoint and status)
        ├── Unreachable             no HTTP answer: connection refused, DNS, TLS, timeout (retried)
        ├── ServerError             5xx (retried)
        ├── BadRequest              400 / 422: the agent sent something the server does not accept
        ├── Unauthorized            401: the signature was refused (clock skew, unknown key)
        ├── Forbidden               403: not allowed (revoked agent, not the lock holder)
        ├── NotFound                404: unknown contract, pool or token
        ├── Conflict                409: another agent holds the lock
        └── Gone                    410: setup token expired or already used
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """An error with a message meant for a person (no traceback needed)."""


class ConfigFileError(AgentError):
    """The configuration (file, key, or an option) is invalid; the message says where and how to fix it."""


class ApiError(AgentError):
    """A request to pool_api failed; `endpoint` is `METHOD /path`, `status` the HTTP status (None: no answer)."""

    retryable = False

    def __init__(self, endpoint: str, status: int | None, detail: str = "") -> None:
        self.endpoint = endpoint
        self.status = status
        self.detail = detail
        where = f"{endpoint} -> {status}" if status is not None else f"{endpoint}: no answer"
        super().__init__(f"{where}: {detail}" if detail else where)


class Unreachable(ApiError):
    """No HTTP answer (connection refused, DNS, TLS, timeout); retried."""

    retryable = True


class ServerError(ApiError):
    """The server answered 5xx; retried."""

    retryable = True


class BadRequest(ApiError):
    """400 or 422: the request was not accepted as sent."""


class Unauthorized(ApiError):
    """401: the signature was refused (check the clock and that the agent is registered)."""


class Forbidden(ApiError):
    """403: not allowed (agent revoked, wrong pool, or not the lock holder)."""


class NotFound(ApiError):
    """404: the object does not exist."""


class Conflict(ApiError):
    """409: another agent holds the contract's lock (or the object is in a conflicting state)."""


class Gone(ApiError):
    """410: the setup token expired or was already used."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: BadRequest,
}


def error_for_status(endpoint: str, status: int, body: Any) -> ApiError:
    """The agent error for a non-2xx answer; `body` is the decoded JSON envelope or raw text."""
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("error") or body.get("detail") or "")
    elif isinstance(body, str):
        detail = body.strip()[:200]
    if status >= 500:
        cls: type[ApiError] = ServerError
    else:
        cls = _BY_STATUS.get(status, BadRequest)
    return cls(endpoint, status, detail)
