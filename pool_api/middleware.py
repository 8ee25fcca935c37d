"""ASGI middleware: the 1 MiB body limit (413), JSON as the API's default body type, and the
one-line-per-request access log."""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

log = structlog.get_logger("pool_api.access")

Scope = dict[str, Any]


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413: by Content-Length up front, else while reading.

    The body is read here (at most limit + 1 bytes are kept) and replayed to the app, so the app
    never sees a partial body and the limit also holds for chunked uploads without a length.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", ""):
            await _send_json(send, 400, {"success": False, "data": None, "error": "path contains a NUL character"})
            return
        too_big = {"success": False, "data": None, "error": f"request body over {self.limit} bytes"}
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"success": False, "data": None, "error": "invalid Content-Length"})
                    return
                if declared > self.limit:
                    await _send_json(send, 413, too_big)
                    return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_json(send, 413, too_big)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class JsonByDefault:
    """API bodies are JSON (PROTOCOL.md): a request to /api/ without a (or with an empty) Content-Type is
    read as JSON.

    A client signs the exact raw body and may send it as plain bytes without the header; without this
    the body would not be parsed and the request refused as if its fields were missing.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/api/"):
            headers = scope.get("headers", [])
            if not any(name == b"content-type" and value.strip() for name, value in headers):
                kept = [(name, value) for name, value in headers if name != b"content-type"]
                scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class AccessLog:
    """One structlog line per request: method, path (tokens redacted), status, latency_ms."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            status = status or 500  # the error handler outside answers 500
            raise
        finally:
            # 499: the client went away before any response was started
            log.info("request", method=scope["method"], path=scope["path"], status=status or 499,
                     latency_ms=round((time.perf_counter() - started) * 1000, 2))
