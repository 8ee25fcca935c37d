"""The response envelope of PROTOCOL.md.

Every answer is `{"success", "data", "error"}`. Routes return `ok(data)`; refusals raise `ApiError`
(defined in pool_api.errors, re-exported here).
The handlers below turn validation errors, unknown routes and anything unexpected into the same
envelope, so bad input never produces a bare 500 or a traceback.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pool_api.errors import ApiError, describe_validation_errors

__all__ = ["ApiError", "describe_validation_errors", "fail", "install_error_handlers", "ok"]

log = structlog.get_logger("pool_api")


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "data": data, "error": None}, status_code=status)


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "data": None, "error": message}, status_code=status, headers=headers)


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

    @app.exception_handler(sa.exc.DataError)
    async def _data_error(_request: Request, _exc: sa.exc.DataError) -> JSONResponse:
        return fail(422, "invalid request: a value cannot be stored (out of range or invalid characters)")

    @app.exception_handler(sa.exc.IntegrityError)
    async def _integrity(_request: Request, _exc: sa.exc.IntegrityError) -> JSONResponse:
        return fail(409, "conflict with a concurrent change; retry")

    @app.exception_handler(sa.exc.OperationalError)
    async def _operational(request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("database_unavailable", method=request.method, path=request.url.path, error=type(exc.orig).__name__)
        return fail(503, "database busy or unavailable; retry")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", method=request.method, path=request.url.path, error=type(exc).__name__,
                  exc_info=exc)
        return fail(500, "internal server error")
