"""Every error the agent raises about the API, in one tree, and the one place that maps HTTP onto it.

    AgentError                      anything the agent reports to a person
    ├── ConfigFileError             the config file or key is missing or wrong (names file, key, fix)
    └── ApiError                    a call to the API did not succeed (names endpoint and status)
        ├── Unreachable             no HTTP answer: connection refused, DNS, TLS, timeout (retried)
        ├── ServerError             5xx (retried)
        │   └── UnexpectedAnswer    a 2xx answer of a shape the agent cannot read (not retried at once)
        ├── BadRequest              400 / 415 / 422: the agent sent something the server does not accept
        │   └── Refused             a 2xx answer with `success: false` (the live API refuses this way)
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


class UnexpectedAnswer(ServerError):
    """A 2xx answer whose shape the agent cannot read (an HTML page, a missing field); the loop tries again
    later, the call itself is not repeated at once."""

    retryable = False


class BadRequest(ApiError):
    """400, 415 or 422: the request was not accepted as sent."""


class Refused(BadRequest):
    """HTTP 200 with `success: false`: the server refused; `detail` is its message."""


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


def describe_text(text: str) -> str:
    """A non-JSON body in one short line: an HTML error page by its title, plain text as it is."""
    import re

    stripped = text.strip()
    if stripped[:1] == "<":
        title = re.search(r"<title[^>]*>(.*?)</title>", stripped, re.I | re.S)
        return "HTML page" + (f" ({' '.join(title.group(1).split())[:120]})" if title else "") + \
            " instead of JSON (a proxy or load balancer answered?)"
    return " ".join(stripped.split())[:200]


def error_for_status(endpoint: str, status: int, body: Any) -> ApiError:
    """The agent error for a non-2xx answer; `body` is the decoded JSON envelope or raw text."""
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("error") or body.get("detail") or "")
    elif isinstance(body, str):
        detail = describe_text(body)
    if status >= 500:
        cls: type[ApiError] = ServerError
    else:
        cls = _BY_STATUS.get(status, BadRequest)
    return cls(endpoint, status, detail)
