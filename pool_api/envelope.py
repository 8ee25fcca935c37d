"""The response envelope of PROTOCOL.md and the one exception type that routes raise.

Every answer is `{"success", "data", "error"}`. Routes return `ok(data)`; refusals raise `ApiError`.
The handlers below turn validation errors, unknown routes and anything unexpected into the same
envelope, so bad input never produces a bare 500 or a traceback.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("pool_api")


class ApiError(Exception):
    """A refusal with its HTTP status and a human-readable message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "data": data, "error": None}, status_code=status)


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "data": None, "error": message}, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """400 for a body that is not JSON at all, else 422 naming each bad field."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body: " + "; ".join(str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors)
    messages = []
    for e in errors[:10]:
        where = _loc(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing":
            msg = "field required"
        messages.append(f"{where}: {msg}")
    return 422, "invalid request: " + "; ".join(messages)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return fail(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = describe_validation_errors(list(exc.errors()))
        return fail(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        return fail(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", method=request.method, path=request.url.path, error=type(exc).__name__,
                  exc_info=exc)
        return fail(500, "internal server error")
